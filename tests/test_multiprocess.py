"""Two processes (launch/local.sh, gloo CPU collectives) train like one and restore across
processes. The toy method (tests/toy_method.py) keeps the compiles small: the multi-process
launches compile cold (no shared cache there), and what is under test is the multi-host path
(jax.distributed, cross-process collectives and FSDP gathers, one iterator state per process,
restore across processes), which is the same for every method; each method's per-process
input split is tested in its data tests."""
import json
import os
import subprocess
import sys

import numpy as np

from test_end_to_end import ROOT, _env, _toy_args as _args, _train_losses


def test_two_processes_equal_one_and_restore(tmp_path):
  extra = ["--config.total_steps=5", "--config.checkpoint.every_steps=5"]
  one = tmp_path / "one"
  subprocess.run([sys.executable, "-m", "jaxaffect.main", *_args(one, *extra)], cwd=ROOT,
                 env=_env(), check=True, capture_output=True, timeout=600)  # 4 devices
  two = tmp_path / "two"
  env = dict(_env(), CPU_DEVICES_PER_PROCESS="2", PYTHON=sys.executable)
  env.pop("XLA_FLAGS", None)
  # No shared compilation cache here: with it the restoring launch aborted in jax.distributed
  # twice in full test runs (never alone); the multi-process runs compile their own programs.
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  r = subprocess.run(["bash", "launch/local.sh", "2", *_args(two, *extra)],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  a, b = _train_losses(one), _train_losses(two)
  assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4, 5]
  np.testing.assert_allclose([l for _, l in b], [l for _, l in a], rtol=1e-5)
  assert sorted(f for f in os.listdir(two / "checkpoints" / "5" / "data_iter")
                if f.endswith(".json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  # Restore across the two processes and train on (a deliberate change: recorded).
  r = subprocess.run(["bash", "launch/local.sh", "2", *_args(
                      two, "--config.total_steps=7", "--config.checkpoint.every_steps=5",
                      "--config.resume_changes=allow")],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  steps_logged = [s for s, _ in _train_losses(two)]
  assert steps_logged == [1, 2, 3, 4, 5, 6, 7]
  history = json.load(open(two / "config.json"))["_resume_history"]
  assert [h["changes"] for h in history] == [{"total_steps": [5, 7]}]
