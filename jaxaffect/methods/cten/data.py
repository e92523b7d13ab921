"""CTEN's input pipeline: the video_emotion builder's records (with `extraction.fbank_bins`)
become, per video,

  video   uint8 [S, T, crop, crop, 3]  VAANet's TSN snippets (video_transforms.sample_snippets)
  audio   float32 [S, F, M]  the Kaldi fbank as S windows of F frames (audio_transforms.
          fbank_segments: random windows in training, centred in evaluation unless
          legacy_random_eval), AST's scaling (x + 6.63) / (2 x 5.36), as the released loader
  label, polarity  int32 []  (eval adds "key")

The erased views are not made here: they are index maps over these S segments, computed in the
train step from the first view's attention (erasing.py), so nothing is decoded twice.

Config keys: dataset.* as VAANet's (name, manual_dir, data_dir, split, split_file, eval_split,
polarity, num_segments, snippet_len, crop_size, augment and its parameters, legacy_random_eval,
legacy_start_off_by_one, worker_count, synthetic), dataset.audio_frames (F, 100) and
dataset.extraction.fbank_bins (M, 128).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import grain
import numpy as np

from jaxaffect.data import audio_visual
from jaxaffect.data import families
from jaxaffect.data import pipeline
from jaxaffect.data import video_emotion
from jaxaffect.data import video_transforms
from jaxaffect.errors import UserError


@dataclasses.dataclass(frozen=True)
class CtenDataConfig:
  video: video_transforms.TransformConfig
  audio_frames: int = 100


def data_config(config) -> CtenDataConfig:
  ds = config.dataset
  if int(ds.extraction.get("fbank_bins", 0)) <= 0:
    raise UserError("dataset.extraction.fbank_bins: CTEN reads Kaldi filter banks; set it "
                    "(128, as released)")
  names = {f.name for f in dataclasses.fields(video_transforms.TransformConfig)}
  try:
    video = video_transforms.TransformConfig.create({k: ds[k] for k in names if k in ds})
  except ValueError as e:
    raise UserError(f"dataset: {e}") from None
  frames = int(ds.get("audio_frames", 100))
  if frames < 1:
    raise UserError(f"dataset.audio_frames must be >= 1, got {frames}")
  return CtenDataConfig(video=video, audio_frames=frames)


class CtenTransform(grain.transforms.RandomMap):
  """Record dict -> one CTEN example (module docstring)."""

  def __init__(self, cfg: CtenDataConfig, *, train: bool, keep_key: bool = False):
    self.cfg, self.train, self.keep_key = cfg, train, keep_key

  def random_map(self, element: Mapping[str, Any], rng: np.random.Generator) -> dict:
    cfg = self.cfg
    key = element.get("key", "?")
    try:
      video, audio = audio_visual.snippets_and_fbank(
          element, cfg.video, cfg.video.num_segments, cfg.audio_frames, rng, train=self.train)
      out = dict(video=video, audio=audio,
                 **audio_visual.label_fields(element, cfg.video.polarity))
    except (KeyError, ValueError) as e:
      raise ValueError(f"record {key!r}: {type(e).__name__}: {e}") from e
    if self.keep_key:
      out["key"] = np.asarray(key)
    return out


def train_iterator(config, *, seed: int, global_batch_size: int, process_index: int,
                   process_count: int):
  """Infinite shuffled per-process batches (a checkpointable grain iterator)."""
  ds = config.dataset
  source = families.open_source(video_emotion.FAMILY, ds, "train")
  if len(source) == 0:
    raise UserError(f"dataset {ds.name}: the train split is empty")
  return iter(pipeline.train_dataset(
      source, transform=CtenTransform(data_config(config), train=True), seed=seed,
      global_batch_size=global_batch_size, process_index=process_index,
      process_count=process_count, worker_count=int(ds.get("worker_count", 0))))


def _indexed_example(transform: CtenTransform, row: pipeline.EvalRow,
                     rng: np.random.Generator) -> dict:
  """The row's example plus "index" (its position in the eval source, an int that gathers
  across hosts where the string key would not)."""
  out = transform.random_map(row.record, rng)
  out["index"] = np.int32(row.index)
  return out


def eval_source(config, decode_only=None):
  ds = config.dataset
  return families.open_source(video_emotion.FAMILY, ds, ds.get("eval_split", "test"),
                              decode_only=decode_only)


def eval_keys(config, indices) -> list[str]:
  """The builder keys ("Class/name") of the eval records at `indices`, read without decoding
  their frames, audio or fbank (the keyframe evaluator's lookup)."""
  source = eval_source(config, decode_only=("key",))
  out = []
  for i in indices:
    key = np.asarray(source[int(i)]["key"]).item()
    out.append(key.decode() if isinstance(key, bytes) else str(key))
  return out


def eval_batches(config, *, global_batch_size: int, process_index: int, process_count: int):
  """Per-process eval batches over `dataset.eval_split` in source order, padded and marked by
  "_mask", plus "key" and "index"."""
  cfg = data_config(config)
  transform = CtenTransform(cfg, train=False, keep_key=True)
  return pipeline.padded_eval_batches(
      eval_source(config), functools.partial(_indexed_example, transform),
      global_batch_size=global_batch_size, process_index=process_index,
      process_count=process_count, seed=int(config.get("seed", 0)))
