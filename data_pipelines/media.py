"""PyAV/librosa helpers that turn one media file into arrays.

Everything offline reads media through these functions, so the synthetic world, the
TFDS builders and ad-hoc tools agree on how frames are picked, resized and how MFCCs and
Kaldi filter banks are made.
Errors raise `MediaError` whose message starts with the file path, so a build can log and skip.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

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


def _decode_audio(path, resampler_for) -> tuple[list[np.ndarray], Any] | None:
  """(planar float32 chunks [channels, n], the stream) of the file's first audio stream, every
  decoded frame passed through resampler_for(stream); None if the file has no audio stream."""
  try:
    container = av.open(os.fspath(path))
  except Exception as e:
    raise _err(path, "cannot open", e) from e
  with container:
    if not container.streams.audio:
      return None
    stream = container.streams.audio[0]
    resampler = resampler_for(stream)
    chunks: list[np.ndarray] = []
    try:
      for frame in container.decode(stream):
        frame.pts = None  # Let the resampler keep its own clock (avoids pts-gap errors).
        chunks.extend(out.to_ndarray() for out in resampler.resample(frame))
      chunks.extend(out.to_ndarray() for out in resampler.resample(None))
    except Exception as e:
      raise _err(path, "audio decode failed", e) from e
  return chunks, stream


def read_audio(path, sr: int) -> np.ndarray | None:
  """Decodes the first audio stream as float32 mono (channel mean) at `sr` Hz; None if absent."""
  # Resample every channel, then average them: librosa's to_mono (what VAANet's
  # librosa.load did); swresample's own stereo->mono downmix scales by 1/sqrt(2) instead.
  got = _decode_audio(path, lambda stream: av.AudioResampler(format="fltp", rate=int(sr)))
  if got is None:
    return None
  chunks = [c.mean(axis=0) for c in got[0]]
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


def read_audio_channels(path) -> tuple[np.ndarray, int] | None:
  """Decodes the first audio stream at its own rate: (float32 [channels, samples], rate).

  No resampling and no downmix (what torchaudio.load returns, which MART's fbank front end
  reads); None if the file has no audio stream.
  """
  rate_of = lambda stream: int(stream.rate or stream.codec_context.sample_rate or 0)
  # Planar float at the stream's own rate and layout: a format conversion only.
  got = _decode_audio(path, lambda stream: av.AudioResampler(
      format="fltp", layout=stream.layout, rate=rate_of(stream)))
  if got is None:
    return None
  chunks, stream = got
  rate = rate_of(stream)
  if rate <= 0:
    raise _err(path, "audio stream has no sample rate")
  if not chunks:
    return np.zeros((len(stream.layout.channels), 0), np.float32), rate
  return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), rate


def _kaldi_mel(freq):
  return 1127.0 * np.log1p(np.asarray(freq, np.float64) / 700.0)


def kaldi_mel_banks(num_bins: int, padded_window: int, sample_rate: float,
                    low_freq: float = 20.0, high_freq: float = 0.0) -> np.ndarray:
  """float64 [num_bins, padded_window // 2] triangular filters of Kaldi's MelBanks.

  Triangles are linear on the mel scale 1127 ln(1 + f / 700) (HTK's), equally spaced between
  `low_freq` and `high_freq` (<= 0: offset from Nyquist), with no area normalisation; FFT bin
  i sits at i * rate / padded_window and the Nyquist bin is left out. A filter narrower than
  the bin spacing stays all zero, as in torchaudio (Kaldi itself refuses such settings).
  """
  nyquist = 0.5 * sample_rate
  high = high_freq + nyquist if high_freq <= 0 else high_freq
  if not 0.0 <= low_freq < high <= nyquist:
    raise ValueError(f"need 0 <= low_freq < high_freq <= {nyquist}, got {low_freq}, {high}")
  mel_low, mel_high = _kaldi_mel(low_freq), _kaldi_mel(high)
  delta = (mel_high - mel_low) / (num_bins + 1)
  left = mel_low + delta * np.arange(num_bins)[:, None]
  center, right = left + delta, left + 2 * delta
  mel = _kaldi_mel(np.arange(padded_window // 2) * (sample_rate / padded_window))[None, :]
  rising, falling = (mel - left) / (center - left), (right - mel) / (right - center)
  inside = (mel > left) & (mel < right)
  return np.where(inside, np.where(mel <= center, rising, falling), 0.0)


def kaldi_fbank(
    wave: np.ndarray,
    sample_rate: float,
    *,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    preemph_coeff: float = 0.97,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    block_frames: int = 2048,
) -> np.ndarray:
  """float32 [frames, num_mel_bins] Kaldi log mel filter banks of a 1-D waveform.

  The settings MART (and AST) use with torchaudio.compliance.kaldi.fbank: Hanning window
  (0.5 - 0.5 cos(2 pi n / (N - 1))), dither 0, per-frame DC removal, pre-emphasis, FFT size
  the next power of two, power spectrum, no energy term (so htk_compat changes nothing),
  log with a float32-epsilon floor, snip_edges: 1 + (n - N) // shift frames (0 when n < N),
  N = int(rate * length_ms / 1000). Computed in float64.

  Why not kaldi-native-fbank: it refuses 128 bins at 16 kHz (AST's own setting and the
  synthetic world's rate) because the lowest filters hold no FFT bin; torchaudio returns
  log(eps) there, and so does this. At the rates it accepts it agrees with this function
  (tests/test_fbank.py); both agree with torchaudio's fbank to ~1e-3 (float32 rounding).
  """
  wave = np.asarray(wave)
  if wave.ndim != 1:
    raise ValueError(f"wave must be 1-D, got shape {wave.shape}")
  win = int(sample_rate * 0.001 * frame_length_ms)
  shift = int(sample_rate * 0.001 * frame_shift_ms)
  if win < 2 or shift < 1:
    raise ValueError(f"window of {win} and shift of {shift} samples at {sample_rate} Hz")
  n_frames = 1 + (len(wave) - win) // shift if len(wave) >= win else 0
  padded = 1 << (win - 1).bit_length()
  banks_t = kaldi_mel_banks(num_mel_bins, padded, sample_rate, low_freq, high_freq).T
  window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win) / (win - 1))
  floor = float(np.finfo(np.float32).eps)
  x = wave.astype(np.float64, copy=False)
  out = np.empty((n_frames, num_mel_bins), np.float32)
  for s in range(0, n_frames, block_frames):  # Blocks bound memory for long recordings.
    e = min(n_frames, s + block_frames)
    frames = x[(np.arange(s, e) * shift)[:, None] + np.arange(win)[None, :]]
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = np.concatenate([frames[:, :1] * (1.0 - preemph_coeff),
                             frames[:, 1:] - preemph_coeff * frames[:, :-1]], axis=1)
    spectrum = np.fft.rfft(frames * window, n=padded)[:, :padded // 2]
    power = spectrum.real ** 2 + spectrum.imag ** 2
    out[s:e] = np.log(np.maximum(power @ banks_t, floor))
  return out


def mart_fbank(channels: np.ndarray, sample_rate: float, num_mel_bins: int = 128) -> np.ndarray:
  """MART's audio front end: float32 [frames, num_mel_bins] from [channels, samples] (or [n]).

  As datasets/ve8.py does it: subtract the mean of the whole waveform (all channels
  together), then the Kaldi fbank of the first channel at the file's own rate.
  """
  channels = np.asarray(channels, np.float64)
  if channels.ndim == 1:
    channels = channels[None]
  if channels.ndim != 2 or channels.shape[0] < 1:
    raise ValueError(f"channels must be [channels, samples], got shape {channels.shape}")
  if channels.size:
    channels = channels - channels.mean()
  return kaldi_fbank(channels[0], sample_rate, num_mel_bins=num_mel_bins)
