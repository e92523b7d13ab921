"""CTEN (Zhang et al., CVPR 2023): segment features, intra- and inter-modal relations, temporal
attention. The erasing that makes the three training views lives in `erasing.py` and the
method's loss; this module is one forward of one view.

Shapes (B videos, S segments, C = 2048 the backbone width, E the audio width):
  video uint8 [B,S,T,H,W,3] -> normalise -> frozen 3D ResNet per snippet -> mean over its
    T'xH'xW' map (the Hara AvgPool3d over the whole layer4 map) -> v [B,S,C]
  audio fbank [B,S,F,M] -> ResNet-18 (7,1) stem, AvgPool2d(4,8) -> a_fc (Linear+BN+tanh) -> a [B,S,E]
  intra (non-local over segments, per modality): Z = softmax(theta(x) phi(x)^T / sqrt(d)) g(x)
    paper:  x + BN(W Z)            legacy_code: BN(W Z) + alpha x, alpha a learned scalar from 0
  inter (cross-attention over segments, 8 heads):
    paper:  v + W_v Att(Q=v, K=a, V=a), and a + W_a Att(Q=a, K=v, V=v)
    legacy_code: v + Att(Q=a, K=v, V=v), a + Att(Q=v, K=a, V=a), every projection ReLU'd
  paper: intra and inter are two branches on the same input, F' + F'' - F = F + WZ + WU, then a
    temporal attention per modality (gamma_v, gamma_a) and the weighted means concatenated;
  legacy_code: intra then inter in sequence, then one joint temporal attention over the
    concatenated [B,S,C+E] features (gamma_v = gamma_a = that one).
  temporal attention: VAANet's (nn.pooling_attention): relu(fc_S(tanh(BN(conv_D(x))))) [B,S]
  logits = fc(dropout(concat of weighted means over S)).

Param tree, named after VAANetErase's state_dict ("nl.0" -> nl_0, "a_fc.1" -> a_fc_1):
  visual_backbone/ (ResNet3D)  nl_0/{theta,phi,g,out,bn[,alpha]}  ta_net/{conv_0,conv_1,fc}  fc
  with audio: audio_backbone/ (ResNet2D)  a_fc_0  a_fc_1  nl_a_0/...
    v2a_attn/{linear_q,linear_k,linear_v,linear_o} (the one that updates v)  a2v_attn/...
    paper only: ta_net_a/ (the audio temporal attention)
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxaffect.nn.layers import (BatchNorm, dense, kaiming_normal_fan_out,
                                 torch_default_bias_init, torch_default_kernel_init)
from jaxaffect.nn.pooling_attention import AttentionNet
from jaxaffect.nn.resnet2d import ResNet2D
from jaxaffect.nn.resnet3d import ResNet3D, normalize_video

Array = jax.Array

BACKBONE_BN_POLICIES = ("batch_stats", "running")


def _constrain(x: Array, *rest: str | None) -> Array:
  return nn.with_logical_constraint(x, ("act_batch", *rest))


class NonLocal(nn.Module):
  """Self-attention over the segments of x [B, S, D] (the intra-modal relation)."""
  inner: int = 256
  legacy_residual: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool) -> Array:
    d = x.shape[-1]
    proj = {n: dense(self.inner, fan_in=d, dtype=self.dtype, name=n)(x)
            for n in ("theta", "phi", "g")}
    logits = jnp.einsum("bsi,bti->bst", proj["theta"], proj["phi"],
                        preferred_element_type=jnp.float32) / np.sqrt(self.inner)
    p = jax.nn.softmax(logits, axis=-1).astype(proj["g"].dtype)
    z = jnp.einsum("bst,bti->bsi", p, proj["g"])
    y = dense(d, axes=("mlp", "embed"), fan_in=self.inner, dtype=self.dtype, name="out")(z)
    y = BatchNorm(dtype=self.dtype, name="bn")(y, use_running_average)
    if self.legacy_residual:  # VAANetErase: the residual gated by alpha, which starts at 0
      alpha = self.param("alpha", nn.initializers.zeros_init(), (1,), jnp.float32)
      return y + alpha.astype(y.dtype) * x
    return x + y


class CrossAttention(nn.Module):
  """Multi-head attention of `query` [B, S, D] over `kv` [B, S', D] (8 heads as released);
  `relu` applies ReLU after each of the four projections, as VAANetErase's MultiHeadAttentionOp."""
  num_heads: int = 8
  relu: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, query: Array, kv: Array) -> Array:
    d = query.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"cross-attention width {d} is not divisible by {self.num_heads} heads")
    act = nn.relu if self.relu else (lambda x: x)

    def proj(name, x, axes=("embed", "mlp")):
      return act(dense(d, axes=axes, fan_in=d, dtype=self.dtype, name=name)(x))

    h = self.num_heads
    q, k, v = (proj(n, x).reshape(x.shape[:2] + (h, d // h))
               for n, x in (("linear_q", query), ("linear_k", kv), ("linear_v", kv)))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                        preferred_element_type=jnp.float32) / np.sqrt(d // h)
    w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    o = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(query.shape[:2] + (d,))
    return proj("linear_o", o, ("mlp", "embed"))


class CTEN(nn.Module):
  """CTEN; `__call__(video|video_features, audio, train)` -> dict(logits, gamma, gamma_audio,
  v, a) for one view. The method's loss calls `encode` once and `head` per view.

  Defaults are the paper's model (intra residual F + W Z, inter with the paper's roles, one
  temporal attention per modality) at the released code's sizes (16 segments of 16 frames at
  112 px, 3D ResNet-101, ResNet-18 on 16 x 100 x 128 fbank, audio width 2048).
  legacy_code: VAANetErase's forms (module docstring). use_audio=False is the visual stream
    alone (with legacy_code: VisualErase); use_visual=False the audio stream alone (the
    paper's audio rows of its Table 2; the release has no such model, so not with legacy_code):
    no 3D ResNet, the audio temporal attention is the one erasing reads.
  use_intra / use_inter: the paper's ablation rows (inter needs audio).
  attention_init: "vaanet" (kaiming fan-out conv, temporal fc bias 1: VAANet's, which CTEN
    follows) or "torch" (PyTorch's defaults: the released code never calls its init).
  backbone_bn: as VAANet's ("batch_stats" = the released train-mode BatchNorm of the frozen
    backbone, "running" = its running statistics always).
  train_backbone: let the gradient into the 3D ResNet (the synthetic variants, which have no
    pretrained weights); off = frozen, as released.
  """
  num_classes: int = 8
  num_segments: int = 16
  visual_depth: int = 101
  visual_width: int = 64
  conv1_t_size: int = 7
  audio_depth: int = 18
  audio_width: int = 64
  audio_pool_window: Sequence[int] | None = (4, 8)
  audio_dim: int = 2048
  nonlocal_dim: int = 256
  num_heads: int = 8
  use_audio: bool = True
  use_visual: bool = True
  use_intra: bool = True
  use_inter: bool = True
  legacy_code: bool = False
  attention_init: str = "vaanet"
  dropout_rate: float = 0.2
  backbone_bn: str = "batch_stats"
  train_backbone: bool = False
  normalization: str = "vaanet_legacy"
  conv_impl: str = "auto"
  dtype: Any = jnp.float32

  @property
  def visual_dim(self) -> int:
    """C: the backbone's layer4 width (2048 for ResNet-101)."""
    return self.visual_width * 8 * (4 if self.visual_depth >= 50 else 1)

  def setup(self):
    if self.backbone_bn not in BACKBONE_BN_POLICIES:
      raise ValueError(f"backbone_bn must be one of {BACKBONE_BN_POLICIES}, "
                       f"got {self.backbone_bn!r}")
    if self.attention_init not in ("vaanet", "torch"):
      raise ValueError(f"attention_init must be 'vaanet' or 'torch', got {self.attention_init!r}")
    if self.use_inter and not (self.use_audio and self.use_visual):
      raise ValueError("use_inter needs use_audio and use_visual (the inter-modal relation "
                       "is cross-modal)")
    if not (self.use_audio or self.use_visual):
      raise ValueError("CTEN needs use_visual or use_audio")
    if self.legacy_code and not self.use_visual:
      raise ValueError("legacy_code has no audio-only model (the release's are VAANetErase "
                       "and VisualErase); use_visual=False needs the paper's forms")
    if self.legacy_code and self.use_inter and self.audio_dim != self.visual_dim:
      raise ValueError(f"legacy_code adds audio-queried attention to v: audio_dim "
                       f"({self.audio_dim}) must equal visual_dim ({self.visual_dim})")
    cdt = jnp.dtype(self.dtype)
    if self.use_visual:
      self.visual_backbone = ResNet3D(self.visual_depth, self.visual_width,
                                      conv1_t_size=self.conv1_t_size,
                                      conv_impl=self.conv_impl, dtype=cdt)
      if self.use_intra:
        self.nl_0 = NonLocal(self.nonlocal_dim, self.legacy_code, dtype=cdt)
    if self.use_audio:
      self.audio_backbone = ResNet2D(self.audio_depth, self.audio_width,
                                     pool_window=self.audio_pool_window, dtype=cdt)
      self.a_fc_0 = dense(self.audio_dim, fan_in=self.audio_width * 8, dtype=cdt)
      self.a_fc_1 = BatchNorm(dtype=cdt)
      if self.use_intra:
        self.nl_a_0 = NonLocal(self.nonlocal_dim, self.legacy_code, dtype=cdt)
    if self.use_inter:
      self.v2a_attn = CrossAttention(self.num_heads, relu=self.legacy_code, dtype=cdt)
      self.a2v_attn = CrossAttention(self.num_heads, relu=self.legacy_code, dtype=cdt)
    s = self.num_segments
    if self.attention_init == "vaanet":
      ta = dict(conv_init=kaiming_normal_fan_out, fc_bias=True,
                fc_bias_init=nn.initializers.constant(1.0))
    else:
      ta = dict(conv_init=torch_default_kernel_init, fc_bias=True,
                fc_bias_init=torch_default_bias_init(s))
    if self.use_visual:
      self.ta_net = AttentionNet(**ta, dtype=cdt)
    if self.use_audio and not self.legacy_code:
      self.ta_net_a = AttentionNet(**ta, dtype=cdt)
    width = ((self.visual_dim if self.use_visual else 0)
             + (self.audio_dim if self.use_audio else 0))
    self.dropout = nn.Dropout(self.dropout_rate)
    self.fc = dense(self.num_classes, axes=("embed", "classes"), fan_in=width, dtype=jnp.float32)

  # ---- per-segment features -------------------------------------------------------------------
  def encode_visual(self, video: Array, train: bool) -> Array:
    """uint8 [B, S, T, H, W, 3] -> [B, S, C] (no gradient unless train_backbone)."""
    if video.ndim != 6 or video.shape[-1] != 3:
      raise ValueError(f"video must be [B, S, T, H, W, 3], got {video.shape}")
    b, s = video.shape[:2]
    x = normalize_video(video, self.normalization).astype(jnp.dtype(self.dtype))
    x = _constrain(x.reshape((b * s,) + video.shape[2:]), None, None, None, None)
    ura = not train if self.backbone_bn == "batch_stats" else True
    y = self.visual_backbone(x, use_running_average=ura)
    y = jnp.mean(y.astype(jnp.float32), axis=(1, 2, 3)).reshape(b, s, -1)  # Hara's AvgPool3d
    return y if self.train_backbone else jax.lax.stop_gradient(y)

  def encode_audio(self, audio: Array, train: bool) -> Array:
    """fbank [B, S, F, M] -> [B, S, E] (the audio branch trains)."""
    if audio.ndim != 4:
      raise ValueError(f"audio must be [B, S, F, M], got {audio.shape}")
    b, s = audio.shape[:2]
    a = audio.astype(jnp.dtype(self.dtype)).reshape(b * s, audio.shape[2], audio.shape[3], 1)
    a = self.audio_backbone(_constrain(a, None, None, None), use_running_average=not train)
    a = jnp.tanh(self.a_fc_1(self.a_fc_0(a), not train))
    return a.reshape(b, s, -1)

  def encode(self, video: Array | None, audio: Array | None, train: bool,
             video_features: Array | None = None) -> tuple[Array | None, Array | None]:
    """(v [B, S, C] float32 or None (use_visual=False: any video is ignored), a [B, S, E] or
    None); `video_features` [B, S, C] (a cache of the frozen backbone's pooled outputs)
    replaces `video`."""
    if not self.use_visual:
      if audio is None:
        raise ValueError("audio [B, S, F, M] is needed when use_visual=False")
      if audio.shape[1] != self.num_segments:
        raise ValueError(f"audio has {audio.shape[1]} segments, model num_segments="
                         f"{self.num_segments}")
      return None, self.encode_audio(audio, train)
    if video_features is not None:
      if video_features.ndim != 3:
        raise ValueError(f"video_features must be [B, S, C], got {video_features.shape}")
      v = jax.lax.stop_gradient(video_features.astype(jnp.float32))
    else:
      if video is None:
        raise ValueError("CTEN needs video or video_features")
      v = self.encode_visual(video, train)
    if v.shape[1] != self.num_segments:
      raise ValueError(f"video has {v.shape[1]} segments, model num_segments="
                       f"{self.num_segments}")
    a = None
    if self.use_audio:
      if audio is None:
        raise ValueError("audio [B, S, F, M] is needed when use_audio")
      if audio.shape[1] != self.num_segments:
        raise ValueError(f"audio has {audio.shape[1]} segments, model num_segments="
                         f"{self.num_segments} (CTEN erases both modalities by segment)")
      a = self.encode_audio(audio, train)
    return v, a

  # ---- relations, temporal attention, classifier ---------------------------------------------
  def head(self, v: Array | None, a: Array | None, train: bool) -> dict[str, Array]:
    """One view's logits and temporal attentions; v is None for the audio stream alone, whose
    attention is then `gamma` too (the one erasing and the keyframes read)."""
    cdt = jnp.dtype(self.dtype)
    f32 = jnp.float32
    ura = not train
    v = None if v is None else _constrain(v.astype(cdt), None, None)
    a = None if a is None else _constrain(a.astype(cdt), None, None)
    if self.legacy_code:
      if self.use_intra:
        v = self.nl_0(v, ura)
        a = None if a is None else self.nl_a_0(a, ura)
      if self.use_inter:
        v, a = v + self.v2a_attn(a, v), a + self.a2v_attn(v, a)
      h = v if a is None else jnp.concatenate([v, a], axis=-1)
      gamma = nn.relu(self.ta_net(h, ura).astype(f32))
      pooled = jnp.mean(h.astype(f32) * gamma[..., None], axis=1)
      gamma_audio = gamma
    else:
      streams = []  # (features after the relations, its temporal attention net)
      if v is not None:
        v2 = self.nl_0(v, ura) if self.use_intra else v      # F' = F + W Z
        if a is not None and self.use_inter:                  # + W U: F' + F'' - F
          v2 = v2 + self.v2a_attn(v, a)
        streams.append((v2, self.ta_net))
      if a is not None:
        a2 = self.nl_a_0(a, ura) if self.use_intra else a
        if v is not None and self.use_inter:
          a2 = a2 + self.a2v_attn(a, v)
        streams.append((a2, self.ta_net_a))
      gammas = [nn.relu(net(x, ura).astype(f32)) for x, net in streams]
      pooled = jnp.concatenate([jnp.mean(x.astype(f32) * g[..., None], axis=1)
                                for (x, _), g in zip(streams, gammas)], axis=-1)
      # gamma: the visual attention, or the audio's alone without the visual stream.
      gamma, gamma_audio = gammas[0], gammas[-1]
    pooled = self.dropout(pooled, deterministic=not train)
    logits = _constrain(self.fc(pooled), None)
    return dict(logits=logits.astype(f32), gamma=gamma, gamma_audio=gamma_audio)

  def __call__(self, video: Array | None = None, audio: Array | None = None,
               train: bool = False, video_features: Array | None = None) -> dict[str, Array]:
    v, a = self.encode(video, audio, train, video_features)
    return {**self.head(v, a, train), **({} if v is None else {"v": v}),
            **({} if a is None else {"a": a})}
