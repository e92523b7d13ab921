"""Gait skeleton features in JAX: BPM-GCN's 31 affective features and its 8 motion channels.

Skeletons are float [..., T, 16, 3] in the Emotion-Gait joint order (0 root, 1 spine, 2 neck,
3 head, 4-6 R shoulder/elbow/hand, 7-9 L shoulder/elbow/hand, 10-12 R hip/knee/foot, 13-15 L
hip/knee/foot; the dataset README swaps the L/R names, which only renames the pairs below).

The 31 per-frame affective features (paper Table I, the per-frame posture block of STEP's
`get_affective_features`), grouped as BPM-GCN's target stores them:
  [0:14]  angles in radians (vertex = middle joint); the last one is the angle between
          head - root and the "up" axis (+y by default);
  [14:23] Euclidean distances;
  [23:31] triangle areas.
The order inside each group follows the paper's Table I (the released target order is unknown).
Frames flagged invalid (zero padding) get all-zero features instead of the 0/0 angles; angles
use atan2(|u x v|, u.v) and areas 0.5|u x v| (same values as STEP's arccos and Heron formulas,
but stable in float32 for near-straight angles and thin triangles). Degenerate vectors in a valid
frame give angle 0 rather than STEP's NaN. Features are translation invariant, so root-centring
(as STEP does) changes nothing.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

NUM_JOINTS = 16
JOINT_NAMES = ("root", "spine", "neck", "head", "r_shoulder", "r_elbow", "r_hand",
               "l_shoulder", "l_elbow", "l_hand", "r_hip", "r_knee", "r_foot", "l_hip",
               "l_knee", "l_foot")
# (a, vertex, b): the angle at `vertex` between a - vertex and b - vertex.
ANGLES = ((7, 2, 4), (2, 4, 7), (4, 7, 2), (2, 4, 5), (2, 7, 8), (4, 5, 6), (7, 8, 9),
          (2, 1, 0), (3, 2, 1), (0, 10, 11), (0, 13, 14), (10, 11, 12), (13, 14, 15))
UP_ANGLE = (3, 0)  # angle between joint 3 - joint 0 and the up axis
DISTANCES = ((6, 0), (9, 0), (6, 4), (9, 7), (5, 0), (8, 0), (12, 0), (15, 0), (12, 15))
AREAS = ((9, 2, 6), (7, 2, 4), (9, 0, 6), (8, 2, 5), (15, 2, 12), (13, 2, 10), (15, 0, 12),
         (14, 2, 11))
NUM_AFFECTIVE = len(ANGLES) + 1 + len(DISTANCES) + len(AREAS)  # 31
GROUPS = {"angles": (0, 14), "distances": (14, 23), "areas": (23, 31)}
NUM_MOTION_CHANNELS = 8


def frame_mask(skeleton: Array) -> Array:
  """bool [..., T]: True for frames with any non-zero coordinate (zero-padded frames False)."""
  return jnp.any(skeleton != 0, axis=(-1, -2))


def _angle(u: Array, v: Array) -> Array:
  cross = jnp.linalg.norm(jnp.cross(u, v), axis=-1)
  return jnp.arctan2(cross, jnp.sum(u * v, axis=-1))


def affective_features(skeleton: Array, mask: Array | None = None, *, up_axis: int = 1,
                       zero_invalid: bool = True) -> Array:
  """skeleton [..., T, 16, 3] -> float32 [..., T, 31] (see the module docstring).

  mask: bool [..., T] of valid frames (default: `frame_mask`); invalid frames get zeros when
  zero_invalid."""
  p = jnp.asarray(skeleton, jnp.float32)
  if p.shape[-2:] != (NUM_JOINTS, 3):
    raise ValueError(f"expected a skeleton [..., T, {NUM_JOINTS}, 3], got {p.shape}")
  j = lambda i: p[..., i, :]  # noqa: E731
  angles = [_angle(j(a) - j(v), j(b) - j(v)) for a, v, b in ANGLES]
  up = jnp.zeros((3,), jnp.float32).at[up_axis].set(1.0)
  head_root = j(UP_ANGLE[0]) - j(UP_ANGLE[1])
  angles.append(_angle(head_root, jnp.broadcast_to(up, head_root.shape)))
  dists = [jnp.linalg.norm(j(a) - j(b), axis=-1) for a, b in DISTANCES]
  areas = [0.5 * jnp.linalg.norm(jnp.cross(j(a) - j(v), j(b) - j(v)), axis=-1)
           for a, v, b in AREAS]
  feats = jnp.stack(angles + dists + areas, axis=-1)
  if zero_invalid:
    m = frame_mask(p) if mask is None else jnp.asarray(mask, bool)
    feats = jnp.where(m[..., None], feats, 0.0)
  return feats


def motion_channels(skeleton: Array, mask: Array | None = None) -> Array:
  """skeleton [..., T, J, 3] -> [..., T, J, 8] = (v_xyz, |v|, a_xyz, |a|), BPM-GCN's movement
  input: v_t = p_t - p_{t-1}, a_t = v_t - v_{t-1}, with v_0 = a_0 = 0 (so a_1 = v_1).

  mask: bool [..., T] of valid frames, or None for the plain differences over every frame (a
  zero-padded clip then shows a -p spike at the pad boundary). With a mask, v_t is kept only
  where frames t and t-1 are both valid and a_t only where frame t is valid, so padding
  contributes zeros and the first valid frame after padding starts like frame 0.
  """
  p = jnp.asarray(skeleton, jnp.float32)
  pad = [(0, 0)] * (p.ndim - 3) + [(1, 0), (0, 0), (0, 0)]
  prev = lambda x: jnp.pad(x, pad)[..., :-1, :, :]  # noqa: E731  x_{t-1}, zeros at t=0
  vel = p - prev(p)
  vel = vel.at[..., 0, :, :].set(0.0)
  if mask is not None:
    m = jnp.asarray(mask, bool)
    m_prev = jnp.pad(m, [(0, 0)] * (m.ndim - 1) + [(1, 0)])[..., :-1]
    vel = jnp.where((m & m_prev)[..., None, None], vel, 0.0)
  acc = vel - prev(vel)
  if mask is not None:
    acc = jnp.where(m[..., None, None], acc, 0.0)
  norm = lambda x: jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  return jnp.concatenate([vel, norm(vel), acc, norm(acc)], axis=-1)
