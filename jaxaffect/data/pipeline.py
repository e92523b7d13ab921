"""Online input pipelines: the grain ops every dataset family's pipeline uses (per-process
batching, padded evaluation, global arrays) and the video-emotion pipeline built on them.

Works on any random-access source (`len` + `__getitem__`; for the video-emotion pipeline
returning the record dict of the video_emotion builder), e.g. `families.open_source(...)` or a
list of dicts in tests.

Topology independence (docs/architecture.md): shuffle, repeat and the per-example random transforms
run on the *global* example stream; only then is it batched to the per-process size and
every P-th batch taken. Process p holds global positions [s*B + p*B/P, s*B + (p+1)*B/P) at
step s, so the global batch at every step depends only on (seed, B), never on the number of
processes or devices.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator, Mapping, Sequence

import grain
import jax
import numpy as np

from jaxaffect.data.video_transforms import TransformConfig, VideoAudioTransform

# Buffers count per-process *batches* (batching happens before to_iter_dataset), so keep
# them small: grain's default of 500 would hold 500 video batches in memory.
DEFAULT_PREFETCH_BATCHES = 4


def per_process_batch(global_batch_size: int, process_count: int) -> int:
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


def read_options(read_threads: int | None, prefetch_batches: int,
                 worker_count: int) -> grain.ReadOptions:
  # Auto: no reader threads inside workers (the worker processes already run ahead and
  # threads only add GIL contention: measured 2.4k vs 1.6k ex/s on 2 cores); one thread in
  # the main process so that batches are prepared while the device computes.
  if read_threads is None:
    read_threads = 0 if worker_count > 0 else 1
  return grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)


def per_process_iter(stream: grain.MapDataset, *, global_batch_size: int, process_index: int,
                     process_count: int, worker_count: int = 0,
                     read_threads: int | None = None,
                     prefetch_batches: int = DEFAULT_PREFETCH_BATCHES,
                     batch_fn: Callable[[Sequence[Any]], Any] | None = None,
                     worker_init_fn: Callable[[int, int], None] | None = None
                     ) -> grain.IterDataset:
  """The global example `stream` batched to the per-process size, every P-th batch for process
  p (see the module docstring), as a checkpointable grain IterDataset. `batch_fn` (grain's)
  stacks a batch's examples; worker_count > 0 runs the stream's transforms in that many grain
  processes (mp_prefetch), each started with `worker_init_fn`."""
  local_bs = per_process_batch(global_batch_size, process_count)
  ds = stream.batch(local_bs, drop_remainder=True, batch_fn=batch_fn)[process_index::process_count]
  it_ds = ds.to_iter_dataset(read_options(read_threads, prefetch_batches, worker_count))
  if worker_count > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count),
                              worker_init_fn=worker_init_fn)
  return it_ds


def train_dataset(source: Any, *,
                  transform_cfg: TransformConfig | Mapping[str, Any] | None = None, seed: int, global_batch_size: int, process_index: int,
                  process_count: int, worker_count: int = 0,
                  read_threads: int | None = None,
                  prefetch_batches: int = DEFAULT_PREFETCH_BATCHES,
                  single_blas_thread: bool = True,
                  transform: grain.transforms.RandomMap | None = None) -> grain.IterDataset:
  """Infinite, shuffled, augmented per-process batches (dicts of numpy arrays).

  `transform` (a method's own per-record RandomMap, e.g. CTEN's) replaces the video-emotion
  transform built from `transform_cfg`; the batch keys below are then the transform's.

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
  if transform is None:
    transform = VideoAudioTransform(transform_cfg, train=True)
  stream = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None).random_map(transform)
  it_ds = per_process_iter(stream, global_batch_size=global_batch_size,
                           process_index=process_index, process_count=process_count,
                           worker_count=worker_count, read_threads=read_threads,
                           prefetch_batches=prefetch_batches, worker_init_fn=_worker_init)
  if worker_count <= 0 and single_blas_thread:
    limit_blas_threads(1)
  return it_ds


# ---- padded evaluation ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvalRow:
  """One row of the padded eval stream, as `padded_eval_batches` hands it to `example`."""
  record: Any     # source[index]
  index: int      # the source index: order[position], 0 on padding rows
  position: int   # in the global stream: row position % B of global batch position // B
  real: bool      # False on padding rows (copies of example 0, masked out)


class _EvalRows:
  """Random access: eval position -> EvalRow, over `source` in `order` (None: source order)
  padded to `total` rows; picklable as long as `source` is."""

  def __init__(self, source: Any, order: Sequence[int] | None, total: int):
    self._source, self._order = source, order
    self._n, self._total = len(source), total

  def __len__(self) -> int:
    return self._total

  def __getitem__(self, position: int) -> EvalRow:
    k = int(position)
    real = k < self._n
    index = (k if self._order is None else int(self._order[k])) if real else 0
    return EvalRow(self._source[index], index, k, real)


class _Masked(grain.transforms.RandomMap):
  """The family's `example` of a row, plus "_mask" (False on padding)."""

  def __init__(self, example: Callable[[EvalRow, np.random.Generator], dict]):
    self._example = example

  def random_map(self, row: EvalRow, rng: np.random.Generator) -> dict:
    out = self._example(row, rng)
    out["_mask"] = np.bool_(row.real)
    return out


def _apply_to_record(transform: grain.transforms.RandomMap, row: EvalRow,
                     rng: np.random.Generator) -> dict:
  return transform.random_map(row.record, rng)


def record_example(transform: grain.transforms.RandomMap
                   ) -> Callable[[EvalRow, np.random.Generator], dict]:
  """A picklable `example` for padded_eval_batches that maps the record alone."""
  return functools.partial(_apply_to_record, transform)


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """Global eval batches needed to cover `num_examples` once (the last one padded)."""
  return max(1, -(-num_examples // global_batch_size))


def padded_eval_batches(source: Any, example: Callable[[EvalRow, np.random.Generator], dict], *,
                        global_batch_size: int, process_index: int, process_count: int,
                        order: Sequence[int] | None = None, seed: int = 0,
                        batch_fn: Callable[[Sequence[dict]], dict] | None = None,
                        read_threads: int | None = None,
                        prefetch_batches: int = DEFAULT_PREFETCH_BATCHES) -> Iterator[dict]:
  """Per-process eval batches covering every example of `source` exactly once.

  The global stream is the source in `order` (default: source order), padded to whole global
  batches with copies of example 0; `example(row, rng)` makes each row's example dict (rng seeded
  by `seed` and the position) and "_mask" bool [b] is False on padding. Every process yields
  the same number of batches (no hang in collectives), and process p gets the contiguous slice
  [p*b, (p+1)*b) of each global batch. `batch_fn` as grain's (default: stack each key).
  """
  n = len(source)
  if n == 0:
    raise ValueError("eval source is empty")
  local_bs = per_process_batch(global_batch_size, process_count)
  total = num_eval_batches(n, global_batch_size) * global_batch_size
  ds = (grain.MapDataset.source(_EvalRows(source, order, total)).seed(seed)
        .random_map(_Masked(example))
        .batch(local_bs, drop_remainder=True, batch_fn=batch_fn)[process_index::process_count])
  return iter(ds.to_iter_dataset(read_options(read_threads, prefetch_batches, 0)))


def eval_batches(source: Any, *, transform_cfg: TransformConfig | Mapping[str, Any],
                 global_batch_size: int, process_index: int, process_count: int,
                 seed: int = 0, read_threads: int | None = None,
                 prefetch_batches: int = DEFAULT_PREFETCH_BATCHES) -> Iterator[dict]:
  """Per-process video-emotion eval batches (padded_eval_batches, in source order); batches
  also carry "key" (host-side strings). `seed` only matters with `legacy_random_eval`."""
  transform = VideoAudioTransform(transform_cfg, train=False, keep_key=True)
  return padded_eval_batches(source, record_example(transform),
                             global_batch_size=global_batch_size, process_index=process_index,
                             process_count=process_count, seed=seed, read_threads=read_threads,
                             prefetch_batches=prefetch_batches)


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
