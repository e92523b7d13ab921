"""Dataset families: one spec per TFDS builder and the two steps every pipeline takes with it.

A family is the set of `dataset.name`s that one builder in data_pipelines/builders/ extracts:
synthetic names are generated on first use (data_pipelines/synthetic/, when
`dataset.auto_prepare` is on), real ones the user downloads. Raw media live in
`dataset.manual_dir`, else <data_dir>/raw/<name>[_<synthetic settings>]; the extraction in
<data_dir>/tfds/<raw folder name>/<builder>/<config>/<version>.

  prepare(family, ds)             generate (synthetic only) and extract once; process 0 only
  open_source(family, ds, split)  the split's checked random-access source (sources.open_split)

A pipeline declares its family (`FAMILY = DatasetFamily(...)` next to its transforms) and
passes it here; what differs between families is data in the spec, never a copy of these steps.
Builders and generators are named as "module:function" and imported on use, so declaring a
family costs no import of the media stack or tensorflow_datasets.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib
import logging
import os
import zlib
from typing import Any, Callable

from jaxaffect.data import sources
from jaxaffect.errors import PathNotFound, UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DatasetFamily:
  """What one dataset family's pipeline needs to know to prepare and open its data."""
  synthetic: tuple[str, ...]       # dataset.name values generated on first use
  real: tuple[str, ...]            # dataset.name values the user downloads
  noun: str                        # "unknown <noun> 'x'" when dataset.name is neither
  # "module:function" returning the (built) TFDS builder, called as
  # fn(raw_dir, tfds_dir, builder_options(ds), build=..., progress=...).
  builder: str
  builder_errors: tuple[str, ...]  # the builder module's layout/config error classes
  builder_options: Callable[[Any], dict]     # dataset config -> the builder's settings
  generator: str                   # "module:function" writing a synthetic raw folder
  generator_kwargs: Callable[[Any], dict]    # dataset config -> the generator's arguments
  # Dataset config of a synthetic name -> (raw folder suffix, generator knobs hashed into it).
  synthetic_folder: Callable[[Any], tuple[str, dict | None]]
  raw_hint: str                    # what to put in a missing raw folder ("download X there")
  how: str = "build it"            # what builds a missing extraction, in its error
  title: str = ""                  # the family in messages about its fixed splits
  # Fixed split names, checked before any file is read; () when the builder config decides.
  splits: tuple[str, ...] = ()
  progress: bool = False           # tfds' progress bar while extracting

  @property
  def names(self) -> tuple[str, ...]:
    return self.synthetic + self.real


def _expand(path: str) -> str:
  return os.path.abspath(os.path.expanduser(path))


def _resolve(target: str):
  module, _, name = target.partition(":")
  return getattr(importlib.import_module(module), name)


def check_name(family: DatasetFamily, ds) -> None:
  if ds.name not in family.names:
    raise UserError(f"dataset.name: unknown {family.noun} {ds.name!r}; known: "
                    f"{', '.join(family.names)}")


def raw_dir(family: DatasetFamily, ds) -> str:
  """`dataset.manual_dir` when set, else <data_dir>/raw/<name>, with "_<settings>" for a
  generated set; non-default generator knobs add a hash, so each setting gets its own folder
  (the generator's DONE marker checks them)."""
  if ds.get("manual_dir", ""):
    return _expand(ds.manual_dir)
  name = ds.name
  if ds.name in family.synthetic:
    tag, knobs = family.synthetic_folder(ds)
    name += f"_{tag}"
    if knobs:
      name += f"_{zlib.crc32(repr(sorted(knobs.items())).encode()):08x}"
  return os.path.join(_expand(ds.data_dir), "raw", name)


def tfds_dir(family: DatasetFamily, ds) -> str:
  """Extracted shards of the raw folder (the builder's config name adds the settings)."""
  return os.path.join(_expand(ds.data_dir), "tfds",
                      os.path.basename(raw_dir(family, ds).rstrip("/")))


def _builder(family: DatasetFamily, ds, *, build: bool):
  """The family's builder for `ds`, extracted first when `build`; its layout/config problems
  are one-line user errors."""
  module, _, _ = family.builder.partition(":")
  errors = tuple(getattr(importlib.import_module(module), e) for e in family.builder_errors)
  data = tfds_dir(family, ds)
  with sources.build_errors(ds.name, *errors, data=data):
    check_name(family, ds)
    return _resolve(family.builder)(raw_dir(family, ds), data, family.builder_options(ds),
                                    build=build, progress=family.progress)


@contextlib.contextmanager
def preparing(raw: str, data_dir: str):
  """An exclusive `flock` on <data_dir>/.<raw folder>.prepare.lock for the block: runs that
  start together on a fresh data dir (a sweep, two terminals) prepare it one after the other,
  and the later ones find it done, instead of writing the same files at once. The kernel drops
  the lock when its holder dies."""
  path = os.path.join(data_dir, f".{os.path.basename(raw.rstrip('/'))}.prepare.lock")
  try:
    os.makedirs(data_dir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError:  # a read-only data dir holds a finished extraction or fails below, by name
    yield
    return
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      log.info("another process is preparing %s; waiting for it", raw)
      fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # releases the lock


def prepare(family: DatasetFamily, ds) -> None:
  """Generates (synthetic only) and extracts the dataset if not done yet, one process per
  data dir at a time. Process 0 only."""
  raw = raw_dir(family, ds)
  with preparing(raw, _expand(ds.data_dir)):
    _prepare(family, ds, raw)


def _prepare(family: DatasetFamily, ds, raw: str) -> None:
  if ds.name in family.synthetic:
    if not ds.get("auto_prepare", True) and not os.path.isdir(raw):
      raise PathNotFound(f"dataset: raw folder {raw} does not exist (dataset.auto_prepare is off)")
    try:
      _resolve(family.generator)(raw, **family.generator_kwargs(ds))
    except ValueError as e:  # The generators' checks of their settings.
      raise UserError(f"dataset.synthetic: {e}") from e
  check_name(family, ds)
  if not os.path.isdir(raw):
    raise PathNotFound(f"dataset: raw data folder {raw} does not exist; {family.raw_hint} "
                       "or set --config.dataset.manual_dir")
  os.makedirs(tfds_dir(family, ds), exist_ok=True)
  _builder(family, ds, build=True)


def open_source(family: DatasetFamily, ds, split: str, decode_only=None):
  """The random-access source of one split (records as in the builder's features; with
  `decode_only`, those features decoded and the rest left as bytes), every shard checked
  (sources.open_split)."""
  if family.splits and split not in family.splits:
    *head, last = family.splits
    names = f"{', '.join(head)} and {last}" if head else last
    raise UserError(f"{family.title} has the splits {names}, not {split!r}")
  return sources.open_split(ds, split, tfds_dir(family, ds),
                            lambda: _builder(family, ds, build=False), family.how,
                            decode_only=decode_only)
