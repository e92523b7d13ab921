"""Online input pipeline for skeleton gaits (emotion_gait records -> batches) and the gait
dataset family.

Same rules as jaxaffect/data/pipeline.py (topology independence): global seeded shuffle +
repeat + per-example random transform on the global stream, then batch to the per-process
size and take every P-th batch (pipeline.per_process_iter); eval covers each example once,
the last global batch padded ("_mask" False; pipeline.padded_eval_batches).

Batch: "skeleton" float32 [B, T, 16, 3] (zeros on padded frames), "label" int32 [B],
"mask" float32 [B, T] (1 on real frames); eval batches add "_mask" bool [B] and "key" (host).
Centring (`dataset.center`, train and eval alike, before augmentation; padded frames stay zero):
  "none"      the raw coordinates (default; the released BPM-GCN feeder does not normalise);
  "root"      per frame, the root joint (0) is subtracted from every joint: body-relative
              posture, as 2s-AGCN's NTU pre-normalisation does with its centre joint. The
              movement stream (differences of these coordinates) then sees motion relative to
              the root; the global walking velocity is removed;
  "sequence"  the mean root position over the valid frames is subtracted from every frame: the
              clip is moved to the origin, its trajectory and velocities are kept.
The 31 affective features are translation invariant, so the regression target is the same in
every mode.
Augmentation is off by default (faithful to BPM-GCN's headline config, which trains on the raw
coordinates); `rotate_deg` > 0 draws a rotation about the vertical axis in +-rotate_deg,
`scale_jitter` > 0 a uniform scale in [1 - s, 1 + s]. Both act about the coordinate origin
(the root after "root" centring), so padded frames stay zero.

Datasets (`dataset.name`, FAMILY; prepared and opened by jaxaffect/data/families.py):
"synthetic_gait" (generated on first use into data_dir/raw, see
data_pipelines/synthetic/gait.py) and "emotion_gait" (the downloaded release in
`dataset.manual_dir`, else data_dir/raw/emotion_gait).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterator, Mapping

import grain
import numpy as np

from jaxaffect.data import families
from jaxaffect.data import pipeline
from jaxaffect.errors import UserError

log = logging.getLogger(__name__)

SYNTHETIC = ("synthetic_gait",)
REAL = ("emotion_gait",)


@dataclasses.dataclass(frozen=True)
class GaitAugmentConfig:
  """Per-example training augmentation; all off by default."""
  rotate_deg: float = 0.0       # Max |yaw| about the vertical axis, degrees.
  scale_jitter: float = 0.0     # Scale drawn uniformly in [1 - s, 1 + s].
  vertical_axis: int = 1        # Emotion-Gait is y-up.

  @classmethod
  def create(cls, cfg: "GaitAugmentConfig | Mapping[str, Any] | None") -> "GaitAugmentConfig":
    if cfg is None or isinstance(cfg, cls):
      return cfg or cls()
    cfg = dict(cfg)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
      raise UserError(f"gait augmentation: unknown key(s) {unknown}; known: {sorted(known)}")
    out = cls(**cfg)
    if out.rotate_deg < 0 or not 0 <= out.scale_jitter < 1 or out.vertical_axis not in (0, 1, 2):
      raise UserError(f"gait augmentation out of range: {out}")
    return out


CENTER_MODES = ("none", "root", "sequence")


def check_center(center: str) -> str:
  if center not in CENTER_MODES:
    raise UserError(f"dataset.center: unknown mode {center!r}; known: {', '.join(CENTER_MODES)}")
  return center


def center_skeleton(skel: np.ndarray, mask: np.ndarray, center: str) -> np.ndarray:
  """skel [T, J, 3], mask [T] (1 on valid frames) -> centred skel (see the module docstring)."""
  check_center(center)
  if center == "none":
    return skel
  m = mask[:, None, None].astype(skel.dtype)
  if center == "root":
    return (skel - skel[:, :1, :]) * m
  n = float(mask.sum())
  if n == 0:
    return skel
  root = (skel[:, 0, :] * mask[:, None]).sum(0) / n
  return (skel - root[None, None, :].astype(skel.dtype)) * m


def _rotation(axis: int, angle: float) -> np.ndarray:
  """3x3 rotation by `angle` about coordinate `axis` (applied as x @ R.T)."""
  c, s = np.cos(angle), np.sin(angle)
  i, j = [a for a in range(3) if a != axis]
  r = np.eye(3)
  r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
  return r


def _to_str(v: Any) -> str:
  return v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)


class GaitTransform(grain.transforms.RandomMap):
  """Record -> {"skeleton", "label", "mask"} (+ "key" for eval), with optional augmentation."""

  def __init__(self, augment: GaitAugmentConfig | Mapping[str, Any] | None = None, *,
               train: bool, keep_key: bool = False, center: str = "none"):
    self._aug = GaitAugmentConfig.create(augment)
    self._train = train
    self._keep_key = keep_key
    self._center = check_center(center)

  def random_map(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict:
    skel = np.asarray(record["skeleton"], np.float32)
    t = skel.shape[0]
    mask = (np.arange(t) < int(record["num_frames"])).astype(np.float32)
    skel = center_skeleton(skel, mask, self._center)
    if self._train and (self._aug.rotate_deg > 0 or self._aug.scale_jitter > 0):
      angle = np.deg2rad(rng.uniform(-self._aug.rotate_deg, self._aug.rotate_deg))
      scale = rng.uniform(1 - self._aug.scale_jitter, 1 + self._aug.scale_jitter)
      m = (_rotation(self._aug.vertical_axis, angle) * scale).T.astype(np.float32)
      skel = (skel @ m) * mask[:, None, None]  # Padded frames stay exactly zero.
    out = dict(skeleton=skel, label=np.int32(record["label"]), mask=mask)
    if self._keep_key:
      out["key"] = _to_str(record["key"])
    return out


def train_dataset(source: Any, *, seed: int, global_batch_size: int, process_index: int,
                  process_count: int,
                  augment: GaitAugmentConfig | Mapping[str, Any] | None = None,
                  center: str = "none", worker_count: int = 0, read_threads: int | None = None,
                  prefetch_batches: int = pipeline.DEFAULT_PREFETCH_BATCHES
                  ) -> grain.IterDataset:
  """Infinite, shuffled per-process batches; the global batch depends only on (seed, B).

  `iter()` of the result is a grain iterator with get_state()/set_state().
  """
  if len(source) == 0:
    raise ValueError("train source is empty")
  stream = (grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
            .random_map(GaitTransform(augment, train=True, center=center)))
  return pipeline.per_process_iter(
      stream, global_batch_size=global_batch_size, process_index=process_index,
      process_count=process_count, worker_count=worker_count, read_threads=read_threads,
      prefetch_batches=prefetch_batches)


def eval_batches(source: Any, *, global_batch_size: int, process_index: int,
                 process_count: int, center: str = "none", read_threads: int | None = None,
                 prefetch_batches: int = pipeline.DEFAULT_PREFETCH_BATCHES) -> Iterator[dict]:
  """Per-process eval batches covering every example exactly once, in source order
  (pipeline.padded_eval_batches: padding copies example 0 with "_mask" False)."""
  example = pipeline.record_example(GaitTransform(None, train=False, keep_key=True,
                                                  center=center))
  return pipeline.padded_eval_batches(
      source, example, global_batch_size=global_batch_size, process_index=process_index,
      process_count=process_count, read_threads=read_threads, prefetch_batches=prefetch_batches)


# ------------------------------------------------------------------------------ family


_SYNTHETIC_KNOBS = ("elmd_fraction", "jitter_scale", "yaw_range_deg", "noise")


def _synthetic_extra(syn) -> dict:
  return {k: float(syn[k]) for k in _SYNTHETIC_KNOBS if k in syn}


def _synthetic_folder(ds) -> tuple[str, dict]:
  syn = ds.synthetic
  return f"seed{syn.seed}_n{syn.num_per_class}", _synthetic_extra(syn)


def _generator_kwargs(ds) -> dict:
  syn = ds.synthetic
  return dict(seed=int(syn.seed), num_per_class=int(syn.num_per_class), verbose=False,
              **_synthetic_extra(syn))


def _builder_options(ds) -> dict:
  kw = dict(ds.extraction.to_dict()) if ds.get("extraction", None) is not None else {}
  if "parts" in kw:
    kw["parts"] = tuple(kw["parts"])
  return kw


FAMILY = families.DatasetFamily(
    synthetic=SYNTHETIC, real=REAL, noun="gait dataset",
    builder="data_pipelines.builders.emotion_gait:build_emotion_gait",
    builder_errors=("RawLayoutError", "GaitConfigError"), builder_options=_builder_options,
    generator="data_pipelines.synthetic.gait:generate_emotion_gait_style",
    generator_kwargs=_generator_kwargs, synthetic_folder=_synthetic_folder,
    raw_hint="download Emotion-Gait there")
