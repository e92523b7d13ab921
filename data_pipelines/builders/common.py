"""What every builder here shares: open a finished build, or build it from the raw folder."""
from __future__ import annotations

import os

import tensorflow_datasets as tfds

MANIFEST_FILE = "manifest.json"


def open_or_build(builder, manual_dir, *, build: bool, progress: bool, how: str):
  """Returns `builder` once its data (and manifest) exist, building from `manual_dir` if
  allowed. `how` names the call that builds it, for the error when `build` is False."""
  if os.path.exists(os.path.join(os.fspath(builder.data_dir), MANIFEST_FILE)):
    return builder
  if not build:
    raise FileNotFoundError(f"{builder.data_dir}: {builder.name} is not built for these "
                            f"settings; run {how} first")
  if not os.path.isdir(os.fspath(manual_dir)):
    raise FileNotFoundError(f"{manual_dir}: raw dataset directory not found")
  download_config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  was_active = getattr(tqdm_utils, "_active", True)
  tfds.display_progress_bar(progress)
  try:
    builder.download_and_prepare(download_config=download_config)
  finally:
    tfds.display_progress_bar(was_active)
  return builder
