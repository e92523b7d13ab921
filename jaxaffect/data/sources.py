"""Opens extracted datasets (TFDS ArrayRecord) as checked random-access sources for grain.

A damaged extraction (a truncated or overwritten ArrayRecord shard or dataset_info.json) is a
one-line error naming the file and the folder to delete, which the next run rebuilds; so are a
builder's missing files and layout/config errors. Which builder, folders and generator a
dataset uses is its family's spec (families.py); the shard checks here are the same for all.
"""
from __future__ import annotations

import bisect
import contextlib
import glob
import itertools
import json
import logging
import os
from typing import Sequence

from jaxaffect.errors import PathNotFound, UserError

log = logging.getLogger(__name__)


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


def open_split(ds, split: str, data: str, open_builder, how: str,
               decode_only: Sequence[str] | None = None):
  """The random-access source of `split` from the built shards in `data`; `how` says how to
  build them when missing. Every shard's index is opened once here (a truncated or overwritten
  shard is a one-line error naming it); damage found later, when a record is read, is one too.
  `decode_only`: decode just these features and leave the others as stored bytes (e.g. a
  record's key without decompressing its frames)."""
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
  decoders = None
  if decode_only is not None:
    import tensorflow_datasets as tfds  # loaded already: the builder is a tfds builder
    # tfds' array-record source takes one decoder per feature, not PartialDecoding.
    decoders = {n: tfds.decode.SkipDecoding() for n in builder.info.features
                if n not in decode_only}
  return CheckedSource(builder.as_data_source(split=split, decoders=decoders),
                       [(os.fspath(fi.filename), int(fi.take)) for fi in instructions],
                       ds.name, folder)
