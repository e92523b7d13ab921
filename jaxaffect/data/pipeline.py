"""Online input pipeline: grain datasets for training and evaluation, and global batches.

Works on any random-access source (`len` + `__getitem__` returning the record dict of
the video_emotion builder), e.g. `tfds.data_source(...)[split]` or a list of dicts in tests.

Topology independence (docs/architecture.md): shuffle, repeat and the per-example random transforms
run on the *global* example stream; only then is it batched to the per-process size and
every P-th batch taken. Process p holds global positions [s*B + p*B/P, s*B + (p+1)*B/P) at
step s, so the global batch at every step depends only on (seed, B), never on the number of
processes or devices.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import grain
import jax
import numpy as np

from jaxaffect.data.video_transforms import TransformConfig, VideoAudioTransform

# Buffers count per-process *batches* (batching happens before to_iter_dataset), so keep
# them small: grain's default of 500 would hold 500 video batches in memory.
_DEFAULT_PREFETCH_BATCHES = 4


def _per_process_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} must be a positive multiple "
                     f"of the process count {process_count}")
  return global_batch_size // process_count


def limit_blas_threads(num_threads: int = 1) -> bool:
  """Limits numpy's BLAS to `num_threads` threads in this process; False if impossible.

  The resize GEMMs are small and the cores are busy (JAX, other workers): threaded BLAS
  then waits for cores (measured 3-7x slower per example on 2 cores). Process-wide and
  permanent, so it is set once (grain worker start-up, or pipeline construction in the
  main process), never toggled per call: changing OpenBLAS threads while another thread
  is inside BLAS is unsafe and, measured, very slow. Results do not depend on it (the
  resize is exact in fixed point).
  """
  try:
    import threadpoolctl  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  threadpoolctl.threadpool_limits(num_threads, user_api="blas")
  return True


def _worker_init(worker_index: int, worker_count: int) -> None:
  """grain worker start-up: one BLAS thread per worker, so W workers do not oversubscribe."""
  del worker_index, worker_count
  limit_blas_threads(1)


def _read_options(read_threads: int | None, prefetch_batches: int,
                  worker_count: int) -> grain.ReadOptions:
  # Auto: no reader threads inside workers (the worker processes already run ahead and
  # threads only add GIL contention: measured 2.4k vs 1.6k ex/s on 2 cores); one thread in
  # the main process so that batches are prepared while the device computes.
  if read_threads is None:
    read_threads = 0 if worker_count > 0 else 1
  return grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)


def train_dataset(source: Any, *, transform_cfg: TransformConfig | Mapping[str, Any],
                  seed: int, global_batch_size: int, process_index: int,
                  process_count: int, worker_count: int = 0,
                  read_threads: int | None = None,
                  prefetch_batches: int = _DEFAULT_PREFETCH_BATCHES,
                  single_blas_thread: bool = True) -> grain.IterDataset:
  """Infinite, shuffled, augmented per-process batches (dicts of numpy arrays).

  Batch: video uint8 [b, S, T, crop, crop, 3], audio float32 [b, A, F, M], label int32 [b],
  polarity int32 [b] (when the config has a table), with b = global_batch_size //
  process_count. `iter()` of the result is a grain DatasetIterator whose
  get_state()/set_state() restore the position exactly, also with worker_count > 0; the
  batches do not depend on worker_count or read_threads.

  worker_count > 0 runs the transforms in that many grain processes (mp_prefetch), each
  with one BLAS thread. With worker_count == 0 and `single_blas_thread`, this process's
  BLAS is limited to one thread (see `limit_blas_threads`; a process-wide side effect).
  `read_threads` None = auto (0 with workers, 1 without).
  """
  if len(source) == 0:
    raise ValueError("train source is empty")
  local_bs = _per_process_batch(global_batch_size, process_count)
  transform = VideoAudioTransform(transform_cfg, train=True)
  ds = (grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
        .random_map(transform)
        .batch(local_bs, drop_remainder=True)[process_index::process_count])
  it_ds = ds.to_iter_dataset(_read_options(read_threads, prefetch_batches, worker_count))
  if worker_count > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count),
                              worker_init_fn=_worker_init)
  elif single_blas_thread:
    limit_blas_threads(1)
  return it_ds


class _PaddedSource:
  """Random access over `source` padded to `total` with copies of example 0.

  Returns (record, is_real); picklable as long as `source` is.
  """

  def __init__(self, source: Any, total: int):
    self._source = source
    self._n = len(source)
    self._total = total

  def __len__(self) -> int:
    return self._total

  def __getitem__(self, index: int) -> tuple[Any, bool]:
    real = index < self._n
    return self._source[index if real else 0], real


class _MaskedTransform(grain.transforms.RandomMap):
  """Applies the example transform and records whether the example is padding."""

  def __init__(self, inner: VideoAudioTransform):
    self._inner = inner

  def random_map(self, element: tuple[Any, bool], rng: np.random.Generator) -> dict:
    record, real = element
    out = self._inner.random_map(record, rng)
    out["_mask"] = np.bool_(real)
    return out


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """Global eval batches needed to cover `num_examples` once (the last one padded)."""
  return max(1, -(-num_examples // global_batch_size))


def eval_batches(source: Any, *, transform_cfg: TransformConfig | Mapping[str, Any],
                 global_batch_size: int, process_index: int, process_count: int,
                 seed: int = 0, read_threads: int | None = None,
                 prefetch_batches: int = _DEFAULT_PREFETCH_BATCHES) -> Iterator[dict]:
  """Per-process eval batches covering every example exactly once, in source order.

  The last global batch is padded with copies of example 0; "_mask" bool [b] is False on
  padding. Every process yields the same number of batches (no hang in collectives), and
  process p gets the contiguous slice [p*b, (p+1)*b) of each global batch. Batches also
  carry "key" (host-side strings). `seed` only matters with `legacy_random_eval`.
  """
  n = len(source)
  if n == 0:
    raise ValueError("eval source is empty")
  local_bs = _per_process_batch(global_batch_size, process_count)
  total = num_eval_batches(n, global_batch_size) * global_batch_size
  transform = _MaskedTransform(VideoAudioTransform(transform_cfg, train=False, keep_key=True))
  ds = (grain.MapDataset.source(_PaddedSource(source, total)).seed(seed)
        .random_map(transform)
        .batch(local_bs, drop_remainder=True)[process_index::process_count])
  return iter(ds.to_iter_dataset(_read_options(read_threads, prefetch_batches, 0)))


def _is_numeric(x: Any) -> bool:
  return isinstance(x, (np.ndarray, np.generic)) and x.dtype.kind in "biuf"


def to_global_batch(local_batch: Mapping[str, Any],
                    sharding_or_mesh: jax.sharding.Sharding | jax.sharding.Mesh, *,
                    batch_axes: Sequence[str] = ("data", "fsdp")) -> dict[str, jax.Array]:
  """Per-process numpy batch -> dict of global jax.Arrays sharded along the batch axis.

  Given a Mesh, the batch axis is split over the mesh axes among `batch_axes` that exist
  (replicated over the others, e.g. "tensor"). Non-numeric leaves (strings such as "key")
  are dropped: they stay on the host in `local_batch`. Every process must pass a batch of
  the same per-process size.
  """
  if isinstance(sharding_or_mesh, jax.sharding.Mesh):
    axes = tuple(a for a in batch_axes if a in sharding_or_mesh.axis_names)
    spec = jax.sharding.PartitionSpec(axes if axes else None)
    sharding = jax.sharding.NamedSharding(sharding_or_mesh, spec)
  else:
    sharding = sharding_or_mesh
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items() if _is_numeric(np.asarray(v))}
