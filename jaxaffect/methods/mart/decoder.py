"""MART's reconstruction decoder (VideoMAE's): the encoder's patch tokens, with the masked ones
replaced by a learned mask token (MART masks encoder OUTPUTS, not inputs), are projected to
the decoder width, given fixed sin-cos positions, run through a pre-LN stack with q/v biases and
projected to the normalised pixels of each tubelet (2 x 16 x 16 x 3 = 1536)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect.nn import patches
from jaxaffect.nn.transformer import TransformerStack
from jaxaffect.nn.transformer_parts import LayerNorm, Linear

Array = jax.Array


def apply_mask_token(tokens: Array, mask: Array, mask_token: Array) -> Array:
  """tokens [B, N, E] with those where mask [B, N] is True replaced by mask_token [E]."""
  return jnp.where(mask[..., None], mask_token.astype(tokens.dtype), tokens)


class MAEDecoder(nn.Module):
  """[B, N, E_encoder] -> [B, N, out_dim]. MART's sizes are the defaults (brief: 512 wide, 8
  blocks of 16 heads, MLP 2048, LayerNorm eps 1e-5 (PyTorch's default, as the release's Block
  and decoder_norm), Xavier-uniform linears with zero bias);
  the fixed position table has `num_tokens` rows (392 tubelets of a 16 x 112 x 112 clip)."""
  num_tokens: int = 392
  width: int = 512
  depth: int = 8
  num_heads: int = 16
  mlp_dim: int = 2048
  out_dim: int = 1536
  scan: bool = True
  remat_policy: str = "none"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: Array, train: bool = False) -> Array:
    if tokens.shape[1] != self.num_tokens:
      raise ValueError(f"decoder: {tokens.shape[1]} tokens, its position table has "
                       f"{self.num_tokens}")
    x = Linear((self.width,), ("embed", None), dtype=self.dtype, name="embed")(tokens)
    x = x + jnp.asarray(patches.sincos_table(self.num_tokens, self.width), x.dtype)
    x = TransformerStack(num_layers=self.depth, num_heads=self.num_heads,
                         head_dim=self.width // self.num_heads, mlp_dim=self.mlp_dim,
                         bias="qv", norm_eps=1e-5, scan=self.scan,
                         remat_policy=self.remat_policy, dtype=self.dtype, name="blocks")(
                             x, train=train)
    x = LayerNorm(eps=1e-5, dtype=self.dtype, name="norm")(x)
    return Linear((self.out_dim,), ("embed", None), dtype=self.dtype, name="head")(x)
