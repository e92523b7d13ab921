"""Synthetic Emotion-Gait: walking skeletons whose emotion shows in posture and movement.

Writes the release layout that the `emotion_gait` builder reads:
features.h5 / labels.h5 ("captured"-style gaits, T in [min_frames, max_frames] at `fps`) and
features_ELMD.h5 / labels_ELMD.h5 (Edinburgh-style gaits, 5 x `fps` and 5 x 48 = 240 frames, so
the builder's every-5th-frame rule gives 48 frames at `fps`). One h5 dataset per gait: float32
T x 48 (16 joints x xyz, Emotion-Gait joint order, y up); labels are int64 scalars under the
same key, indexed in GAIT_CLASSES order (= the builder's default "bpmgcn" label mapping).

A procedural walker (pelvis, trunk, head, two 2-segment arms and legs) is driven by a gait phase.
The class sets the means of eight style factors (STYLES): cadence, stride (leg swing), trunk lean,
head pitch, arm swing, elbow flexion, arm abduction and vertical bounce; every gait draws its
own factors around those means (Gaussian, std `jitter_scale` x STYLE_STD), so neighbouring
classes overlap on each single factor and only their combination separates them.
Nuisances, drawn independently of the class: body size (x0.85..1.15), walking direction (yaw
about the vertical axis, uniform in +-yaw_range_deg), start position, start phase, sequence
length and per-joint noise.

Every gait draws from rng_for(seed, "gait", index), so the output is a pure function of the
arguments (h5 files written without timestamps are byte-identical).
"""
from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from data_pipelines.synthetic import common

GAIT_CLASSES = ("Happy", "Sad", "Angry", "Neutral")
GENERATOR_VERSION = 1
ELMD_STRIDE = 5
NUM_JOINTS = 16

# Class means of the style factors (angles in radians, cadence in gait cycles per second,
# bounce as a fraction of body height). Order of rows: GAIT_CLASSES.
FACTORS = ("cadence", "leg_swing", "lean", "head_pitch", "arm_swing", "elbow", "abduction",
           "bounce")
STYLES = np.array([
    # cad   leg   lean   head   arm   elbow  abd   bounce
    [1.00, 0.46, -0.04, -0.10, 0.50, 0.35, 0.14, 0.034],  # Happy: brisk, upright, chin up
    [0.74, 0.30, 0.20, 0.38, 0.14, 0.15, 0.04, 0.014],    # Sad: slow, slumped, head down
    [1.08, 0.50, 0.13, 0.02, 0.58, 0.95, 0.24, 0.026],    # Angry: fast, leaning in, bent arms
    [0.88, 0.40, 0.04, 0.06, 0.30, 0.30, 0.08, 0.022],    # Neutral
], np.float64)
STYLE_STD = np.array([0.08, 0.05, 0.05, 0.09, 0.08, 0.13, 0.05, 0.006])

# Segment lengths for a body of height ~1.75 (scaled per gait).
_PELVIS_HEIGHT, _SPINE, _NECK, _HEAD = 0.95, 0.25, 0.25, 0.20
_SHOULDER_HALF, _SHOULDER_DROP, _UPPER_ARM, _FOREARM = 0.19, 0.03, 0.30, 0.28
_HIP_HALF, _THIGH, _SHANK = 0.10, 0.45, 0.47


def _sagittal(angle: np.ndarray, lateral: np.ndarray | float = 0.0) -> np.ndarray:
  """Unit-ish direction pointing down, rotated forward (+z) by `angle`, plus a lateral x part."""
  angle = np.asarray(angle, np.float64)
  lat = np.broadcast_to(np.asarray(lateral, np.float64), angle.shape)
  c = np.sqrt(np.maximum(0.0, 1.0 - lat * lat))
  return np.stack([lat, -c * np.cos(angle), c * np.sin(angle)], axis=-1)


def render_gait(label: int, n_frames: int, fps: float, rng: np.random.Generator, *,
                jitter_scale: float = 1.0, yaw_range_deg: float = 180.0,
                noise: float = 0.01) -> np.ndarray:
  """float32 [n_frames, 16, 3]: one walk of class `label`, y up, Emotion-Gait joint order."""
  f = STYLES[label] + jitter_scale * STYLE_STD * rng.standard_normal(len(FACTORS))
  cadence, leg, lean, head, arm, elbow, abd, bounce = f
  cadence, leg, arm = max(cadence, 0.4), max(leg, 0.1), max(arm, 0.02)
  size = rng.uniform(0.85, 1.15)
  yaw = np.deg2rad(rng.uniform(-yaw_range_deg, yaw_range_deg))
  start = np.array([rng.uniform(-0.5, 0.5), 0.0, rng.uniform(-0.5, 0.5)])
  phi = 2 * np.pi * cadence * np.arange(n_frames) / fps + rng.uniform(0, 2 * np.pi)
  zero = np.zeros_like(phi)

  pts = np.zeros((n_frames, NUM_JOINTS, 3))
  speed = 4 * (_THIGH + _SHANK) * np.sin(leg) * cadence  # two steps of ~2 L sin(swing) a cycle
  t = np.arange(n_frames) / fps
  root = np.stack([0.02 * np.sin(phi), _PELVIS_HEIGHT + bounce * np.cos(2 * phi),
                   speed * t], axis=-1)
  trunk = np.stack([zero, np.cos(lean) + zero, np.sin(lean) + zero], axis=-1)  # leans fwd
  head_dir = np.stack([zero, np.cos(lean + head) + zero, np.sin(lean + head) + zero], axis=-1)
  spine = root + _SPINE * trunk
  neck = spine + _NECK * trunk
  pts[:, 0], pts[:, 1], pts[:, 2], pts[:, 3] = root, spine, neck, neck + _HEAD * head_dir
  for side, (sh, el, ha, hip, kn, ft) in ((1.0, (4, 5, 6, 10, 11, 12)),
                                          (-1.0, (7, 8, 9, 13, 14, 15))):
    # Right side (+x) leg leads with sin(phi); each arm swings against its own-side leg.
    leg_phase = phi if side > 0 else phi + np.pi
    thigh_angle = leg * np.sin(leg_phase)
    knee_flex = 0.08 + 1.6 * leg * np.maximum(0.0, np.cos(leg_phase))  # flexed while swinging
    swing = -arm * np.sin(leg_phase) + 0.5 * lean
    shoulder = neck + np.array([side * _SHOULDER_HALF, -_SHOULDER_DROP, 0.0])
    elbow_p = shoulder + _UPPER_ARM * _sagittal(swing, side * np.sin(abd))
    hand = elbow_p + _FOREARM * _sagittal(swing + elbow + 0.3 * arm * np.maximum(0, np.sin(swing)),
                                          side * np.sin(abd))
    hip_p = root + np.array([side * _HIP_HALF, 0.0, 0.0])
    knee = hip_p + _THIGH * _sagittal(thigh_angle)
    foot = knee + _SHANK * _sagittal(thigh_angle - knee_flex)
    pts[:, sh], pts[:, el], pts[:, ha] = shoulder, elbow_p, hand
    pts[:, hip], pts[:, kn], pts[:, ft] = hip_p, knee, foot
  pts *= size
  c, s = np.cos(yaw), np.sin(yaw)
  rot = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])  # about the vertical (y) axis
  pts = pts @ rot.T + start
  pts += noise * size * rng.standard_normal(pts.shape)
  return pts.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class GaitSpec:
  fps: float = 24.0
  min_frames: int = 27  # The captured release has T in 27..75.
  max_frames: int = 75
  jitter_scale: float = 1.0
  yaw_range_deg: float = 180.0
  noise: float = 0.01


def _write_h5(path: str, arrays: dict[str, np.ndarray]) -> None:
  import h5py  # pylint: disable=g-import-not-at-top
  tmp = path + ".tmp"
  with h5py.File(tmp, "w", track_order=False) as f:
    for key in sorted(arrays):
      f.create_dataset(key, data=arrays[key], track_times=False)
  os.replace(tmp, path)


def generate_emotion_gait_style(out_dir, *, seed: int = 0, num_per_class: int = 200,
                                elmd_fraction: float = 0.5, fps: float = 24.0,
                                min_frames: int = 27, max_frames: int = 75,
                                jitter_scale: float = 1.0, yaw_range_deg: float = 180.0,
                                noise: float = 0.01, verbose: bool = True) -> str:
  """Writes features[_ELMD].h5 + labels[_ELMD].h5 with num_per_class gaits per class.

  Deterministic in its arguments; idempotent through the DONE marker (other parameters into a
  used directory raise, as in generate_ve8_style). Gait i has label i % 4 and goes to the ELMD
  file with probability `elmd_fraction`. Returns `out_dir`.
  """
  spec = GaitSpec(fps=fps, min_frames=min_frames, max_frames=max_frames,
                  jitter_scale=jitter_scale, yaw_range_deg=yaw_range_deg, noise=noise)
  if not 1 <= min_frames <= max_frames:
    raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
  if not 0.0 <= elmd_fraction <= 1.0:
    raise ValueError(f"elmd_fraction must be in [0, 1], got {elmd_fraction}")
  if num_per_class < 1:
    raise ValueError(f"num_per_class must be >= 1, got {num_per_class}")
  params = dict(generator="emotion_gait_style", version=GENERATOR_VERSION, seed=int(seed),
                num_per_class=int(num_per_class), elmd_fraction=float(elmd_fraction),
                **dataclasses.asdict(spec))
  out_dir = os.fspath(out_dir)
  if common.begin_output(out_dir, params):
    if verbose:
      print(f"{out_dir}: already generated with these parameters; nothing to do.")
    return out_dir
  start = time.time()
  feats = {"captured": {}, "elmd": {}}
  labels = {"captured": {}, "elmd": {}}
  n_classes = len(GAIT_CLASSES)
  for i in range(n_classes * int(num_per_class)):
    label = i % n_classes
    rng = common.rng_for(seed, "gait", i)
    if rng.uniform() < elmd_fraction:
      part, key, rate, n = "elmd", f"{i:06d}", ELMD_STRIDE * fps, ELMD_STRIDE * 48
    else:
      part, key, rate = "captured", f"{i:04d}", fps
      n = int(rng.integers(min_frames, max_frames + 1))
    skel = render_gait(label, n, rate, rng, jitter_scale=jitter_scale,
                       yaw_range_deg=yaw_range_deg, noise=noise)
    feats[part][key] = skel.reshape(n, NUM_JOINTS * 3)
    labels[part][key] = np.int64(label)
  for part, suffix in (("captured", ""), ("elmd", "_ELMD")):
    _write_h5(os.path.join(out_dir, f"features{suffix}.h5"), feats[part])
    _write_h5(os.path.join(out_dir, f"labels{suffix}.h5"), labels[part])
  common.finish_output(out_dir, params)
  if verbose:
    print(f"{out_dir}: wrote {len(feats['captured'])} captured + {len(feats['elmd'])} ELMD-style "
          f"gaits in {time.time() - start:.1f} s")
  return out_dir
