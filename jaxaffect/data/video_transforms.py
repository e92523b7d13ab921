"""Per-example online transforms: TSN sampling, square corner crops, augmentation, audio tiling.

Pure numpy and picklable (top-level classes only), so grain can run them in worker
processes. All randomness comes from the `np.random.Generator` that grain's `random_map`
hands in (seeded by pipeline seed and element index), so an example is a deterministic
function of (seed, index). Semantics follow the released VAANet code's transforms.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import grain
import numpy as np

# Square crop positions, drawn uniformly once per video in training (VAANet's
# MultiScaleCornerCrop with scale 1): index 0 is the centre, used in evaluation.
CROP_POSITIONS = ("c", "tl", "tr", "bl", "br")
# Training augmentation families (TransformConfig.augment).
AUGMENTS = ("none", "flip", "vaanet")


@dataclasses.dataclass(frozen=True)
class TransformConfig:
  """Online transform settings (also readable from an ml_collections ConfigDict).

  Attributes:
    num_segments: S, TSN segments spanning the whole video.
    snippet_len: T, consecutive frames per segment.
    crop_size: output side of the square crop.
    audio_segments: A, audio chunks.
    audio_frames_per_segment: F, MFCC frames per chunk (A*F frames in total).
    flip_prob: probability of a horizontal flip per video (training, augment="flip" only).
    augment: training augmentation, drawn once per video and applied to every frame after the
      crop. "flip": horizontal flip with `flip_prob` (the demo's). "vaanet": the original's
      RandomApply(p=augment_prob) of a uniform choice among {horizontal flip, rotation by
      U(-rotation_degrees, rotation_degrees) degrees, brightness factor U(brightness_min, 1)},
      pixel-exact with PIL's rotate(BILINEAR) and ImageEnhance.Brightness on the crop.
      "none": no augmentation.
    augment_prob, rotation_degrees, brightness_min: parameters of augment="vaanet".
    polarity: per-class polarity table (1 positive, 0 negative); empty = no "polarity" key.
    legacy_random_eval: sample evaluation like training (random temporal starts and random
      corner crop, no flip), as the original code does (`center=False` for validation).
    legacy_start_off_by_one: draw segment starts from [0, L-T-1] like the original code
      (the last valid start L-T is never drawn); False draws from [0, L-T]. Default True:
      it is the behaviour that produced the published numbers.
  """
  num_segments: int = 12
  snippet_len: int = 16
  crop_size: int = 112
  audio_segments: int = 16
  audio_frames_per_segment: int = 256
  flip_prob: float = 0.5
  polarity: tuple[int, ...] = ()
  legacy_random_eval: bool = False
  legacy_start_off_by_one: bool = True
  augment: str = "flip"
  augment_prob: float = 0.3
  rotation_degrees: float = 20.0
  brightness_min: float = 0.5

  def __post_init__(self):
    if self.augment not in AUGMENTS:
      raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
    for name in ("flip_prob", "augment_prob"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
    if not 0.0 <= self.brightness_min <= 1.0:
      raise ValueError(f"brightness_min must be in [0, 1], got {self.brightness_min}")
    if self.rotation_degrees < 0:
      raise ValueError(f"rotation_degrees must be >= 0, got {self.rotation_degrees}")

  @classmethod
  def create(cls, cfg: Any) -> "TransformConfig":
    """Builds from a TransformConfig, a dict or a ConfigDict; unknown keys are an error."""
    if isinstance(cfg, cls):
      return cfg
    items = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(items) - names)
    if unknown:
      raise ValueError(f"Unknown transform config keys: {unknown}; known: {sorted(names)}")
    if "polarity" in items and items["polarity"] is not None:
      items["polarity"] = tuple(int(p) for p in items["polarity"])
    elif "polarity" in items:
      items["polarity"] = ()
    return cls(**items)


# ----------------------------------------------------------------------------- temporal


def tsn_indices(num_frames: int, num_segments: int, snippet_len: int, *,
                rng: np.random.Generator | None, off_by_one: bool = True) -> np.ndarray:
  """Frame indices [S, T]: S equal segments, T consecutive frames from each.

  The index list 0..N-1 is loop-padded to at least S*T; segment length L = len // S.
  With `rng` the start of each segment is uniform in [0, max(0, L-T-off_by_one)]
  (independently per segment), else the centre start (L-T)//2. A segment shorter than T
  is looped.
  """
  if num_frames <= 0:
    raise ValueError("video has no frames")
  total = max(num_frames, num_segments * snippet_len)
  seg_len = total // num_segments
  if rng is None:
    starts = np.full((num_segments,), max(0, (seg_len - snippet_len) // 2), np.int64)
  else:
    high = max(0, seg_len - snippet_len - int(off_by_one))
    starts = rng.integers(0, high + 1, size=num_segments)
  offs = (starts[:, None] + np.arange(snippet_len)[None, :]) % seg_len  # loop inside segment
  pos = np.arange(num_segments)[:, None] * seg_len + offs               # in the padded list
  return (pos % num_frames).astype(np.int64)                            # loop padding


# ----------------------------------------------------------------------------- spatial


# Fixed-point resampling makes the float32 arithmetic *exact*, hence bit-identical whatever
# the BLAS kernel, thread count or summation order (grain workers run single-threaded BLAS,
# the main process multi-threaded). Weights are multiples of 2^-12 summing to exactly 1;
# pass 1 on uint8 input is exact (255 * 2^12 < 2^24); its output is rounded to 1/16 grey
# level, so pass 2 is exact too (255*16 * 2^12 < 2^24).
_WEIGHT_BITS = 12
_INTERMEDIATE_STEPS = 16


@functools.lru_cache(maxsize=64)
def _resize_weights(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] bilinear (triangle) resampling matrix, antialiased like PIL, fixed point.

  When downsampling the triangle's support widens by the scale factor, as in PIL's
  `Image.resize(..., BILINEAR)` used by the original code, so no aliasing.
  """
  scale = in_size / out_size
  fscale = max(scale, 1.0)
  centers = (np.arange(out_size) + 0.5) * scale                 # in input pixel units
  pix = np.arange(in_size) + 0.5
  w = np.maximum(0.0, 1.0 - np.abs(pix[None, :] - centers[:, None]) / fscale)
  w /= w.sum(axis=1, keepdims=True)
  one = 1 << _WEIGHT_BITS
  q = np.rint(w * one).astype(np.int64)
  rows = np.arange(out_size)
  q[rows, np.argmax(q, axis=1)] += one - q.sum(axis=1)          # each row sums to exactly 1
  w = (q / one).astype(np.float32)
  w.setflags(write=False)
  return w


_BAND_BLOCK = 16  # outputs per GEMM block; the filter is banded, so each block reads few inputs


@functools.lru_cache(maxsize=64)
def _banded_blocks(in_size: int, out_size: int, flip: bool) -> tuple:
  """[(o0, o1, i0, i1, w[o0:o1, i0:i1])]: the dense matrix cut into banded blocks.

  A dense GEMM would spend ~in/taps times more FLOPs than needed; blocks of 16 outputs
  keep BLAS efficient while skipping the zeros (about 2x faster at 240 -> 112).
  """
  w = _resize_weights(in_size, out_size)
  if flip:
    w = w[::-1]
  blocks = []
  for o0 in range(0, out_size, _BAND_BLOCK):
    o1 = min(o0 + _BAND_BLOCK, out_size)
    nz = np.flatnonzero(w[o0:o1].any(axis=0))
    i0, i1 = int(nz[0]), int(nz[-1]) + 1
    blocks.append((o0, o1, i0, i1, np.ascontiguousarray(w[o0:o1, i0:i1])))
  return tuple(blocks)


def _resample_leading(x: np.ndarray, out_size: int, flip: bool = False) -> np.ndarray:
  """float32 [in, R] -> [out, R]: resample along axis 0 (contiguous row slices)."""
  y = np.empty((out_size, x.shape[1]), np.float32)
  for o0, o1, i0, i1, wb in _banded_blocks(x.shape[0], out_size, flip):
    np.matmul(wb, x[i0:i1], out=y[o0:o1])
  return y


def _resample_trailing(x: np.ndarray, out_size: int, flip: bool = False) -> np.ndarray:
  """float32 [R, in] -> [R, out]: resample along axis 1."""
  y = np.empty((x.shape[0], out_size), np.float32)
  for o0, o1, i0, i1, wb in _banded_blocks(x.shape[1], out_size, flip):
    y[:, o0:o1] = x[:, i0:i1] @ wb.T
  return y


def crop_box(height: int, width: int, position: int) -> tuple[int, int, int]:
  """(top, left, side) of the square crop of side min(H, W) at CROP_POSITIONS[position]."""
  side = min(height, width)
  name = CROP_POSITIONS[position]
  top = {"c": (height - side) // 2, "tl": 0, "tr": 0, "bl": height - side,
         "br": height - side}[name]
  left = {"c": (width - side) // 2, "tl": 0, "tr": width - side, "bl": 0,
          "br": width - side}[name]
  return top, left, side


def crop_resize(frames: np.ndarray, position: int, size: int, flip: bool) -> np.ndarray:
  """uint8 [N, H, W, C] -> uint8 [N, size, size, C]: square crop, bilinear resize, flip.

  Resizing is a separable, PIL-like antialiased bilinear filter applied as banded GEMMs
  with cached weight tables; the flip is folded into the column weights (reversed rows),
  so it costs nothing. Matches PIL's BILINEAR resize to within 1 grey level. The GEMMs
  are small: run them on one BLAS thread (see `pipeline.limit_blas_threads`); threaded
  BLAS on busy cores measured 3-7x slower here.
  """
  n, h, w, c = frames.shape
  top, left, side = crop_box(h, w, position)
  crop = frames[:, top:top + side, left:left + side]
  if side == size:
    out = crop[:, :, ::-1] if flip else crop
    return np.ascontiguousarray(out)
  # Rows on [side, n*side*c] (contiguous slices), then columns on [size*n*c, side].
  x = crop.transpose(1, 0, 2, 3).astype(np.float32).reshape(side, -1)  # [H, n*W*c]
  y = _resample_leading(x, size)                                      # [size, n*W*c]
  y *= _INTERMEDIATE_STEPS                                            # keep pass 2 exact
  np.rint(y, out=y)
  y *= 1.0 / _INTERMEDIATE_STEPS
  y = y.reshape(size, n, side, c).transpose(0, 1, 3, 2).reshape(-1, side)
  y = _resample_trailing(y, size, flip)                               # [size*n*c, size]
  y = y.reshape(size, n, c, size).transpose(1, 0, 3, 2)               # [n, size, size, c]
  # Weights are convex, so values stay in [0, 255]; +0.5 then truncation rounds.
  return (y + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- augmentation


@dataclasses.dataclass(frozen=True)
class VideoAugment:
  """Augmentation of one video: the same on every frame (identity by default)."""
  flip: bool = False
  angle: float = 0.0        # degrees, counter-clockwise (PIL's convention)
  brightness: float = 1.0   # multiplicative factor


def draw_augment(cfg: TransformConfig, rng: np.random.Generator) -> VideoAugment:
  """The per-video augmentation for training.

  "vaanet" always consumes four draws (apply?, which, angle, factor), so the stream does not
  depend on the outcome; "flip" consumes one, as before this option existed.
  """
  if cfg.augment == "flip":
    return VideoAugment(flip=bool(rng.random() < cfg.flip_prob))
  if cfg.augment == "vaanet":
    u = rng.random()
    which = int(rng.integers(3))
    angle = float(rng.uniform(-cfg.rotation_degrees, cfg.rotation_degrees))
    factor = float(rng.uniform(cfg.brightness_min, 1.0))
    if u >= cfg.augment_prob:
      return VideoAugment()
    return (VideoAugment(flip=True), VideoAugment(angle=angle),
            VideoAugment(brightness=factor))[which]
  return VideoAugment()


@functools.lru_cache(maxsize=16)
def _rotation_taps(height: int, width: int, angle: float) -> tuple[np.ndarray, ...]:
  """Flat source indices (4 x [H*W]), fractions dx, dy and the in-image mask of a rotation.

  Replicates PIL's Image.rotate(angle, BILINEAR) (expand=False, centre (W/2, H/2), black
  fill): the inverse affine map with coefficients rounded to 15 decimals is applied to output
  pixel centres; a source point outside [0, W) x [0, H) is black; inside, bilinear taps are
  clamped to the border (a missing lower row repeats the upper one).
  """
  a = -math.radians(angle)
  cos, sin = round(math.cos(a), 15), round(math.sin(a), 15)
  cx, cy = width / 2, height / 2
  m0, m1, m3, m4 = cos, sin, -sin, cos
  m2 = m0 * -cx + m1 * -cy + cx
  m5 = m3 * -cx + m4 * -cy + cy
  ys, xs = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
  xin = (m0 * xs + m1 * ys + m2).ravel()
  yin = (m3 * xs + m4 * ys + m5).ravel()
  inside = (xin >= 0) & (xin < width) & (yin >= 0) & (yin < height)
  xin, yin = xin - 0.5, yin - 0.5
  x, y = np.floor(xin), np.floor(yin)
  dx, dy = xin - x, yin - y
  x, y = x.astype(np.int64), y.astype(np.int64)
  x0, x1 = np.clip(x, 0, width - 1), np.clip(x + 1, 0, width - 1)
  y0 = np.clip(y, 0, height - 1)
  y1 = np.where(y + 1 < height, np.clip(y + 1, 0, height - 1), y0)
  taps = tuple(yy * width + xx for yy in (y0, y1) for xx in (x0, x1))
  out = (*taps, dx[:, None], dy[:, None], inside)
  for arr in out:
    arr.setflags(write=False)
  return out


_ROTATE_CHUNK = 16  # frames per pass: bounds the float64 temporaries to a few MB


def rotate_frames(frames: np.ndarray, angle: float) -> np.ndarray:
  """uint8 [N, H, W, C] rotated by `angle` degrees counter-clockwise, exactly as PIL does.

  Float64 bilinear interpolation truncated to uint8, as PIL's 8-bit affine filter.
  """
  n, h, w, c = frames.shape
  i00, i01, i10, i11, dx, dy, inside = _rotation_taps(h, w, float(angle))
  flat = frames.reshape(n, h * w, c)
  out = np.zeros((n, h * w, c), np.uint8)
  for s in range(0, n, _ROTATE_CHUNK):
    chunk = flat[s:s + _ROTATE_CHUNK].astype(np.float64)
    p00, p01, p10, p11 = (chunk[:, i] for i in (i00, i01, i10, i11))
    top = p00 + (p01 - p00) * dx
    bottom = p10 + (p11 - p10) * dx
    value = top + (bottom - top) * dy
    out[s:s + _ROTATE_CHUNK] = np.where(inside[:, None], value, 0.0).astype(np.uint8)
  return out.reshape(n, h, w, c)


def adjust_brightness(frames: np.ndarray, factor: float) -> np.ndarray:
  """uint8 frames scaled by `factor` as PIL's ImageEnhance.Brightness (float32, truncated)."""
  lut = np.float32(factor) * np.arange(256, dtype=np.float32)
  return np.clip(lut, 0, 255).astype(np.uint8)[frames]


def apply_augment(frames: np.ndarray, aug: VideoAugment) -> np.ndarray:
  """Rotation and brightness on cropped uint8 frames (the flip is folded into the resize)."""
  if aug.angle:
    frames = rotate_frames(frames, aug.angle)
  if aug.brightness != 1.0:
    frames = adjust_brightness(frames, aug.brightness)
  return frames


# ----------------------------------------------------------------------------- audio


def tile_audio(mfcc: np.ndarray, num_segments: int, frames_per_segment: int) -> np.ndarray:
  """[Fa, M] -> float32 [A, F, M]: loop-tile short audio, cut long audio to A*F frames."""
  mfcc = np.asarray(mfcc, np.float32)
  if mfcc.ndim != 2 or mfcc.shape[0] == 0:
    raise ValueError(f"audio must be [frames>0, coeffs], got {mfcc.shape}")
  total = num_segments * frames_per_segment
  idx = np.arange(total) % mfcc.shape[0]
  return mfcc[idx].reshape(num_segments, frames_per_segment, mfcc.shape[1])


# ----------------------------------------------------------------------------- example


def sample_snippets(video: np.ndarray, cfg: TransformConfig, rng: np.random.Generator, *,
                    train: bool) -> np.ndarray:
  """uint8 [N, H, W, 3] -> uint8 [S, T, crop, crop, 3]: TSN snippets, crop, augmentation.

  Draws from `rng` in a fixed order (starts, crop position, augmentation), so a pipeline that
  draws more after it (MART's audio windows) leaves the video the same as VAANet's.
  """
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[-1] != 3:
    raise ValueError(f"video must be [N, H, W, 3], got {video.shape}")
  randomize = train or cfg.legacy_random_eval
  idx = tsn_indices(video.shape[0], cfg.num_segments, cfg.snippet_len,
                    rng=rng if randomize else None, off_by_one=cfg.legacy_start_off_by_one)
  position = int(rng.integers(len(CROP_POSITIONS))) if randomize else 0
  aug = draw_augment(cfg, rng) if train else VideoAugment()
  frames = video[idx.reshape(-1)]                          # only the sampled frames
  frames = crop_resize(frames, position, cfg.crop_size, aug.flip)
  frames = apply_augment(frames, aug)
  return frames.reshape(cfg.num_segments, cfg.snippet_len, cfg.crop_size, cfg.crop_size, 3)


class VideoAudioTransform(grain.transforms.RandomMap):
  """Record dict (the builder's features) -> model example dict (one item of the online batch).

  Output: video uint8 [S, T, crop, crop, 3], audio float32 [A, F, M], label int32 [],
  polarity int32 [] (when a table is set), and key (when `keep_key`, host-side only).
  """

  def __init__(self, cfg: TransformConfig | Mapping[str, Any], *, train: bool,
               keep_key: bool = False):
    self.cfg = TransformConfig.create(cfg)
    self.train = train
    self.keep_key = keep_key

  def random_map(self, element: Mapping[str, Any], rng: np.random.Generator) -> dict:
    cfg = self.cfg
    key = element.get("key", "?")
    try:
      out = {
          "video": sample_snippets(element["video"], cfg, rng, train=self.train),
          "audio": tile_audio(element["audio"], cfg.audio_segments,
                              cfg.audio_frames_per_segment),
          "label": np.int32(element["label"]),
      }
      if cfg.polarity:
        label = int(element["label"])
        if not 0 <= label < len(cfg.polarity):
          raise ValueError(f"label {label} outside the polarity table "
                           f"(len {len(cfg.polarity)})")
        out["polarity"] = np.int32(cfg.polarity[label])
    except (KeyError, ValueError) as e:
      raise ValueError(f"record {key!r}: {e}") from e
    if self.keep_key:
      out["key"] = np.asarray(key)
    return out

  def __call__(self, element: Mapping[str, Any], rng: np.random.Generator | None = None):
    """Convenience for direct use; deterministic paths accept rng=None."""
    return self.random_map(element, rng if rng is not None else np.random.default_rng(0))
