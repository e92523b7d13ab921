"""The shared transformer: one block (pre- or post-LN) and a stack of identical blocks.

`TransformerStack` runs its blocks through `nn.scan` (one trace and one compile of the block
whatever the depth; parameters get a leading "layers" logical axis) or, with scan=False, a
Python loop (parameters "layers_0", "layers_1", ...: converters and debugging; the same numbers,
`stack_layers`/`unstack_layers` map one layout to the other). Each block is wrapped in
`nn.remat` with a policy named by a string (REMAT_POLICIES).

FSDP: every weight is gathered where it is used (`sharding.gather_for_compute`), so inside the
scan XLA all-gathers one layer's weights per iteration and reduce-scatters their gradients
there; the train step leaves parameters with the "layers" axis to this per-layer gather
(steps.py, docs/architecture.md "Sharding").

Parameters of one block (flat, like the original block's): ln_attn, query, key, value, out,
ln_mlp, mlp_in, [mlp_gate,] mlp_out.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect import sharding
from jaxaffect.nn.attention import MultiHeadAttention
from jaxaffect.nn.transformer_parts import Mlp, default_kernel_init, make_norm

Array = jax.Array

_cp = jax.checkpoint_policies
# Remat policy names (config strings) -> what the backward pass keeps of a block's forward.
# "none": everything; "full": nothing, the block's forward is recomputed; the dots policies keep
# matmul outputs; the save_* ones keep the named tensors of MultiHeadAttention (query_proj,
# key_proj, value_proj, attention_out) and recompute the rest. Under every policy, "none"
# included, FSDP-gathered weights are re-gathered, never kept (sharding.never_save_gathered).
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": _cp.nothing_saveable,
    "dots_saveable": _cp.dots_saveable,
    "dots_with_no_batch_dims_saveable": _cp.dots_with_no_batch_dims_saveable,
    "save_attention_out": _cp.save_only_these_names("attention_out"),
    "save_qkv_attention_out": _cp.save_only_these_names("query_proj", "key_proj", "value_proj",
                                                        "attention_out"),
}
NORM_POSITIONS = ("pre", "post")


def remat_policy(name: str):
  """The jax.checkpoint policy of a remat policy name (REMAT_POLICIES)."""
  if name not in REMAT_POLICIES:
    raise ValueError(f"remat policy must be one of {', '.join(REMAT_POLICIES)}, got {name!r}")
  return sharding.never_save_gathered(REMAT_POLICIES[name])


class _BlockFields(nn.Module):
  """The hyperparameters of one block, shared by TransformerBlock and TransformerStack."""
  num_heads: int = 4
  head_dim: int = 16
  mlp_dim: int = 256
  num_kv_heads: int | None = None  # None: num_heads (MHA); 1: MQA; else GQA
  mlp: str = "gelu"  # transformer_parts.MLP_KINDS: gelu (exact), gelu_tanh, swiglu
  norm: str = "layernorm"  # or "rmsnorm"
  norm_eps: float = 1e-6
  norm_position: str = "pre"  # "pre": x + f(LN(x)) (ViT, LLaMA); "post": LN(x + f(x)) (BERT)
  bias: str = "all"  # attention.BIAS_OPTIONS; "none" also drops the MLP biases (LLaMA)
  rope_base: float | None = None
  causal: bool = False
  dropout_rate: float = 0.0  # on the residual branches (attention and MLP outputs)
  attention_dropout_rate: float = 0.0  # on the attention weights
  implementation: str = "auto"  # attention kernel: auto, xla, cudnn
  dtype: Any = jnp.float32  # compute dtype (bfloat16 on accelerators)
  param_dtype: Any = jnp.float32
  kernel_init: Callable = default_kernel_init

  def block_fields(self) -> dict:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(_BlockFields)
            if f.name not in ("parent", "name")}


class TransformerBlock(_BlockFields):
  """x [B, L, E] -> [B, L, E]. __call__(x, mask=None, train=False, *, segment_ids=None,
  positions=None, return_weights=False, weights_rows=None): the arguments of
  MultiHeadAttention; with return_weights, (x, attention weights [B, N, L or weights_rows, L]
  float32)."""

  def setup(self):
    if self.norm_position not in NORM_POSITIONS:
      raise ValueError(f"norm_position must be one of {NORM_POSITIONS}, "
                       f"got {self.norm_position!r}")
    self.attn = MultiHeadAttention(
        num_heads=self.num_heads, head_dim=self.head_dim, num_kv_heads=self.num_kv_heads,
        bias=self.bias, rope_base=self.rope_base, causal=self.causal,
        dropout_rate=self.attention_dropout_rate, implementation=self.implementation,
        dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init)
    self.ffn = Mlp(self.mlp_dim, self.mlp, use_bias=self.bias != "none", dtype=self.dtype,
                   param_dtype=self.param_dtype, kernel_init=self.kernel_init)
    # Their parameters sit directly in this block's scope (query, ..., mlp_in, ...).
    nn.share_scope(self, self.attn)
    nn.share_scope(self, self.ffn)
    self.ln_attn = make_norm(self.norm, self.norm_eps, self.dtype, self.param_dtype)
    self.ln_mlp = make_norm(self.norm, self.norm_eps, self.dtype, self.param_dtype)
    self.drop = nn.Dropout(self.dropout_rate)

  def __call__(self, x: Array, mask: Array | None = None, train: bool = False, *,
               segment_ids: Array | None = None, positions: Array | None = None,
               return_weights: bool = False, weights_rows: int | None = None):
    stream_dtype = x.dtype  # the residual stream keeps the input's dtype (the scan carry)
    x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_emb"))
    weights = []

    def attn(h):
      out = self.attn(h, mask, train, segment_ids=segment_ids, positions=positions,
                      return_weights=return_weights, weights_rows=weights_rows)
      if return_weights:
        out, w = out
        weights.append(w)
      return out

    drop = lambda h: self.drop(h, deterministic=not train)
    if self.norm_position == "pre":
      x = x + drop(attn(self.ln_attn(x)))
      x = x + drop(self.ffn(self.ln_mlp(x)))
    else:
      x = self.ln_attn(x + drop(attn(x)))
      x = self.ln_mlp(x + drop(self.ffn(x)))
    x = nn.with_logical_constraint(x.astype(stream_dtype), ("act_batch", "act_len", "act_emb"))
    return (x, weights[0]) if return_weights else x


class _Layer(TransformerBlock):
  """One block in the (scan, remat) body form: (x, extras) -> (x, None), train as a field."""
  deterministic: bool = True

  def __call__(self, x, extras):
    mask, segment_ids, positions = extras
    return super().__call__(x, mask, not self.deterministic, segment_ids=segment_ids,
                            positions=positions), None


def repeat_layer(layer_cls, kwargs: dict, carry, extras, *, num_layers: int, scan: bool,
                 policy: str, name: str):
  """`num_layers` instances of `layer_cls(**kwargs)`, a (carry, extras) -> (carry, None)
  module, applied in turn inside the calling module: one nn.scan (parameters `name/...` with
  the "layers" axis, so FSDP gathers them per layer) or a loop (`name_0`, ...). Each is an
  nn.remat with the named remat `policy`, "none" too: it is what keeps gathered weights out of the
  residuals; prevent_cse only matters outside scan (a loop body is not CSE'd with its
  transpose). Returns (carry, None)."""
  layer = nn.remat(layer_cls, policy=remat_policy(policy), prevent_cse=not scan)
  if scan:
    layer = nn.scan(layer, variable_axes={"params": 0},
                    split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast,
                    length=num_layers, metadata_params={nn.PARTITION_NAME: sharding.LAYERS_AXIS})
    return layer(name=name, **kwargs)(carry, extras)
  for i in range(num_layers):
    carry, _ = layer(name=f"{name}_{i}", **kwargs)(carry, extras)
  return carry, None


class TransformerStack(_BlockFields):
  """num_layers identical TransformerBlocks; __call__ as TransformerBlock's. A pre-LN stack
  returns the residual stream: the final norm belongs to the model (ViT's fc_norm, LLaMA's
  norm). Dropout draws differ between scan=True and scan=False (per-layer RNG streams)."""
  num_layers: int = 2
  scan: bool = True
  remat_policy: str = "none"  # REMAT_POLICIES

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None, train: bool = False, *,
               segment_ids: Array | None = None, positions: Array | None = None) -> Array:
    kwargs = dict(self.block_fields(), deterministic=not train)
    x, _ = repeat_layer(_Layer, kwargs, x, (mask, segment_ids, positions),
                        num_layers=self.num_layers, scan=self.scan,
                        policy=self.remat_policy, name="layers")
    return x


def unstack_layers(params: dict, num_layers: int, name: str = "layers") -> dict:
  """A scanned stack's params (params[name] with a leading layer axis) in the unscanned layout
  (name_0, name_1, ...); other entries are kept."""
  out = {k: v for k, v in params.items() if k != name}
  for i in range(num_layers):
    out[f"{name}_{i}"] = jax.tree.map(lambda a: a[i], params[name])
  return out


def stack_layers(params: dict, num_layers: int, name: str = "layers") -> dict:
  """The inverse of unstack_layers: name_0 ... name_{n-1} -> params[name] stacked on axis 0."""
  per_layer = [params[f"{name}_{i}"] for i in range(num_layers)]
  out = {k: v for k, v in params.items() if not any(k == f"{name}_{i}"
                                                    for i in range(num_layers))}
  out[name] = jax.tree.map(lambda *a: jnp.stack(a), *per_layer)
  return out
