"""TFDS builder `tsl300`: the TSL-300 feature release -> ArrayRecord examples (no TensorFlow).

TSL-300 (TSL-Net, ACM MM 2022) ships pre-extracted features
and annotations in one folder, `dataset/VideoSenti/` (manual_dir may name it, or a folder that
holds `VideoSenti/` or `dataset/VideoSenti/`):

  split_train.txt, split_test.txt       video ids, one a line (the splits, in this order)
  videosenti_gt.json                    {"database": {vid: {"subset", "annotations":
                                        [{"segment": ["s", "e"], "label": "n"|"p"}]}}},
                                        seconds as strings; full train and test annotations
  gt.json                               the same with train annotations emptied (the
                                        original's evaluation file); checked, and used for the
                                        segments only if videosenti_gt.json is absent
  fps_dict.json, len_duration_dict.json {vid: fps}, {vid: seconds}
  point_gaussian/train/point_anno_{0,1,2}.txt
                                        CSV class,class_index,start_frame,stop_frame,video_id,
                                        point (one file per annotator; point = native-fps frame)
  features/{train,test}/rgb/<vid>.npy       I3D-RGB [T_rgb, 1024], one row per 16 frames
  features/{train,test}/logmfcc/<vid>.npy   log-mel dB [N_mel, 60], 32 rows per snippet

Per example (one video), exactly the original loader's rule (senti_features.py):
T = min(T_rgb, floor(N_mel / 32)); rgb truncated to T rows; log-mel truncated to 32 T rows and
reshaped to [T, 32, 60], stored raw (dB; the pipeline applies (x + 50) / 80). Points of all three
annotator files are kept (rows annotator, frame, class_index; the online pipeline picks one
annotator per video and drops points beyond T), segments come from videosenti_gt.json.

Problems: a missing or malformed split/annotation/metadata file is an error naming the file; a
video whose features are missing, unreadable or malformed, or that lacks fps/duration/annotation
entries, is skipped and listed in the manifest with the reason; malformed point rows (and
points that are infinite, NaN, negative or after the video's end) are skipped and listed in the
manifest notes (file:line). An empty raw folder, or feature folders without .npy files, is an
error naming the folder.

Usage:
  builder = build_tsl300(raw_root, data_dir)          # options: TSL300Config fields
  source = builder.as_data_source("train")           # records: see TSL300Config.contract()
  manifest = load_manifest(builder)
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.builders import common as builders_common

MANIFEST_FILE = builders_common.MANIFEST_FILE
CLASS_NAMES = ("n", "p")           # class_index: n -> 0, p -> 1 (neutral is background)
SPLITS = ("train", "test")
SNIPPET_FRAMES = 16
NUM_ANNOTATORS = 3
POINT_COLUMNS = ("class", "class_index", "start_frame", "stop_frame", "video_id", "point")
_ROOT_MARKER = "split_train.txt"
_MAX_FRAME = 2**31 - 1  # records store points as int32


class TSLConfigError(ValueError):
  """A builder setting is unknown or out of range; the message names it."""


class RawLayoutError(ValueError):
  """A required release file is missing or malformed; the message names the file."""


@dataclasses.dataclass(eq=False)
class TSL300Config(tfds.core.BuilderConfig):
  """Feature sizes of the release; `name` defaults to a string derived from them."""
  name: str = ""
  rgb_dim: int = 1024
  num_mels: int = 60
  mel_per_snippet: int = 32

  def __post_init__(self):
    for f in ("rgb_dim", "num_mels", "mel_per_snippet"):
      if int(getattr(self, f)) < 1:
        raise TSLConfigError(f"{f} must be >= 1, got {getattr(self, f)}")
    if not self.name:
      self.name = f"rgb{self.rgb_dim}_mel{self.mel_per_snippet}x{self.num_mels}"
    if not self.description:
      self.description = "TSL-300 features: " + self.name

  def contract(self) -> dict[str, Any]:
    """What the online pipeline may rely on (also written to the manifest)."""
    m, k = self.mel_per_snippet, self.num_mels
    return dict(
        class_names=list(CLASS_NAMES), snippet_frames=SNIPPET_FRAMES, rgb_dim=self.rgb_dim,
        num_mels=k, mel_per_snippet=m, num_annotators=NUM_ANNOTATORS,
        features={
            "video_id": "str",
            "rgb": f"float32 [T, {self.rgb_dim}] I3D-RGB, one row per {SNIPPET_FRAMES} frames",
            "logmel": f"float32 [T, {m}, {k}] raw log-mel dB (normalise online: (x + 50) / 80)",
            "num_snippets": f"int32 T = min(T_rgb, floor(N_mel / {m}))",
            "fps": "float32 native frame rate (fps_dict.json)",
            "duration": "float32 seconds (len_duration_dict.json)",
            "points": "int32 [P, 3] rows (annotator 0..2, native-fps frame, class_index) from "
                      "point_anno_{0,1,2}.txt in file order; [0, 3] when none (test)",
            "segments": "float32 [S, 2] (start, end) seconds from videosenti_gt.json",
            "segment_labels": "int32 [S] class_index (0 = n, 1 = p)",
        },
    )


# ------------------------------------------------------------------------------ raw reading


def find_root(path: str) -> str:
  """The folder holding split_train.txt: `path`, path/VideoSenti or path/dataset/VideoSenti."""
  path = os.fspath(path)
  for cand in (path, os.path.join(path, "VideoSenti"), os.path.join(path, "dataset",
                                                                       "VideoSenti")):
    if os.path.isfile(os.path.join(cand, _ROOT_MARKER)):
      return cand
  raise RawLayoutError(f"{os.path.join(path, _ROOT_MARKER)}: missing (looked in {path}, "
                       f"{path}/VideoSenti and {path}/dataset/VideoSenti); manual_dir must be "
                       "the TSL-300 release folder")


_EXPECTED = ("the TSL-300 release (split_train.txt, split_test.txt, gt.json, fps_dict.json, "
             "len_duration_dict.json, point_gaussian/train/, "
             "features/{train,test}/{rgb,logmfcc}/<video_id>.npy)")


def check_features(root: str) -> None:
  """RawLayoutError naming the first feature folder that is missing or holds no .npy file:
  without features every video would be skipped, so say which folder is empty up front."""
  for split in SPLITS:
    for kind in ("rgb", "logmfcc"):
      folder = os.path.join(root, "features", split, kind)
      try:
        with os.scandir(folder) as it:
          if any(e.name.endswith(".npy") for e in it):
            continue
      except (FileNotFoundError, NotADirectoryError):
        raise RawLayoutError(f"{folder}: missing; expected the {kind} features "
                             f"<video_id>.npy of the videos in split_{split}.txt") from None
      raise RawLayoutError(f"{folder}: holds no .npy file; expected the {kind} features "
                           f"<video_id>.npy of the videos in split_{split}.txt")


def check_raw_folder(raw_root: str) -> None:
  """RawLayoutError naming the folder when it is empty, lacks the release's split files or
  holds no features."""
  raw_root = os.fspath(raw_root)
  if not os.listdir(raw_root):
    raise RawLayoutError(f"{raw_root}: the raw folder is empty; expected {_EXPECTED}")
  check_features(find_root(raw_root))


def _json(path: str) -> Any:
  if not os.path.isfile(path):
    raise RawLayoutError(f"{path}: missing (required by the TSL-300 layout)")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise RawLayoutError(f"{path}: not valid JSON ({type(e).__name__}: {e})") from e


def read_split(root: str, split: str) -> tuple[list[str], list[str]]:
  """Video ids of split_<split>.txt in file order (duplicates dropped, noted)."""
  path = os.path.join(root, f"split_{split}.txt")
  if not os.path.isfile(path):
    raise RawLayoutError(f"{path}: missing (required by the TSL-300 layout)")
  try:
    with open(path) as f:
      lines = [ln.strip() for ln in f]
  except (OSError, UnicodeDecodeError) as e:
    raise RawLayoutError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
  out, seen, notes = [], set(), []
  for i, vid in enumerate(lines):
    if not vid:
      continue
    if vid in seen:
      notes.append(f"{path}:{i + 1}: duplicate video id {vid!r} ignored")
      continue
    seen.add(vid)
    out.append(vid)
  if not out:
    raise RawLayoutError(f"{path}: lists no video")
  return out, notes


def read_annotations(path: str) -> dict[str, list[tuple[float, float, int]]]:
  """{vid: [(start s, end s, class_index)]} of an ActivityNet-style gt file (strict)."""
  data = _json(path)
  db = data.get("database") if isinstance(data, dict) else None
  if not isinstance(db, dict):
    raise RawLayoutError(f"{path}: expected {{\"database\": {{video_id: ...}}}}")
  out = {}
  for vid, entry in db.items():
    anns = entry.get("annotations") if isinstance(entry, dict) else None
    if not isinstance(anns, list):
      raise RawLayoutError(f"{path}: database[{vid!r}] has no \"annotations\" list")
    segs = []
    for j, a in enumerate(anns):
      try:
        s, e = (float(x) for x in a["segment"])
        label = a["label"]
        if label not in CLASS_NAMES:
          raise ValueError(f"label {label!r} is not one of {CLASS_NAMES}")
        if not (np.isfinite(s) and np.isfinite(e) and 0 <= s <= e):
          raise ValueError(f"segment {a['segment']!r} is not 0 <= start <= end")
      except (KeyError, TypeError, ValueError) as err:
        raise RawLayoutError(f"{path}: database[{vid!r}].annotations[{j}]: "
                             f"{type(err).__name__}: {err}") from err
      segs.append((s, e, CLASS_NAMES.index(label)))
    out[vid] = segs
  return out


def _number_dict(path: str) -> dict[str, float]:
  data = _json(path)
  if not isinstance(data, dict):
    raise RawLayoutError(f"{path}: expected {{video_id: number}}")
  out = {}
  for k, v in data.items():
    try:
      out[k] = float(v)
    except (TypeError, ValueError) as e:
      raise RawLayoutError(f"{path}: value of {k!r} is not a number ({v!r})") from e
  return out


def read_points(root: str, num_frames: dict[str, float] | None = None
                ) -> tuple[dict[str, list[tuple[int, int, int]]], dict, list[str]]:
  """({vid: [(annotator, frame, class_index)]}, rows per annotator, notes).

  A missing annotator file is a note; a file without the CSV header is an error naming it; a
  malformed row (bad number, class not n/p or disagreeing with class_index, a point that is
  not a finite frame >= 0) and a point after the video's end (`num_frames`: duration x fps per
  video, where known) are skipped and noted with file:line. Points past the features' T but
  inside the video are kept (the pipeline drops them; the manifest counts them).
  """
  points: dict[str, list[tuple[int, int, int]]] = {}
  counts, notes = {}, []
  for a in range(NUM_ANNOTATORS):
    path = os.path.join(root, "point_gaussian", "train", f"point_anno_{a}.txt")
    if not os.path.isfile(path):
      notes.append(f"{path}: missing; annotator {a} contributes no points")
      counts[a] = 0
      continue
    try:
      with open(path, newline="") as f:
        rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
      raise RawLayoutError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    header = [h.strip() for h in rows[0]] if rows else []
    missing = [c for c in ("class", "class_index", "video_id", "point") if c not in header]
    if missing:
      raise RawLayoutError(f"{path}: header {header} lacks column(s) {missing} (expected "
                           f"{','.join(POINT_COLUMNS)})")
    col = {c: header.index(c) for c in header}
    n = 0
    for line, row in enumerate(rows[1:], start=2):
      if not any(x.strip() for x in row):
        continue
      try:
        cls = row[col["class"]].strip()
        idx = int(row[col["class_index"]])
        point = float(row[col["point"]])
        vid = row[col["video_id"]].strip()
        if cls not in CLASS_NAMES or CLASS_NAMES.index(cls) != idx:
          raise ValueError(f"class {cls!r} with class_index {idx} (expected n,0 or p,1)")
        if not vid:
          raise ValueError("empty video_id")
        # inf/nan would crash int(), a huge frame the int32 record: checked before either.
        if not (math.isfinite(point) and 0 <= point <= _MAX_FRAME):
          raise ValueError(f"point {row[col['point']].strip()!r} is not a frame index in "
                           f"0..{_MAX_FRAME}")
        frame = int(point)
        end = (num_frames or {}).get(vid)
        if end is not None and frame > end:
          raise ValueError(f"point {frame} is after the end of video {vid!r} "
                           f"({end:g} frames: len_duration_dict.json x fps_dict.json)")
      except (IndexError, ValueError) as e:
        notes.append(f"{path}:{line}: point row skipped ({e})")
        continue
      points.setdefault(vid, []).append((a, frame, idx))
      n += 1
    counts[a] = n
  return points, counts, notes


@dataclasses.dataclass
class Meta:
  """Everything the release says about its videos, read once."""
  root: str
  splits: dict[str, list[str]]
  segments: dict[str, list[tuple[float, float, int]]]
  fps: dict[str, float]
  duration: dict[str, float]
  points: dict[str, list[tuple[int, int, int]]]
  points_per_annotator: dict[int, int]
  notes: list[str]


def read_meta(raw_root: str) -> Meta:
  root = find_root(raw_root)
  notes = [] if os.path.samefile(root, raw_root) else [f"release root: {root}"]
  splits = {}
  for s in SPLITS:
    splits[s], n = read_split(root, s)
    notes += n
  both = set(splits["train"]) & set(splits["test"])
  if both:
    notes.append(f"{len(both)} video(s) listed in both splits, e.g. {sorted(both)[:3]}")
  gt_path = os.path.join(root, "gt.json")
  full_path = os.path.join(root, "videosenti_gt.json")
  gt = read_annotations(gt_path)
  if os.path.isfile(full_path):
    segments = read_annotations(full_path)
    differ = [v for v in splits["test"] if v in gt and v in segments and gt[v] != segments[v]]
    if differ:
      notes.append(f"gt.json and videosenti_gt.json disagree on {len(differ)} test video(s), "
                   f"e.g. {differ[:3]}; videosenti_gt.json used")
  else:
    segments = gt
    notes.append(f"{full_path}: missing; segments from gt.json (train annotations are empty "
                 "there)")
  fps = _number_dict(os.path.join(root, "fps_dict.json"))
  duration = _number_dict(os.path.join(root, "len_duration_dict.json"))
  check_features(root)
  num_frames = {v: duration[v] * fps[v] for v in duration.keys() & fps.keys()
                if math.isfinite(duration[v] * fps[v]) and fps[v] > 0 and duration[v] >= 0}
  points, per_annotator, pnotes = read_points(root, num_frames)
  notes += pnotes
  test_with_points = [v for v in splits["test"] if points.get(v)]
  if test_with_points:
    notes.append(f"{len(test_with_points)} test video(s) have point annotations (kept), e.g. "
                 f"{test_with_points[:3]}")
  listed = set(splits["train"]) | set(splits["test"])
  unlisted = sorted(set(points) - listed)
  if unlisted:
    notes.append(f"points for {len(unlisted)} video(s) in no split ignored, e.g. {unlisted[:3]}")
  return Meta(root, splits, segments, fps, duration, points, per_annotator, notes)


def _load_npy(path: str, width: int, what: str) -> np.ndarray:
  if not os.path.isfile(path):
    raise ValueError(f"{path}: {what} features missing")
  try:
    a = np.load(path, allow_pickle=False)
  except Exception as e:  # Truncated/corrupt file: any numpy error.
    raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
  if a.ndim != 2 or a.shape[1] != width or a.dtype.kind not in "fiu":
    raise ValueError(f"{path}: {what} array is {a.dtype} {a.shape}, expected numbers "
                     f"[N, {width}]")
  a = a.astype(np.float32)
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{path}: {what} array holds NaN or infinite values")
  return a


def load_features(root: str, split: str, vid: str,
                  config: TSL300Config) -> tuple[np.ndarray, np.ndarray]:
  """(rgb [T, D], logmel [T, m, k]) by the original loader's rule; ValueError names the file."""
  feat = os.path.join(root, "features", split)
  rgb = _load_npy(os.path.join(feat, "rgb", vid + ".npy"), config.rgb_dim, "rgb")
  mel = _load_npy(os.path.join(feat, "logmfcc", vid + ".npy"), config.num_mels, "logmfcc")
  m = config.mel_per_snippet
  t = min(rgb.shape[0], mel.shape[0] // m)
  if t < 1:
    raise ValueError(f"{vid}: no complete snippet (rgb {rgb.shape[0]} rows, logmfcc "
                     f"{mel.shape[0]} rows, {m} per snippet)")
  return rgb[:t], mel[:t * m].reshape(t, m, config.num_mels)


def make_example(meta: Meta, split: str, vid: str, config: TSL300Config) -> dict:
  """The record of one video; ValueError (naming the file or entry) if it is unusable."""
  for name, table in (("fps_dict.json", meta.fps), ("len_duration_dict.json", meta.duration)):
    if vid not in table:
      raise ValueError(f"{os.path.join(meta.root, name)}: no entry for {vid!r}")
  if not meta.fps[vid] > 0:
    raise ValueError(f"{os.path.join(meta.root, 'fps_dict.json')}: fps of {vid!r} is "
                     f"{meta.fps[vid]}")
  if vid not in meta.segments:
    raise ValueError(f"{vid!r} has no entry in the annotation file (videosenti_gt.json)")
  rgb, mel = load_features(meta.root, split, vid, config)
  segs = meta.segments[vid]
  pts = meta.points.get(vid, [])
  return dict(
      video_id=vid, rgb=rgb, logmel=mel, num_snippets=np.int32(rgb.shape[0]),
      fps=np.float32(meta.fps[vid]), duration=np.float32(meta.duration[vid]),
      points=np.asarray(pts, np.int32).reshape(len(pts), 3),
      segments=np.asarray([(s, e) for s, e, _ in segs], np.float32).reshape(len(segs), 2),
      segment_labels=np.asarray([c for _, _, c in segs], np.int32),
  )


# ------------------------------------------------------------------------------ builder


logging.getLogger("absl").addFilter(builders_common.QuietCustomConfig())


class Tsl300(tfds.core.GeneratorBasedBuilder):
  """TSL-300 pre-extracted I3D-RGB + log-mel features with segments and point labels."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Original loader's T rule, all annotators' points, manifest."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  TSL-300 is released on request (github.com/nku-zhichengzhang/TSL300, access form). Point
  manual_dir at the unpacked dataset/VideoSenti folder (split_*.txt, gt.json,
  videosenti_gt.json, fps_dict.json, len_duration_dict.json, point_gaussian/, features/).
  `python -m data_pipelines.synthetic --tsl --out DIR` writes this layout.
  """
  BUILDER_CONFIG_CLASS = TSL300Config

  def __init__(self, **kwargs):
    self._report: dict[str, dict] = {}
    self._notes: list[str] = []
    self._meta: Meta | None = None
    super().__init__(**kwargs)

  @property
  def config(self) -> TSL300Config:
    cfg = self.builder_config
    if not isinstance(cfg, TSL300Config):
      raise ValueError(f"{self.data_dir}: tsl300 needs a TSL300Config (got "
                       f"{type(cfg).__name__}); use build_tsl300()")
    return cfg

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    d = getattr(cfg, "rgb_dim", 1024)
    m, k = getattr(cfg, "mel_per_snippet", 32), getattr(cfg, "num_mels", 60)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "video_id": tfds.features.Text(),
            "rgb": tfds.features.Tensor(shape=(None, d), dtype=np.float32),
            "logmel": tfds.features.Tensor(shape=(None, m, k), dtype=np.float32),
            "num_snippets": tfds.features.Scalar(dtype=np.int32),
            "fps": tfds.features.Scalar(dtype=np.float32),
            "duration": tfds.features.Scalar(dtype=np.float32),
            "points": tfds.features.Tensor(shape=(None, 3), dtype=np.int32),
            "segments": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
            "segment_labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        }),
        supervised_keys=None,
        homepage="https://github.com/nku-zhichengzhang/TSL300",
    )

  def _split_generators(self, dl_manager):
    self._meta = read_meta(os.fspath(dl_manager.manual_dir))
    self._notes = list(self._meta.notes)
    self._report = {}
    return {s: self._generate_examples(s, self._meta.splits[s]) for s in SPLITS}

  def _generate_examples(self, split: str, vids: list[str]) -> Iterator[tuple[str, dict]]:
    cfg, meta = self.config, self._meta
    report = self._report.setdefault(split, dict(
        listed=len(vids), skipped=[], snippets=[], segments={c: 0 for c in CLASS_NAMES},
        points={a: 0 for a in range(NUM_ANNOTATORS)}, points_beyond=0, no_points=0,
        seconds=0.0))
    start = time.time()
    for vid in vids:
      try:
        ex = make_example(meta, split, vid, cfg)
      except ValueError as e:
        report["skipped"].append(dict(video_id=vid, reason=str(e)))
        logging.getLogger(__name__).warning("tsl300 %s: skipped %s: %s", split, vid, e)
        continue
      t = int(ex["num_snippets"])
      report["snippets"].append(t)
      for c in ex["segment_labels"].tolist():
        report["segments"][CLASS_NAMES[c]] += 1
      for a, frame, _ in ex["points"].tolist():
        report["points"][a] += 1
        report["points_beyond"] += int(frame // SNIPPET_FRAMES >= t)
      report["no_points"] += int(len(ex["points"]) == 0)
      yield vid, ex
    report["seconds"] = round(time.time() - start, 2)
    if not report["snippets"]:
      raise RawLayoutError(f"tsl300: split {split!r} has no usable video "
                           f"({len(report['skipped'])} skipped: {report['skipped'][:3]} ...)")

  def _download_and_prepare(self, dl_manager, download_config=None):
    super()._download_and_prepare(dl_manager, download_config)
    write_manifest(self, self._report, self._notes)  # Inside tfds' temporary folder: atomic.


def write_manifest(builder: Tsl300, report: dict, notes: list[str]) -> str:
  cfg = builder.config
  splits = {}
  for split, r in report.items():
    t = np.asarray(r["snippets"] or [0])
    splits[split] = dict(
        num_examples=len(r["snippets"]), num_listed=r["listed"], num_skipped=len(r["skipped"]),
        min_snippets=int(t.min()), max_snippets=int(t.max()),
        mean_snippets=round(float(t.mean()), 2), total_snippets=int(t.sum()),
        segments_per_class=r["segments"],
        points_per_annotator={str(a): n for a, n in r["points"].items()},
        points_beyond_features=r["points_beyond"], videos_without_points=r["no_points"],
        extract_seconds=r["seconds"])
  manifest = dict(
      dataset="tsl300", config=cfg.name, version=str(builder.version), splits=splits,
      skipped=[dict(split=s, **x) for s, r in report.items() for x in r["skipped"]],
      notes=notes, contract=cfg.contract())
  return builders_common.write_manifest_file(builder, manifest)


def load_manifest(builder) -> dict:
  """The manifest written next to the built dataset (counts, skipped, notes, contract)."""
  return builders_common.load_manifest(builder, "build_tsl300")


def build_tsl300(raw_root, data_dir, options: dict | None = None, *, build: bool = True,
                 progress: bool = True) -> Tsl300:
  """Builds (once) and returns the `tsl300` builder for these settings.

  `options` are TSL300Config fields; an unknown key is an error naming it. Idempotent: an
  existing build with the same config name is reused; with build=False a missing build is an
  error instead of being built.
  """
  kwargs = dict(options or {})
  config = builders_common.checked_config(TSL300Config, kwargs, "tsl300", TSLConfigError)
  builder = Tsl300(data_dir=os.fspath(data_dir), config=config, file_format="array_record")
  return builders_common.open_or_build(builder, raw_root, build=build, progress=progress,
                                       how="build_tsl300 with build=True",
                                       check_raw=check_raw_folder)
