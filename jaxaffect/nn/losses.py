"""Losses that several papers share (VAANet's PCCE is used again by CTEN and MART)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def pcce_loss(logits: jax.Array, labels: jax.Array, polarity_table: jax.Array,
              lam: float, valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Polarity-consistent cross-entropy (VAANet): the mean of (1 + lam * [polarity(argmax) !=
  polarity(label)]) * CE, with the weight a constant (no gradient), as the released code
  computes it. `valid` [B] (optional) keeps only those examples in the mean (0 when none is
  valid; their labels may be anything, e.g. -1 for unlabelled data). Returns (loss,
  per-example weights)."""
  if valid is not None:
    labels = jnp.where(valid, labels, 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  pred = jnp.argmax(logits, axis=-1)
  wrong_polarity = polarity_table[pred] != polarity_table[labels]
  weights = jax.lax.stop_gradient(1.0 + lam * wrong_polarity.astype(jnp.float32))
  if valid is None:
    return jnp.mean(weights * ce), weights
  v = valid.astype(jnp.float32)
  return jnp.sum(weights * ce * v) / jnp.maximum(jnp.sum(v), 1.0), weights
