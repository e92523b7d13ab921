"""Losses that several papers share (VAANet's PCCE is used again by CTEN and MART)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def pcce_loss(logits: jax.Array, labels: jax.Array, polarity_table: jax.Array,
              lam: float) -> tuple[jax.Array, jax.Array]:
  """Polarity-consistent cross-entropy (VAANet): the mean of (1 + lam * [polarity(argmax) !=
  polarity(label)]) * CE, with the weight a constant (no gradient), as the released code
  computes it. Returns (loss, per-example weights)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  pred = jnp.argmax(logits, axis=-1)
  wrong_polarity = polarity_table[pred] != polarity_table[labels]
  weights = jax.lax.stop_gradient(1.0 + lam * wrong_polarity.astype(jnp.float32))
  return jnp.mean(weights * ce), weights
