"""Per-example audio transforms for filter-bank inputs (MART's AST branch).

Pure numpy, so grain can run them in worker processes; randomness comes from the
`np.random.Generator` grain's `random_map` hands in. Semantics follow MART's released
datasets/ve8.py: a clip of F fbank frames becomes Ns segments of 100 frames each, then AST's
AudioSet statistics normalise it. The fbank itself is computed offline
(`data_pipelines.media.mart_fbank`).
"""
from __future__ import annotations

import numpy as np

# AST's AudioSet statistics as MART's dataset uses them: (x - mean) / (2 * std).
AST_MEAN = -6.6268077
AST_STD = 5.358466


def fbank_segments(fbank: np.ndarray, num_segments: int, frames_per_segment: int = 100,
                   rng: np.random.Generator | None = None) -> np.ndarray:
  """[F, M] fbank -> float32 [num_segments, frames_per_segment, M] (T = Ns * frames).

  - F <= T: the clip is tiled (repeated from its start) and cut to T frames.
  - F > T: blocks of int(F / Ns) frames start at 0, blk, 2 blk, ...; each gives one window of
    `frames_per_segment` frames starting at block start + offset. With `rng` the offset is
    uniform in [0, blk - frames) (MART's int(random() * (blk - 100)): the last start,
    blk - frames, is never drawn; 0 when blk == frames); without `rng` it is the centre
    offset (blk - frames) // 2, for deterministic evaluation. MART's release draws at
    validation too: pass an rng there to reproduce it.
  """
  fbank = np.asarray(fbank, np.float32)
  if fbank.ndim != 2 or fbank.shape[0] < 1:
    raise ValueError(f"fbank must be [frames>0, bins], got shape {fbank.shape}")
  if num_segments < 1 or frames_per_segment < 1:
    raise ValueError(f"need num_segments, frames_per_segment >= 1, got "
                     f"{num_segments}, {frames_per_segment}")
  n, bins = fbank.shape
  total = num_segments * frames_per_segment
  if n <= total:
    reps = total // n + 1
    return np.tile(fbank, (reps, 1))[:total].reshape(num_segments, frames_per_segment, bins)
  block = n // num_segments  # >= frames_per_segment because n > total.
  span = block - frames_per_segment
  if rng is None:
    offsets = np.full(num_segments, span // 2)
  else:
    offsets = rng.integers(0, max(span, 1), size=num_segments)
  starts = np.arange(num_segments) * block + offsets
  return fbank[starts[:, None] + np.arange(frames_per_segment)[None, :]]


def ast_normalize(x, mean: float = AST_MEAN, std: float = AST_STD):
  """(x - mean) / (2 * std): AST's input scaling; works on numpy and jax arrays alike."""
  return (x - mean) / (2.0 * std)


def spec_augment(fbank: np.ndarray, freq_mask: int, time_mask: int,
                 rng: np.random.Generator) -> np.ndarray:
  """float32 [T, M] with one frequency band, then one time span, set to 0 (a copy).

  torchaudio's FrequencyMasking(freq_mask) then TimeMasking(time_mask) as MART applies them
  in training (to the whole T = Ns * frames sequence, before AST scaling): width
  w = int(u * param), start int(u' * (size - u * param)) for u, u' uniform in [0, 1). A start
  below 0 (param larger than the axis) is clamped to 0; 0 turns a mask off (no draws).
  """
  out = np.array(fbank, np.float32)
  for axis, param in ((1, freq_mask), (0, time_mask)):
    if param <= 0:
      continue
    value = rng.random() * param
    start = max(0, int(rng.random() * (out.shape[axis] - value)))
    index = [slice(None)] * 2
    index[axis] = slice(start, start + int(value))
    out[tuple(index)] = 0.0
  return out
