"""MART's objectives other than PCCE (jaxaffect.nn.losses): the normalised-pixel reconstruction
target and loss over masked tokens, and TACL's CPC term with its sign as a flag."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxaffect.nn import patches

Array = jax.Array


def normalized_pixel_targets(video: Array, tubelet: Sequence[int] = (2, 16, 16),
                             eps: float = 1e-6) -> Array:
  """VideoMAE's target: video [B, T, H, W, C] in 0-255 -> [B, N, prod(tubelet) * C], each token's
  pixels normalised per channel over the tubelet (mean; unbiased std + eps), values ordered
  (t, h, w, c) as the decoder predicts them."""
  b = video.shape[0]
  c = video.shape[-1]
  tokens = patches.patchify(video.astype(jnp.float32), tubelet)      # [B, N, P * C]
  n = tokens.shape[1]
  px = tokens.reshape(b, n, -1, c)                                    # [B, N, P, C]
  mean = jnp.mean(px, axis=2, keepdims=True)
  std = jnp.sqrt(jnp.var(px, axis=2, ddof=1, keepdims=True))
  return ((px - mean) / (std + eps)).reshape(b, n, -1)


def pixel_targets(video: Array, tubelet: Sequence[int] = (2, 16, 16)) -> Array:
  """The plain-pixel target (MAE without norm_pix_loss): video [B, T, H, W, C] in 0-255 ->
  [B, N, prod(tubelet) * C] in [-1, 1], ordered as normalized_pixel_targets. A flat patch keeps
  its colour here, where the normalised target is its codec noise over a tiny std."""
  return patches.patchify(video.astype(jnp.float32), tubelet) / 127.5 - 1.0


# loss.rec_target -> the target function.
REC_TARGETS = {"normalized": normalized_pixel_targets, "pixels": pixel_targets}


def masked_reconstruction_loss(pred: Array, target: Array, mask: Array,
                               eps: float = 1e-5) -> Array:
  """MSE over the feature dim per token, summed over masked tokens (mask True) of the whole
  batch and divided by their number + eps (0 when nothing is masked)."""
  per_token = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
  m = mask.astype(jnp.float32)
  return jnp.sum(per_token * m) / (jnp.sum(m) + eps)


def _l2_normalize(x: Array, eps: float = 1e-12) -> Array:
  """x / max(||x||, eps) with a finite gradient at x = 0 (a zero row is common here: padding,
  and the CPC predictor ends in a ReLU); jnp.linalg.norm's gradient there is 0 * inf = NaN."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True),
                                       eps * eps))


def cpc_score(x: Array, x_hat: Array, valid: Array | None = None) -> Array:
  """MMIM/MART's CPC term on rows [N, D] (already flattened over clip and word): both sides
  L2-normalised; mean over rows of <x_i, x_hat_i> - logsumexp_j <x_i, x_hat_j>. MART adds this
  value to its loss (minimising it pushes matched pairs apart; MMIM minimises its negative):
  loss.cpc_sign chooses (+1 released, -1 MMIM). `valid` [N] drops padded rows everywhere."""
  x = _l2_normalize(x.astype(jnp.float32))
  x_hat = _l2_normalize(x_hat.astype(jnp.float32))
  sims = x @ x_hat.T
  pos = jnp.diagonal(sims)
  if valid is None:
    return jnp.mean(pos - jax.nn.logsumexp(sims, axis=-1))
  v = valid.astype(bool)
  neg = jax.nn.logsumexp(jnp.where(v[None, :], sims, -jnp.inf), axis=-1)
  w = v.astype(jnp.float32)
  return jnp.sum((pos - neg) * w) / jnp.maximum(jnp.sum(w), 1.0)
