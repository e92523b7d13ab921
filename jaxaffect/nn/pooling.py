"""Max pooling over non-overlapping windows (kernel = stride, no padding) with a cheap gradient.

jax differentiates `nn.max_pool` (a reduce-window) through a variadic reduce-window that
carries one int32 iota per input dimension to find each window's maximum. XLA does not fuse
those iotas: TSL-Net's audio CNN materialised four s32[600, 32, 30, 64] iotas per step (0.1 s
each on 2 CPU cores) for its 4 x 4 pool. Here the forward is the reduce-window itself; a
custom VJP records each window's first maximum (row-major, PyTorch's rule for ties, which
ReLU + BatchNorm make common) as a small integer in the forward, from the input read as a
reshape, and the backward only places the gradient there.

Why the argmax is taken in the forward: a backward that compares the input with the
forward's maximum loses gradient. XLA may recompute the pool's input inside the backward's
fusion (from the convolution output, through BatchNorm) with other rounding than the forward
used, so in some windows no value equals the maximum any more; TSL-Net's float64 gradient
parity test caught this.
"""
from __future__ import annotations

import functools
import itertools
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


def _window_positions(xt: Array, window: tuple[int, ...]):
  """(position index, [N, S_0', ..., C] view) for each window position, row-major."""
  axes = _window_axes(window)
  for p, idx in enumerate(itertools.product(*(range(k) for k in window))):
    at = [slice(None)] * xt.ndim
    for ax, i in zip(axes, idx):
      at[ax] = i
    yield p, xt[tuple(at)]


def _first_argmax(xt: Array, window: tuple[int, ...]) -> Array:
  """Row-major index of each window's first maximum (int8 for up to 127 positions)."""
  dtype = jnp.int8 if np.prod(window) <= 127 else jnp.int32
  best = arg = None
  for p, v in _window_positions(xt, window):
    if best is None:
      best, arg = v, jnp.zeros(v.shape, dtype)
    else:
      # Strictly greater: an equal later value does not displace the first maximum.
      better = v > best
      best, arg = jnp.where(better, v, best), jnp.where(better, dtype(p), arg)
  return arg


def _scatter_to_windows(arg: Array, g: Array, window: tuple[int, ...]) -> Array:
  """g placed at position arg of each window: [N, S_0', k_0, S_1', k_1, ..., C]."""
  pieces = [jnp.where(arg == p, g, jnp.zeros((), g.dtype)) for p in range(int(np.prod(window)))]

  def stack(d: int, offset: int) -> Array:  # window axis d goes right after S_d'
    if d == len(window):
      return pieces[offset]
    inner = int(np.prod(window[d + 1:]))
    return jnp.stack([stack(d + 1, offset + i * inner) for i in range(window[d])], axis=2 + d)

  return stack(0, 0)


def _reduce_window_max(x: Array, window: tuple[int, ...]) -> Array:
  # XLA:CPU's reduce-window forward beats a reduction over the reshaped windows' axes
  # (TSL-Net's 4 x 4 pool over [600, 32, 30, 64]: 13 against 86 ms).
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *window, 1), "VALID")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _pool(x: Array, window: tuple[int, ...], shape: tuple[int, ...]) -> Array:
  del shape  # x.shape, static, for the backward
  return _reduce_window_max(x, window)


def _pool_fwd(x, window, shape):
  del shape
  # The window's argmax is taken here, once, and the backward reads only it: comparing the
  # input with the forward's maximum in the backward is not safe, as XLA may recompute the
  # input there with other rounding (it did: TSL-Net's gradients lost windows).
  return _reduce_window_max(x, window), _first_argmax(_tiles(x, window), window)


def _pool_bwd(window, shape, arg, g):
  dx = _scatter_to_windows(arg, g, window)
  dx = dx.reshape(shape[0], *(s - s % k for s, k in zip(shape[1:-1], window)), shape[-1])
  if dx.shape != shape:  # the rows no window reads get no gradient
    dx = jnp.pad(dx, [(0, a - b) for a, b in zip(shape, dx.shape)])
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
  return _pool(x, window, tuple(x.shape))
