"""XLA compiler options the house passes to its jitted programs (per program, never through
XLA_FLAGS: a user's XLA_FLAGS stay theirs)."""
from __future__ import annotations

import functools
import logging
import os

log = logging.getLogger(__name__)

# XLA:CPU hands dots, convolutions and reductions to YNNPACK by default. Its convolutions ran
# 2-2.6x slower than XLA's own (Eigen) on the convolutions of our models (2-core AVX2 EPYC,
# forward: a 3 x 3 64 -> 64 conv over [512, 28, 28] 625 -> 244 ms; the per-tap 7 x 7 stem of
# VAANet's 3D ResNet 897 -> 460 ms); its dots and reductions are the faster ones (dropping
# the reductions too made BPM-GCN's train step 15% slower). So the step programs keep
# YNNPACK for single dots and for reductions. A reduction fusion may absorb the ops feeding
# it, a convolution included; in our methods' steps none does (VAANet, BPM-GCN, TSL-Net: 160,
# 64 and 13 convolutions, all XLA's). Whole steps, A/B in one process: VAANet (batch 2) train
# 10.7 -> 8.3 s, eval 8.6 -> 7.1 s; BPM-GCN and TSL-Net within noise (-2 to -10%).
CPU_LIBRARY_FUSIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
_YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"


def for_init(platform: str) -> dict | None:
  """XLA options for the one-off init program. On CPU, LLVM's O2 pipeline spends most of a
  cold init compile on the random-number kernels (the demo's: 59 s at O2, 9 s at O1 on 2
  cores) and buys nothing for a program that runs once; O1 gives bit-identical values there
  (tests/test_platform.py checks it on the toy model). Other backends keep their defaults."""
  if platform == "cpu":
    return {"xla_backend_optimization_level": 1}
  return None


def for_step(platform: str) -> dict | None:
  """XLA options for the programs that run many times (train and eval steps, the backbone of
  the feature cache, prediction): on CPU, YNNPACK for dots and reductions but not for
  convolutions (see CPU_LIBRARY_FUSIONS). None elsewhere, when the user's XLA_FLAGS choose
  the YNNPACK fusions themselves, or when this XLA has no such option."""
  if platform != "cpu":
    return None
  return _cpu_step_options(os.environ.get("XLA_FLAGS", ""))


@functools.cache
def _cpu_step_options(xla_flags: str) -> dict | None:
  if _YNN_OPTION in xla_flags:
    return None
  import jax
  import numpy as np
  options = {_YNN_OPTION: CPU_LIBRARY_FUSIONS}
  try:  # a tiny program: an XLA that renamed or dropped the option fails here, not in a step
    jax.jit(lambda x: x + 1, compiler_options=options).lower(np.zeros(2, np.float32)).compile()
  except jax.errors.JaxRuntimeError as e:
    log.warning("this XLA has no %s=%s (%s); the step programs keep XLA's defaults",
                _YNN_OPTION, CPU_LIBRARY_FUSIONS, str(e).splitlines()[0])
    return None
  return options
