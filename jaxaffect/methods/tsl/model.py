"""TSL-Net (ACM MM 2022): temporal sentiment localization on pre-extracted snippet features.

Follows the released `model_tsl.py`. Per 16-frame snippet t:
  audio   log-mel [32, 60] + a fixed sinusoidal step encoding (table of 4000 steps); rows of the
          previous, current and next snippet stacked to [96, 60] (the neighbours wrap around
          inside chunks of 600 snippets, as the original's `roll` per chunk does); a 3-stage CNN
          (Conv-ReLU-BN order) -> a_t [512]
  visual  I3D RGB [1024] -> Conv1d(k3)+ReLU -> v_t [512]
  fusion  concat -> Conv1d(k3, 2048)+ReLU = z_t ("neck")
  heads   Dropout(0.7) -> 1x1 conv to 3 logits (n, p, background) = CAS, and a parallel 1x1 conv
          ("distribution"); at train time two reverse-mapping heads ("CPC", 4 k3 convs each)
          predict a and v from z.

Variable lengths: inputs are padded to a bucket length L with `mask` [B, L]; every temporal conv
sees zeros beyond the real length (as PyTorch's zero padding at the true end), BatchNorm
statistics use real snippets only, and top-k pooling takes k = T // 8 of the real T.

Parameter names mirror the PyTorch keys through the converter rule ("name_i" <-> "name.i"):
cls_module/a_extractor_{0,4,6,10,12} convs, a_extractor_{2,8,14} BatchNorms, v_align_0, neck_0,
rev_fa/net_{0,2,4,6}, rev_fv/net_{0,2,4,6}, classifier_0, distribution_0 (no bias).

Ablation switches (not in the released code, the paper's rows): `modalities` "visual" or
"audio" drops the other stream (the neck then sees 512 channels); `reverse_mapping=False`
omits the CPC heads (only needed for the L_fuse term).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxaffect.nn.layers import (BatchNorm, Conv, torch_default_bias_init,
                                 torch_default_kernel_init)
from jaxaffect.nn.pooling import max_pool_tiles

Array = jax.Array
MODALITIES = ("both", "visual", "audio")
AUDIO_CHUNK = 600      # The original runs the audio CNN (and its neighbour wrap) per 600 steps.
PE_LENGTH = 4000       # positionalencoding1d(60, 4000): the longest supported video, in snippets.


def positional_encoding(d_model: int, length: int) -> np.ndarray:
  """Sinusoidal table [length, d_model]: even columns sin, odd columns cos.

  The original's values: its exponents and angles are float32 products (a float tensor times a
  Python float), so they are formed in float32 here too; exp, sin and cos are evaluated in
  float64 and rounded once. A 1-ulp difference in a frequency grows to 2.4e-4 in sin at
  step 4000, so the frequencies must match exactly (they do for d_model = 60); what remains is
  float32 rounding of sin/cos (1 ulp)."""
  pos = np.arange(length, dtype=np.float32)[:, None]
  exponent = np.arange(0, d_model, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / d_model)
  div = np.exp(exponent.astype(np.float64)).astype(np.float32)
  angle = (pos * div).astype(np.float64)
  pe = np.zeros((length, d_model), np.float32)
  pe[:, 0::2] = np.sin(angle)
  pe[:, 1::2] = np.cos(angle)
  return pe


def neighbour_indices(length: Array, size: int, chunk: int = AUDIO_CHUNK) -> tuple[Array, Array]:
  """Previous/next snippet index for t < length, wrapping inside chunks of `chunk` steps.

  length: [B] int. Returns (prev, next) int [B, size]; padded positions point at themselves."""
  t = jnp.arange(size)[None, :]
  n = length[:, None]
  start = (t // chunk) * chunk
  end = jnp.minimum(start + chunk, n)
  prev = jnp.where(t == start, end - 1, t - 1)
  nxt = jnp.where(t + 1 >= end, start, t + 1)
  valid = t < n
  return jnp.where(valid, prev, t), jnp.where(valid, nxt, t)


def topk_mean(x: Array, k: Array, mask: Array) -> Array:
  """Mean of the k largest values over axis 1 among masked-in steps.

  x: [B, L, C]; k: [B] int (>= 1); mask: [B, L] bool. Returns [B, C]."""
  filled = jnp.where(mask[..., None], x, -jnp.inf)
  srt = -jnp.sort(-filled, axis=1)  # descending
  take = (jnp.arange(x.shape[1])[None, :] < k[:, None])[..., None]
  return jnp.sum(jnp.where(take, srt, 0.0), axis=1) / k[:, None].astype(x.dtype)


def _conv(features: int, kernel: Sequence[int], fan_in: int, *, strides=None, padding=None,
          use_bias: bool = True, dtype=None, name: str | None = None,
          axes: tuple[str | None, ...] | None = None) -> Conv:
  """nn.Conv's variables with PyTorch's default init and symmetric padding (one matmul on the
  CPU backend: `nn.layers.conv`)."""
  return Conv(features, tuple(kernel), strides, padding, use_bias=use_bias, dtype=dtype,
              kernel_init=torch_default_kernel_init, bias_init=torch_default_bias_init(fan_in),
              kernel_axes=axes, name=name)


class AudioCNN(nn.Module):
  """Conv(7x7,/(3,2))-ReLU-BN-MaxPool4 | Conv3-ReLU-Conv1-ReLU-BN-MaxPool2 |
  Conv3-ReLU-Conv1-ReLU-BN-AvgPool(4,3); input [N, 96, 60, 1] -> [N, channels[-1]].

  Submodules are named after the original nn.Sequential indices (a_extractor_<i>); this module
  is inlined into ClsModule through `name_prefix` so the names sit where PyTorch has them."""
  channels: Sequence[int] = (64, 256, 512)
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Array | None) -> Array:
    c1, c2, c3 = self.channels
    bn = lambda i: BatchNorm(dtype=self.dtype, name=f"a_extractor_{i}")
    conv = lambda c, k, fan, i, **kw: _conv(c, k, fan, dtype=self.dtype,
                                             name=f"a_extractor_{i}", **kw)
    m = None if mask is None else mask.reshape(-1, 1, 1)
    x = nn.relu(conv(c1, (7, 7), 49, 0, strides=(3, 2), padding=(3, 3))(x))
    x = bn(2)(x, use_running_average=not train, mask=m)
    x = max_pool_tiles(x, (4, 4))
    x = nn.relu(conv(c2, (3, 3), c1 * 9, 4, padding=(1, 1))(x))
    x = nn.relu(conv(c2, (1, 1), c2, 6)(x))
    x = bn(8)(x, use_running_average=not train, mask=m)
    x = max_pool_tiles(x, (2, 2))
    x = nn.relu(conv(c3, (3, 3), c2 * 9, 10, padding=(1, 1))(x))
    x = nn.relu(conv(c3, (1, 1), c3, 12)(x))
    x = bn(14)(x, use_running_average=not train, mask=m)
    if x.shape[1:3] != (4, 3):
      raise ValueError(f"audio CNN expects a [96, 60] log-mel window (3 x 32 rows x 60 mels); "
                       f"its last map is {x.shape[1:3]}, not (4, 3)")
    return jnp.mean(x, axis=(1, 2))  # AvgPool(4, 3) over the whole 4 x 3 map.


class CPCHead(nn.Module):
  """Reverse mapping: (num_layers - 1) x [Conv1d(k3) + ReLU] at the input width, then
  Conv1d(k3) to `out_features` + ReLU. Temporal convs see zeros beyond the real length."""
  out_features: int
  num_layers: int = 4
  dtype: Any = None

  @nn.compact
  def __call__(self, z: Array, mask: Array) -> Array:
    width = z.shape[-1]
    m = mask[..., None].astype(z.dtype)
    for i in range(self.num_layers):
      feats = self.out_features if i == self.num_layers - 1 else width
      z = nn.relu(_conv(feats, (3,), width * 3, padding=(1,), dtype=self.dtype,
                        name=f"net_{2 * i}")(z * m))
    return z


def cpc_score(x: Array, x_pred: Array, mask: Array) -> Array:
  """The released code's CPC value per video: mean_i (<x_i, p_i> - logsumexp_j <x_i, p_j>) with
  x, p L2-normalised rows, over real steps i, j. x, x_pred: [B, L, D]; mask [B, L]. -> [B].

  The original flattens B*T rows of a batch of one video; per video here, which is the same."""
  x = x.astype(jnp.float32)
  p = x_pred.astype(jnp.float32)
  tiny = jnp.finfo(jnp.float32).tiny
  x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), tiny)
  p = p / jnp.maximum(jnp.linalg.norm(p, axis=-1, keepdims=True), tiny)
  pos = jnp.sum(x * p, -1)
  sim = jnp.einsum("bid,bjd->bij", x, p)
  sim = jnp.where(mask[:, None, :], sim, -jnp.inf)
  neg = jax.nn.logsumexp(sim, axis=-1)
  mf = mask.astype(jnp.float32)
  return jnp.sum(jnp.where(mask, pos - neg, 0.0), -1) / jnp.maximum(jnp.sum(mf, -1), 1.0)


class ClsModule(nn.Module):
  """The original's Cls_Module: streams, fusion neck, heads (and CPC heads when training)."""
  num_classes: int = 2
  audio_channels: Sequence[int] = (64, 256, 512)
  align_features: int = 512
  neck_features: int = 2048
  cpc_layers: int = 4
  dropout: float = 0.7
  modalities: str = "both"
  reverse_mapping: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, rgb: Array, audio: Array, mask: Array, length: Array, *, train: bool):
    if self.modalities not in MODALITIES:
      raise ValueError(f"model.modalities must be one of {MODALITIES}, got {self.modalities!r}")
    b, l = mask.shape
    m = mask[..., None].astype(jnp.float32)
    out: dict[str, Array] = {}
    streams = []
    if self.modalities in ("both", "visual"):
      fan = rgb.shape[-1] * 3
      v = nn.relu(_conv(self.align_features, (3,), fan, padding=(1,), dtype=self.dtype,
                        name="v_align_0")(rgb * m))
      out["visual"] = v
      streams.append(v)
    if self.modalities in ("both", "audio"):
      if l > PE_LENGTH:
        raise ValueError(f"TSL-Net's step encoding covers {PE_LENGTH} snippets; got length {l}")
      _, rows, mels = audio.shape[1:]
      pe = jnp.asarray(positional_encoding(mels, PE_LENGTH)[:l])
      a = audio + pe[None, :, None, :].astype(audio.dtype)
      prev, nxt = neighbour_indices(length, l)
      take = lambda idx: jnp.take_along_axis(a, idx[:, :, None, None], axis=1)
      window = jnp.concatenate([take(prev), a, take(nxt)], axis=2)  # [B, L, 3*rows, mels]
      feats = AudioCNN(self.audio_channels, dtype=self.dtype, name="a_extractor")(
          window.reshape(b * l, 3 * rows, mels, 1), train=train, mask=mask.reshape(-1))
      a = feats.reshape(b, l, -1)
      out["audio"] = a
      streams.append(a)
    x = jnp.concatenate(streams, axis=-1) * m
    z = nn.relu(_conv(self.neck_features, (3,), x.shape[-1] * 3, padding=(1,), dtype=self.dtype,
                      name="neck_0")(x))
    z = z * m
    out["features"] = z
    if self.reverse_mapping and train:
      if "audio" in out:
        out["audio_pred"] = CPCHead(out["audio"].shape[-1], self.cpc_layers, dtype=self.dtype,
                                    name="rev_fa")(z, mask)
      if "visual" in out:
        out["visual_pred"] = CPCHead(out["visual"].shape[-1], self.cpc_layers,
                                     dtype=self.dtype, name="rev_fv")(z, mask)
    elif self.reverse_mapping and self.is_initializing():
      # Create the heads at init even for an eval-mode init, so checkpoints always hold them.
      for key, name in (("audio", "rev_fa"), ("visual", "rev_fv")):
        if key in out:
          CPCHead(out[key].shape[-1], self.cpc_layers, dtype=self.dtype, name=name)(z, mask)
    h = nn.Dropout(self.dropout, deterministic=not train)(z)
    head = lambda name: nn.Dense(
        self.num_classes + 1, use_bias=False, dtype=self.dtype, name=name,
        kernel_init=nn.with_logical_partitioning(torch_default_kernel_init, ("embed", None)))(h)
    out["cas"] = head("classifier_0")
    out["cas_dis"] = head("distribution_0")
    return out


class TSLNet(nn.Module):
  """The original's Model wrapper: sigmoid scores, fused class scores, top-k video scores.

  Returns float32 dict: cas [B, L, 3] logits, cas_sigmoid_fuse [B, L, 3] (sigma_c (1 - sigma_bg)
  for n, p; sigma_bg last), video_score [B, 2] (top-k mean of the raw class sigmoids),
  video_distribution [B, 2] (softmax of the top-k mean distribution logits), k [B], and at
  train time audio/visual features with their reverse-mapping predictions."""
  num_classes: int = 2
  audio_channels: Sequence[int] = (64, 256, 512)
  align_features: int = 512
  neck_features: int = 2048
  cpc_layers: int = 4
  dropout: float = 0.7
  modalities: str = "both"
  reverse_mapping: bool = True
  r_act: int = 8
  dtype: Any = None

  @nn.compact
  def __call__(self, rgb: Array, audio: Array, mask: Array, length: Array, *,
               train: bool = False) -> dict[str, Array]:
    mask = mask > 0
    fields = {f: getattr(self, f) for f in ("num_classes", "align_features", "neck_features",
                                            "cpc_layers", "dropout", "modalities",
                                            "reverse_mapping", "dtype")}
    out = ClsModule(audio_channels=tuple(self.audio_channels), **fields, name="cls_module")(
        rgb, audio, mask, length, train=train)
    out = {k: v.astype(jnp.float32) for k, v in out.items()}
    sig = jax.nn.sigmoid(out["cas"])
    bg = sig[..., -1:]
    out["cas_sigmoid"] = sig
    out["cas_sigmoid_fuse"] = jnp.concatenate([sig[..., :-1] * (1.0 - bg), bg], axis=-1)
    # k = T // r_act of the real length; at least 1 (the original divides by zero below 8).
    k = jnp.maximum(length // self.r_act, 1)
    out["k"] = k
    out["video_score"] = topk_mean(sig[..., :-1], k, mask)
    out["video_distribution"] = jax.nn.softmax(topk_mean(out["cas_dis"][..., :-1], k, mask), -1)
    return out
