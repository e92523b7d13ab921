"""What every builder here shares: open a finished build, or build it from the raw folder;
run the per-video extraction jobs (serially or in spawned processes)."""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
from typing import Any, Callable, Iterator, Sequence

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


NO_AUDIO_POLICIES = ("zeros", "skip")


def check_video_settings(cfg, error: type[Exception]) -> None:
  """The frame and audio extraction fields every video builder config has (fps,
  frame_short_side, max_frames, no_audio_policy); `error` names the bad one."""
  if cfg.no_audio_policy not in NO_AUDIO_POLICIES:
    raise error(f"no_audio_policy must be one of {NO_AUDIO_POLICIES}, got {cfg.no_audio_policy!r}")
  if cfg.fps is not None and cfg.fps <= 0:
    raise error(f"fps must be positive or None, got {cfg.fps}")
  for field in ("frame_short_side", "max_frames"):
    value = getattr(cfg, field)
    if value is not None and value < 1:
      raise error(f"{field} must be >= 1 or None, got {value}")


def name_number(v, none: str) -> str:
  """A setting in a folder-safe config name: `none` for None, 0.5 -> "0p5"."""
  if v is None:
    return none
  return (f"{v:g}" if isinstance(v, float) else str(v)).replace(".", "p")


def limit_blas_threads():
  """Single-threaded BLAS for the MFCC mel projection, returned as a context manager.

  With OpenBLAS' default thread pool the small [128 x 1025] @ [1025 x T] products stalled on
  thread wake-ups: 16 ms per clip instead of 0.3 ms, and a 2.6x slower demo build on 2 cores.
  """
  import librosa  # noqa: F401  Load every BLAS that librosa pulls in before limiting them.
  try:
    from threadpoolctl import threadpool_limits
  except ImportError:  # Optional: librosa's scikit-learn dependency normally brings it.
    return contextlib.nullcontext()
  return threadpool_limits(limits=1, user_api="blas")


def _worker_init():
  global _WORKER_LIMITS
  _WORKER_LIMITS = limit_blas_threads()  # Kept alive for the worker's lifetime.


_WORKER_LIMITS = None


def map_jobs(fn: Callable[[Any], Any], jobs: Sequence[Any], num_workers: int) -> Iterator[Any]:
  """fn over jobs in order, with single-threaded BLAS; in `num_workers` spawned processes when
  > 1 and there are enough jobs to pay for starting them (fn must then be picklable)."""
  if num_workers <= 1 or len(jobs) < 16:
    with limit_blas_threads():
      yield from map(fn, jobs)
    return
  ctx = multiprocessing.get_context("spawn")  # Safe whatever the parent imported (JAX, threads).
  with cf.ProcessPoolExecutor(num_workers, mp_context=ctx, initializer=_worker_init) as pool:
    yield from pool.map(fn, jobs, chunksize=4)


def open_or_build(builder, manual_dir, *, build: bool, progress: bool, how: str,
                  check_raw=None, num_shards: int | None = None):
  """Returns `builder` once its data (and manifest) exist, building from `manual_dir` if
  allowed. `how` names the call that builds it, for the error when `build` is False.
  `check_raw(manual_dir)` raises the builder's layout error when the folder holds none of the
  files it expects (tfds itself only asserts, with a multi-line message, on an empty one).
  `num_shards` fixes the number of ArrayRecord files per split (None: tfds' size rule)."""
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
  download_config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir),
                                                 num_shards=num_shards)
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  was_active = getattr(tqdm_utils, "_active", True)
  tfds.display_progress_bar(progress)
  try:
    builder.download_and_prepare(download_config=download_config)
  finally:
    tfds.display_progress_bar(was_active)
  return builder
