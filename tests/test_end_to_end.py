"""Every config and variant loads; a run killed with kill -9 and resumed from the command line
equals an uninterrupted one, bit for bit (the demo: sharded == single device in
test_demo_sharded.py; two processes: test_multiprocess.py)."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jaxaffect import config_lib
from cpu_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = ("seed", "total_steps", "batch_size", "mesh.data", "mesh.fsdp", "mesh.tensor",
            "optimizer", "schedule", "checkpoint.every_steps", "checkpoint.keep",
            "log_every_steps", "eval_every_steps", "dataset.data_dir", "model")


def _config(data_dir, name="demo.py", arg="smoke"):
  c = config_lib.sibling_config(os.path.join(ROOT, "configs", "x.py"), name, arg)
  c.dataset.data_dir = data_dir
  return c


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_config_and_variant_loads_with_required_keys(path):
  name = os.path.basename(path)
  args = {"demo.py": [None, "smoke"],
          "vaanet_ve8.py": [None, "smoke", "synthetic", "split=3", "synthetic,smoke"],
          "vaanet_ekman6.py": [None, "smoke", "synthetic"],
          "cten_ve8.py": [None, "smoke", "synthetic", "keyframes", "legacy", "legacy_visual",
                         "split=3"],
          "cten_caer.py": [None, "smoke", "legacy", "eval_split=validation"]}
  for arg in args.get(name, [None, "smoke"]):
    c = _config("/tmp/unused", name, arg)
    for key in REQUIRED:
      node = c
      for part in key.split("."):
        node = node[part]


def _env():
  return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
              JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(4))


def _toy_args(wd, *extra):
  """jaxaffect.main arguments of the toy method (tests/toy_method.py) on data=2 x fsdp=2 (over
  4 devices, or two processes of 2: the parameters are split)."""
  return ["--config", "tests/configs/toy.py", "--workdir", str(wd), "--config.mesh.data=2",
          "--config.mesh.fsdp=2", *extra]


def _cmd(wd, *extra):
  # The toy method: the kill, the half-written checkpoint directory it may leave, the stale
  # workdir lock, and the restore of parameters, optimizer state and grain iterator state are
  # the platform's, the same for every method; each method's own iterator state has its data
  # test (test_input_pipeline, test_tsl_data, ...). A 0.4 s delay per batch keeps the run alive
  # long enough to be killed between its checkpoints, however fast the machine.
  return [sys.executable, "-m", "jaxaffect.main",
          *_toy_args(wd, "--config.dataset.delay_s=0.4", *extra)]


def _train_losses(wd):
  return [(r["step"], r["train/loss"]) for r in map(json.loads, open(os.path.join(wd,
          "metrics.jsonl"))) if "train/loss" in r]


def test_kill9_then_resume_equals_uninterrupted_run(tmp_path):
  extra = ["--config.total_steps=10", "--config.checkpoint.every_steps=2"]
  full = tmp_path / "full"
  subprocess.run(_cmd(full, *extra), cwd=ROOT, env=_env(), check=True, capture_output=True,
                 timeout=600)
  wd = tmp_path / "killed"
  p = subprocess.Popen(_cmd(wd, *extra), cwd=ROOT, env=_env(),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  metrics = wd / "metrics.jsonl"
  while time.time() < deadline:
    if metrics.exists() and any(s >= 5 for s, _ in _train_losses(wd)):
      break
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert not (wd / "results.json").exists(), "the run finished before it was killed"
  subprocess.run(_cmd(wd, *extra), cwd=ROOT, env=_env(), check=True, capture_output=True,
                 timeout=600)
  assert _train_losses(wd) == _train_losses(full)
  results = json.load(open(wd / "results.json"))
  assert results == json.load(open(full / "results.json"))
  # --mode eval on the finished workdir reproduces the final evaluation.
  r = subprocess.run(_cmd(wd, *extra, "--mode", "eval"), cwd=ROOT, env=_env(),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  evaluated = json.loads(r.stdout.strip().splitlines()[-1].split("results: ", 1)[1])
  assert evaluated["eval/top1"] == results["eval/top1"]
