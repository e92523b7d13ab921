"""What every builder here shares: open a finished build, or build it from the raw folder."""
from __future__ import annotations

import dataclasses
import json
import logging
import os

import tensorflow_datasets as tfds

MANIFEST_FILE = "manifest.json"
# BuilderConfig fields that are tfds' own, not extraction settings a user passes.
_BASE_CONFIG_FIELDS = {"version", "release_notes", "supported_versions", "tags", "name",
                       "description"}


class QuietCustomConfig(logging.Filter):
  """Drops tfds' warning for configs not in BUILDER_CONFIGS: every config here is custom."""

  def filter(self, record):
    return "Using custom data configuration" not in str(record.msg)


def checked_config(config_cls, kwargs: dict, what: str, error_cls):
  """config_cls(**kwargs), an unknown key being an `error_cls` that names it and the known."""
  known = {f.name for f in dataclasses.fields(config_cls)}
  unknown = sorted(set(kwargs) - known)
  if unknown:
    raise error_cls(f"{what}: unknown setting(s) {unknown}; known: "
                    f"{sorted(known - _BASE_CONFIG_FIELDS)}")
  return config_cls(**kwargs)


def write_manifest_file(builder, manifest: dict) -> str:
  path = os.path.join(os.fspath(builder.data_dir), MANIFEST_FILE)
  with open(path, "w") as f:
    json.dump(manifest, f, indent=1)
  return path


def load_manifest(builder, how: str) -> dict:
  """The manifest written next to the built dataset; `how` names the call that builds it."""
  path = os.path.join(os.fspath(builder.data_dir), MANIFEST_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no manifest; was the dataset built by {how}?")
  with open(path) as f:
    return json.load(f)


def open_or_build(builder, manual_dir, *, build: bool, progress: bool, how: str,
                  check_raw=None):
  """Returns `builder` once its data (and manifest) exist, building from `manual_dir` if
  allowed. `how` names the call that builds it, for the error when `build` is False.
  `check_raw(manual_dir)` raises the builder's layout error when the folder holds none of the
  files it expects (tfds itself only asserts, with a multi-line message, on an empty one)."""
  if os.path.exists(os.path.join(os.fspath(builder.data_dir), MANIFEST_FILE)):
    return builder
  if not build:
    raise FileNotFoundError(f"{builder.data_dir}: {builder.name} is not built for these "
                            f"settings; run {how} first")
  if not os.path.isdir(os.fspath(manual_dir)):
    raise FileNotFoundError(f"{manual_dir}: raw dataset directory not found")
  if check_raw is not None:
    check_raw(os.fspath(manual_dir))
  elif not os.listdir(os.fspath(manual_dir)):
    raise FileNotFoundError(f"{manual_dir}: raw dataset directory is empty")
  download_config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  was_active = getattr(tqdm_utils, "_active", True)
  tfds.display_progress_bar(progress)
  try:
    builder.download_and_prepare(download_config=download_config)
  finally:
    tfds.display_progress_bar(was_active)
  return builder
