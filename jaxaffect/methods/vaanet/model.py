"""VAANet (Zhao et al., AAAI 2020): visual-audio attention network, as in the released code.

Shapes (B batch, S segments, T frames, A audio chunks, hw = T'*H'*W' backbone positions, C the
visual feature dim 512, D the audio dim 256):
  video uint8 [B,S,T,H,W,3] -> normalise -> frozen 3D ResNet per snippet -> [B*S, hw, 2048]
  -> conv0 (1x1, bias) + BN + ReLU -> F [B*S, hw, C]
  -> spatial attn  alpha = hw*softmax(fc(tanh(BN(F w_s))))           [B*S, hw] (mean 1)
  -> channel attn  beta  = C*softmax(fc(tanh(BN((F*alpha)^T w_c))))  [B*S, C]  (mean 1)
  -> f_SC = mean_hw(F*alpha*beta) [B, S, C]
  -> temporal attn gamma = relu(fc(tanh(BN(f_SC w_t))))  (fc bias init 1) [B, S]
  -> f_V = mean_S(f_SC*gamma) [B, C]
  audio float32 [B,A,F,M] -> ResNet-18 2D per chunk -> fc D + BN + tanh -> [B, A, D]
  -> temporal attn audio_gamma = relu(fc(tanh(BN(. w_a))))  [B, A] -> f_A = mean_A [B, D]
  logits = av_fc([f_V, f_A]) [B, classes] (float32).

Every "BN" above is BatchNorm1d in the original, so its statistics run over every axis except
the channel one (e.g. over B*S*hw for the spatial-attention BN(1)).

Param tree (names follow the PyTorch keys, "name.i" -> "name_i", for a converter):
  visual_backbone/  ResNet3D (resnet.{0,1,4,5,6,7} -> conv1, bn1, layer1..4)
  conv0_0 (Dense 2048->C, bias), conv0_1 (BN)
  sa_net/{conv_0, conv_1, fc}   cwa_net/{conv_0, conv_1, fc}   ta_net/{conv_0, conv_1, fc}
  fc (unused 512->classes, only with keep_unused_fc)
  audio_backbone/   ResNet2D (a_resnet.{0,1,4,5,6,7} -> conv1, bn1, layer1..4)
  a_fc_0 (Dense 512->D), a_fc_1 (BN)   aa_net/{conv_0, conv_1, fc}   av_fc
Conv1d(k=1) weights [out, in, 1] and Linear weights [out, in] map to Dense kernels [in, out].
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect.nn.layers import (BatchNorm, dense, kaiming_normal_fan_out,
                                 torch_default_bias_init, torch_default_kernel_init)
from jaxaffect.nn.pooling_attention import AttentionNet
from jaxaffect.nn.resnet2d import ResNet2D
from jaxaffect.nn.resnet3d import NORMALIZATIONS, ResNet3D, normalize_video  # noqa: F401

Array = jax.Array

BACKBONE_BN_POLICIES = ("batch_stats", "running")
TEMPORAL_ACTIVATIONS = ("relu", "softmax")

def _constrain(x: Array, *rest: str | None) -> Array:
  return nn.with_logical_constraint(x, ("act_batch", *rest))


class VAANet(nn.Module):
  """VAANet; call(video, audio, train) -> dict(logits, alpha, beta, gamma, audio_gamma).

  Paper config: VAANet(num_classes=8) (defaults: visual_depth 101, visual_width 64, S=12,
  A=16, visual_dim 512, audio_dim 256; 16x112x112 snippets, 256x32 MFCC chunks).
  backbone_bn: "batch_stats" = batch statistics and running-stat updates while training, as the
    released code (model.train() on a no-grad backbone); "running" = running stats always.
    Either way the backbone gets no gradient (stop_gradient on its output).
  temporal_activation: "relu" (code) or "softmax" (scaled by S so its mean is 1 like alpha/beta).
  use_temporal_attention / use_audio_attention: visual / audio temporal attention (off = plain
    mean, weights reported as ones). use_audio=False drops the audio stream (av_fc sees C dims;
    audio may be None; audio_gamma is ones [B, audio_segments]).
  audio_attention_bias: None = PyTorch's default init of the audio attention fc bias (as the
    code); a float (e.g. 1.0, like the visual temporal fc) keeps its ReLU from starting dead,
    which with few audio chunks (A = 2-4) can zero audio_gamma and block the audio gradient.
  keep_unused_fc: build the visual stream's Linear(512->classes) that VAANet creates but never
    uses, so param counts and checkpoints match the original (97,869,012 params); its output is
    dead code and XLA drops it.
  dtype: compute dtype (e.g. bfloat16); params, BN statistics, softmaxes and logits stay float32.
  """
  num_classes: int = 8
  num_segments: int = 12
  audio_segments: int = 16
  visual_depth: int = 101
  visual_width: int = 64
  conv1_t_size: int = 7
  audio_depth: int = 18
  audio_width: int = 64
  audio_pool_window: Sequence[int] | None = (8, 2)
  visual_dim: int = 512
  audio_dim: int = 256
  use_spatial_attention: bool = True
  use_channel_attention: bool = True
  use_temporal_attention: bool = True
  use_audio_attention: bool = True
  use_audio: bool = True
  audio_attention_bias: float | None = None
  temporal_activation: str = "relu"
  backbone_bn: str = "batch_stats"
  normalization: str = "vaanet_legacy"
  conv_impl: str = "auto"
  keep_unused_fc: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, video: Array | None = None, audio: Array | None = None,
               train: bool = False, video_features: Array | None = None) -> dict[str, Array]:
    """`video_features` [B, S, T', H', W', C] (the frozen backbone's layer4 output, e.g. from a
    feature cache) replaces `video`: the backbone is then neither built nor run."""
    if self.backbone_bn not in BACKBONE_BN_POLICIES:
      raise ValueError(f"backbone_bn must be one of {BACKBONE_BN_POLICIES}, "
                       f"got {self.backbone_bn!r}")
    if self.temporal_activation not in TEMPORAL_ACTIVATIONS:
      raise ValueError(f"temporal_activation must be one of {TEMPORAL_ACTIVATIONS}, "
                       f"got {self.temporal_activation!r}")
    if video_features is not None:
      if video_features.ndim != 6:
        raise ValueError(f"video_features must be [B, S, T', H', W', C], got "
                         f"{video_features.shape}")
      b, s = video_features.shape[:2]
    elif video is None or video.ndim != 6 or video.shape[-1] != 3:
      raise ValueError(f"video must be [B, S, T, H, W, 3], got "
                       f"{None if video is None else video.shape}")
    else:
      b, s = video.shape[:2]
    if s != self.num_segments:
      raise ValueError(f"video has {s} segments, model num_segments={self.num_segments}")
    ura = not train
    cdt = jnp.dtype(self.dtype)  # configs may pass "bfloat16"
    f32 = jnp.float32

    # ---- visual stream -------------------------------------------------------------------
    if video_features is None:
      x = normalize_video(video, self.normalization).astype(cdt)
      x = _constrain(x.reshape(b * s, *video.shape[2:]), None, None, None, None)
      backbone = ResNet3D(self.visual_depth, self.visual_width, conv1_t_size=self.conv1_t_size,
                          conv_impl=self.conv_impl, dtype=cdt, name="visual_backbone")
      feat = backbone(x, use_running_average=ura if self.backbone_bn == "batch_stats" else True)
    else:
      feat = video_features.astype(cdt).reshape(b * s, *video_features.shape[2:])
    feat = jax.lax.stop_gradient(feat)  # frozen, as the original's no-grad backbone
    n = b * s
    hw = feat.shape[1] * feat.shape[2] * feat.shape[3]
    feat = _constrain(feat.reshape(n, hw, feat.shape[-1]), None, None)

    c = self.visual_dim
    f = dense(c, kernel_init=kaiming_normal_fan_out, fan_in=feat.shape[-1], dtype=cdt,
              name="conv0_0")(feat)
    f = nn.relu(BatchNorm(dtype=cdt, name="conv0_1")(f, ura))      # F [N, hw, C]

    if self.use_spatial_attention:
      sa = AttentionNet(kaiming_normal_fan_out, dtype=cdt, name="sa_net")(f, ura)
      alpha = jax.nn.softmax(sa.astype(f32), axis=-1) * hw        # [N, hw]
      f = f * alpha[..., None].astype(cdt)
    else:
      alpha = jnp.ones((n, hw), f32)

    pooled = jnp.mean(f.astype(f32), axis=1)                       # mean_hw(F*alpha) [N, C]
    if self.use_channel_attention:
      # The channel-attention conv runs over the hw positions of (F*alpha)^T.
      ca = AttentionNet(kaiming_normal_fan_out, conv_axes=(None, None), fc_axes=("embed", "mlp"),
                        dtype=cdt, name="cwa_net")(jnp.swapaxes(f, 1, 2), ura)
      beta = jax.nn.softmax(ca.astype(f32), axis=-1) * c          # [N, C]
      f_sc = pooled * beta                                         # = mean_hw(F*alpha*beta)
    else:
      beta = jnp.ones((n, c), f32)
      f_sc = pooled
    f_sc = f_sc.reshape(b, s, c)

    if self.keep_unused_fc:  # dead weight kept for parity; output discarded
      dense(self.num_classes, axes=("embed", "classes"), fan_in=c, dtype=cdt, name="fc")(
          f_sc[:, 0].astype(cdt))

    if self.use_temporal_attention:
      ta = AttentionNet(kaiming_normal_fan_out, fc_bias=True,
                        fc_bias_init=nn.initializers.constant(1.0), dtype=cdt,
                        name="ta_net")(f_sc.astype(cdt), ura)
      ta = ta.astype(f32)
      gamma = nn.relu(ta) if self.temporal_activation == "relu" else jax.nn.softmax(ta, -1) * s
    else:
      gamma = jnp.ones((b, s), f32)
    f_v = jnp.mean(f_sc * gamma[..., None], axis=1)                # [B, C]
    fused = [f_v]

    # ---- audio stream --------------------------------------------------------------------
    a_n = self.audio_segments
    audio_gamma = jnp.ones((b, a_n), f32)
    if self.use_audio:
      if audio is None or audio.ndim != 4:
        got = None if audio is None else audio.shape
        raise ValueError(f"audio must be [B, A, F, M] when use_audio, got {got}")
      if audio.shape[1] != a_n:
        raise ValueError(f"audio has {audio.shape[1]} chunks, model audio_segments={a_n}")
      a = audio.astype(cdt).reshape(b * a_n, audio.shape[2], audio.shape[3], 1)
      a = _constrain(a, None, None, None)
      a = ResNet2D(self.audio_depth, self.audio_width, pool_window=self.audio_pool_window,
                   dtype=cdt, name="audio_backbone")(a, use_running_average=ura)
      a = dense(self.audio_dim, fan_in=a.shape[-1], dtype=cdt, name="a_fc_0")(a)
      a = jnp.tanh(BatchNorm(dtype=cdt, name="a_fc_1")(a, ura)).reshape(b, a_n, self.audio_dim)
      if self.use_audio_attention:
        aa_bias_init = (torch_default_bias_init(a_n) if self.audio_attention_bias is None
                        else nn.initializers.constant(self.audio_attention_bias))
        aa = AttentionNet(torch_default_kernel_init, fc_bias=True, fc_bias_init=aa_bias_init,
                          dtype=cdt,
                          name="aa_net")(a, ura)
        audio_gamma = nn.relu(aa.astype(f32))
      fused.append(jnp.mean(a.astype(f32) * audio_gamma[..., None], axis=1))  # [B, D]

    h = jnp.concatenate(fused, axis=-1)
    logits = dense(self.num_classes, axes=("embed", "classes"), fan_in=h.shape[-1], dtype=f32,
                   name="av_fc")(h)
    logits = _constrain(logits, None)
    return dict(logits=logits.astype(f32), alpha=alpha.reshape(b, s, hw),
                beta=beta.reshape(b, s, c), gamma=gamma, audio_gamma=audio_gamma)
