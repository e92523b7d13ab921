"""The command line as a user runs it: errors, preemption, summary."""
import json
import os
import signal
import subprocess
import sys
import time
from cpu_env import xla_flags


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
  env["XLA_FLAGS"] = xla_flags(8)
  env["JAX_PLATFORMS"] = "cpu"
  env.update(extra)
  return env


def _main(*args, timeout=300, **env):
  return subprocess.run([sys.executable, "-m", "jaxaffect.main", *args], cwd=ROOT,
                        env=_env(**env), capture_output=True, text=True, timeout=timeout)


def test_unknown_override_key_is_an_error_naming_it(tmp_path):
  r = _main("--config", "configs/demo.py:smoke", "--workdir", str(tmp_path),
            "--config.optimizer.learnig_rate=0.1")
  assert r.returncode != 0
  assert "learnig_rate" in r.stderr


def test_missing_data_directory_is_one_line_naming_the_path(tmp_path):
  missing = tmp_path / "nowhere"
  r = _main("--config", "configs/vaanet_ve8.py", "--workdir", str(tmp_path / "wd"),
            f"--config.dataset.data_dir={missing}")
  assert r.returncode == 1
  err = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and str(missing) in err[0], r.stderr[-2000:]
  assert "Traceback" not in r.stderr


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  wd = tmp_path / "wd"
  p = subprocess.Popen([sys.executable, "-m", "jaxaffect.main", "--config",
                        "tests/configs/toy.py", "--workdir", str(wd),
                        "--config.total_steps=1000000", "--config.checkpoint.every_steps=1000000"],
                       cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
  metrics = wd / "metrics.jsonl"
  deadline = time.time() + 120
  while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 200):
    time.sleep(0.2)
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=120)
  assert p.returncode == 0, err[-3000:]
  steps = sorted(int(d) for d in os.listdir(wd / "checkpoints") if d.isdigit())
  assert steps, "no checkpoint written on SIGTERM"
  logged = [json.loads(l)["step"] for l in open(metrics)]
  assert steps[-1] >= max(logged)


def test_summary_prints_paper_parameter_counts():
  r = _main("--config", "configs/vaanet_ve8.py", "--mode", "summary",
            "--config.model.conv_impl=native")
  assert r.returncode == 0, r.stderr[-2000:]
  last = r.stdout.strip().splitlines()[-1]
  fields = dict(kv.split("=") for kv in last.split())
  assert set(fields) == {"total_params", "trainable_params", "flops_per_example"}
  # The released VAANet: 97.87M total, 12.62M trainable (frozen 3D ResNet-101 body).
  assert int(fields["total_params"]) == 97_869_012
  assert int(fields["trainable_params"]) == 12_623_892
  assert float(fields["flops_per_example"]) > 12 * 1e10  # 12 clips through a 3D ResNet-101


def test_metric_writer_leaves_torch_unimported_and_importable(tmp_path):
  """tensorboardX would import torch (2 s per launch); the writer keeps it out, and a later
  `import torch` still works (the versus tool and the converters' tests use it)."""
  code = ("import sys; from jaxaffect import metric_writer; "
          f"w = metric_writer.MetricWriter({str(tmp_path)!r}); w.write(0, {{'loss': 1.5}}); w.close(); "
          "print('torch' in sys.modules); import torch; print(torch.tensor([1.0]).item())")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.split() == ["False", "1.0"]
  assert os.listdir(tmp_path / "tensorboard")
