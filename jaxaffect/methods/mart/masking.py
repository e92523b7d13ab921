"""MART's attention-guided masking ("AttMask-Hint") and its ratio schedule.

Scores rank the tokens of each clip; the ratio r masks the top floor(n * r) of them; a random
few of the most-attended tokens are shown again ("hints"); and each clip is masked at all only
with probability `clip_prob`. All shapes are static and r may be traced, so one compiled step
serves the whole ratio schedule (r changes every epoch).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def ratio_schedule(epoch, total_epochs: int = 100, base: float = 0.1, slope: float = 0.8,
                   cap: float = 0.5):
  """r(e) = base + slope * min(cap, e / E): 0.108 at epoch 1 of 100, 0.5 from epoch 50 on.
  `epoch` may be a traced value (a step count divided by the steps per epoch)."""
  return base + slope * jnp.minimum(cap, jnp.asarray(epoch, jnp.float32) / total_epochs)


def _ranks(values: Array) -> Array:
  """Rank of each entry along the last axis, 0 = largest (ties: the lower index first)."""
  order = jnp.argsort(-values, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1)


def attmask_hint(scores: Array, ratio, rng: Array, *, clip_prob: float = 0.5,
                 hint_pool: float = 0.1, hint_ratio: float = 0.1) -> Array:
  """Boolean mask [B, n] (True = masked) from per-token scores [B, n].

  - the top floor(n * ratio) tokens by score are masked;
  - of the top floor(n * hint_pool) tokens (the hint pool), floor(hint_ratio * ratio * n) drawn
    uniformly without replacement are unmasked;
  - each clip keeps its mask with probability clip_prob, else nothing is masked.
  """
  b, n = scores.shape
  ratio = jnp.asarray(ratio, jnp.float32)
  k_gate, k_hint = jax.random.split(rng)
  rank = _ranks(scores.astype(jnp.float32))
  num_masked = jnp.floor(n * ratio).astype(jnp.int32)
  masked = rank < num_masked
  pool = rank < math.floor(n * hint_pool)
  num_hints = jnp.floor(hint_ratio * ratio * n).astype(jnp.int32)
  draw = jnp.where(pool, jax.random.uniform(k_hint, (b, n)), 2.0)  # outside the pool: last
  hinted = pool & (_ranks(-draw) < num_hints)
  keep_clip = jax.random.bernoulli(k_gate, clip_prob, (b, 1))
  return masked & ~hinted & keep_clip
