"""MART's audio-visual backbone as released (models/mbt/MBT.py): a VideoMAE ViT and an AST whose
last `fusion_layers` blocks exchange information through bottleneck tokens (MBT).

Per clip (one segment of a video): the video runs the first L - F ViT blocks alone, the audio
the first L - F AST blocks alone (frozen in the release: no gradient reaches the AST embedding
or those blocks); then, in each of the last F blocks, `bottleneck_tokens` learned tokens are
appended to each stream ([video ; bottleneck], [audio ; bottleneck]), each stream runs its own
block, and the new bottleneck is the mean of the two updated copies. Release sizes: L = 12,
F = 4, 32 tokens, width 768.

Outputs per clip, `MBT.__call__(video, fbank, train, with_attention)`:
  video_tokens [N, 1 + Nv, E]  the video stream after the last block (VideoMAE's final norm is
                               the identity); token 0 is CLS.
  audio_tokens [N, 2 + Na, E]  after AST's final `norm` (tokens 0, 1 = CLS, DIST).
  video_cls    [N, E]          the raw CLS token (MART's stage-1 classifier reads this).
  video_pooled [N, E]          fc_norm(CLS) (the fine-tuning and evaluation path).
  audio_pooled [N, E]          mean of the normed CLS and DIST tokens.
  intra_attention [N, Nv]      (with_attention) CLS -> patch attention of the last video block,
                               mean over heads; softmax over video + bottleneck keys, then the
                               patch columns kept, as the release crops it. float32, no grad.
  logits_a, logits_v [N, C]     the heads a_fc(audio_pooled), v_fc(video_pooled), per clip; a
                               video's prediction is the sum of their segment means (the heads
                               are affine: the release applies them to segment-mean features).
  logits_v_raw_cls [N, C]      v_fc of the raw CLS (MART stage 1's classifier, no fc_norm).

Parameters: video/{patch_embed, cls_token, encoder/layers (L - F)}, audio/{patch_embed,
cls_token, dist_token, pos_embed, encoder/layers (L - F)}, fusion/layers/{video, audio}
(F blocks, scanned), bottleneck [1, T, E], video_fc_norm, audio_norm, v_fc, a_fc. The
released `v_s_fc`/`a_s_fc` sentiment heads are never used in its losses and are not built.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect import sharding
from jaxaffect.methods.mart.encoders import AudioSpectrogramTransformer, VideoViT
from jaxaffect.nn.transformer import TransformerBlock, repeat_layer
from jaxaffect.nn.transformer_parts import LayerNorm, Linear

Array = jax.Array
# The release feeds 0-255 frames and normalises inside the model: x / 255 - 100 / 255.
PIXEL_SCALE = 255.0
PIXEL_MEAN = 100.0 / 255.0


def normalize_frames(video: Array) -> Array:
  """uint8 or 0-255 float frames -> the release's model input x / 255 - 100 / 255 (float32)."""
  return video.astype(jnp.float32) / PIXEL_SCALE - PIXEL_MEAN


class _FusionLayer(nn.Module):
  """One MBT fusion block pair in scan form: carry (video, audio, bottleneck, intra) -> same."""
  video_fields: dict
  audio_fields: dict
  with_attention: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, carry, _):
    xv, xa, bottleneck, intra = carry
    tv, ta = xv.shape[1], xa.shape[1]
    train = not self.deterministic
    # The release runs the audio block first; both read the same incoming bottleneck.
    ab = TransformerBlock(**self.audio_fields, name="audio")(
        jnp.concatenate([xa, bottleneck.astype(xa.dtype)], axis=1), train=train)
    vb_in = jnp.concatenate([xv, bottleneck.astype(xv.dtype)], axis=1)
    video_block = TransformerBlock(**self.video_fields, name="video")
    if self.with_attention:
      # Only the CLS row is needed: the block's output keeps the fused attention kernel.
      vb, weights = video_block(vb_in, train=train, return_weights=True, weights_rows=1)
      # CLS row, patch columns (1..tv-1) of the softmax over all keys, mean over heads.
      intra = jax.lax.stop_gradient(jnp.mean(weights[:, :, 0, 1:tv], axis=1))
    else:
      vb = video_block(vb_in, train=train)
    bottleneck = (ab[:, ta:].astype(jnp.float32) + vb[:, tv:].astype(jnp.float32)) / 2
    return (vb[:, :tv], ab[:, :ta], bottleneck.astype(xv.dtype), intra), None


class MBT(nn.Module):
  """See the module docstring. video [N, 16, 112, 112, 3] (0-255), fbank [N, 100, 128]
  (AST-normalised); N = videos x segments."""
  num_classes: int = 8
  hidden_size: int = 768
  num_heads: int = 12
  mlp_dim: int = 3072
  num_layers: int = 12
  fusion_layers: int = 4
  bottleneck_tokens: int = 32
  num_frames: int = 16
  image_size: int = 112
  patch_size: int = 16
  tubelet_size: int = 2
  num_mel_bins: int = 128
  audio_frames: int = 100
  freeze_audio_lower: bool = True  # the release's no_grad over AST's embedding + lower blocks
  scan: bool = True
  remat_policy: str = "none"
  dtype: Any = jnp.float32

  def setup(self):
    if not 0 < self.fusion_layers <= self.num_layers:
      raise ValueError(f"fusion_layers must be in 1..num_layers={self.num_layers}, got "
                       f"{self.fusion_layers}")
    common = dict(hidden_size=self.hidden_size, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                  num_layers=self.num_layers - self.fusion_layers, scan=self.scan,
                  remat_policy=self.remat_policy, dtype=self.dtype)
    self.video = VideoViT(**common, patch_size=self.patch_size, tubelet_size=self.tubelet_size,
                          num_frames=self.num_frames, image_size=self.image_size, use_cls=True,
                          pool="none")
    self.audio = AudioSpectrogramTransformer(**common, num_mel_bins=self.num_mel_bins,
                                             num_frames=self.audio_frames, final_norm=False)
    self.bottleneck = self.param(
        "bottleneck", nn.with_logical_partitioning(nn.initializers.truncated_normal(0.02),
                                                   (None, None, "embed")),
        (1, self.bottleneck_tokens, self.hidden_size), jnp.float32)
    self.video_fc_norm = LayerNorm(1e-6, dtype=jnp.float32)
    self.audio_norm = LayerNorm(1e-6, dtype=jnp.float32)
    head = lambda: Linear((self.num_classes,), ("embed", "classes"), dtype=jnp.float32)
    self.v_fc = head()
    self.a_fc = head()

  def _block_fields(self, bias: str) -> dict:
    return dict(num_heads=self.num_heads, head_dim=self.hidden_size // self.num_heads,
                mlp_dim=self.mlp_dim, mlp="gelu", norm="layernorm", norm_eps=1e-6,
                norm_position="pre", bias=bias, dtype=self.dtype)

  def _fuse(self, xv, xa, with_attention: bool, train: bool):
    kwargs = dict(video_fields=self._block_fields("qv"), audio_fields=self._block_fields("all"),
                  with_attention=with_attention, deterministic=not train)
    n = xv.shape[0]
    carry = (xv, xa, jnp.broadcast_to(sharding.gather_for_compute(
                 self.bottleneck, (None, None, "embed"), jnp.float32),
                 (n,) + self.bottleneck.shape[1:]).astype(xv.dtype),
             jnp.zeros((n, xv.shape[1] - 1), jnp.float32))
    carry, _ = repeat_layer(_FusionLayer, kwargs, carry, None, num_layers=self.fusion_layers,
                            scan=self.scan, policy=self.remat_policy, name="fusion_layers")
    return carry

  @nn.compact
  def __call__(self, video: Array, fbank: Array, train: bool = False,
               with_attention: bool = False) -> dict[str, Array]:
    xv = self.video(normalize_frames(video), train=train)["tokens"]
    xa = self.audio(fbank, train=train)["tokens"]
    if self.freeze_audio_lower:
      xa = jax.lax.stop_gradient(xa)
    xv, xa, _, intra = self._fuse(xv, xa, with_attention, train)
    xa = self.audio_norm(xa)
    cls = xv[:, 0]
    pooled_v = self.video_fc_norm(cls)
    pooled_a = (xa[:, 0] + xa[:, 1]) / 2
    out = {"video_tokens": xv, "audio_tokens": xa, "video_cls": cls, "video_pooled": pooled_v,
           "audio_pooled": pooled_a,
           # Per-clip head outputs: the heads are affine, so their segment mean equals the
           # release's head of the segment-mean feature (up to float rounding).
           "logits_a": self.a_fc(pooled_a.astype(jnp.float32)),
           "logits_v": self.v_fc(pooled_v.astype(jnp.float32)),
           "logits_v_raw_cls": self.v_fc(cls.astype(jnp.float32))}
    if with_attention:
      out["intra_attention"] = intra
    return out


def segment_mean(x: Array, num_segments: int) -> Array:
  """[B * Ns, ...] (video-major) -> [B, ...]: the mean over each video's segments."""
  return x.reshape((-1, num_segments) + x.shape[1:]).mean(axis=1)
