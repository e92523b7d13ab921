"""Hara et al.'s 3D ResNets (kenshohara/3D-ResNets-PyTorch), channels-last, up to layer4.

Naming (for the PyTorch converter): module paths mirror the state_dict keys with "L.i" joined
by "_" ("layer3.22.conv2.weight" -> layer3_22/conv2/kernel, "layer1.0.downsample.0.weight" ->
layer1_0/downsample_0/kernel, "...downsample.1.running_mean" -> batch_stats .../downsample_1/mean).
Stem: conv1, bn1. Conv weights [out, in, t, h, w] -> kernel [t, h, w, in, out];
BN weight/bias -> scale/bias, running_mean/var -> batch_stats mean/var. The fc head (and its
avgpool) are not built: the affect models consume the layer4 map. `normalize_video` is the input
scaling each published set of these weights expects (and the one VAANet and CTEN used instead).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect.nn.layers import BatchNorm, Conv3D

Array = jax.Array

NORMALIZATIONS = ("vaanet_legacy", "hara_2018", "hara_2020")

_HARA_2018_MEAN = (114.7748, 107.7354, 99.4750)  # ActivityNet means, 0-255 scale
_HARA_2020_MEAN = (0.4345, 0.4051, 0.3775)       # Kinetics, 0-1 scale
_HARA_2020_STD = (0.2768, 0.2713, 0.2737)


def normalize_video(video: Array, mode: str) -> Array:
  """uint8 (or 0-255 float) frames -> float32 backbone input.

  "vaanet_legacy": x/255 - 100/255, what VAANet/CTEN do (mismatched to the Hara weights, hidden
  by batch-stat BN); "hara_2018": x - ActivityNet mean on the 0-255 scale (resnet-*-kinetics.pth);
  "hara_2020": (x/255 - mean)/std with Kinetics stats (r3d*_KM_200ep.pth).
  """
  x = video.astype(jnp.float32)
  if mode == "vaanet_legacy":
    return x / 255.0 - 100.0 / 255.0
  if mode == "hara_2018":
    return x - jnp.asarray(_HARA_2018_MEAN, jnp.float32)
  if mode == "hara_2020":
    return (x / 255.0 - jnp.asarray(_HARA_2020_MEAN, jnp.float32)) / jnp.asarray(
        _HARA_2020_STD, jnp.float32)
  raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")


# Blocks per stage, as in Hara's generate_model.
RESNET3D_LAYERS: dict[int, tuple[int, int, int, int]] = {
    10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3),
    101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}


def uses_bottleneck(depth: int) -> bool:
  return depth >= 50


class BasicBlock3D(nn.Module):
  """Two 3x3x3 convs; stride on the first; shortcut B (strided 1x1x1 conv + BN) on a change."""
  planes: int
  stride: int = 1
  impl: str = "auto"
  dtype: Any = None
  expansion = 1

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool) -> Array:
    ura = use_running_average
    bn = lambda name: BatchNorm(use_running_average=ura, dtype=self.dtype, name=name)
    conv = lambda f, k, s, p, name: Conv3D(f, k, s, p, impl=self.impl, dtype=self.dtype, name=name)
    y = nn.relu(bn("bn1")(conv(self.planes, 3, self.stride, 1, "conv1")(x)))
    y = bn("bn2")(conv(self.planes, 3, 1, 1, "conv2")(y))
    return nn.relu(y + _shortcut(x, self.planes, self.stride, conv, bn))


class Bottleneck3D(nn.Module):
  """1x1x1 -> 3x3x3 (strided) -> 1x1x1 (x4 channels); shortcut B on a change."""
  planes: int
  stride: int = 1
  impl: str = "auto"
  dtype: Any = None
  expansion = 4

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool) -> Array:
    ura = use_running_average
    bn = lambda name: BatchNorm(use_running_average=ura, dtype=self.dtype, name=name)
    conv = lambda f, k, s, p, name: Conv3D(f, k, s, p, impl=self.impl, dtype=self.dtype, name=name)
    y = nn.relu(bn("bn1")(conv(self.planes, 1, 1, 0, "conv1")(x)))
    y = nn.relu(bn("bn2")(conv(self.planes, 3, self.stride, 1, "conv2")(y)))
    y = bn("bn3")(conv(self.planes * 4, 1, 1, 0, "conv3")(y))
    return nn.relu(y + _shortcut(x, self.planes * 4, self.stride, conv, bn))


def _shortcut(x, out_ch, stride, conv, bn):
  if stride == 1 and x.shape[-1] == out_ch:
    return x
  return bn("downsample_1")(conv(out_ch, 1, stride, 0, "downsample_0")(x))


class ResNet3D(nn.Module):
  """Body of a 3D ResNet: [N, T, H, W, C_in] -> layer4 map [N, T', H', W', 8*width*expansion].

  For a 16x112x112 clip and depth 101/width 64 the output is [N, 1, 4, 4, 2048].
  width: base channels (64 = Hara's models; e.g. 8-16 for CPU demos).
  conv1_t_size / conv1_t_stride: the stem's temporal kernel and stride (7/1 for the 2018
    weights and the 2020 r3d*_KM weights; the 2020 code also allows other values).
  """
  depth: int = 101
  width: int = 64
  conv1_t_size: int = 7
  conv1_t_stride: int = 1
  no_max_pool: bool = False
  conv_impl: str = "auto"
  dtype: Any = None

  @property
  def out_features(self) -> int:
    return self.width * 8 * (4 if uses_bottleneck(self.depth) else 1)

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool) -> Array:
    if self.depth not in RESNET3D_LAYERS:
      raise ValueError(f"ResNet3D depth must be one of {sorted(RESNET3D_LAYERS)}, got {self.depth}")
    block_cls = Bottleneck3D if uses_bottleneck(self.depth) else BasicBlock3D
    x = Conv3D(self.width, (self.conv1_t_size, 7, 7), (self.conv1_t_stride, 2, 2),
               (self.conv1_t_size // 2, 3, 3), impl=self.conv_impl, dtype=self.dtype,
               kernel_axes=(None, None, None, None, "conv_out"), name="conv1")(x)
    x = nn.relu(BatchNorm(use_running_average=use_running_average, dtype=self.dtype,
                          name="bn1")(x))
    if not self.no_max_pool:
      # Explicit padding pads with -inf (reduce_window's init), like PyTorch's MaxPool3d.
      x = nn.max_pool(x, (3, 3, 3), strides=(2, 2, 2), padding=((1, 1),) * 3)
    for stage, n_blocks in enumerate(RESNET3D_LAYERS[self.depth]):
      planes = self.width * 2 ** stage
      for i in range(n_blocks):
        stride = 2 if (stage > 0 and i == 0) else 1
        x = block_cls(planes, stride, impl=self.conv_impl, dtype=self.dtype,
                      name=f"layer{stage + 1}_{i}")(x, use_running_average)
    return x
