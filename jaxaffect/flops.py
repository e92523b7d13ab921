"""Model FLOPs counted from the jaxpr: matmuls and convolutions, 2 FLOPs per multiply-add.

This is the usual MFU convention (PaLM/MaxText): only dot_general and conv_general_dilated count,
and cuDNN's fused attention as the matmuls it replaces. Under remat, the forward products that
the policy does not save appear again in the backward pass and are counted there too.
It does not depend on the backend, unlike XLA's cost analysis, which on GPU does not see inside
cuDNN/cuBLAS custom calls (it reported 1/86 of the real FLOPs of a VAANet step on an H200).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
from jax.extend import core as jex_core


def _dot_flops(eqn) -> int:
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
  contract = math.prod(lhs[d] for d in lc)
  batch = math.prod(lhs[d] for d in lb)
  lfree = math.prod(s for i, s in enumerate(lhs) if i not in lc and i not in lb)
  rfree = math.prod(s for i, s in enumerate(rhs) if i not in rc and i not in eqn.params[
      "dimension_numbers"][1][1])
  return 2 * batch * contract * lfree * rfree


def _conv_flops(eqn) -> int:
  out = eqn.outvars[0].aval.shape
  rhs = eqn.invars[1].aval.shape
  dn = eqn.params["dimension_numbers"]
  # rhs spec: (out feature dim, in feature dim, spatial dims...)
  in_feat = rhs[dn.rhs_spec[1]]
  spatial = math.prod(rhs[d] for d in dn.rhs_spec[2:])
  return 2 * math.prod(out) * in_feat * spatial


# cuDNN's fused attention (jax.nn.dot_product_attention on GPU) is one primitive, not the
# two matmuls XLA's path traces to. Forward: Q K^T and P V, 4 * |Q| * S FLOPs (|Q| = B T N D,
# S the key length); backward: the four products dQ, dK, dV, dP, twice that (its recomputed
# Q K^T is not model work). Causal masks count half, as the kernel skips the masked blocks.
_FUSED_ATTENTION = {"dot_product_attention_fwd": 4, "dot_product_attention_fwd_wrapper": 4,
                    "dot_product_attention_bwd": 8, "dot_product_attention_bwd_wrapper": 8}
_BNTH = 1  # jax's AttentionLayout.BNTH.value; BTNH (0) otherwise


def _fused_attention_flops(eqn) -> int:
  q, k = (v.aval.shape for v in eqn.invars[:2])
  s = k[2] if eqn.params.get("layout") == _BNTH else k[1]
  f = _FUSED_ATTENTION[eqn.primitive.name] * math.prod(q) * s
  return f // 2 if "CAUSAL" in str(eqn.params.get("mask_type", "")).upper() else f


def _count(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name in _FUSED_ATTENTION:
      total += _fused_attention_flops(eqn)
    mult = eqn.params.get("length", 1) if name == "scan" else 1
    for p in eqn.params.values():
      for sub in (p if isinstance(p, (list, tuple)) else [p]):
        if isinstance(sub, jex_core.ClosedJaxpr):
          total += mult * _count(sub.jaxpr)
        elif isinstance(sub, jex_core.Jaxpr):
          total += mult * _count(sub)
  return total


def count_flops(fn: Callable, *args: Any, **kwargs: Any) -> int:
  """Matmul + convolution FLOPs of one call of `fn` (arguments may be ShapeDtypeStructs). A
  jitted `fn` is traced as a top-level program: the step programs carry compiler options
  (xla_options.for_step), which jax refuses on a jit nested inside make_jaxpr's trace."""
  if hasattr(fn, "trace") and not kwargs:
    return _count(fn.trace(*args).jaxpr.jaxpr)
  return _count(jax.make_jaxpr(fn, **kwargs)(*args).jaxpr)


# Dense bf16 peak FLOP/s per chip (vendor figures): the denominator of MFU, for every dtype.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
              "TPU v5e": 197e12, "TPU v5p": 459e12}


def peak_flops(config) -> float | None:
  """Peak FLOP/s of one device: `config.benchmark_peak_flops` when set, else PEAK_FLOPS by the
  device kind; None when unknown (the CPU)."""
  p = float(config.get("benchmark_peak_flops", 0.0) or 0.0)
  if p:
    return p
  kind = jax.devices()[0].device_kind
  return next((v for k, v in PEAK_FLOPS.items() if k.lower() in kind.lower()), None)
