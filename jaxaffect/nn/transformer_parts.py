"""The pieces of a transformer block besides attention: a projection with a full-shape kernel,
LayerNorm, RMSNorm and the MLP (GELU or SwiGLU).

Every parameter carries logical axis names and is gathered over FSDP where it is used
(`sharding.gather_for_compute`): inside a scanned stack that is one layer's weights per loop
iteration. Parameters are stored in `param_dtype` (float32); the compute runs in `dtype`; norm
statistics are always float32.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect import sharding

Array = jax.Array

# Xavier-uniform over the kernel as a 2-D (inputs, outputs) matrix (PyTorch's Linear view;
# the MAE decoder's init). Linear passes initializers that 2-D shape and reshapes the result.
default_kernel_init = nn.initializers.xavier_uniform()
MLP_KINDS = ("gelu", "gelu_tanh", "swiglu")
NORM_KINDS = ("layernorm", "rmsnorm")


# A bias over the MLP's hidden units has no "embed" axis for FSDP to split: its own logical name
# adds "fsdp" to "tensor" (config_lib's rules), or every device would hold every MLP bias
# (2.5 MB of MART's ViT-B state per device, 17% of it at fsdp=256).
BIAS_AXES = {"mlp": "mlp_bias"}


class Linear(nn.Module):
  """y = x . W (+ b) over the last `n_in` axes of x, W of shape in_shape + features.

  The kernel keeps its unflattened shape (nn.DenseGeneral stores a flattened one) so that its
  logical names `axes` (inputs then outputs) apply per dimension; `kernel_init` sees the 2-D
  (prod(inputs), prod(features)) shape, so fan-in/fan-out are those of the flattened matrix.
  """
  features: tuple[int, ...]
  axes: tuple[str | None, ...]
  n_in: int = 1
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable = default_kernel_init

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = x.shape[x.ndim - self.n_in:]
    shape = tuple(in_shape) + tuple(self.features)
    flat = (math.prod(in_shape), math.prod(self.features))
    init = lambda key, shape, dtype: self.kernel_init(key, flat, dtype).reshape(shape)
    kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes), shape,
                        self.param_dtype)
    kernel = sharding.gather_for_compute(kernel, self.axes, self.dtype)
    contract = tuple(range(x.ndim - self.n_in, x.ndim))
    y = jax.lax.dot_general(x.astype(self.dtype), kernel,
                            ((contract, tuple(range(self.n_in))), ((), ())))
    if self.use_bias:
      bias_axes = tuple(BIAS_AXES.get(a, a) for a in self.axes[self.n_in:])
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                             bias_axes),
                        tuple(self.features), self.param_dtype)
      y = y + sharding.gather_for_compute(bias, bias_axes, self.dtype)
    return y


class LayerNorm(nn.Module):
  """LayerNorm over the last axis (statistics in float32); params "scale" and "bias"."""
  eps: float = 1e-6
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    y = x32 - mean
    y = y * jax.lax.rsqrt(jnp.mean(y * y, -1, keepdims=True) + self.eps)
    y = y * _vector(self, "scale", nn.initializers.ones_init(), x.shape[-1])
    if self.use_bias:
      y = y + _vector(self, "bias", nn.initializers.zeros_init(), x.shape[-1])
    return y.astype(self.dtype)


class RMSNorm(nn.Module):
  """x / sqrt(mean(x^2) + eps) * scale over the last axis (float32 statistics); param "scale"."""
  eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
    return (y * _vector(self, "scale", nn.initializers.ones_init(), x.shape[-1])).astype(
        self.dtype)


def _vector(module: nn.Module, name: str, init, size: int) -> Array:
  p = module.param(name, nn.with_logical_partitioning(init, ("embed",)), (size,),
                   module.param_dtype)
  return sharding.gather_for_compute(p, ("embed",), jnp.float32)


def make_norm(kind: str, eps: float, dtype, param_dtype, name: str | None = None) -> nn.Module:
  if kind == "layernorm":
    return LayerNorm(eps=eps, dtype=dtype, param_dtype=param_dtype, name=name)
  if kind == "rmsnorm":
    return RMSNorm(eps=eps, dtype=dtype, param_dtype=param_dtype, name=name)
  raise ValueError(f"norm must be one of {NORM_KINDS}, got {kind!r}")


class Mlp(nn.Module):
  """x [..., E] -> [..., E]. "gelu" (exact, erf: BERT, ViT), "gelu_tanh" (the tanh
  approximation): mlp_out(act(mlp_in(x))); "swiglu" (LLaMA):
  mlp_out(silu(mlp_gate(x)) * mlp_in(x))."""
  mlp_dim: int
  kind: str = "gelu"
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable = default_kernel_init

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.kind not in MLP_KINDS:
      raise ValueError(f"mlp must be one of {MLP_KINDS}, got {self.kind!r}")
    dense = lambda features, axes, name: Linear(
        (features,), axes, use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=self.kernel_init, name=name)
    h = dense(self.mlp_dim, ("embed", "mlp"), "mlp_in")(x)
    if self.kind == "swiglu":
      h = nn.silu(dense(self.mlp_dim, ("embed", "mlp"), "mlp_gate")(x)) * h
    else:
      h = nn.gelu(h, approximate=self.kind == "gelu_tanh")
    if h.ndim == 3:
      h = nn.with_logical_constraint(h, ("act_batch", "act_len", "act_mlp"))
    return dense(x.shape[-1], ("mlp", "embed"), "mlp_out")(h)
