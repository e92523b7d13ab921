"""A small pre-LN transformer encoder block with logical axis names on every kernel.

Used to test sharding rules: with fsdp on "embed" and tensor on "mlp"/"heads", the large kernels
(qkv [embed, heads, kv], out [heads, kv, embed], mlp [embed, mlp] / [mlp, embed]) get split.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

_init = nn.initializers.xavier_uniform()


class _Proj(nn.Module):
  """Dense over the last `n_in` axes with a kernel of the full (unflattened) shape, so that its
  logical axis names apply (nn.DenseGeneral initialises a flattened 2-D kernel)."""
  features: tuple[int, ...]
  axes: tuple[str, ...]
  n_in: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = x.shape[x.ndim - self.n_in:]
    kernel = self.param("kernel", nn.with_logical_partitioning(_init, self.axes),
                        in_shape + self.features, jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(
        nn.initializers.zeros_init(), self.axes[self.n_in:]), self.features, jnp.float32)
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                            ((tuple(range(x.ndim - self.n_in, x.ndim)),
                              tuple(range(self.n_in))), ((), ())))
    return y + bias.astype(self.dtype)


def _dense(features, axes, name, dtype, in_axes=-1):
  features = features if isinstance(features, tuple) else (features,)
  n_in = len(in_axes) if isinstance(in_axes, tuple) else 1
  return _Proj(features, axes, n_in, dtype, name=name)


class TransformerBlock(nn.Module):
  """x [B, L, E] -> x + MHA(LN(x)) -> + MLP(LN(.)); optional boolean mask [B, L] (True = keep)."""
  num_heads: int = 4
  head_dim: int = 16
  mlp_dim: int = 256
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, train: bool = False) -> Array:
    e = x.shape[-1]
    x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_emb"))
    part = lambda init: nn.with_logical_partitioning(init, ("embed",))
    ln = lambda name: nn.LayerNorm(dtype=self.dtype, name=name,
                                   scale_init=part(nn.initializers.ones_init()),
                                   bias_init=part(nn.initializers.zeros_init()))
    h = ln("ln_attn")(x)
    qkv_axes = ("embed", "heads", "kv")
    q, k, v = (_dense((self.num_heads, self.head_dim), qkv_axes, n, self.dtype)(h)
               for n in ("query", "key", "value"))
    logits = jnp.einsum("blhd,bmhd->bhlm", q, k).astype(jnp.float32) / jnp.sqrt(self.head_dim)
    if mask is not None:
      logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    w = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    w = nn.Dropout(self.dropout_rate, deterministic=not train)(w)
    o = jnp.einsum("bhlm,bmhd->blhd", w, v)
    o = _dense(e, ("heads", "kv", "embed"), "out", self.dtype, in_axes=(-2, -1))(o)
    x = x + nn.Dropout(self.dropout_rate, deterministic=not train)(o)
    h = ln("ln_mlp")(x)
    h = nn.gelu(_dense(self.mlp_dim, ("embed", "mlp"), "mlp_in", self.dtype)(h))
    h = nn.with_logical_constraint(h, ("act_batch", "act_len", "mlp"))
    h = _dense(e, ("mlp", "embed"), "mlp_out", self.dtype)(h)
    x = x + nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_emb"))
