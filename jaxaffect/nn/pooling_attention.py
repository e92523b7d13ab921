"""VAANet's attention subnet, the scoring unit of its spatial, channel and temporal attentions,
shared by VAANet and CTEN (whose temporal attention is VAANet's).

On x [N, L, D]: Conv1d(D->1, k=1, no bias) + BatchNorm1d(1) + tanh over D, then Linear(L->L) over
L. It returns the pre-activation scores [N, L]; the caller applies softmax or ReLU. Parameter
names follow the PyTorch ModuleDict ("conv.0" -> conv_0, "conv.1" -> conv_1, "fc").
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect.nn.layers import BatchNorm, Initializer, dense

Array = jax.Array


class AttentionNet(nn.Module):
  """x [N, L, D] -> scores [N, L] (module docstring). conv_axes / fc_axes: logical axes of the
  two kernels (the channel attention puts the long axis on the fc)."""
  conv_init: Initializer
  fc_bias: bool = False
  fc_bias_init: Initializer | None = None
  conv_axes: tuple[str | None, str | None] = ("embed", None)
  fc_axes: tuple[str | None, str | None] = (None, None)
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool) -> Array:
    n, l, d = x.shape
    h = dense(1, axes=self.conv_axes, use_bias=False, kernel_init=self.conv_init,
              dtype=self.dtype, name="conv_0")(x)                      # [N, L, 1]
    h = jnp.tanh(BatchNorm(dtype=self.dtype, name="conv_1")(h, use_running_average))[..., 0]
    return dense(l, axes=self.fc_axes, use_bias=self.fc_bias, bias_init=self.fc_bias_init,
                 fan_in=l, dtype=self.dtype, name="fc")(h)             # [N, L]
