"""CTEN's temporal erasing at the segment-index level: which segments are "keyframes" and the
index maps of the two extra views, computed inside the jitted step from the first view's
temporal attention (no media is decoded again).

The released loop re-samples frames from disk: the kept segments' frame ranges are concatenated
and its TSN sampler draws S snippets over them. Here the new view's segment j is kept segment
floor(j K / S) of the K kept ones, in temporal order: the same snippets the sampler would start
in when a snippet is one segment long, taken from the frames (or features) already decoded.

Threshold: min-max normalise gamma over the segments and compare with theta (0.7 = the paper's
and the code's thr = 0.7 max + 0.3 min).
  legacy rule (one joint attention): keyframes gamma* > theta, the rest gamma* < theta.
  paper rule: keyframes where the visual and the audio gamma* are both >= theta; the rest is
  every other segment.
A view with no segment (flat attention: max == min, or everything on one side) is the whole
video, its own: never another sample's frames (the released loop's silent failure).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def normalise(gamma: Array) -> tuple[Array, Array]:
  """(min-max normalised gamma [B, S] float32, flat [B] bool: max == min, nothing to rank)."""
  g = gamma.astype(jnp.float32)
  lo, hi = jnp.min(g, axis=-1, keepdims=True), jnp.max(g, axis=-1, keepdims=True)
  span = hi - lo
  flat = span[..., 0] <= 1e-12 * jnp.maximum(jnp.abs(hi[..., 0]), 1.0)
  return (g - lo) / jnp.where(span > 0, span, 1.0), flat


def keyframe_masks(gamma_v: Array, gamma_a: Array | None, theta: float,
                   rule: str) -> tuple[Array, Array]:
  """(keyframes [B, S] bool, rest [B, S] bool); both all-False for a flat attention."""
  nv, flat = normalise(gamma_v)
  if rule == "legacy":
    key, rest = nv > theta, nv < theta
  elif rule == "paper":
    key = nv >= theta
    if gamma_a is not None:
      na, flat_a = normalise(gamma_a)
      key, flat = key & (na >= theta), flat | flat_a
    rest = ~key
  else:
    raise ValueError(f"erasing rule must be 'legacy' or 'paper', got {rule!r}")
  keep = ~flat[:, None]
  return key & keep, rest & keep


def view_indices(keep: Array) -> Array:
  """keep [B, S] bool -> int32 [B, S]: segment j of the new view is kept segment
  floor(j K / S) (K kept, in order); the identity where nothing is kept."""
  b, s = keep.shape
  order = jnp.argsort(~keep, axis=-1, stable=True)  # kept segments first, in temporal order
  k = jnp.sum(keep, axis=-1, keepdims=True)
  j = jnp.arange(s)[None, :]
  idx = jnp.take_along_axis(order, (j * jnp.maximum(k, 1)) // s, axis=-1)
  return jnp.where(k > 0, idx, j).astype(jnp.int32)


def gather_segments(x: Array, idx: Array) -> Array:
  """x [B, S, ...] -> x[b, idx[b, j], ...]: each row takes segments of its own video only."""
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)
