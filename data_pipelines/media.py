"""PyAV/librosa helpers that turn one media file into arrays.

Everything offline reads media through these three functions, so the synthetic world, the
TFDS builders and ad-hoc tools agree on how frames are picked, resized and how MFCCs are made.
Errors raise `MediaError` whose message starts with the file path, so a build can log and skip.
"""
from __future__ import annotations

import os
from typing import Iterator

import av
from av.video.reformatter import VideoReformatter
import numpy as np


class MediaError(RuntimeError):
  """A media file cannot be read; the message names the file."""


def _err(path, what: str, exc: BaseException | None = None) -> MediaError:
  detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
  return MediaError(f"{os.fspath(path)}: {what}{detail}")


def _target_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
  """(width, height) with the short side equal to `short_side`, aspect kept."""
  if short_side is None or min(width, height) == short_side:
    return width, height
  if height <= width:
    return max(1, round(width * short_side / height)), short_side
  return short_side, max(1, round(height * short_side / width))


def _pick_frames(frames, fps: float | None, stored_fps: float) -> Iterator[av.VideoFrame]:
  """Yields the frames to keep, streaming: every frame, or the nearest one to each k/fps.

  A frame owns the times up to the midpoint with the next frame (ties go to the earlier one);
  the last frame owns the times up to its end (time + 1/stored_fps). Only one decoded frame is
  held at a time, so long videos do not pile up in memory before resizing.
  """
  if fps is None:
    yield from (f for _, f in frames)
    return
  t0 = prev_t = prev = None
  k = 0
  for t, frame in frames:
    if prev is None:
      t0 = t
    else:
      boundary = 0.5 * (prev_t + t) + 1e-6  # Tolerance: exact midpoints go to the earlier.
      while t0 + k / fps <= boundary:
        yield prev
        k += 1
    prev_t, prev = t, frame
  if prev is None:
    return
  n_out = max(1, int(np.floor((prev_t + 1.0 / stored_fps - t0) * fps + 1e-6)))
  while k < n_out:
    yield prev
    k += 1


def read_video_frames(
    path,
    fps: float | None = None,
    short_side: int | None = 112,
    max_frames: int | None = None,
) -> tuple[np.ndarray, float]:
  """Decodes a video into uint8 [N, H, W, 3] RGB frames and returns (frames, stored_fps).

  Args:
    path: the media file.
    fps: resample in time to this rate by nearest-timestamp selection (None keeps every frame).
    short_side: resize (bilinear) so min(H, W) equals this, keeping the aspect (None: as stored).
    max_frames: cap N by uniform subsampling of the (resampled) frames (None: no cap).
  """
  if fps is not None and fps <= 0:
    raise ValueError(f"fps must be positive or None, got {fps}")
  if max_frames is not None and max_frames < 1:
    raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
  try:
    container = av.open(os.fspath(path))
  except Exception as e:  # PyAV raises many error types for bad containers.
    raise _err(path, "cannot open", e) from e
  kept: list[np.ndarray] = []
  with container:
    if not container.streams.video:
      raise _err(path, "no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    stored_fps = float(rate) if rate else 30.0
    n_decoded = 0

    def timed():
      nonlocal n_decoded
      for frame in container.decode(stream):
        t = frame.time if frame.time is not None else n_decoded / stored_fps
        n_decoded += 1
        yield t, frame

    size = None
    last, last_rgb = None, None
    # One reformatter for all frames keeps swscale's context cached (frame.reformat builds a
    # new one per call: ~2 ms vs ~0.05 ms per small frame); one thread, callers parallelise.
    reformatter = VideoReformatter()
    try:
      for frame in _pick_frames(timed(), fps, stored_fps):
        if size is None:
          size = _target_size(frame.width, frame.height, short_side)
        if frame is not last:  # Upsampling repeats a frame: convert it once.
          last, last_rgb = frame, reformatter.reformat(
              frame, width=size[0], height=size[1], format="rgb24",
              interpolation="BILINEAR", threads=1).to_ndarray()
        kept.append(last_rgb)
    except Exception as e:
      raise _err(path, f"decode failed after {n_decoded} frames", e) from e
  if not kept:
    raise _err(path, "no decodable video frames")
  if max_frames is not None and len(kept) > max_frames:
    kept = [kept[i] for i in (np.arange(max_frames) * len(kept)) // max_frames]
  return np.stack(kept), stored_fps


def read_audio(path, sr: int) -> np.ndarray | None:
  """Decodes the first audio stream as float32 mono (channel mean) at `sr` Hz; None if absent."""
  try:
    container = av.open(os.fspath(path))
  except Exception as e:
    raise _err(path, "cannot open", e) from e
  with container:
    if not container.streams.audio:
      return None
    stream = container.streams.audio[0]
    # Resample every channel, then average them: librosa's to_mono (what VAANet's
    # librosa.load did); swresample's own stereo->mono downmix scales by 1/sqrt(2) instead.
    resampler = av.AudioResampler(format="fltp", rate=int(sr))
    chunks: list[np.ndarray] = []
    try:
      for frame in container.decode(stream):
        frame.pts = None  # Let the resampler keep its own clock (avoids pts-gap errors).
        for out in resampler.resample(frame):
          chunks.append(out.to_ndarray().mean(axis=0))
      for out in resampler.resample(None):
        chunks.append(out.to_ndarray().mean(axis=0))
    except Exception as e:
      raise _err(path, "audio decode failed", e) from e
  if not chunks:
    return np.zeros((0,), np.float32)
  return np.concatenate(chunks).astype(np.float32, copy=False)


def mfcc(wave: np.ndarray, sr: int, n_mfcc: int, n_fft: int, hop_length: int) -> np.ndarray:
  """float32 [frames, n_mfcc] MFCCs with librosa's defaults otherwise (as VAANet used them).

  librosa defaults: 128 mel bands, power spectrogram, power_to_db(ref=1, top_db=80),
  DCT-II with ortho norm, centred frames (constant padding).
  """
  import librosa  # Deferred: importing librosa costs ~1 s and only audio paths need it.

  feats = librosa.feature.mfcc(
      y=np.asarray(wave, np.float32), sr=sr, n_mfcc=n_mfcc, n_fft=n_fft, hop_length=hop_length
  )
  return np.ascontiguousarray(feats.T, dtype=np.float32)
