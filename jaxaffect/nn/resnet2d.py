"""torchvision-layout 2D ResNet (18/34 BasicBlock, 50 Bottleneck) with a configurable stem and
final average pool, as VAANet's / CTEN's audio branch uses it.

Naming mirrors torchvision keys with "L.i" joined by "_": conv1, bn1, layer1_0/{conv1,bn1,conv2,
bn2}, layer2_0/downsample_0 (conv) and downsample_1 (BN). Conv weights [out, in, h, w] map to
kernel [h, w, in, out]; BN as in layers.BatchNorm.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect.nn.layers import (BatchNorm, conv2d, kaiming_normal_fan_out,
                                     torch_default_kernel_init)

Array = jax.Array

RESNET2D_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}


class _Block2D(nn.Module):
  planes: int
  stride: int
  bottleneck: bool
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool) -> Array:
    ura = use_running_average
    bn = lambda name: BatchNorm(use_running_average=ura, dtype=self.dtype, name=name)
    conv = lambda f, k, s, p, name: conv2d(f, (k, k), (s, s), (p, p), dtype=self.dtype, name=name)
    s = self.stride
    if self.bottleneck:  # torchvision v1.5: stride on the 3x3 conv
      out_ch = self.planes * 4
      y = nn.relu(bn("bn1")(conv(self.planes, 1, 1, 0, "conv1")(x)))
      y = nn.relu(bn("bn2")(conv(self.planes, 3, s, 1, "conv2")(y)))
      y = bn("bn3")(conv(out_ch, 1, 1, 0, "conv3")(y))
    else:
      out_ch = self.planes
      y = nn.relu(bn("bn1")(conv(self.planes, 3, s, 1, "conv1")(x)))
      y = bn("bn2")(conv(self.planes, 3, 1, 1, "conv2")(y))
    if s != 1 or x.shape[-1] != out_ch:
      x = bn("downsample_1")(conv(out_ch, 1, s, 0, "downsample_0")(x))
    return nn.relu(y + x)


class ResNet2D(nn.Module):
  """[N, H, W, C_in] -> pooled features [N, D].

  Defaults are VAANet's audio ResNet-18: a (7, 1) stride (2, 1) pad (3, 0) stem on 1-channel
  MFCC "images" (H = time, W = coefficients), torchvision body, AvgPool2d(kernel (8, 2)) which
  for a 256x32 input sees the whole 8x2 layer4 map. `pool_window` semantics:
    - None, or a window larger than the layer4 map in either dim (small demo inputs): global
      mean over H, W -> [N, C] (PyTorch would raise instead);
    - otherwise PyTorch AvgPool2d(kernel=window, stride=window), then flatten in PyTorch's
      (C, h, w) order -> [N, C*h*w] (= [N, C] when the window covers the map, as in VAANet).
  width: base channels (64 = torchvision). The stem uses PyTorch's default conv init when
  `stem_torch_init` (VAANet builds a fresh conv1) and kaiming fan_out otherwise.
  """
  depth: int = 18
  width: int = 64
  stem_kernel: Sequence[int] = (7, 1)
  stem_stride: Sequence[int] = (2, 1)
  stem_padding: Sequence[int] = (3, 0)
  stem_torch_init: bool = True
  pool_window: Sequence[int] | None = (8, 2)
  dtype: Any = None

  @property
  def out_block_features(self) -> int:
    return self.width * 8 * (4 if self.depth >= 50 else 1)

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool) -> Array:
    if self.depth not in RESNET2D_LAYERS:
      raise ValueError(f"ResNet2D depth must be one of {sorted(RESNET2D_LAYERS)}, got {self.depth}")
    init = torch_default_kernel_init if self.stem_torch_init else kaiming_normal_fan_out
    x = conv2d(self.width, self.stem_kernel, self.stem_stride, self.stem_padding,
               dtype=self.dtype, kernel_init=init, kernel_axes=(None, None, None, "conv_out"),
               name="conv1")(x)
    x = nn.relu(BatchNorm(use_running_average=use_running_average, dtype=self.dtype,
                          name="bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, n_blocks in enumerate(RESNET2D_LAYERS[self.depth]):
      for i in range(n_blocks):
        x = _Block2D(self.width * 2 ** stage, 2 if (stage > 0 and i == 0) else 1,
                     self.depth >= 50, dtype=self.dtype,
                     name=f"layer{stage + 1}_{i}")(x, use_running_average)
    return global_or_window_avg_pool(x, self.pool_window)


def global_or_window_avg_pool(x: Array, window: Sequence[int] | None) -> Array:
  """See ResNet2D: window pool + (C, h, w) flatten, or a global mean when it doesn't fit."""
  n, h, w, c = x.shape
  if window is None or window[0] > h or window[1] > w:
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)
  wh, ww = window
  if (wh, ww) == (h, w):
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)
  y = nn.avg_pool(x, (wh, ww), strides=(wh, ww))  # VALID: floor like PyTorch
  return jnp.transpose(y, (0, 3, 1, 2)).reshape(n, -1)
