"""Opens extracted datasets (TFDS ArrayRecord) as random-access sources for grain.

Synthetic datasets are generated and extracted on first use when `dataset.auto_prepare` is set;
real datasets must have been downloaded by the user (`dataset.manual_dir`), and a missing folder
is a one-line error naming it.

  "ve8"     VideoEmotion-8 as downloaded: <Class>/<name>.<ext> plus split lists or the split
            workbook; `dataset.split` picks one of the 10 official splits.
  "ekman6"  Ekman-6: <class>/<id>.<ext> plus CTEN's ID lists (else the alternating rule);
            one split.
`dataset.split_file` (optional) names the lists' folder or the .xlsx, relative to the raw folder.
"""
from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def build_errors(name: str, *user_errors: type):
  """A builder's missing files become PathNotFound, its layout/config errors UserError, each
  one line naming the dataset."""
  try:
    yield
  except FileNotFoundError as e:
    if isinstance(e, UserError):
      raise
    raise PathNotFound(f"dataset {name}: {e}") from e
  except user_errors as e:
    raise UserError(f"dataset {name}: {e}") from e


def open_split(ds, split: str, data: str, open_builder, how: str):
  """The random-access source of `split` from the built shards in `data`; `how` says how to
  build them when missing."""
  if not os.path.isdir(data):
    raise PathNotFound(f"dataset: data directory {data} does not exist; {how} first "
                       "(or enable dataset.auto_prepare for synthetic data)")
  builder = open_builder()
  log.info("dataset %s split %s: %s", ds.name, split, builder.data_dir)
  return builder.as_data_source(split=split)


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
  with build_errors(ds.name, video_emotion.RawLayoutError, video_emotion.ExtractionConfigError):
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
