"""XLA compiler options the house passes to its one-off programs."""
from __future__ import annotations


def for_init(platform: str) -> dict | None:
  """XLA options for the one-off init program. On CPU, LLVM's O2 pipeline spends most of a
  cold init compile on the random-number kernels (the demo's: 59 s at O2, 9 s at O1 on 2
  cores) and buys nothing for a program that runs once; O1 gives bit-identical values there
  (tests/test_platform.py checks it on the toy model). Other backends keep their defaults."""
  if platform == "cpu":
    return {"xla_backend_optimization_level": 1}
  return None
