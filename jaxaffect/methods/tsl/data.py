"""Online input pipeline for TSL-Net features (tsl300 records -> bucketed batches) and the
TSL-300 dataset family.

Same rules as jaxaffect/data/pipeline.py (topology independence): a seeded global shuffle +
repeat on the global example stream, then batch to the per-process size and take every P-th
batch (pipeline.per_process_iter); eval covers each example once, the last global batch padded
("_mask" False; pipeline.padded_eval_batches).

Videos have different lengths T (snippets of 16 frames). Every batch is padded to a BUCKETED
length L: the smallest entry of `buckets` that is >= the largest T in the *global* batch (read
from a length table, so every process pads its rows to the same L without loading the others'
rows). jit then compiles once per bucket, never per video. A video longer than the last bucket
is an error naming it and the config key `dataset.buckets`.

Batch (numpy, batch axis first, b = global batch / process count, L the batch's bucket):
  "rgb"          float32 [b, L, 1024]      I3D-RGB, zeros on padding
  "audio"        float32 [b, L, 32, 60]    log-mel normalised as the original: (dB + 50) / 80,
                                           zeros on padding
  "mask"         float32 [b, L]            1 on the T real snippets
  "length"       int32 [b]                 T
  "point_label"  int32 [b, L]              -1 = no point, else the class (0 = n, 1 = p) of the
                                           chosen annotator's point in that snippet
                                           (t = floor(frame / 16); points with t >= T dropped;
                                           two points in one snippet: the later row wins, as the
                                           original's overwrite)
  "point_count"  float32 [b, 2]            points of class n, p kept (the original's video
                                           label distribution, before normalisation)
  "index"        int32 [b]                 position of the video in its split source (video_info)
eval batches add "_mask" bool [b] (False on padding rows, which copy example 0) and
"video_id" (host-side strings, dropped by to_global_batch).

Annotators (faithful default "random"): as the original (senti_features.mix_video_points_label),
one of the three annotator versions is chosen per video, once per run: here with an RNG seeded
by (seed, video id), among the versions that have >= 1 point for that video; an int 0/1/2 uses
that version only (a video it did not annotate then has no points).

Datasets (`dataset.name`, FAMILY; prepared and opened by jaxaffect/data/families.py):
"synthetic_tsl" (generated on first use into data_dir/raw, see
data_pipelines/synthetic/untrimmed.py) and "tsl300" (the release in `dataset.manual_dir`, else
data_dir/raw/tsl300).
"""
from __future__ import annotations

import logging
import sys
import zlib
from typing import Any, Iterator, Sequence

import grain
import numpy as np

from jaxaffect.data import families
from jaxaffect.data import pipeline
from jaxaffect.errors import UserError

log = logging.getLogger(__name__)

SYNTHETIC = ("synthetic_tsl",)
REAL = ("tsl300",)
# The last bucket is TSL-Net's step-encoding limit (model.py PE_LENGTH): a longer video is a
# pipeline error naming dataset.buckets rather than a model error.
DEFAULT_BUCKETS = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4000)
SNIPPET_FRAMES = 16
NUM_CLASSES = 2
NUM_ANNOTATORS = 3
AUDIO_OFFSET, AUDIO_SCALE = 50.0, 80.0     # senti_features.py: (x + 50) / 80
BUCKETS_KEY = "dataset.buckets"
ANNOTATOR_KEY = "dataset.annotator"
_TIME_KEYS = ("rgb", "audio", "point_label")


def _to_str(v: Any) -> str:
  return v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)


# ------------------------------------------------------------------------------ pieces


def check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
  """Validated buckets as a sorted tuple of distinct positive ints (error names the key)."""
  try:
    out = tuple(sorted({int(b) for b in buckets}))
  except (TypeError, ValueError) as e:
    raise UserError(f"{BUCKETS_KEY}: must be a list of positive integers, got {buckets!r}") from e
  if not out or out[0] < 1:
    raise UserError(f"{BUCKETS_KEY}: must be a non-empty list of positive integers, got "
                    f"{buckets!r}")
  return out


def bucket_length(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= length (buckets sorted ascending); ValueError if none."""
  i = int(np.searchsorted(np.asarray(buckets), int(length), side="left"))
  if i >= len(buckets):
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")
  return int(buckets[i])


def check_annotator(annotator: Any) -> str | int:
  """"random" or an annotator version 0..2 (error names the config key)."""
  if isinstance(annotator, str) and annotator.strip().lower() == "random":
    return "random"
  try:
    a = int(annotator)
  except (TypeError, ValueError):
    a = -1
  if isinstance(annotator, bool) or not 0 <= a < NUM_ANNOTATORS or float(annotator) != a:
    raise UserError(f"{ANNOTATOR_KEY}: must be \"random\" or an annotator version 0..."
                    f"{NUM_ANNOTATORS - 1}, got {annotator!r}")
  return a


def choose_annotator(points: np.ndarray, video_id: str, seed: int,
                     annotator: str | int = "random") -> int | None:
  """The annotator version whose points a video uses; None if "random" finds no points."""
  annotator = check_annotator(annotator)
  if annotator != "random":
    return int(annotator)
  versions = sorted(set(np.asarray(points).reshape(-1, 3)[:, 0].tolist()))
  if not versions:
    return None
  ss = np.random.SeedSequence([int(seed) % 2 ** 63, zlib.crc32(video_id.encode("utf-8"))])
  return int(versions[int(np.random.Generator(np.random.PCG64(ss)).integers(len(versions)))])


def point_labels(points: np.ndarray, num_snippets: int,
                 version: int | None) -> tuple[np.ndarray, np.ndarray]:
  """(point_label int32 [T] with -1 = none, point_count float32 [2]) of one annotator version."""
  label = np.full((num_snippets,), -1, np.int32)
  count = np.zeros((NUM_CLASSES,), np.float32)
  if version is None:
    return label, count
  for v, frame, cls in np.asarray(points, np.int64).reshape(-1, 3).tolist():
    t = frame // SNIPPET_FRAMES
    if v != version or not 0 <= t < num_snippets or not 0 <= cls < NUM_CLASSES:
      continue
    label[t] = cls  # Later rows overwrite, as the original's temp_anno.
    count[cls] += 1
  return label, count


def transform_record(record: Any, index: int, *, seed: int,
                     annotator: str | int = "random") -> dict:
  """One tsl300 record -> the unpadded example (time axis T) of the batch contract."""
  rgb = np.asarray(record["rgb"], np.float32)
  mel = np.asarray(record["logmel"], np.float32)
  t = int(record["num_snippets"])
  vid = _to_str(record["video_id"])
  if rgb.shape[0] != t or mel.shape[0] != t:
    raise ValueError(f"video {vid}: rgb {rgb.shape} / logmel {mel.shape} do not have "
                     f"num_snippets = {t} rows")
  points = np.asarray(record["points"], np.int64).reshape(-1, 3)
  label, count = point_labels(points, t, choose_annotator(points, vid, seed, annotator))
  return dict(rgb=rgb, audio=(mel + AUDIO_OFFSET) / AUDIO_SCALE, length=np.int32(t),
              point_label=label, point_count=count, index=np.int32(index), video_id=vid)


def pad_batch(examples: Sequence[dict], length: int) -> dict:
  """Stacks unpadded examples, zero-padding the time axis to `length` (adds "mask")."""
  n = len(examples)
  first = examples[0]
  out = {}
  for key in _TIME_KEYS:
    shape = (n, length) + first[key].shape[1:]
    fill = -1 if key == "point_label" else 0
    arr = np.full(shape, fill, first[key].dtype)
    for i, ex in enumerate(examples):
      arr[i, :ex[key].shape[0]] = ex[key]
    out[key] = arr
  lengths = np.asarray([int(ex["length"]) for ex in examples], np.int32)
  if int(lengths.max()) > length:
    raise ValueError(f"a video of {lengths.max()} snippets cannot be padded to {length}")
  out["mask"] = (np.arange(length)[None, :] < lengths[:, None]).astype(np.float32)
  out["length"] = lengths
  out["point_count"] = np.stack([ex["point_count"] for ex in examples]).astype(np.float32)
  out["index"] = np.asarray([int(ex["index"]) for ex in examples], np.int32)
  for key in first:
    if key not in out and key != "video_id":
      out[key] = np.stack([np.asarray(ex[key]) for ex in examples])
  if "video_id" in first:
    out["video_id"] = np.asarray([ex["video_id"] for ex in examples])
  return out


def _pad_elements(elements: Sequence[dict]) -> dict:
  """grain batch_fn: examples carrying "_bucket", the bucket of their global batch."""
  lengths = {int(ex["_bucket"]) for ex in elements}
  if len(lengths) != 1:
    raise AssertionError(f"one batch, several buckets {sorted(lengths)}")
  return pad_batch([{k: v for k, v in ex.items() if k != "_bucket"} for ex in elements],
                   lengths.pop())


_LENGTHS: dict[int, tuple[Any, np.ndarray]] = {}


def snippet_lengths(source: Any) -> np.ndarray:
  """int64 [len(source)] num_snippets of every record (read once per source object)."""
  hit = _LENGTHS.get(id(source))
  if hit is not None and hit[0] is source:
    return hit[1]
  lengths = np.asarray([int(source[i]["num_snippets"]) for i in range(len(source))], np.int64)
  _LENGTHS[id(source)] = (source, lengths)
  return lengths


def _checked_lengths(source: Any, lengths: Sequence[int] | None,
                     buckets: tuple[int, ...]) -> np.ndarray:
  lengths = snippet_lengths(source) if lengths is None else np.asarray(lengths, np.int64)
  if len(lengths) != len(source):
    raise ValueError(f"lengths has {len(lengths)} entries for a source of {len(source)}")
  too_long = np.flatnonzero(lengths > buckets[-1])
  if too_long.size:
    i = int(too_long[0])
    vid = _to_str(source[i]["video_id"])
    raise UserError(f"video {vid} has {int(lengths[i])} snippets, more than the largest "
                    f"bucket {buckets[-1]} ({too_long.size} such video(s)); add a larger "
                    f"length to {BUCKETS_KEY}")
  return lengths


class _TrainElement(grain.transforms.MapWithIndex):
  """Position k of the shuffled stream -> example with "_bucket", that of global batch k // B."""

  def __init__(self, source, order, lengths, buckets, global_batch_size, seed, annotator):
    self._source, self._order, self._lengths = source, order, lengths
    self._buckets, self._gb = buckets, global_batch_size
    self._seed, self._annotator = seed, annotator

  def map_with_index(self, k: int, index: int) -> dict:
    s = k // self._gb
    longest = max(int(self._lengths[self._order[j]])
                  for j in range(s * self._gb, (s + 1) * self._gb))
    ex = transform_record(self._source[int(index)], int(index), seed=self._seed,
                          annotator=self._annotator)
    del ex["video_id"]
    ex["_bucket"] = bucket_length(longest, self._buckets)
    return ex


class _LengthGroupedOrder:
  """Position k of an infinite example stream -> source index, grouping similar lengths.

  Epoch e is a permutation of all n examples seeded by (seed, e), cut into windows of
  `window_batches` global batches; each window is sorted by length (stable) and cut into
  batches, whose order inside the window is shuffled again. An epoch holds floor(n / B) full
  batches (the n mod B left-over examples differ from epoch to epoch, as with the original's
  loader, which also drops them), the stream is a pure function of (seed, B, window_batches),
  and batches hold videos of similar length, so they pad less than a plain shuffle (where the
  longest of B random videos sets every batch's bucket)."""

  def __init__(self, lengths: np.ndarray, seed: int, global_batch_size: int,
               window_batches: int):
    self._lengths = np.asarray(lengths)
    self._n = len(self._lengths)
    self._seed, self._gb = int(seed), int(global_batch_size)
    self._window = int(window_batches) * self._gb
    self._per_epoch = (self._n // self._gb) * self._gb
    if self._per_epoch == 0:
      raise UserError(f"dataset.group_by_length needs at least one full batch: {self._n} "
                      f"training videos, global batch {self._gb}")
    self._cache: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return sys.maxsize

  def _epoch(self, e: int) -> np.ndarray:
    if e not in self._cache:
      if len(self._cache) > 4:
        self._cache.pop(min(self._cache))
      rng = np.random.default_rng([self._seed, e, 0x6c656e])
      perm = rng.permutation(self._n)[:self._per_epoch]  # random left-overs, not the longest
      out = []
      for w in range(0, self._per_epoch, self._window):
        chunk = perm[w:w + self._window]
        chunk = chunk[np.argsort(self._lengths[chunk], kind="stable")]
        full = [chunk[b:b + self._gb] for b in range(0, len(chunk), self._gb)]
        out.extend(full[i] for i in rng.permutation(len(full)))
      self._cache[e] = np.concatenate(out)
    return self._cache[e]

  def __getitem__(self, k: int) -> int:
    k = int(k)
    return int(self._epoch(k // self._per_epoch)[k % self._per_epoch])


def train_dataset(source: Any, *, seed: int, global_batch_size: int, process_index: int,
                  process_count: int, buckets: Sequence[int] = DEFAULT_BUCKETS,
                  annotator: str | int = "random", annotator_seed: int | None = None,
                  lengths: Sequence[int] | None = None, group_by_length: int = 0,
                  worker_count: int = 0, read_threads: int | None = None,
                  prefetch_batches: int = pipeline.DEFAULT_PREFETCH_BATCHES
                  ) -> grain.IterDataset:
  """Infinite, shuffled per-process bucketed batches; the global batch depends only on (seed, B)
  (and `group_by_length`).

  `iter()` of the result is a grain iterator with get_state()/set_state(). `annotator_seed`
  (default `seed`) seeds the per-video annotator choice; `lengths` (num_snippets per source
  index) saves one read of every record when known. `group_by_length` > 0 draws batches of
  similar lengths from windows of that many batches (less padding; _LengthGroupedOrder); 0 is
  a plain seeded shuffle.
  """
  if len(source) == 0:
    raise ValueError("train source is empty")
  buckets = check_buckets(buckets)
  annotator = check_annotator(annotator)
  pipeline.per_process_batch(global_batch_size, process_count)  # before reading every length
  lengths = _checked_lengths(source, lengths, buckets)
  if group_by_length < 0:
    raise UserError(f"dataset.group_by_length must be >= 0, got {group_by_length}")
  if group_by_length:
    order = grain.MapDataset.source(_LengthGroupedOrder(
        np.asarray(lengths), seed, global_batch_size, group_by_length))
  else:
    order = grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat(None)
  element = _TrainElement(source, order, lengths, buckets, global_batch_size,
                          seed if annotator_seed is None else annotator_seed, annotator)
  return pipeline.per_process_iter(
      order.map_with_index(element), global_batch_size=global_batch_size,
      process_index=process_index, process_count=process_count, worker_count=worker_count,
      read_threads=read_threads, prefetch_batches=prefetch_batches, batch_fn=_pad_elements)


class _EvalElement:
  """pipeline.EvalRow -> its example with "_bucket", that of the row's global batch."""

  def __init__(self, order, lengths, buckets, global_batch_size, seed, annotator):
    self._order, self._lengths = order, lengths
    self._buckets, self._gb = buckets, global_batch_size
    self._seed, self._annotator = seed, annotator
    self._n = len(order)

  def _index(self, k: int) -> int:
    return int(self._order[k]) if k < self._n else 0  # Padding rows read example 0.

  def __call__(self, row: pipeline.EvalRow, rng: np.random.Generator) -> dict:
    del rng
    s = row.position // self._gb
    longest = max(int(self._lengths[self._index(j)])
                  for j in range(s * self._gb, (s + 1) * self._gb))
    ex = transform_record(row.record, row.index, seed=self._seed, annotator=self._annotator)
    ex["_bucket"] = bucket_length(longest, self._buckets)
    return ex


def eval_batches(source: Any, *, global_batch_size: int, process_index: int,
                 process_count: int, buckets: Sequence[int] = DEFAULT_BUCKETS,
                 annotator: str | int = "random", seed: int = 0,
                 lengths: Sequence[int] | None = None, sort_by_length: bool = False,
                 read_threads: int | None = None,
                 prefetch_batches: int = pipeline.DEFAULT_PREFETCH_BATCHES) -> Iterator[dict]:
  """Per-process bucketed eval batches covering every example exactly once
  (pipeline.padded_eval_batches: padding copies example 0 with "_mask" False).

  Source order, or ascending length with `sort_by_length` (pads less). `annotator` and `seed`
  only matter for splits with points.
  """
  n = len(source)
  if n == 0:
    raise ValueError("eval source is empty")
  buckets = check_buckets(buckets)
  annotator = check_annotator(annotator)
  pipeline.per_process_batch(global_batch_size, process_count)  # before reading every length
  lengths = _checked_lengths(source, lengths, buckets)
  order = (np.argsort(lengths, kind="stable") if sort_by_length else np.arange(n)).astype(np.int64)
  element = _EvalElement(order, lengths, buckets, global_batch_size, seed, annotator)
  return pipeline.padded_eval_batches(
      source, element, global_batch_size=global_batch_size, process_index=process_index,
      process_count=process_count, order=order, batch_fn=_pad_elements,
      read_threads=read_threads, prefetch_batches=prefetch_batches)


_INFO: dict[int, tuple[Any, dict[int, dict]]] = {}


def video_info(source: Any, index: int) -> dict:
  """Host-side facts of example `index` for evaluation: video_id, fps, duration (s),
  segments float32 [S, 2] (s), segment_labels int32 [S], num_snippets (cached per source)."""
  hit = _INFO.get(id(source))
  if hit is None or hit[0] is not source:
    hit = _INFO[id(source)] = (source, {})
  cache = hit[1]
  index = int(index)
  if index not in cache:
    if not 0 <= index < len(source):
      raise IndexError(f"video index {index} outside the source (0..{len(source) - 1})")
    r = source[index]
    cache[index] = dict(
        video_id=_to_str(r["video_id"]), fps=float(r["fps"]), duration=float(r["duration"]),
        segments=np.asarray(r["segments"], np.float32).reshape(-1, 2),
        segment_labels=np.asarray(r["segment_labels"], np.int32).reshape(-1),
        num_snippets=int(r["num_snippets"]))
  return cache[index]


# ------------------------------------------------------------------------------ family


_SYNTHETIC_SIZES = ("num_train", "num_test", "min_snippets", "max_snippets")
_SYNTHETIC_DEFAULTS = dict(num_train=160, num_test=40, min_snippets=48, max_snippets=256)
_SYNTHETIC_KNOBS = ("min_segments", "max_segments", "min_segment_snippets",
                    "max_segment_snippets", "rgb_snr", "audio_db", "distractor_rate")


def _synthetic_kwargs(ds) -> dict:
  syn = ds.get("synthetic", None) or {}
  known = {"seed", *_SYNTHETIC_SIZES, *_SYNTHETIC_KNOBS}
  unknown = sorted(set(syn) - known)
  if unknown:
    raise UserError(f"dataset.synthetic: unknown key(s) {unknown}; known: {sorted(known)}")
  kw = dict(seed=int(syn.get("seed", 0)))
  for k in _SYNTHETIC_SIZES:
    kw[k] = int(syn.get(k, _SYNTHETIC_DEFAULTS[k]))
  for k in _SYNTHETIC_KNOBS:
    if k in syn:
      kw[k] = float(syn[k]) if k in ("rgb_snr", "audio_db", "distractor_rate") else int(syn[k])
  return kw


def _synthetic_folder(ds) -> tuple[str, dict]:
  kw = _synthetic_kwargs(ds)
  tag = (f"seed{kw['seed']}_n{kw['num_train']}x{kw['num_test']}"
         f"_t{kw['min_snippets']}-{kw['max_snippets']}")
  return tag, {k: kw[k] for k in _SYNTHETIC_KNOBS if k in kw}


def _generator_kwargs(ds) -> dict:
  return dict(verbose=False, **_synthetic_kwargs(ds))


def _builder_options(ds) -> dict:
  ext = ds.get("extraction", None)
  return dict(ext.to_dict() if hasattr(ext, "to_dict") else (ext or {}))


FAMILY = families.DatasetFamily(
    synthetic=SYNTHETIC, real=REAL, noun="TSL dataset",
    builder="data_pipelines.builders.tsl300:build_tsl300",
    builder_errors=("RawLayoutError", "TSLConfigError"), builder_options=_builder_options,
    generator="data_pipelines.synthetic.untrimmed:generate_tsl_style",
    generator_kwargs=_generator_kwargs, synthetic_folder=_synthetic_folder,
    raw_hint="put the TSL-300 release (dataset/VideoSenti) there",
    title="TSL-300", splits=("train", "test"))


def tsl_source(ds, split: str):
  """The random-access source of one split (the method's evaluation reads video facts from it)."""
  return families.open_source(FAMILY, ds, split)
