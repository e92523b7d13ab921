"""The audio-visual example CTEN and MART both read from a video_emotion record: VAANet's TSN
snippets of the frames and the Kaldi fbank cut into one window per segment, AST-scaled, with
the label and its polarity. Pure numpy (grain workers); randomness from the caller's rng."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from jaxaffect.data import audio_transforms
from jaxaffect.data import video_transforms


def snippets_and_fbank(element: Mapping[str, Any], video: video_transforms.TransformConfig,
                       num_segments: int, audio_frames: int, rng: np.random.Generator, *,
                       train: bool, freq_mask: int = 0, time_mask: int = 0
                       ) -> tuple[np.ndarray, np.ndarray]:
  """-> (uint8 [S, T, crop, crop, 3] snippets, float32 [num_segments, audio_frames, M] fbank
  windows after AST's scaling). The windows are drawn at random in training and centred in
  evaluation (unless `video.legacy_random_eval`); SpecAugment (training only, 0 = off) masks
  the concatenated windows before the scaling. Draws happen in that order, so one rng state
  gives one example."""
  clip = video_transforms.sample_snippets(element["video"], video, rng, train=train)
  randomize = train or video.legacy_random_eval
  fbank = audio_transforms.fbank_segments(element["fbank"], num_segments, audio_frames,
                                          rng if randomize else None)
  if train and (freq_mask or time_mask):
    ns, frames, bins = fbank.shape
    fbank = audio_transforms.spec_augment(fbank.reshape(ns * frames, bins), freq_mask,
                                          time_mask, rng).reshape(ns, frames, bins)
  return clip, audio_transforms.ast_normalize(fbank).astype(np.float32)


def label_fields(element: Mapping[str, Any], polarity: Sequence[int] | None, *,
                 unlabelled: bool = False) -> dict[str, np.ndarray]:
  """{"label": int32, "polarity": int32 (when a polarity table is given)}. With `unlabelled`,
  a record without a label (a pretraining corpus) gets label and polarity -1; a label outside
  the table is an error."""
  label = int(element["label"]) if ("label" in element or not unlabelled) else -1
  out = {"label": np.int32(label)}
  if polarity:
    if not (-1 if unlabelled else 0) <= label < len(polarity):
      raise ValueError(f"label {label} outside the polarity table (len {len(polarity)})")
    out["polarity"] = np.int32(polarity[label] if label >= 0 else -1)
  return out
