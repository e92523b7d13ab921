"""Test set-up: 8 emulated CPU devices and parsed absl flags (grain workers need them)."""
import os

# Emulated devices and LLVM at O1 (cpu_env.py says why); only where XLA_FLAGS is unset (CI):
# set it to test at XLA's default level. The init program's O1 is checked against an explicit
# default compile (test_platform).
from cpu_env import xla_flags  # noqa: E402

os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole run: the pytest process sets it before it
# starts its xdist workers, and the CLI subprocesses of the tests inherit it, so the many runs
# of the same smoke config compile once (CI time). Only compiles over a second are stored.
_OWN_JIT_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  _OWN_JIT_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
      prefix="jaxaffect-test-jit-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smoke_data_dir(tmp_path_factory):
  """One data dir for the smoke configs, shared by all tests (generated and extracted once,
  on first use by a test)."""
  return str(tmp_path_factory.mktemp("smoke_data"))


def pytest_unconfigure(config):
  """The process that created the compilation cache (not an xdist worker) removes it."""
  if _OWN_JIT_CACHE and not hasattr(config, "workerinput"):
    import shutil
    shutil.rmtree(_OWN_JIT_CACHE, ignore_errors=True)
