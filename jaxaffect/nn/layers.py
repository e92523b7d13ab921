"""Shared Linen layers: a backend-aware 3D convolution, PyTorch-faithful BatchNorm, inits.

Parameter layout follows Flax conventions so converters map PyTorch tensors by a transpose:
conv kernels are [*spatial, in, out] ("kernel"), dense kernels [in, out] ("kernel"), BatchNorm
has params "scale"/"bias" and batch_stats "mean"/"var". Large kernels carry logical axis names
(`nn.with_logical_partitioning`) so the trainer's rules can shard them; biases and BatchNorm
vectors stay unannotated (replicated, they are tiny).
"""
from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any, Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]
ConvImpl = Literal["native", "taps", "taps_fold", "auto"]
CONV_IMPLS = ("native", "taps", "taps_fold", "auto")

# PyTorch's kaiming_normal_(mode="fan_out") as used by Hara's 3D ResNets, torchvision ResNets and
# VAANet's attention convs: std = sqrt(2 / fan_out).
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default Linear/Conv weight init (kaiming_uniform_, a=sqrt(5)) = U(+-1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default Linear/Conv bias init, U(+-1/sqrt(fan_in)); needs fan_in up front."""
  bound = 1.0 / math.sqrt(max(fan_in, 1))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
  if isinstance(v, int):
    return (v, v, v)
  v = tuple(int(i) for i in v)
  if len(v) != 3:
    raise ValueError(f"expected an int or 3 ints, got {v}")
  return v  # type: ignore[return-value]


# "auto" stacks the time taps as channels when they are this few (kt x in): stems over RGB.
FOLD_MAX_CHANNELS = 32


def resolve_conv_impl(impl: str, kernel_shape: Sequence[int] | None = None) -> str:
  """"auto" -> on the CPU backend (XLA:CPU's 3D convolution is slow) "taps_fold" for a kernel
  [kt, kh, kw, in, out] whose kt x in is at most FOLD_MAX_CHANNELS (a stem over a few
  channels: a 2D convolution over 3 channels vectorises badly, over 21 well; VAANet's 7 x 7 x 7
  stem on [24, 16, 112, 112, 3]: 2.66 -> 1.67 s with XLA's own convolutions), else "taps"
  (every other 3 x 3 x 3 convolution of the 3D ResNet: 1.3-1.5x faster than "taps_fold");
  "native" on other backends."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {impl!r}")
  if impl == "auto":
    if jax.default_backend() != "cpu":
      return "native"
    small = kernel_shape is not None and kernel_shape[0] * kernel_shape[-2] <= FOLD_MAX_CHANNELS
    return "taps_fold" if small else "taps"
  return impl


def _conv_native(x, kernel, strides, padding):
  """One lax.conv_general_dilated, channels last, symmetric padding (1-3 spatial dims)."""
  nd = kernel.ndim - 2
  if not 1 <= nd <= 3:
    raise ValueError(f"native conv supports 1-3 spatial dims, got {nd}")
  sp = "DHW"[3 - nd:]
  return lax.conv_general_dilated(
      x, kernel, window_strides=strides, padding=[(p, p) for p in padding],
      dimension_numbers=("N" + sp + "C", sp + "IO", "N" + sp + "C"))


def _conv2d(x: Array, k: Array, strides, padding) -> Array:
  if k.shape[:2] == (1, 1) and tuple(padding) == (0, 0):
    # Pointwise: a strided slice and a matmul beat XLA:CPU's 1x1 conv by 1.5-3x.
    if tuple(strides) != (1, 1):
      x = x[:, ::strides[0], ::strides[1]]
    return jnp.einsum("nhwc,cd->nhwd", x, k[0, 0])
  return _conv_native(x, k, strides, padding)


def conv3d(x: Array, kernel: Array, strides: Sequence[int], padding: Sequence[int],
           impl: str = "auto") -> Array:
  """3D convolution NDHWC x DHWIO with symmetric zero padding, computed per `impl`.

  "native":    one lax.conv_general_dilated (best on GPU/TPU).
  "taps":      sum over the kt temporal taps of 2D convs on time-strided slices; each tap only
               convolves the output frames whose input frame is inside the clip, so temporal zero
               padding costs nothing (it matters for short clips, e.g. T'=1 in late stages).
  "taps_fold": the kt time-shifted slices concatenated along channels, one 2D conv with a
               [kh, kw, kt*in, out] kernel (more memory; faster on CPU for a stem over a few
               channels, and for the backward pass).
  "auto":      see resolve_conv_impl. All three agree to float rounding (~1e-6 relative).
  """
  impl = resolve_conv_impl(impl, kernel.shape)
  st, sh, sw = strides
  pt, ph, pw = padding
  kt = kernel.shape[0]
  if impl == "native":
    return _conv_native(x, kernel, (st, sh, sw), (pt, ph, pw))
  b, t, h, w, c = x.shape
  t_out = (t + 2 * pt - kt) // st + 1
  if t_out <= 0:
    raise ValueError(f"temporal size {t} too small for kernel {kt} pad {pt} stride {st}")
  if impl == "taps_fold":
    xp = jnp.pad(x, ((0, 0), (pt, pt), (0, 0), (0, 0), (0, 0))) if pt else x
    slices = [lax.slice_in_dim(xp, i, i + st * (t_out - 1) + 1, st, axis=1) for i in range(kt)]
    xf = slices[0] if kt == 1 else jnp.concatenate(slices, axis=-1)
    xf = xf.reshape(b * t_out, h, w, kt * c)
    kh, kw = kernel.shape[1:3]
    kf = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kt * c, -1)
    y = _conv2d(xf, kf, (sh, sw), (ph, pw))
    return y.reshape(b, t_out, *y.shape[1:])
  # "taps": output frame o reads input frame o*st - pt + i through tap i.
  out = None
  for i in range(kt):
    lo = max(0, -((i - pt) // st))            # ceil((pt - i) / st), clamped at 0
    hi = min(t_out - 1, (t - 1 + pt - i) // st)
    if hi < lo:
      continue  # this tap only ever sees padding
    n = hi - lo + 1
    start = lo * st - pt + i
    xi = lax.slice_in_dim(x, start, start + st * (n - 1) + 1, st, axis=1)
    yi = _conv2d(xi.reshape(b * n, h, w, c), kernel[i], (sh, sw), (ph, pw))
    yi = yi.reshape(b, n, *yi.shape[1:])
    if n != t_out:
      yi = jnp.pad(yi, ((0, 0), (lo, t_out - 1 - hi), (0, 0), (0, 0), (0, 0)))
    out = yi if out is None else out + yi
  assert out is not None  # the centre tap always sees the clip when t_out > 0
  return out


CONV_MATMUL_IMPLS = ("native", "unfold", "hybrid", "auto")


def _conv_unfold(x, kernel, strides, padding):
  nd = kernel.ndim - 2
  out = [(x.shape[1 + i] + 2 * padding[i] - kernel.shape[i]) // strides[i] + 1
         for i in range(nd)]
  if min(out) <= 0:
    raise ValueError(f"input {x.shape} too small for kernel {kernel.shape[:nd]} with padding "
                     f"{padding}")
  if any(padding):
    x = jnp.pad(x, [(0, 0)] + [(p, p) for p in padding] + [(0, 0)])
  views = []
  for offsets in itertools.product(*(range(k) for k in kernel.shape[:nd])):
    v = x
    for axis, (o, s_, n) in enumerate(zip(offsets, strides, out), start=1):
      v = lax.slice_in_dim(v, o, o + s_ * (n - 1) + 1, s_, axis=axis)
    views.append(v)
  # Views in row-major order of the kernel's offsets: the order of kernel.reshape(-1, out).
  xf = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
  return jnp.einsum("...c,cd->...d", xf, kernel.reshape(-1, kernel.shape[-1]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_hybrid(x, kernel, strides, padding):
  return _conv_native(x, kernel, strides, padding)


def _conv_hybrid_fwd(x, kernel, strides, padding):
  return _conv_native(x, kernel, strides, padding), (x, kernel)


def _foldable(kshape, strides, padding) -> bool:
  """Some spatial dims have a size-1 kernel (unpadded) and some a wider one: BPM-GCN's (9, 1)."""
  del strides  # any stride folds
  wide = [k > 1 for k in kshape[:-2]]
  return any(wide) and not all(wide) and all(w or p == 0 for w, p in zip(wide, padding))


def _kernel_grad_folded(x, g, kshape, strides, padding):
  """The kernel gradient as one forward convolution in which the batch and the size-1-kernel
  dims become input features: dK[k, c, d] = sum_{b, t, u} x_pad[b, s*t + k, u, c] g[b, t, u, d]
  is a convolution over the wide dims of x (batch = c) with g as a window the size of the
  output (dilated by the stride). XLA:CPU runs it 3-4x faster than the unfolded copies + dot
  ((9, 1) kernels at BPM-GCN's shapes: 80 -> 20 ms, 110 -> 52 ms), and than its own weight
  gradient, whose features are the batch alone."""
  nd = len(kshape) - 2
  win = [i for i in range(nd) if kshape[i] > 1]
  unit = [i for i in range(nd) if kshape[i] == 1]
  for i in unit:  # a strided size-1 kernel reads every s-th position
    if strides[i] != 1:
      x = lax.slice_in_dim(x, 0, None, strides[i], axis=1 + i)
  c, d = x.shape[-1], g.shape[-1]
  lhs = jnp.transpose(x, (nd + 1, *[1 + i for i in win], 0, *[1 + i for i in unit]))
  lhs = lhs.reshape(c, *lhs.shape[1:1 + len(win)], -1)
  rhs = jnp.transpose(g, (*[1 + i for i in win], 0, *[1 + i for i in unit], nd + 1))
  rhs = rhs.reshape(*rhs.shape[:len(win)], -1, d)
  sp = "DHW"[3 - len(win):]
  out = lax.conv_general_dilated(
      lhs, rhs, window_strides=(1,) * len(win),
      # The zero padding as the convolution's, not a jnp.pad: XLA:CPU fuses a pad into the
      # transpose above and runs the pair 2-3x slower than the transpose alone.
      padding=[(padding[i], padding[i]) for i in win],
      rhs_dilation=tuple(strides[i] for i in win),
      dimension_numbers=("N" + sp + "C", sp + "IO", "N" + sp + "C"))   # [c, *positions, d]
  out = out[(slice(None), *[slice(0, kshape[i]) for i in win])]
  out = jnp.moveaxis(out, 0, -2)                                          # [*k_win, c, d]
  return out.reshape(kshape)


def _one_wide_dim(kshape, strides) -> int | None:
  """The dim of a foldable kernel's only wider-than-1 size when the size-1 dims are unstrided
  (BPM-GCN's (9, 1) temporal convolutions), else None."""
  wide = [i for i in range(len(kshape) - 2) if kshape[i] > 1]
  if len(wide) != 1 or any(s != 1 for i, s in enumerate(strides) if i != wide[0]):
    return None
  return wide[0]


def _conv_along(x, kernel, stride, pad, w):
  """A kernel wide along spatial dim w only, as a 1-d convolution with the other spatial dims
  moved into the batch ([B, T, V, C] -> [B * V, T, C]), forward and gradients native. On
  XLA:CPU the 1-d forms and their gradients beat the 2-d (9, 1) forward with its folded
  gradients (BPM-GCN's temporal convolutions, one core: 1,830 -> 1,620 ms per stream and
  step, transposes included; the whole train step 4-5% faster, A/B in one process)."""
  nd = kernel.ndim - 2
  perm = (0, *[1 + i for i in range(nd) if i != w], 1 + w, nd + 1)
  xt = jnp.transpose(x, perm)
  lead = xt.shape[:-2]
  conv1d = _conv_polyphase if stride > 1 else _conv_native_1d
  y = conv1d(xt.reshape(-1, *xt.shape[-2:]),
             kernel.reshape(kernel.shape[w], *kernel.shape[-2:]), stride, pad)
  y = y.reshape(*lead, *y.shape[-2:])
  return jnp.transpose(y, tuple(perm.index(i) for i in range(nd + 2)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_native_fwd_along_bwd(x, kernel, strides, padding, w):
  """The native forward (no transposes; BPM-GCN's (9, 1) convolutions, forward alone over
  both streams: 0.69 -> 0.61 s) with the gradients of `_conv_along` (its 1-d forms)."""
  return _conv_native(x, kernel, strides, padding)


def _native_along_fwd(x, kernel, strides, padding, w):
  return _conv_native(x, kernel, strides, padding), (x, kernel)


def _native_along_bwd(strides, padding, w, res, g):
  x, kernel = res  # the along forward inside the vjp is dead code: XLA drops it
  return jax.vjp(lambda x_, k_: _conv_along(x_, k_, strides[w], padding[w], w), x, kernel)[1](g)


_conv_native_fwd_along_bwd.defvjp(_native_along_fwd, _native_along_bwd)


def _conv_native_1d(x, kernel, stride, pad):
  return _conv_native(x, kernel, (stride,), (pad,))


def _conv_polyphase(x, kernel, stride, pad):
  """A strided 1-d convolution x [N, T, C] * kernel [k, C, D] as an unstrided one over the
  stride's phases stacked as channels: x[s t + j - p] = x_r[t + q] with j - p = s q + r, so
  y = conv(x_r stacked [N, T / s, s C], kernel regrouped [taps, s C, D], padding (-q_lo, q_hi)),
  with zero taps where s q + r + p falls outside the kernel. In the [N, T, C] layout the
  phase stack is a free reshape. The forward does (taps * s) / k more multiply-adds (10 / 9
  for BPM-GCN's k = 9, s = 2); XLA:CPU's gradients of a strided convolution run 2x slower
  than the unstrided ones of the same output (BPM-GCN's stride-2 blocks, fwd + bwd: 143 ->
  99 ms and 232 -> 178 ms per stream and step)."""
  n, t, c = x.shape
  k, _, d = kernel.shape
  t_out = (t + 2 * pad - k) // stride + 1
  q_lo, q_hi = (-pad) // stride, (k - 1 - pad) // stride
  tp = -(-t // stride) * stride
  if t_out > tp // stride or t_out <= 0:  # a padding wider than the kernel: not this case
    return _conv_native_1d(x, kernel, stride, pad)
  if tp != t:
    x = jnp.pad(x, ((0, 0), (0, tp - t), (0, 0)))  # zeros, as the convolution's own padding
  xp = x.reshape(n, tp // stride, stride * c)     # phase r at channels [r C, (r + 1) C)
  idx = stride * np.arange(q_lo, q_hi + 1)[:, None] + np.arange(stride)[None, :] + pad
  valid = (idx >= 0) & (idx < k)
  kp = jnp.where(valid[:, :, None, None], kernel[np.clip(idx, 0, k - 1)],
                 jnp.zeros((), kernel.dtype)).reshape(len(idx), stride * c, d)
  y = lax.conv_general_dilated(xp, kp, window_strides=(1,), padding=[(-q_lo, q_hi)],
                               dimension_numbers=("NHC", "HIO", "NHC"))
  return y[:, :t_out]


def _conv_hybrid_bwd(strides, padding, res, g):
  x, kernel = res
  if _foldable(kernel.shape, strides, padding):
    # The native input gradient (a transposed convolution of small kernels) and the folded
    # kernel gradient; BPM-GCN's temporal convolutions.
    dx = jax.vjp(lambda x_: _conv_native(x_, kernel, strides, padding), x)[1](g)[0]
    return dx, _kernel_grad_folded(x, g, kernel.shape, strides, padding)
  return jax.vjp(lambda x_, k_: _conv_unfold(x_, k_, strides, padding), x, kernel)[1](g)


_conv_hybrid.defvjp(_conv_hybrid_fwd, _conv_hybrid_bwd)


def conv(x: Array, kernel: Array, strides: Sequence[int], padding: Sequence[int],
         impl: str = "auto") -> Array:
  """N-d convolution x [B, *S, in] with kernel [*K, in, out] (nn.Conv's layout), symmetric zero
  padding per spatial dim, computed per `impl`:

  "native": one lax.conv_general_dilated (cuDNN and TPU convolutions).
  "unfold": the prod(K) shifted (strided) views of the padded input concatenated along
            channels, and one matmul with the kernel as [prod(K) * in, out]. On XLA:CPU the
            weight gradient of a native convolution is a convolution whose window is the
            whole feature map and runs at a few GFLOP/s (a 1 x 1 kernel included); as a dot it
            runs near 100 GFLOP/s. Costs prod(K) copies of the input in the step.
  "hybrid": the native forward with the gradients of "unfold" (a custom VJP): XLA:CPU's
            native forward is fast, its gradients are not. Against "unfold": TSL-Net's train
            step 4.4 -> 3.8 s and eval 0.56 -> 0.30 s (600 snippets), BPM-GCN's 4.9 -> 4.8 s
            and 1.6 -> 1.1 s (batch 32). Kernels with size-1 dims fold them: one wide dim
            (BPM-GCN's (9, 1)) runs as a native 1-d convolution over the others in the batch
            (`_conv_along`; strided: unstrided over the stacked phases, `_conv_polyphase`),
            several as the native forward with a folded kernel gradient.
  "auto":   "hybrid" on the CPU backend, "native" elsewhere. All agree to float rounding."""
  if impl not in CONV_MATMUL_IMPLS:
    raise ValueError(f"conv impl must be one of {CONV_MATMUL_IMPLS}, got {impl!r}")
  nd = kernel.ndim - 2
  strides, padding = tuple(int(v) for v in strides), tuple(int(v) for v in padding)
  if x.ndim != nd + 2 or len(strides) != nd or len(padding) != nd:
    raise ValueError(f"conv of a {nd}-d kernel {kernel.shape} needs x [B, {nd} dims, C] and "
                     f"{nd} strides/paddings; got x {x.shape}, strides {strides}, "
                     f"padding {padding}")
  if impl == "auto":
    impl = "hybrid" if jax.default_backend() == "cpu" else "native"
  if impl == "native":
    return _conv_native(x, kernel, strides, padding)
  if impl == "hybrid":
    if _foldable(kernel.shape, strides, padding):
      x = materialized(x)  # transposed below or in the folded kernel gradient
      w = _one_wide_dim(kernel.shape, strides)
      if w is not None:
        return _conv_native_fwd_along_bwd(x, kernel, strides, padding, w)
    return _conv_hybrid(x, kernel, strides, padding)
  return _conv_unfold(x, kernel, strides, padding)


def materialized(x: Array) -> Array:
  """x unchanged, as an array XLA:CPU reads from memory rather than recomputes (CPU backend;
  elsewhere x itself).

  XLA fuses cheap elementwise producers into each consumer, duplicating them. When a consumer
  is a transpose (BPM-GCN's (9, 1) convolutions move V into the batch; its graph unit's 1x1
  weight gradients transpose their inputs), the whole BatchNorm / residual / ReLU chain that
  made x is recomputed in transposed, strided order: 20-38 ms per transpose at BPM-GCN's
  shapes where reading the stored x takes about 10. XLA does not duplicate a division, so x
  is divided by a one it cannot fold: fmax(min(|a|, 0) + 1, 1) is exactly 1 for every a
  (NaN and inf included), and x / 1 is exactly x (subnormals flush to zero, as in every
  XLA:CPU op). lax.optimization_barrier does not help: XLA:CPU removes it before fusion.
  BPM-GCN's train step: about 6% faster."""
  if jax.default_backend() != "cpu" or not x.size:
    return x
  a = lax.stop_gradient(x.reshape(-1)[0])
  one = jnp.fmax(jnp.minimum(jnp.abs(a), 0).astype(x.dtype) + 1, jnp.ones((), x.dtype))
  return x / one


class Conv(nn.Module):
  """nn.Conv's variables (kernel [*K, in, out], bias) with PyTorch-style symmetric padding,
  computed by `conv` (`impl`; on the CPU backend its gradients are matmuls)."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] | None = None
  padding: Sequence[int] | None = None
  use_bias: bool = True
  impl: str = "auto"
  dtype: Dtype | None = None
  kernel_init: Initializer = kaiming_normal_fan_out
  bias_init: Initializer = nn.initializers.zeros_init()
  kernel_axes: tuple[str | None, ...] | None = None  # default: (None, ..., "conv_in", "conv_out")

  @nn.compact
  def __call__(self, x: Array) -> Array:
    ks = tuple(self.kernel_size)
    axes = self.kernel_axes or (None,) * len(ks) + ("conv_in", "conv_out")
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, axes),
                        ks + (x.shape[-1], self.features), jnp.float32)
    bias = (self.param("bias", self.bias_init, (self.features,), jnp.float32)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv(x, kernel, self.strides or (1,) * len(ks), self.padding or (0,) * len(ks),
             self.impl)
    return y + bias if bias is not None else y


class Conv3D(nn.Module):
  """3D convolution with nn.Conv's param layout (kernel [kt, kh, kw, in, out]) and PyTorch-style
  explicit symmetric padding; `impl` picks how XLA computes it (see `conv3d`)."""
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: int | Sequence[int] = 0
  use_bias: bool = False
  impl: str = "auto"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = kaiming_normal_fan_out
  bias_init: Initializer = nn.initializers.zeros_init()
  # Stems take 1-3 input channels: name conv_in None there so no rule tries to split it.
  kernel_axes: tuple[str | None, ...] = (None, None, None, "conv_in", "conv_out")

  @nn.compact
  def __call__(self, x: Array) -> Array:
    ks = _triple(self.kernel_size)
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
        (*ks, x.shape[-1], self.features), self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv3d(x, kernel, _triple(self.strides), _triple(self.padding), self.impl)
    if bias is not None:
      y = y + bias
    return y


def conv2d(features: int, kernel_size: Sequence[int], strides: Sequence[int] = (1, 1),
           padding: Sequence[int] = (0, 0), *, use_bias: bool = False, dtype: Dtype | None = None,
           kernel_init: Initializer = kaiming_normal_fan_out,
           kernel_axes: tuple[str | None, ...] = (None, None, "conv_in", "conv_out"),
           name: str | None = None) -> nn.Conv:
  """nn.Conv with PyTorch-style symmetric padding and logical axes on the kernel."""
  return nn.Conv(
      features, tuple(kernel_size), strides=tuple(strides),
      padding=[(p, p) for p in padding], use_bias=use_bias, dtype=dtype,
      kernel_init=nn.with_logical_partitioning(kernel_init, kernel_axes),
      name=name)


def dense(features: int, *, axes: tuple[str | None, str | None] = ("embed", "mlp"),
          use_bias: bool = True, dtype: Dtype | None = None,
          kernel_init: Initializer = torch_default_kernel_init,
          bias_init: Initializer | None = None, fan_in: int | None = None,
          name: str | None = None) -> nn.Dense:
  """nn.Dense with logical kernel axes and, by default, PyTorch's Linear init.

  PyTorch's default bias init needs fan_in; pass it (or an explicit bias_init)."""
  if bias_init is None:
    bias_init = torch_default_bias_init(fan_in) if fan_in else nn.initializers.zeros_init()
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype,
      kernel_init=nn.with_logical_partitioning(kernel_init, axes), bias_init=bias_init,
      name=name)

def _entry_count(x: Array, w: Array | None) -> int | Array:
  """Entries per channel the batch statistics average over: all, or the real ones (>= 1)."""
  return math.prod(x.shape[:-1]) if w is None else jnp.maximum(jnp.sum(w), 1.0)


def _batch_stats(xf: Array, w: Array | None) -> tuple[Array, Array, int | Array]:
  """Per-channel mean and biased variance over all axes but the last (real entries only when
  weights `w` [..., 1] are given), and the entry count n. Two passes (mean, then the mean
  squared deviation), as PyTorch: E[x^2] - E[x]^2 cancels catastrophically in float32 when
  |mean| >> std (BPM-GCN's train-mode gradients drifted by ~1% of their scale with it)."""
  axes = tuple(range(xf.ndim - 1))
  n = _entry_count(xf, w)
  if w is None:
    mean = jnp.mean(xf, axes)
    return mean, jnp.mean(jnp.square(xf - mean), axes), n
  mean = jnp.sum(xf * w, axes) / n
  return mean, jnp.sum(jnp.square(xf - mean) * w, axes) / n, n


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def batch_norm_train(xf: Array, scale: Array, bias: Array, w: Array | None, eps: float
                     ) -> tuple[Array, Array, Array]:
  """Train-mode BatchNorm of float `xf` [..., C] with its batch statistics: (y, mean, var).

  The gradient is written out (a custom VJP) rather than differentiated through the two-pass
  statistics: one reduction pass for sum(dy) and sum(dy * x_hat) and one elementwise pass for
  dx, where autodiff of the forward left XLA:CPU several passes and broadcasts per layer (the
  BatchNorm backward fusions were about a sixth of BPM-GCN's CPU step). Cotangents of the
  returned mean/var (running statistics never take gradients, but a caller may) are included."""
  return _bn_fwd(xf, scale, bias, w, eps)[0]


def _bn_fwd(xf, scale, bias, w, eps):
  mean, var, n = _batch_stats(xf, w)
  rstd = lax.rsqrt(var + eps)
  y = (xf - mean) * (scale * rstd) + bias
  return (y, mean, var), (xf, scale, w, mean, rstd, n)


def _bn_bwd(eps, res, cts):
  del eps
  xf, scale, w, mean, rstd, n = res
  dy, dmean, dvar = cts
  axes = tuple(range(xf.ndim - 1))
  xhat = (xf - mean) * rstd
  s1 = jnp.sum(dy, axes)          # = d bias
  s2 = jnp.sum(dy * xhat, axes)   # = d scale
  g = scale * rstd
  # y depends on x directly (g * dy) and through mean and var, which see the real entries only:
  # d mean = -g s1 (+ dmean), d var = -g rstd s2 / 2 (+ dvar); d var / d mean = 0.
  coef_mean = (dmean - g * s1) / n
  coef_xhat = (2.0 * dvar / rstd - g * s2) / n
  dx_stats = coef_mean + xhat * coef_xhat
  dx = g * dy + (dx_stats if w is None else w * dx_stats)
  dw = None if w is None else jnp.zeros_like(w)
  return dx, s2, s1, dw


batch_norm_train.defvjp(_bn_fwd, _bn_bwd)


class BatchNorm(nn.Module):
  """BatchNorm over all axes but the last, matching PyTorch's train/eval semantics.

  Same variables as nn.BatchNorm (params scale/bias, batch_stats mean/var). Defaults follow
  PyTorch: eps 1e-5, momentum 0.1 (= Flax momentum 0.9), and the running variance is updated
  with the *unbiased* batch variance as PyTorch does (normalisation uses the biased one).
  Statistics are computed in float32 at least (float64 for float64 inputs, which parity tests
  use); the output is in `dtype`.
  """
  use_running_average: bool | None = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  unbiased_running_var: bool = True
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  scale_init: Initializer = nn.initializers.ones_init()
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool | None = None, *,
               mask: Array | None = None) -> Array:
    """`mask` (broadcastable to x without its last axis, True = real): batch statistics over
    the real entries only (padded sequences); the output is computed everywhere."""
    use_ra = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    feat = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((feat,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((feat,), jnp.float32))
    scale = self.param("scale", self.scale_init, (feat,), self.param_dtype)
    bias = self.param("bias", self.bias_init, (feat,), self.param_dtype)
    sdt = jnp.promote_types(x.dtype, jnp.float32)
    xf = x.astype(sdt)
    if use_ra:
      mul = scale.astype(sdt) * lax.rsqrt(ra_var.value + self.epsilon)
      y = (xf - ra_mean.value) * mul + bias.astype(sdt)
    else:
      w = (None if mask is None else
           jnp.broadcast_to(mask.astype(sdt), x.shape[:-1])[..., None])
      y, mean, var = batch_norm_train(xf, scale.astype(sdt), bias.astype(sdt), w,
                                      self.epsilon)
      if not self.is_initializing():
        n = _entry_count(x, w)
        upd_var = var * (n / jnp.maximum(n - 1, 1)) if self.unbiased_running_var else var
        m = self.momentum
        ra_mean.value = (m * ra_mean.value + (1.0 - m) * mean).astype(ra_mean.value.dtype)
        ra_var.value = (m * ra_var.value + (1.0 - m) * upd_var).astype(ra_var.value.dtype)
    return y.astype(self.dtype if self.dtype is not None else x.dtype)
