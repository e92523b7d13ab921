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


# ---- scheduling (CI time) -----------------------------------------------------------------------
# `--dist loadfile` hands whole files to the workers from a queue that xdist sorts by test
# count: long files with one or two tests (BPM-GCN's and the demo's sharded-equals-single-device
# checks) came last, and one worker ran them alone for ~90 s while the other idled. Instead the
# queue keeps the collection's order and the collection puts the longest files first (largest
# first keeps the end even). The list is by measured wall time per file in a 2-worker run
# (session 19, 2-core EPYC); a file not in it runs after these, in its usual order. A stale
# list costs only time, never a result: re-measure with JAXAFFECT_TEST_TIMELINE=DIR on a full
# run, then `python tests/schedule_report.py DIR` prints the new list.
LONGEST_FIRST = (
    "test_models.py", "test_sweep.py", "test_tsl_method.py", "test_mart_method.py",
    "test_platform.py", "test_transformer.py", "test_bpmgcn_model.py", "test_bpmgcn_method.py",
    "test_convert.py", "test_trust.py", "test_user_errors.py", "test_demo_sharded.py",
    "test_bpmgcn_ablations.py", "test_convert_train_parity.py", "test_cten_feature_cache.py",
    "test_cten_method.py", "test_cten_convert.py", "test_mart_tacl.py", "test_versus.py",
    "test_multiprocess.py", "test_sharding_transformer.py", "test_memory_mode.py",
    "test_tsl_model.py", "test_mart_convert.py", "test_mart_encoders.py", "test_end_to_end.py",
    "test_mart_backbones.py", "test_mart_pieces.py", "test_readme_commands.py",
    "test_bad_input_data.py",
)


def pytest_configure(config):
  if hasattr(config.option, "loadscopereorder"):  # pytest-xdist >= 3.6
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


# A folder for the run's test start/end times (tests/schedule_report.py reads them). Written by
# the process that reports (xdist's controller sees every worker's tests, or a plain run).
_TIMELINE = os.environ.get("JAXAFFECT_TEST_TIMELINE")


def _timeline(kind, nodeid):
  if not _TIMELINE or os.environ.get("PYTEST_XDIST_WORKER"):
    return
  import json
  import time
  with open(os.path.join(_TIMELINE, "run.jsonl"), "a") as f:
    f.write(json.dumps([kind, nodeid, time.time()]) + "\n")


def pytest_runtest_logstart(nodeid, location):
  _timeline("start", nodeid)


def pytest_runtest_logfinish(nodeid, location):
  _timeline("end", nodeid)
