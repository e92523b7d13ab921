"""Multi-head attention with grouped key/value heads (MHA, GQA, MQA), masks and RoPE.

The kernel is `jax.nn.dot_product_attention` (logits and softmax in float32) with its
implementation picked per backend at trace time: cuDNN's fused kernel on GPU when the call fits
it, XLA elsewhere. Dropout on the attention weights is the one case neither fused kernel takes;
then the weights are formed explicitly (`_attend_explicit`, the same masking and precision).

Projections keep full-shape kernels with logical names: query [embed, heads, kv], key and value
[embed, kv_heads, kv], out [heads, kv, embed] ("kv" is the head dim); each is gathered over FSDP
where it is used (`sharding.gather_for_compute`).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from jaxaffect.nn.transformer_parts import Linear, default_kernel_init

Array = jax.Array

IMPLEMENTATIONS = ("auto", "xla", "cudnn")
# Which projections carry a bias: every one (BERT, DeiT/AST), every one but the key (VideoMAE:
# qkv without bias plus learned q and v biases; its key bias is fixed at zero), none (LLaMA).
BIAS_OPTIONS = ("all", "qv", "none")


def cudnn_unfit_reason(dtype, head_dim: int, q_len: int, kv_len: int, masked: bool,
                       train: bool, dropout: bool) -> str | None:
  """Why cuDNN's fused attention cannot take this call (None: it can)."""
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return f"cuDNN attention needs bfloat16 or float16, got {jnp.dtype(dtype).name}"
  if head_dim % 8 or head_dim > 128:  # 256 on Hopper; 128 holds on every GPU it supports
    return f"cuDNN attention needs a head dim that is a multiple of 8 and <= 128, got {head_dim}"
  if dropout:
    return "jax.nn.dot_product_attention has no dropout on the attention weights"
  return None


def resolve_implementation(implementation: str, **call) -> str:
  """"auto" -> "cudnn" on the GPU backend when the call fits it, else "xla"; an explicit
  "cudnn" that cannot take the call is a ValueError saying why. `call`: the arguments of
  `cudnn_unfit_reason`."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, "
                     f"got {implementation!r}")
  if implementation == "xla":
    return "xla"
  reason = cudnn_unfit_reason(**call)
  if implementation == "cudnn":
    if reason:
      raise ValueError(reason)
    return "cudnn"
  return "cudnn" if jax.default_backend() == "gpu" and reason is None else "xla"


def attention_mask(mask: Array | None, segment_ids: Array | None) -> Array | None:
  """Boolean [B, 1, L, L] (True = may attend) from a key keep-mask [B, L] and segment ids
  [B, L] (a token attends only within its own segment); None when neither is given. The causal
  part is not in it: the kernel takes it as a flag (cuDNN skips the masked blocks)."""
  out = None
  if mask is not None:
    out = mask.astype(bool)[:, None, None, :]
  if segment_ids is not None:
    same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    out = same if out is None else out & same
  return out


def apply_rope(x: Array, positions: Array, base: float) -> Array:
  """Rotary position embedding on x [B, L, N, D] at integer positions [B, L], in float32.

  The half-split form (LLaMA / Hugging Face `rotate_half`): dims i and i + D/2 rotate together
  by the angle position * base^(-2i/D).
  """
  d = x.shape[-1]
  if d % 2:
    raise ValueError(f"RoPE needs an even head dim, got {d}")
  half = d // 2
  inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, D/2]
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def dot_product_attention(q: Array, k: Array, v: Array, mask: Array | None, causal: bool,
                          implementation: str,
                          dropout: Callable[[Array], Array] | None = None) -> Array:
  """q [B, T, N, D], k and v [B, S, K, D] (N a multiple of K; query head n uses kv head
  n // (N/K)), boolean mask broadcastable to [B, N, T, S]. `dropout`, when given, acts on the
  attention weights; that needs the explicit path."""
  if dropout is not None:
    return _attend_explicit(q, k, v, mask, causal, dropout)
  if implementation == "cudnn":
    return _attend_even_lengths(q, k, v, mask, causal, implementation)
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                      implementation=implementation)


def _attend_even_lengths(q, k, v, mask, causal, implementation):
  """jax.nn.dot_product_attention with odd lengths padded to even ones, same result.

  cuDNN's fused kernel has no backward for an odd query or key length (MART's 393 tokens,
  BERT's odd texts) and takes a mask only as a bias with the full query length. One zero query
  row is appended and sliced off the output; one zero key is appended and hidden: by the
  kernel's padding lengths without a mask, by a False column with one (the appended query row
  keeps key 0, so no row is all-masked). Causal masks already hide a key appended at the end.
  """
  b, t = q.shape[:2]
  s = k.shape[1]
  pt, ps = t % 2, s % 2
  lengths = {}
  if pt or ps:
    q = jnp.pad(q, ((0, 0), (0, pt), (0, 0), (0, 0)))
    k, v = (jnp.pad(x, ((0, 0), (0, ps), (0, 0), (0, 0))) for x in (k, v))
    if mask is None and not causal:
      lengths = {"query_seq_lengths": jnp.full((b,), t, jnp.int32),
                 "key_value_seq_lengths": jnp.full((b,), s, jnp.int32)}
  if mask is not None:
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    mask = jnp.broadcast_to(mask, mask.shape[:2] + (t, s))
    if pt or ps:
      mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pt), (0, ps)))
      if pt:
        mask = mask.at[:, :, t, 0].set(True)
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                     implementation=implementation, **lengths)
  return out[:, :t]


def _probs(q, k, mask, causal, rows: int | None = None):
  """Softmax weights [B, K, G, R, S] (float32) of the first `rows` queries (None: all T), with
  the kernel's masking and precision; q [B, T, N, D], k [B, S, K, D]."""
  b, t, n, d = q.shape
  s, kh = k.shape[1], k.shape[2]
  r = t if rows is None else rows
  qg = q[:, :r].reshape(b, r, kh, n // kh, d)
  logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
  logits = logits * np.float32(1.0 / np.sqrt(d))
  keep = jnp.ones((t, s), bool)
  if causal:
    keep = jnp.tril(keep)
  keep = keep[None, None, None, :r]
  if mask is not None:  # [B|1, N|1, T, S] -> [B, K, G, R, S]
    m = jnp.broadcast_to(mask, (mask.shape[0], n, t, s))[:, :, :r]
    keep = keep & m.reshape(mask.shape[0], kh, n // kh, r, s)
  logits = jnp.where(keep, logits, np.float32(-0.7 * np.finfo(np.float32).max))
  return jax.nn.softmax(logits, axis=-1)


def _attend_explicit(q, k, v, mask, causal, dropout, return_weights=False):
  b, t, n, d = q.shape
  probs = _probs(q, k, mask, causal)
  weights = (dropout(probs) if dropout is not None else probs).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", weights, v).reshape(b, t, n, d)
  if return_weights:  # [B, N, T, S] float32, before dropout
    return out, probs.reshape(b, n, t, k.shape[1])
  return out


PROJECTION_ACTIVATIONS = (None, "relu")


class MultiHeadAttention(nn.Module):
  """Attention x [B, T, E] -> [B, T, E] with num_kv_heads <= num_heads key/value heads.

  __call__(x, mask=None, train=False, *, kv=None, segment_ids=None, positions=None,
  return_weights=False): keys and values come from `kv` [B, S, E'] (cross-attention) or from x
  (self-attention); `mask` [B, S] keeps keys (False = padding), `segment_ids` [B, T] confine
  self-attention to equal ids (packed sequences), `positions` [B, T] are RoPE's positions
  (default 0..T-1; self-attention only). `return_weights` also returns the attention weights
  [B, N, T, S] (float32; the explicit path), e.g. MART's CLS->patch and text->patch maps; with
  `weights_rows=R` only those of the first R queries, [B, N, R, S], from their own small
  logits product, while the output comes from the fused kernel as without weights (MART's
  CLS row: the explicit path over all 425 queries of its fusion blocks took ~16% of the
  ViT-B step on an H200). Weights are those before attention dropout either way.
  `projection_activation="relu"` applies ReLU after the q, k, v and output projections
  (MART's TACL cross-attention).
  """
  num_heads: int = 4
  head_dim: int = 16
  num_kv_heads: int | None = None  # None: num_heads (MHA); 1: MQA; else GQA
  bias: str = "all"  # BIAS_OPTIONS
  rope_base: float | None = None  # RoPE on q and k with this base (LLaMA-3: 5e5); None: off
  causal: bool = False
  dropout_rate: float = 0.0  # on the attention weights (BERT: 0.1)
  implementation: str = "auto"  # IMPLEMENTATIONS
  dtype: Any = jnp.float32  # compute dtype; parameters stay param_dtype
  param_dtype: Any = jnp.float32
  kernel_init: Callable = default_kernel_init
  projection_activation: str | None = None  # PROJECTION_ACTIVATIONS

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, train: bool = False, *,
               kv: Array | None = None, segment_ids: Array | None = None,
               positions: Array | None = None, return_weights: bool = False,
               weights_rows: int | None = None):
    if self.bias not in BIAS_OPTIONS:
      raise ValueError(f"attention bias must be one of {BIAS_OPTIONS}, got {self.bias!r}")
    if self.projection_activation not in PROJECTION_ACTIVATIONS:
      raise ValueError(f"projection_activation must be one of {PROJECTION_ACTIVATIONS}, got "
                       f"{self.projection_activation!r}")
    if kv is not None and (segment_ids is not None or self.rope_base is not None
                           or self.causal):
      raise ValueError("cross-attention (kv given) takes no segment_ids, RoPE or causal mask")
    act = jax.nn.relu if self.projection_activation == "relu" else (lambda t: t)
    source = x if kv is None else kv
    kv_heads = self.num_kv_heads or self.num_heads
    if self.num_heads % kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={kv_heads}")
    b, length, e = x.shape
    proj = lambda name, heads, axes, bias: Linear(
        (heads, self.head_dim), ("embed",) + axes, use_bias=bias, dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=self.kernel_init, name=name)
    q = act(proj("query", self.num_heads, ("heads", "kv"), self.bias != "none")(x))
    k = act(proj("key", kv_heads, ("kv_heads", "kv"), self.bias == "all")(source))
    v = act(proj("value", kv_heads, ("kv_heads", "kv"), self.bias != "none")(source))
    if self.rope_base is not None:
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(length), (b, length))
      q, k = (apply_rope(t, positions, self.rope_base) for t in (q, k))
    q = nn.with_logical_constraint(q, ("act_batch", "act_len", "act_heads", None))
    k = nn.with_logical_constraint(k, ("act_batch", "act_len", "act_kv_heads", None))
    v = nn.with_logical_constraint(v, ("act_batch", "act_len", "act_kv_heads", None))
    # Names for the remat policies that save projections / the attention output.
    q, k, v = (checkpoint_name(t, n)
               for t, n in ((q, "query_proj"), (k, "key_proj"), (v, "value_proj")))
    dropout = None
    if train and self.dropout_rate > 0:
      layer = nn.Dropout(self.dropout_rate, deterministic=False)
      dropout = lambda w: layer(w)
    m = attention_mask(mask, segment_ids)
    weights = None
    if weights_rows is not None and not 0 < weights_rows <= length:
      raise ValueError(f"weights_rows must be in 1..{length} (the query length), "
                       f"got {weights_rows}")
    if return_weights and weights_rows is None:
      o, weights = _attend_explicit(q, k, v, m, self.causal, dropout, return_weights=True)
    else:
      if return_weights:
        weights = _probs(q, k, m, self.causal, weights_rows).reshape(
            b, self.num_heads, weights_rows, source.shape[1])
      impl = resolve_implementation(
          self.implementation, dtype=q.dtype, head_dim=self.head_dim, q_len=length,
          kv_len=source.shape[1], masked=m is not None, train=train,
          dropout=dropout is not None)
      o = dot_product_attention(q, k, v, m, self.causal, impl, dropout)
    o = nn.with_logical_constraint(o, ("act_batch", "act_len", "act_heads", None))
    o = checkpoint_name(o, "attention_out")
    o = act(Linear((e,), ("heads", "kv", "embed"), n_in=2, use_bias=self.bias != "none",
                   dtype=self.dtype, param_dtype=self.param_dtype,
                   kernel_init=self.kernel_init, name="out")(o))
    return (o, weights) if return_weights else o
