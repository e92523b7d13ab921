"""TFDS builder `emotion_gait`: Emotion-Gait h5 files -> ArrayRecord examples (no TensorFlow).

The Emotion-Gait release (go.umd.edu/emotion-gait) is a folder of h5 files, one dataset per
gait keyed by its name, each a float array T x 48 (16 joints x xyz, joint-major, joint order of
bpmgcn/gait_features.py), and label files holding one scalar per same key:

  features.h5 / labels.h5                 "captured": 342 gaits, T 27..75
  features_ELMD.h5 / labels_ELMD.h5       "elmd": 1,835 Edinburgh gaits, T 240
  features_CVAEGCN_1_2000.h5, ..._2001_4000.h5 (or featuresCVAEGCN_*)
                                          "cvae": 4,000 generated gaits, label in the key
                                          ("00003_Happy"); off by default (BPM-GCN's headline
                                          numbers use real gaits only)

Preprocessing (as BPM-GCN's): ELMD keeps every 5th frame (240 -> 48); then every gait
keeps its first `num_frames` (48) frames and is zero-padded to 48. Trailing all-zero frames in
the raw arrays are not counted as real frames. Coordinates are stored as is (no centring; the
input pipeline centres online when `dataset.center` asks for it, jaxaffect/methods/bpmgcn/data.py).

Split: one seeded random permutation of all gaits listed in the files (sorted (part, key)),
cut 9:1 (`test_fraction`); `fold` picks another contiguous test block of the same permutation,
so test_fraction=0.2 with fold 0..4 gives the 5-fold protocol, and `val_fraction` > 0 moves
that share of train into a "validation" split (8:1:1). A gait that turns out unreadable keeps its
split slot and is skipped, so the split of every other gait never depends on file damage. A raw
folder without any feature file of the configured parts is an error naming the folder.

Label index ambiguity: the label files hold indices 0..3 whose names differ between
STEP (Angry, Neutral, Happy, Sad) and BPM-GCN (Happy, Sad, Angry, Neutral; STEP issue #22's
check against the annotator votes agrees). The integer index is the ground truth; the names are
the config's `label_mapping` ("bpmgcn" default, "step") and only matter for reports and for the
"cvae" part, whose labels are names in the keys.

Usage:
  builder = build_emotion_gait(raw_root, data_dir, dict(split_seed=0))
  source = builder.as_data_source("train")  # records: skeleton, num_frames, label, key, source
  manifest = load_manifest(builder)
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
import zlib
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.builders import common as builders_common

MANIFEST_FILE = builders_common.MANIFEST_FILE
NUM_JOINTS = 16
NUM_COORDS = 3
LABEL_MAPPINGS = {
    "bpmgcn": ("Happy", "Sad", "Angry", "Neutral"),
    "step": ("Angry", "Neutral", "Happy", "Sad"),
}


@dataclasses.dataclass(frozen=True)
class Part:
  """One group of h5 files in the release."""
  features: tuple[str, ...]  # Candidate file names (the first one found is used, per group).
  labels: str | None         # None: label = class name inside the key.
  stride: str                # Config field holding this part's frame stride.


PARTS = {
    "captured": Part(("features.h5",), "labels.h5", "captured_stride"),
    "elmd": Part(("features_ELMD.h5",), "labels_ELMD.h5", "elmd_stride"),
    "cvae": Part(("features_CVAEGCN_1_2000.h5|featuresCVAEGCN_1_2000.h5",
                  "features_CVAEGCN_2001_4000.h5|featuresCVAEGCN_2001_4000.h5"), None,
                 "cvae_stride"),
}
SPLITS = ("train", "test")


class GaitConfigError(ValueError):
  """A builder setting is unknown or out of range; the message names it."""


class RawLayoutError(ValueError):
  """The raw folder holds no usable Emotion-Gait files."""


@dataclasses.dataclass(eq=False)
class EmotionGaitConfig(tfds.core.BuilderConfig):
  """Preprocessing and split settings; `name` defaults to a string derived from all of them."""
  name: str = ""
  parts: tuple[str, ...] = ("captured", "elmd")
  label_mapping: str = "bpmgcn"
  num_frames: int = 48
  captured_stride: int = 1
  elmd_stride: int = 5
  cvae_stride: int = 1
  split_seed: int = 0
  test_fraction: float = 0.1
  fold: int = 0
  val_fraction: float = 0.0

  def __post_init__(self):
    self.parts = tuple(self.parts)
    bad = [p for p in self.parts if p not in PARTS]
    if bad or not self.parts:
      raise GaitConfigError(f"parts must be a non-empty subset of {tuple(PARTS)}, got {self.parts}")
    if self.label_mapping not in LABEL_MAPPINGS:
      raise GaitConfigError(
          f"label_mapping must be one of {tuple(LABEL_MAPPINGS)}, got {self.label_mapping!r}")
    for f in ("num_frames", "captured_stride", "elmd_stride", "cvae_stride"):
      if int(getattr(self, f)) < 1:
        raise GaitConfigError(f"{f} must be >= 1, got {getattr(self, f)}")
    if not 0.0 < self.test_fraction < 1.0:
      raise GaitConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
    if not 0 <= int(self.fold) < int(np.ceil(1.0 / self.test_fraction - 1e-9)):
      raise GaitConfigError(f"fold must be in 0..ceil(1/test_fraction)-1, got {self.fold}")
    if not 0.0 <= self.val_fraction < 1.0 - self.test_fraction:
      raise GaitConfigError(f"val_fraction must be in [0, 1 - test_fraction), got "
                            f"{self.val_fraction}")
    if not self.name:
      self.name = self.derived_name()
    if not self.description:
      self.description = "Emotion-Gait skeletons: " + self.name

  @property
  def class_names(self) -> tuple[str, ...]:
    return LABEL_MAPPINGS[self.label_mapping]

  @property
  def splits(self) -> tuple[str, ...]:
    return SPLITS + (("validation",) if self.val_fraction > 0 else ())

  def derived_name(self) -> str:
    def num(v):
      return f"{v:g}".replace(".", "p")
    parts = ["-".join(self.parts), self.label_mapping, f"t{self.num_frames}",
             f"stride{self.captured_stride}-{self.elmd_stride}-{self.cvae_stride}",
             f"seed{self.split_seed}", f"test{num(self.test_fraction)}", f"fold{self.fold}"]
    if self.val_fraction > 0:
      parts.append(f"val{num(self.val_fraction)}")
    return "_".join(parts)

  def contract(self) -> dict[str, Any]:
    """What the online pipeline may rely on (also written to the manifest)."""
    return dict(
        parts=list(self.parts), label_mapping=self.label_mapping,
        class_names=list(self.class_names), num_frames=self.num_frames,
        strides={p: getattr(self, PARTS[p].stride) for p in self.parts},
        split_seed=self.split_seed, test_fraction=self.test_fraction, fold=self.fold,
        val_fraction=self.val_fraction, num_joints=NUM_JOINTS,
        features={
            "skeleton": f"float32 [{self.num_frames}, 16, 3] raw coordinates, frames "
                        "[num_frames:] are zeros",
            "num_frames": "int32, real frames after subsampling/cutting (before padding)",
            "label": "int64, index from the label file (names: class_names)",
            "key": "str '<part>/<h5 key>'",
            "source": "str part name (captured, elmd, cvae)",
        },
    )


# ------------------------------------------------------------------------------ raw reading


@dataclasses.dataclass
class Item:
  key: str            # "<part>/<h5 key>"
  part: str
  path: str           # features file
  name: str           # h5 key
  label: int | None
  reason: str | None  # Set when the item is already known to be unusable.


def _find(root: str, alternatives: str) -> str | None:
  for name in alternatives.split("|"):
    path = os.path.join(root, name)
    if os.path.isfile(path):
      return path
  return None


def _read_label(value: Any, num_classes: int) -> tuple[int | None, str | None]:
  try:
    arr = np.asarray(value)
    if arr.size != 1:
      return None, f"label has shape {arr.shape}, expected a scalar"
    v = float(arr.reshape(()))
  except (TypeError, ValueError) as e:
    return None, f"unreadable label ({e})"
  if not np.isfinite(v) or v != int(v) or not 0 <= int(v) < num_classes:
    return None, f"label {v!r} is not an integer in 0..{num_classes - 1}"
  return int(v), None


def _label_from_name(name: str, class_names: tuple[str, ...]) -> tuple[int | None, str | None]:
  lower = {c.lower(): i for i, c in enumerate(class_names)}
  found = {lower[w] for w in re.split(r"[^A-Za-z]+", name.lower()) if w in lower}
  if len(found) != 1:
    return None, f"key names {len(found)} of the classes {class_names} (need exactly one)"
  return found.pop(), None


def _expected(parts: tuple[str, ...]) -> str:
  files = []
  for p in parts:
    names = [a.split("|")[0] for a in PARTS[p].features] + [PARTS[p].labels or ""]
    files.append(" + ".join(n for n in names if n) + f" ({p})")
  return "; ".join(files)


def check_raw_folder(root: str, config: EmotionGaitConfig) -> None:
  """RawLayoutError naming `root` when it holds no feature file of the configured parts."""
  root = os.fspath(root)
  if not os.listdir(root):
    raise RawLayoutError(f"{root}: the raw folder is empty; expected the Emotion-Gait h5 files "
                         f"{_expected(config.parts)}")
  if not any(_find(root, a) for p in config.parts for a in PARTS[p].features):
    raise RawLayoutError(f"{root}: holds no Emotion-Gait feature file of the parts "
                         f"{', '.join(config.parts)}; expected {_expected(config.parts)}")


def list_items(root: str, config: EmotionGaitConfig) -> tuple[list[Item], list[str]]:
  """Every gait the configured parts list, with labels, plus notes on missing files."""
  import h5py  # pylint: disable=g-import-not-at-top
  items, notes = [], []
  n_cls = len(config.class_names)
  for part_name in config.parts:
    part = PARTS[part_name]
    labels: dict[str, tuple[int | None, str | None]] | None = None
    if part.labels is not None:
      lpath = os.path.join(root, part.labels)
      if not os.path.isfile(lpath):
        notes.append(f"part {part_name}: {part.labels} not found; part skipped")
        continue
      try:
        with h5py.File(lpath, "r") as fl:
          labels = {}
          for k in fl.keys():
            try:
              labels[k] = _read_label(fl[k][()], n_cls)
            except Exception as e:  # A damaged dataset inside the file: that key only.
              labels[k] = (None, f"unreadable label ({type(e).__name__}: {e})")
      except Exception as e:
        notes.append(f"part {part_name}: {lpath} cannot be read ({type(e).__name__}: {e}); "
                     "part skipped")
        continue
    names_seen: set[str] = set()
    for alternatives in part.features:
      fpath = _find(root, alternatives)
      if fpath is None:
        notes.append(f"part {part_name}: {alternatives.replace('|', ' or ')} not found")
        continue
      try:
        with h5py.File(fpath, "r") as ff:
          names = sorted(ff.keys())
      except Exception as e:
        notes.append(f"part {part_name}: {fpath} cannot be read ({type(e).__name__}: {e}); "
                     "file skipped")
        continue
      for name in names:
        key = f"{part_name}/{name}"
        if name in names_seen:
          items.append(Item(key + f"@{os.path.basename(fpath)}", part_name, fpath, name, None,
                            "key appears in several feature files of the part"))
          continue
        names_seen.add(name)
        if labels is None:
          label, reason = _label_from_name(name, config.class_names)
        else:
          label, reason = labels.get(name, (None, f"no label for key {name!r} in {part.labels}"))
        items.append(Item(key, part_name, fpath, name, label, reason))
    if labels is not None:
      for name in sorted(set(labels) - names_seen):
        if any(_find(root, a) for a in part.features):
          items.append(Item(f"{part_name}/{name}", part_name, "", name, None,
                            f"label without features in {part.labels}"))
  items.sort(key=lambda it: it.key)
  return items, notes


def assign_splits(keys: list[str], config: EmotionGaitConfig) -> dict[str, str]:
  """key -> split, from a seeded permutation of the sorted keys (see the module docstring)."""
  keys = sorted(keys)
  n = len(keys)
  rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(config.split_seed),
                                                                    zlib.crc32(b"emotion_gait")])))
  order = rng.permutation(n)
  n_test = int(round(n * config.test_fraction))
  start = int(config.fold) * n_test
  test = set(order[start:start + n_test].tolist())
  rest = [i for i in order.tolist() if i not in test]
  n_val = int(round(n * config.val_fraction))
  val = set(rest[:n_val])
  out = {}
  for i, k in enumerate(keys):
    out[k] = "test" if i in test else "validation" if i in val else "train"
  return out


def preprocess(frames: np.ndarray, stride: int, num_frames: int) -> tuple[np.ndarray, int]:
  """T x 48 raw array -> (float32 [num_frames, 16, 3] zero-padded, real frame count).

  Raises ValueError naming the problem for arrays that are not usable gaits.
  """
  a = np.asarray(frames)
  if a.ndim != 2 or a.shape[1] != NUM_JOINTS * NUM_COORDS:
    raise ValueError(f"array has shape {a.shape}, expected T x {NUM_JOINTS * NUM_COORDS}")
  if a.dtype.kind not in "fiu":
    raise ValueError(f"array has dtype {a.dtype}, expected numbers")
  a = a.astype(np.float32)
  if not np.all(np.isfinite(a)):
    raise ValueError("array holds NaN or infinite values")
  nonzero = np.flatnonzero(np.any(a != 0, axis=1))
  if nonzero.size == 0:
    raise ValueError("array holds no non-zero frame")
  a = a[:nonzero[-1] + 1][::stride][:num_frames]  # Trailing zero frames are padding, not data.
  out = np.zeros((num_frames, NUM_JOINTS, NUM_COORDS), np.float32)
  out[:len(a)] = a.reshape(len(a), NUM_JOINTS, NUM_COORDS)
  return out, len(a)


def _read_examples(items: list[Item], config: EmotionGaitConfig) -> Iterator[tuple]:
  """(item, example or None, skip reason or None) per item, opening each h5 file once."""
  import h5py  # pylint: disable=g-import-not-at-top
  by_file: dict[str, list[Item]] = {}
  for it in items:
    by_file.setdefault(it.path, []).append(it)
  for path, group in by_file.items():
    try:
      f = h5py.File(path, "r")
    except Exception as e:
      for it in group:
        yield it, None, f"{path} cannot be read ({type(e).__name__}: {e})"
      continue
    with f:
      for it in group:
        try:
          skel, n = preprocess(f[it.name][()], int(getattr(config, PARTS[it.part].stride)),
                               config.num_frames)
        except Exception as e:
          yield it, None, f"{os.path.basename(path)}[{it.name!r}]: {type(e).__name__}: {e}"
          continue
        yield it, dict(skeleton=skel, num_frames=np.int32(n), label=it.label, key=it.key,
                       source=it.part), None


# ------------------------------------------------------------------------------ builder


logging.getLogger("absl").addFilter(builders_common.QuietCustomConfig())


class EmotionGait(tfds.core.GeneratorBasedBuilder):
  """Emotion-Gait 3D skeleton walks (16 joints), 4 emotion classes, from a manual directory."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "BPM-GCN preprocessing, seeded split, manifest with skipped items."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Point manual_dir at the unpacked Emotion-Gait folder (go.umd.edu/emotion-gait): features.h5,
  labels.h5, features_ELMD.h5, labels_ELMD.h5 (and features_CVAEGCN_*.h5 for part "cvae").
  The synthetic generator `python -m data_pipelines.synthetic --gait --out DIR` writes this layout.
  """
  BUILDER_CONFIG_CLASS = EmotionGaitConfig

  def __init__(self, **kwargs):
    self._report: dict[str, dict] = {}
    self._notes: list[str] = []
    super().__init__(**kwargs)

  @property
  def config(self) -> EmotionGaitConfig:
    cfg = self.builder_config
    if not isinstance(cfg, EmotionGaitConfig):
      raise ValueError(f"{self.data_dir}: emotion_gait needs an EmotionGaitConfig (got "
                       f"{type(cfg).__name__}); use build_emotion_gait()")
    return cfg

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    t = getattr(cfg, "num_frames", 48)
    names = list(getattr(cfg, "class_names", LABEL_MAPPINGS["bpmgcn"]))
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "skeleton": tfds.features.Tensor(shape=(t, NUM_JOINTS, NUM_COORDS),
                                             dtype=np.float32),
            "num_frames": tfds.features.Scalar(dtype=np.int32),
            "label": tfds.features.ClassLabel(names=names),
            "key": tfds.features.Text(),
            "source": tfds.features.Text(),
        }),
        supervised_keys=None,
        homepage="https://github.com/jaxaffect",
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    cfg = self.config
    items, self._notes = list_items(root, cfg)
    if not items:
      raise RawLayoutError(f"emotion_gait: {root} holds no gait of the parts {cfg.parts} "
                           f"({'; '.join(self._notes)})")
    split_of = assign_splits([it.key for it in items], cfg)
    self._report = {}
    return {s: self._generate_examples(s, [it for it in items if split_of[it.key] == s])
            for s in cfg.splits}

  def _generate_examples(self, split: str, items: list[Item]):
    cfg = self.config
    report = self._report.setdefault(split, dict(
        listed=len(items), skipped=[], counts={}, sources={}, seconds=0.0, frames=[]))
    start = time.time()
    usable = []
    for it in items:
      if it.reason is not None:
        report["skipped"].append(dict(key=it.key, reason=it.reason))
      else:
        usable.append(it)
    for it, example, reason in _read_examples(usable, cfg):
      if example is None:
        report["skipped"].append(dict(key=it.key, reason=reason))
        continue
      name = cfg.class_names[it.label]
      report["counts"][name] = report["counts"].get(name, 0) + 1
      src = report["sources"].setdefault(it.part, {})
      src[name] = src.get(name, 0) + 1
      report["frames"].append(int(example["num_frames"]))
      yield it.key, example
    report["seconds"] = round(time.time() - start, 2)
    for s in report["skipped"]:
      logging.getLogger(__name__).warning("emotion_gait %s: skipped %s: %s", split, s["key"],
                                          s["reason"])
    if not report["counts"]:
      raise RawLayoutError(f"emotion_gait: split {split!r} has no usable gait "
                           f"({len(report['skipped'])} skipped: {report['skipped'][:3]} ...)")

  def _download_and_prepare(self, dl_manager, download_config=None):
    super()._download_and_prepare(dl_manager, download_config)
    write_manifest(self, self._report, self._notes)  # Inside tfds' temporary folder: atomic.


def write_manifest(builder: EmotionGait, report: dict, notes: list[str]) -> str:
  cfg = builder.config
  splits = {}
  for split, r in report.items():
    counts = {c: r["counts"].get(c, 0) for c in cfg.class_names}
    frames = np.asarray(r["frames"] or [0])
    splits[split] = dict(
        num_examples=sum(counts.values()), num_listed=r["listed"], per_class=counts,
        per_label_index=list(counts.values()),
        per_source={p: {c: v.get(c, 0) for c in cfg.class_names}
                    for p, v in sorted(r["sources"].items())},
        num_skipped=len(r["skipped"]), num_padded=int(np.sum(frames < cfg.num_frames)),
        min_frames=int(frames.min()), extract_seconds=r["seconds"])
  manifest = dict(
      dataset="emotion_gait", config=cfg.name, version=str(builder.version), splits=splits,
      skipped=[dict(split=s, **x) for s, r in report.items() for x in r["skipped"]],
      notes=notes, contract=cfg.contract())
  return builders_common.write_manifest_file(builder, manifest)


def load_manifest(builder) -> dict:
  """The manifest written next to the built dataset (counts, skipped, notes, contract)."""
  return builders_common.load_manifest(builder, "build_emotion_gait")


def build_emotion_gait(manual_dir, data_dir, config_kwargs: dict | None = None, *,
                       build: bool = True, progress: bool = True) -> EmotionGait:
  """Builds (once) and returns the `emotion_gait` builder for these settings.

  `config_kwargs` are EmotionGaitConfig fields; an unknown key is an error naming it.
  Idempotent: an existing build with the same config name is reused; with build=False a
  missing build is an error instead of being built.
  """
  kwargs = dict(config_kwargs or {})
  config = builders_common.checked_config(EmotionGaitConfig, kwargs, "emotion_gait", GaitConfigError)
  builder = EmotionGait(data_dir=os.fspath(data_dir), config=config, file_format="array_record")
  return builders_common.open_or_build(
      builder, manual_dir, build=build, progress=progress,
      how="build_emotion_gait with build=True",
      check_raw=lambda root: check_raw_folder(root, config))
