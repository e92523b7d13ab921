"""Opens extracted datasets (TFDS ArrayRecord) as random-access sources for grain.

Synthetic datasets are generated and extracted on first use when `dataset.auto_prepare` is set;
real datasets must have been downloaded by the user (`dataset.manual_dir`), and a missing folder
is a one-line error naming it. So is a damaged extraction (a truncated or overwritten ArrayRecord
shard or dataset_info.json): the message names the file and the folder to delete, which the
next run rebuilds.

  "ve8"     VideoEmotion-8 as downloaded: <Class>/<name>.<ext> plus split lists or the split
            workbook; `dataset.split` picks one of the 10 official splits.
  "ekman6"  Ekman-6: <class>/<id>.<ext> plus CTEN's ID lists (else the alternating rule);
            one split.
`dataset.split_file` (optional) names the lists' folder or the .xlsx, relative to the raw folder.
"""
from __future__ import annotations

import bisect
import contextlib
import glob
import itertools
import json
import logging
import os
import zlib

from jaxaffect.errors import PathNotFound, UserError

log = logging.getLogger(__name__)

SYNTHETIC = ("synthetic_ve8",)
REAL = ("ve8", "ekman6")
_LAYOUT = {"synthetic_ve8": "ve8", "ve8": "ve8", "ekman6": "ekman6"}


def _expand(path: str) -> str:
  return os.path.abspath(os.path.expanduser(path))


# ---- shared by every dataset family's pipeline (video emotion, gait, TSL) ----------------------


def dataset_raw_dir(ds, synthetic_tag: str | None = None, knobs: dict | None = None) -> str:
  """`dataset.manual_dir` when set, else <data_dir>/raw/<name>, with "_<synthetic_tag>" for a
  generated set; non-default generator `knobs` add a hash, so each setting gets its own folder
  (the generator's DONE marker checks them)."""
  if ds.get("manual_dir", ""):
    return _expand(ds.manual_dir)
  name = ds.name
  if synthetic_tag is not None:
    name += f"_{synthetic_tag}"
    if knobs:
      name += f"_{zlib.crc32(repr(sorted(knobs.items())).encode()):08x}"
  return os.path.join(_expand(ds.data_dir), "raw", name)


def dataset_tfds_dir(ds, raw: str) -> str:
  """Extracted shards of one raw folder (the builder's config name adds the settings)."""
  return os.path.join(_expand(ds.data_dir), "tfds", os.path.basename(raw.rstrip("/")))


class DamagedShard(UserError):
  """An extracted ArrayRecord shard (or the metadata next to it) is missing, truncated or
  overwritten; the message names the file and the folder to delete to rebuild it."""


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _damaged(name: str, path: str, why: str, folder: str) -> DamagedShard:
  return DamagedShard(f"dataset {name}: damaged file {path} ({why}); delete {folder} and rerun: "
                      "the next run rebuilds it from the raw data")


def _bad_json(data: str) -> str | None:
  """The first dataset_info.json under <data>/<builder>/<config>/<version> that is not JSON."""
  for path in sorted(glob.glob(os.path.join(data, "*", "*", "*", "dataset_info.json"))):
    try:
      with open(path, "rb") as f:
        json.loads(f.read())
    except (OSError, ValueError):
      return path
  return None


@contextlib.contextmanager
def build_errors(name: str, *user_errors: type, data: str | None = None):
  """A builder's missing files become PathNotFound, its layout/config errors UserError, each
  one line naming the dataset; any other error while a finished build in `data` is opened
  whose dataset_info.json is damaged (tfds raises protobuf's ParseError) DamagedShard."""
  try:
    yield
  except FileNotFoundError as e:
    if isinstance(e, UserError):
      raise
    raise PathNotFound(f"dataset {name}: {e}") from e
  except user_errors as e:
    raise UserError(f"dataset {name}: {e}") from e
  except Exception as e:
    bad = _bad_json(data) if data and not isinstance(e, UserError) else None
    if bad is None:
      raise
    raise _damaged(name, bad, f"{type(e).__name__}: {_first_line(e)}",
                   os.path.dirname(bad)) from e


def shard_problem(path: str, expected: int) -> str | None:
  """Why an ArrayRecord shard cannot be read, or None when it opens and holds `expected`
  records. Reads the footer and index only: truncation and overwritten bytes there show up
  (measured: array_record then reports a bad RiegeliPostscript or a file under 64 KB); damage
  inside a record shows up when that record is read (see CheckedSource)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    return "file missing"
  reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
  num = reader.num_records() if reader.ok() else None
  try:
    reader.close()  # A reader that failed to open raises its status here.
  except Exception as e:  # pylint: disable=broad-except
    return _first_line(e)
  if num is None:
    return "unreadable"
  if num != expected:
    return f"holds {num} records, dataset_info.json lists {expected}"
  return None


class CheckedSource:
  """A split's random-access source whose read errors name the shard file (one line, raised
  as DamagedShard, also from grain worker processes, which re-raise it in the main one)."""

  def __init__(self, inner, shards: list[tuple[str, int]], name: str, folder: str):
    """`shards`: (file, records of the split read from it) in the source's order."""
    self._inner = inner
    self._shards = [path for path, _ in shards]
    self._ends = list(itertools.accumulate(n for _, n in shards))
    self._name, self._folder = name, folder

  def __len__(self) -> int:
    return len(self._inner)

  def _error(self, index: int, e: Exception) -> DamagedShard:
    shard = self._shards[min(bisect.bisect_right(self._ends, index), len(self._shards) - 1)]
    return _damaged(self._name, shard, f"record {index}: {type(e).__name__}: {_first_line(e)}",
                    self._folder)

  def __getitem__(self, index):
    i = int(index)
    if not 0 <= i < len(self._inner):
      raise IndexError(f"record {i} outside 0..{len(self._inner) - 1}")
    try:
      return self._inner[i]
    except UserError:
      raise
    except Exception as e:  # array_record's RuntimeError, or a record that does not decode.
      raise self._error(i, e) from e

  def __getitems__(self, indices):
    return [self[i] for i in indices]

  def __iter__(self):
    return (self[i] for i in range(len(self)))

  def __getattr__(self, name):
    if name.startswith("_"):  # Not forwarded: unpickling looks these up before __init__ ran.
      raise AttributeError(name)
    return getattr(self._inner, name)

  def __repr__(self) -> str:
    return f"CheckedSource({self._inner!r})"


def open_split(ds, split: str, data: str, open_builder, how: str):
  """The random-access source of `split` from the built shards in `data`; `how` says how to
  build them when missing. Every shard's index is opened once here (a truncated or overwritten
  shard is a one-line error naming it); damage found later, when a record is read, is one too."""
  if not os.path.isdir(data):
    raise PathNotFound(f"dataset: data directory {data} does not exist; {how} first "
                       "(or enable dataset.auto_prepare for synthetic data)")
  builder = open_builder()
  folder = os.fspath(builder.data_dir)
  log.info("dataset %s split %s: %s", ds.name, split, folder)
  info_file = os.path.join(folder, "dataset_info.json")
  if not os.path.isfile(info_file):
    raise _damaged(ds.name, info_file, "file missing", folder)
  try:
    instructions = builder.info.splits[split].file_instructions
  except (KeyError, ValueError) as e:
    raise UserError(f"dataset {ds.name}: no split {split!r} in {folder} (splits: "
                    f"{', '.join(builder.info.splits) or 'none'}; {_first_line(e)})") from None
  for fi in instructions:
    why = shard_problem(os.fspath(fi.filename), int(fi.examples_in_shard))
    if why is not None:
      raise _damaged(ds.name, os.fspath(fi.filename), why, folder)
  return CheckedSource(builder.as_data_source(split=split),
                       [(os.fspath(fi.filename), int(fi.take)) for fi in instructions],
                       ds.name, folder)


# ---- video emotion (VE-8, Ekman-6) ---------------------------------------------------------


def raw_dir(ds) -> str:
  tag = None
  if ds.name in SYNTHETIC and not ds.get("manual_dir", ""):
    syn = ds.synthetic
    tag = f"seed{syn.seed}_n{syn.num_train_per_class}x{syn.num_test_per_class}"
  return dataset_raw_dir(ds, tag)


def tfds_dir(ds) -> str:
  return dataset_tfds_dir(ds, raw_dir(ds))


def extraction_kwargs(ds) -> dict:
  kw = dict(ds.extraction.to_dict())
  kw["split"] = int(ds.get("split", 1))
  if not kw.get("fps"):
    kw["fps"] = None  # 0 in the config = native frame rate
  if ds.name not in _LAYOUT:
    raise UserError(f"dataset.name: unknown dataset {ds.name!r}; known: "
                    f"{', '.join(SYNTHETIC + REAL)}")
  kw["layout"] = _LAYOUT[ds.name]
  if ds.get("split_file", ""):
    kw["split_file"] = str(ds.split_file)
  return kw


def _build(raw: str, data: str, ds, **kwargs):
  """build_video_emotion with layout/config problems turned into one-line user errors."""
  from data_pipelines.builders import video_emotion
  with build_errors(ds.name, video_emotion.RawLayoutError, video_emotion.ExtractionConfigError,
                    data=data):
    return video_emotion.build_video_emotion(raw, data, extraction_kwargs(ds), **kwargs)


def prepare_video_emotion(ds) -> None:
  """Generates (synthetic only) and extracts the dataset if not done yet. Process 0 only."""
  raw = raw_dir(ds)
  if ds.name in SYNTHETIC:
    if not ds.get("auto_prepare", True) and not os.path.isdir(raw):
      raise PathNotFound(f"dataset: raw folder {raw} does not exist (dataset.auto_prepare is off)")
    from data_pipelines.synthetic import affect_world
    syn = ds.synthetic
    affect_world.generate_ve8_style(raw, seed=int(syn.seed),
                                    num_train_per_class=int(syn.num_train_per_class),
                                    num_test_per_class=int(syn.num_test_per_class))
  elif ds.name not in REAL:
    raise UserError(f"dataset.name: unknown dataset {ds.name!r}; known: "
                    f"{', '.join(SYNTHETIC + REAL)}")
  if not os.path.isdir(raw):
    raise PathNotFound(f"dataset: raw data folder {raw} does not exist; download the dataset "
                    "there or set --config.dataset.manual_dir")
  os.makedirs(tfds_dir(ds), exist_ok=True)
  _build(raw, tfds_dir(ds), ds)


def video_emotion_source(ds, split: str):
  """The random-access source of one split (records as in the builder's features)."""
  raw, data = raw_dir(ds), tfds_dir(ds)
  return open_split(ds, split, data, lambda: _build(raw, data, ds, build=False),
                    "run the extraction")
