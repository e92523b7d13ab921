"""Attention figure CLI (jaxaffect.methods.vaanet.attention): a workdir without a checkpoint is
one error line. The figure from a trained workdir is drawn in tests/test_sweep.py, on a workdir
its sweep trained (one training for both; pytest-xdist's loadfile keeps a file on one worker)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxaffect.tools import sweep
from jaxaffect.methods.vaanet import attention
from cpu_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(data_dir):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
  env["XLA_FLAGS"] = xla_flags(8)
  env["JAX_PLATFORMS"] = "cpu"
  env["JAXAFFECT_DATA_DIR"] = data_dir
  return env


def _run(module, *args, data_dir):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=_env(data_dir),
                        capture_output=True, text=True, timeout=600)


def test_missing_checkpoint_is_a_one_line_error(tmp_path, smoke_data_dir):
  r = _run("jaxaffect.methods.vaanet.attention", "--config", "configs/demo.py:smoke", "--workdir",
           str(tmp_path / "empty"), "--video", "x.mp4", "--out", str(tmp_path / "o.png"),
           data_dir=smoke_data_dir)
  assert r.returncode == 1
  err = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and "checkpoints" in err[0], r.stderr[-2000:]


def test_plot_overlays_upsampled_grid(tmp_path):
  att = np.array([[0.0, 1.0], [2.0, 3.0]])
  up = attention.upsample(att, 8)
  assert up.shape == (8, 8) and up[0, 0] == 0.0 and up[-1, -1] == 3.0
  assert up.mean() == pytest.approx(att.mean())
  np.testing.assert_allclose(attention.upsample(np.full((3, 3), 0.7), 5), 0.7)
  rng = np.random.default_rng(0)
  s = 7  # two rows of frames
  alpha = rng.random((s, 2, 2, 2))
  result = dict(video_path="v.mp4", workdir="wd", step=3,
                frames=rng.integers(0, 255, (s, 32, 32, 3), dtype=np.uint8), frame_index=2,
                snippet_len=4, alpha=alpha * 8 / alpha.sum(axis=(1, 2, 3), keepdims=True),
                grid=(2, 2, 2), gamma=rng.random(s), audio_gamma=rng.random(4),
                probs=np.full(8, 1 / 8), class_names=[f"c{i}" for i in range(8)])
  out = tmp_path / "p.png"
  attention.plot(result, str(out), true_label="c1")
  assert out.stat().st_size > 10_000
  assert json.loads(json.dumps(attention.to_json(result)))["alpha_grid"] == [2, 2, 2]


def test_model_settings_follow_the_workdir(tmp_path):
  config = sweep.load_config(os.path.join(ROOT, "configs/demo.py:smoke"))
  saved = json.loads(config.to_json_best_effort())
  saved["model"]["use_audio"] = False
  saved["dataset"]["num_segments"] = 3
  saved["dataset"]["polarity"] = [1] * 8
  saved["dataset"]["data_dir"] = "/elsewhere"
  (tmp_path / "config.json").write_text(json.dumps(saved))
  changed = attention.sync_with_workdir(config, str(tmp_path))
  assert sorted(changed) == ["dataset.num_segments", "dataset.polarity", "model.use_audio"]
  assert config.model.use_audio is False and config.dataset.num_segments == 3
  assert config.dataset.polarity == (1,) * 8 and config.dataset.data_dir != "/elsewhere"
