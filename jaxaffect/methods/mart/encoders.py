"""MART's three encoders on the shared transformer stack (jaxaffect/nn/transformer.py).

- `VideoViT`: the VideoMAE ViT (tubelet patch embedding, fixed sin-cos positions, qkv without a
  key bias, pre-LN, `fc_norm` on the pooled token). MART's released model prepends a CLS token
  and then adds a sin-cos table one row longer (CLS at row 0, patch i at row i + 1); VideoMAE
  and Hugging Face's `VideoMAEModel` have no CLS (patch i at row i) and pool by the mean.
- `AudioSpectrogramTransformer`: AST's DeiT-distilled ViT (CLS + DIST tokens, learned position
  table, overlapping 16 x 16 patches with stride 10 over the [mel, time] plane); its output is
  the mean of CLS and DIST after the final norm.
- `BertEncoder`: BERT (post-LN, word + position + token-type embeddings, embedding LayerNorm, a
  padding mask, the tanh pooler).

Each runs one `TransformerStack` named "encoder" (scanned: params encoder/layers/...; scan=False:
encoder/layers_0, ...; `nn.transformer.stack_layers` converts). Converters from the Hugging Face
`transformers` layouts: `methods/mart/hf_convert.py`. Parameters are float32; `dtype` is the
compute dtype of the blocks.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect.nn.layers import Conv
from jaxaffect.nn.patches import PatchEmbed, sincos_table
from jaxaffect.nn.transformer import TransformerStack
from jaxaffect.nn.transformer_parts import LayerNorm, Linear

Array = jax.Array
VIDEO_POOLS = ("cls", "mean", "none")
_trunc02 = nn.initializers.truncated_normal(0.02)


def _stack(m: nn.Module, *, num_layers: int, norm_position: str, bias: str, norm_eps: float,
           dropout_rate: float = 0.0, attention_dropout_rate: float = 0.0) -> TransformerStack:
  if m.hidden_size % m.num_heads:
    raise ValueError(f"hidden_size={m.hidden_size} is not a multiple of num_heads={m.num_heads}")
  return TransformerStack(
      num_layers=num_layers, num_heads=m.num_heads, head_dim=m.hidden_size // m.num_heads,
      mlp_dim=m.mlp_dim, mlp="gelu", norm="layernorm", norm_eps=norm_eps,
      norm_position=norm_position, bias=bias, dropout_rate=dropout_rate,
      attention_dropout_rate=attention_dropout_rate, dtype=m.dtype, scan=m.scan,
      remat_policy=m.remat_policy, name="encoder")


def _token(m: nn.Module, name: str, size: int) -> Array:
  return m.param(name, nn.with_logical_partitioning(_trunc02, (None, None, "embed")),
                 (1, 1, size), jnp.float32)


class VideoViT(nn.Module):
  """VideoMAE ViT: video [B, T, H, W, C] (channels last, already normalised) ->
  {"tokens": [B, (1 +) N, E] (the last block's output; VideoMAE's final `norm` is Identity),
   "pooled": [B, E] (fc_norm of the CLS token or of the token mean; None when pool="none")}.

  MART's `vit_base_patch16_112`: the defaults (N = 8 * 7 * 7 = 392, with CLS 393 tokens).
  Hugging Face's VideoMAEModel: use_cls=False, pool="mean" (its fc_norm sits in
  VideoMAEForVideoClassification, PyTorch's default eps 1e-5), norm_eps from its config.
  Parameters: patch_embed {kernel [t, p, p, C, E], bias}, cls_token [1, 1, E] (use_cls),
  encoder (the stack), fc_norm (pool != "none"). The position table is a constant.
  """
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  patch_size: int = 16
  tubelet_size: int = 2
  num_frames: int = 16
  image_size: int = 112
  use_cls: bool = True  # MART prepends a CLS token (from DeiT-B distilled)
  pool: str = "cls"  # VIDEO_POOLS: fc_norm(tokens[:, 0]) (MART), fc_norm(mean) (VideoMAE), none
  norm_eps: float = 1e-6
  fc_norm_eps: float = 1e-6
  dropout_rate: float = 0.0
  scan: bool = True
  remat_policy: str = "none"
  dtype: Any = jnp.float32

  @property
  def num_patches(self) -> int:
    return ((self.num_frames // self.tubelet_size) * (self.image_size // self.patch_size) ** 2)

  @nn.compact
  def __call__(self, video: Array, train: bool = False) -> dict[str, Array | None]:
    if self.pool not in VIDEO_POOLS:
      raise ValueError(f"pool must be one of {VIDEO_POOLS}, got {self.pool!r}")
    b, t, h, w, _ = video.shape
    if (t, h, w) != (self.num_frames, self.image_size, self.image_size):
      raise ValueError(f"VideoViT expects [B, {self.num_frames}, {self.image_size}, "
                       f"{self.image_size}, C], got {video.shape}")
    p = self.patch_size
    x = PatchEmbed(self.hidden_size, (self.tubelet_size, p, p), dtype=jnp.float32,
                   name="patch_embed")(video.astype(jnp.float32))
    if self.use_cls:
      cls = jnp.broadcast_to(_token(self, "cls_token", self.hidden_size), (b, 1, self.hidden_size))
      x = jnp.concatenate([cls, x], axis=1)
    # Fixed table: as long as the sequence, so with CLS the patches sit at rows 1..N (MART).
    x = x + jnp.asarray(sincos_table(x.shape[1], self.hidden_size))[None]
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = _stack(self, num_layers=self.num_layers, norm_position="pre", bias="qv",
               norm_eps=self.norm_eps, dropout_rate=self.dropout_rate)(x, train=train)
    pooled = None
    if self.pool != "none":
      feat = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
      pooled = LayerNorm(self.fc_norm_eps, dtype=jnp.float32, name="fc_norm")(feat)
    return {"tokens": x, "pooled": pooled}


def ast_grid(num_mel_bins: int, num_frames: int, patch_size: int = 16, frequency_stride: int = 10,
             time_stride: int = 10) -> tuple[int, int]:
  """AST's patch grid (frequency, time): MART's 128 mel x 100 frames -> (12, 9); AudioSet's
  128 x 1024 -> (12, 101)."""
  return ((num_mel_bins - patch_size) // frequency_stride + 1,
          (num_frames - patch_size) // time_stride + 1)


class AudioSpectrogramTransformer(nn.Module):
  """AST: fbank [B, T frames, F mel] (AST's and Hugging Face's input layout) ->
  {"tokens": [B, 2 + F' * T', E] after the final norm, "pooled": mean of the CLS and DIST
  tokens [B, E]}.

  The patches are the [F, T] plane (AST transposes its input) cut into overlapping 16 x 16
  windows with strides (10, 10): a (12, 9) grid for MART's 128 x 100 segments, tokens in
  frequency-major order. Parameters: patch_embed {kernel [16, 16, 1, E], bias}, cls_token,
  dist_token [1, 1, E], pos_embed [1, 2 + F' * T', E] (CLS, DIST, then the grid), encoder,
  norm.
  """
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  patch_size: int = 16
  frequency_stride: int = 10
  time_stride: int = 10
  num_mel_bins: int = 128
  num_frames: int = 100  # MART: 100-frame segments
  norm_eps: float = 1e-6
  final_norm: bool = True  # False: tokens before `norm`, pooled None (MBT applies it later)
  dropout_rate: float = 0.0
  scan: bool = True
  remat_policy: str = "none"
  dtype: Any = jnp.float32

  @property
  def grid(self) -> tuple[int, int]:
    return ast_grid(self.num_mel_bins, self.num_frames, self.patch_size, self.frequency_stride,
                    self.time_stride)

  @nn.compact
  def __call__(self, fbank: Array, train: bool = False) -> dict[str, Array]:
    b, t, f = fbank.shape
    if (t, f) != (self.num_frames, self.num_mel_bins):
      raise ValueError(f"AST expects fbank [B, {self.num_frames}, {self.num_mel_bins}], "
                       f"got {fbank.shape}")
    plane = jnp.swapaxes(fbank.astype(jnp.float32), 1, 2)[..., None]  # [B, F, T, 1]
    k = self.patch_size
    x = Conv(self.hidden_size, (k, k), strides=(self.frequency_stride, self.time_stride),
             padding=(0, 0), kernel_init=nn.initializers.lecun_normal(),
             kernel_axes=(None, None, None, "embed"), name="patch_embed")(plane)
    x = x.reshape(b, -1, self.hidden_size)  # [B, F' * T', E], frequency-major
    e = self.hidden_size
    special = [jnp.broadcast_to(_token(self, n, e), (b, 1, e)) for n in ("cls_token", "dist_token")]
    x = jnp.concatenate([*special, x], axis=1)
    pos = self.param("pos_embed", nn.with_logical_partitioning(_trunc02, (None, None, "embed")),
                     (1, x.shape[1], e), jnp.float32)
    x = nn.Dropout(self.dropout_rate)(x + pos, deterministic=not train)
    x = _stack(self, num_layers=self.num_layers, norm_position="pre", bias="all",
               norm_eps=self.norm_eps, dropout_rate=self.dropout_rate)(x, train=train)
    if not self.final_norm:
      return {"tokens": x, "pooled": None}
    x = LayerNorm(self.norm_eps, dtype=jnp.float32, name="norm")(x)
    return {"tokens": x, "pooled": (x[:, 0] + x[:, 1]) / 2}


class BertEncoder(nn.Module):
  """BERT: input_ids [B, L] int, attention_mask [B, L] (1 = token, 0 = padding; None: all
  tokens), token_type_ids [B, L] (None: zeros) -> {"last_hidden_state": [B, L, E],
  "pooler_output": tanh(dense(hidden[:, 0])) [B, E] (None without the pooler)}.

  Padding keys are masked out of every attention; padded positions still get outputs (as in
  Hugging Face's BertModel). Parameters: word_embeddings, position_embeddings,
  token_type_embeddings ({"embedding"}), embeddings_ln, encoder (post-LN), pooler.
  """
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  max_positions: int = 512
  type_vocab_size: int = 2
  norm_eps: float = 1e-12
  pooler: bool = True
  dropout_rate: float = 0.1  # hidden_dropout_prob (train only)
  attention_dropout_rate: float = 0.1  # attention_probs_dropout_prob (train only)
  scan: bool = True
  remat_policy: str = "none"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask: Array | None = None,
               token_type_ids: Array | None = None, train: bool = False
               ) -> dict[str, Array | None]:
    b, length = input_ids.shape
    if length > self.max_positions:
      raise ValueError(f"BERT takes at most {self.max_positions} tokens, got {length}")
    embed = lambda n, rows: nn.Embed(
        rows, self.hidden_size, embedding_init=nn.with_logical_partitioning(
            _trunc02, ("vocab" if n == "word_embeddings" else None, "embed")), name=n)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = (embed("word_embeddings", self.vocab_size)(input_ids)
         + embed("token_type_embeddings", self.type_vocab_size)(token_type_ids)
         + embed("position_embeddings", self.max_positions)(jnp.arange(length))[None])
    x = LayerNorm(self.norm_eps, dtype=jnp.float32, name="embeddings_ln")(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = _stack(self, num_layers=self.num_layers, norm_position="post", bias="all",
               norm_eps=self.norm_eps, dropout_rate=self.dropout_rate,
               attention_dropout_rate=self.attention_dropout_rate)(x, attention_mask, train)
    pooled = None
    if self.pooler:
      pooled = jnp.tanh(Linear((self.hidden_size,), ("embed", "mlp"), dtype=jnp.float32,
                               name="pooler")(x[:, 0]))
    return {"last_hidden_state": x, "pooler_output": pooled}
