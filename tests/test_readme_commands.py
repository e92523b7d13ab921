"""Every command the README documents is run by a test: each `python -m <module>` entry point
and each `--mode` of jaxaffect.main named in README.md maps to the test file that runs it (and
the text in that file that shows it runs it). A command added to the README without a test,
or a test that stops running its command, fails here. The last two tests run the two commands
no other test ran."""
import json
import os
import re
import subprocess
import sys

import pytest
from cpu_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# README command -> (test file, text in it that runs the command).
RUN_BY = {
    "jaxaffect.main": ("test_end_to_end.py", '"-m", "jaxaffect.main"'),
    "jaxaffect.main --mode train": ("test_end_to_end.py", '"-m", "jaxaffect.main"'),
    "jaxaffect.main --mode eval": ("test_end_to_end.py", '"--mode", "eval"'),
    "jaxaffect.main --mode summary": ("test_cli.py", '"--mode", "summary"'),
    "jaxaffect.main --mode benchmark": ("test_readme_commands.py", '"--mode", "benchmark"'),
    "jaxaffect.main --mode memory": ("test_memory_mode.py", '"--mode", "memory"'),
    "jaxaffect.convert": ("test_convert.py", '"-m", "jaxaffect.convert"'),
    "jaxaffect.predict": ("test_sweep.py", '"-m", "jaxaffect.predict"'),
    "jaxaffect.evaluation.localization": ("test_localization_eval.py",
                                          '"-m", "jaxaffect.evaluation.localization"'),
    "jaxaffect.methods.tsl.figures": ("test_tsl_method.py", "viz.main(["),
    "jaxaffect.methods.vaanet.attention": ("test_viz.py", '"jaxaffect.methods.vaanet.attention"'),
    "jaxaffect.methods.vaanet.feature_cache": ("test_readme_commands.py",
                                               '"-m", "jaxaffect.methods.vaanet.feature_cache"'),
    "jaxaffect.methods.cten.feature_cache": ("test_cten_feature_cache.py",
                                             '"-m", "jaxaffect.methods.cten.feature_cache"'),
    "jaxaffect.tools.aggregate_splits": ("test_sweep.py", "aggregate_splits.main(["),
    "jaxaffect.tools.best_over_evals": ("test_bpmgcn_protocol.py",
                                        '"-m", "jaxaffect.tools.best_over_evals"'),
    "jaxaffect.tools.sweep": ("test_sweep.py", "sweep.main(["),
    "jaxaffect.tools.versus": ("test_versus.py", "versus.main(["),
    "jaxaffect.tools.profile_step": ("test_profile_step.py", "profile_step.main(["),
    "data_pipelines.synthetic": ("test_synthetic.py", "cli.main(args)"),
    "pytest": (None, None),  # the CI runs it
    "launch/local.sh": ("test_multiprocess.py", '"launch/local.sh"'),
}


def _readme_commands() -> set[str]:
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  found = set(re.findall(r"python -m ([A-Za-z_][\w.]*)", text))
  found |= {f"jaxaffect.main --mode {m}" for m in re.findall(r"--mode[ =]([a-z]+)", text)}
  found |= set(re.findall(r"\b(launch/local\.sh)\b", text))
  return found


def test_every_readme_command_is_run_by_a_test():
  commands = _readme_commands()
  assert "jaxaffect.main" in commands and len(commands) > 10  # the parse found the README's
  missing = sorted(commands - set(RUN_BY))
  assert not missing, f"README commands without a test: {missing}"
  for command in commands:
    test_file, text = RUN_BY[command]
    if test_file is None:
      continue
    with open(os.path.join(ROOT, "tests", test_file), encoding="utf-8") as f:
      assert text in f.read(), f"{command}: tests/{test_file} no longer runs it ({text!r})"


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=xla_flags(8))


def test_benchmark_mode_on_smoke(smoke_data_dir):
  r = subprocess.run([sys.executable, "-m", "jaxaffect.main", "--config", "configs/demo.py:smoke",
                      "--mode", "benchmark", "--benchmark_steps", "2",
                      f"--config.dataset.data_dir={smoke_data_dir}"],
                     cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  res = json.loads(r.stdout.strip().splitlines()[-1])
  assert res["step_time_s_median"] > 0
  assert isinstance(res["input_examples_per_s"], float)  # the input pipeline was timed too
  assert res["input_over_step_examples"] == pytest.approx(
      res["input_examples_per_s"] / res["examples_per_s"])


def test_feature_cache_cli_builds_a_cache_training_uses(tmp_path, smoke_data_dir):
  cache = tmp_path / "cache"
  r = subprocess.run([sys.executable, "-m", "jaxaffect.methods.vaanet.feature_cache",
                      "--config", "configs/demo.py:smoke", "--out", str(cache), "--views", "1",
                      "--batch_size", "4", f"--config.dataset.data_dir={smoke_data_dir}"],
                     cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  assert os.listdir(cache)
