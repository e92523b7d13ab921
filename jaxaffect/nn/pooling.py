"""Max pooling over non-overlapping windows (kernel = stride, no padding), as reshapes.

jax differentiates `nn.max_pool` (a reduce-window) through a variadic reduce-window that
carries one int32 iota per input dimension to find each window's maximum. XLA does not fuse
those iotas: TSL-Net's audio CNN materialised four s32[600, 32, 30, 64] iotas per step (0.1 s
each on 2 CPU cores) for its 4 x 4 pool. Here the forward is the reduce-window itself and the
gradient (a custom VJP) reads the windows as a reshape of the input: it goes to the first
position of each window that holds the forward's maximum, in row-major order, PyTorch's rule for ties (which ReLU + BatchNorm make common: a
window of zeros before BatchNorm is a window of equal values after it).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array


def _tiles(x: Array, window: tuple[int, ...]) -> Array:
  """[N, *S, C] -> [N, S_0 // k_0, k_0, S_1 // k_1, k_1, ..., C], rows past the last whole
  window dropped (as the VALID forward drops them)."""
  shape = [x.shape[0]]
  for s, k in zip(x.shape[1:-1], window):
    shape += [s // k, k]
  x = x[(slice(None), *(slice(0, s - s % k) for s, k in zip(x.shape[1:-1], window)))]
  return x.reshape(*shape, x.shape[-1])


def _window_axes(window: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(2 + 2 * i for i in range(len(window)))


def _first_max(xt: Array, top: Array, window: tuple[int, ...]) -> Array:
  """The one-hot of each window's first position (row-major) holding its maximum `top`."""
  axes = _window_axes(window)
  # Row-major position inside the window, a small constant XLA fuses (no full-size iota).
  pos = np.zeros([1] * xt.ndim, np.int32)
  for i, (ax, k) in enumerate(zip(axes, window)):
    stride = int(np.prod(window[i + 1:]))
    pos = pos + (np.arange(k, dtype=np.int32) * stride).reshape(
        [k if d == ax else 1 for d in range(xt.ndim)])
  key = jnp.where(xt == top, pos, np.int32(np.prod(window)))
  return key == jnp.min(key, axis=axes, keepdims=True)


def _reduce_window_max(x: Array, window: tuple[int, ...]) -> Array:
  # XLA:CPU's reduce-window forward beats a reduction over the reshaped windows' axes
  # (TSL-Net's 4 x 4 pool over [600, 32, 30, 64]: 13 against 86 ms).
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *window, 1), "VALID")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _pool(x: Array, window: tuple[int, ...]) -> Array:
  return _reduce_window_max(x, window)


def _pool_fwd(x, window):
  y = _reduce_window_max(x, window)
  return y, (x, y)


def _pool_bwd(window, res, g):
  x, y = res
  axes = _window_axes(window)
  first = _first_max(_tiles(x, window), jnp.expand_dims(y, axes), window)
  dx = jnp.where(first, jnp.expand_dims(g, axes), jnp.zeros((), g.dtype))
  dx = dx.reshape(x.shape[0], *(s - s % k for s, k in zip(x.shape[1:-1], window)), -1)
  if dx.shape != x.shape:  # the rows no window reads get no gradient
    dx = jnp.pad(dx, [(0, a - b) for a, b in zip(x.shape, dx.shape)])
  return (dx,)


_pool.defvjp(_pool_fwd, _pool_bwd)


def max_pool_tiles(x: Array, window: Sequence[int]) -> Array:
  """Max pool of x [N, *S, C] over windows of size `window` with stride `window` and no
  padding (nn.max_pool(x, window, window)); trailing rows that do not fill a window are
  dropped, as PyTorch's MaxPool floors. Gradient: to each window's first maximum in row-major
  order (PyTorch's choice among equal values)."""
  window = tuple(int(k) for k in window)
  if len(window) != x.ndim - 2 or min(window) < 1:
    raise ValueError(f"max_pool_tiles: window {window} does not fit x {x.shape} [N, *S, C]")
  if any(s < k for s, k in zip(x.shape[1:-1], window)):
    raise ValueError(f"max_pool_tiles: window {window} is larger than x {x.shape}")
  return _pool(x, window)
