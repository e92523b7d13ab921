"""XLA_FLAGS of the test session and of the CLI subprocesses its tests start.

LLVM runs at O1 instead of XLA's default: the same HLO programs, compiled about a fifth faster
in total (MART's two-stage smoke step: 71 -> 49 s on 2 cores). Tests check semantics and
values within tolerances, not the speed of the CPU code. The subprocesses use the same flags,
so they share the session's persistent compilation cache with the in-process tests.
"""


O1 = "--xla_backend_optimization_level=1"


def xla_flags(devices: int = 8, o1: bool = True) -> str:
  return f"--xla_force_host_platform_device_count={devices}" + (f" {O1}" if o1 else "")


DEFAULT_LEVEL_RUN = "JAXAFFECT_TEST_AT_DEFAULT_XLA_LEVEL"


def rerun_at_default_level(nodeid: str) -> bool:
  """For a test of XLA's own compilation (the SPMD miscompilation test): when this session
  compiles at O1, run the test `nodeid` again in a fresh pytest process at XLA's default level
  and return True (the caller then returns: the subprocess asserted everything); otherwise
  return False and the caller runs the test here."""
  import os
  import subprocess
  import sys
  if os.environ.get(DEFAULT_LEVEL_RUN) or O1 not in os.environ.get("XLA_FLAGS", ""):
    return False
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS=xla_flags(8, o1=False),
             **{DEFAULT_LEVEL_RUN: "1"})
  r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", nodeid],
                     env=env, cwd=root, capture_output=True, text=True)
  assert r.returncode == 0, (f"{nodeid} at XLA's default level:\n"
                            f"{r.stdout[-4000:]}{r.stderr[-2000:]}")
  return True
