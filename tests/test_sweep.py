"""Sweep launcher (jaxaffect.tools.sweep) and split aggregation (jaxaffect.tools.aggregate_splits).

One real sweep of the smoke demo (2 trained variants, 2 failing ones) runs once per module; the
attention figure is drawn from one of its workdirs.
"""
import csv
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxaffect.tools import sweep
from jaxaffect.tools import aggregate_splits
from cpu_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(data_dir):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
  env["XLA_FLAGS"] = xla_flags(8)
  env["JAX_PLATFORMS"] = "cpu"
  env["JAXAFFECT_DATA_DIR"] = data_dir
  # The run's shared compilation cache (conftest.py): the variants' demo programs are the ones
  # other tests compile on 8 devices. (Without one, the sweep makes its own under --root.)
  return env


def _sweep(*args, data_dir):
  t0 = time.perf_counter()
  r = subprocess.run([sys.executable, "-m", "jaxaffect.tools.sweep", *args], cwd=ROOT,
                     env=_env(data_dir), capture_output=True, text=True, timeout=600)
  return r, time.perf_counter() - t0


# ------------------------------------------------------------------------------ variant specs


def test_grid_is_crossed_with_override_sets_and_named():
  named = [("base", {}), (None, {"model.use_audio": "False"})]
  grid = [sweep.parse_grid("seed=0,1"), sweep.parse_grid("optimizer.learning_rate=1e-3,1e-4")]
  vs = sweep.build_variants(named, grid, "auto")
  assert len(vs) == 8
  assert vs[0].name == "base__seed=0__optimizer.learning_rate=1e-3"
  assert vs[4].overrides == {"model.use_audio": "False", "seed": "0",
                             "optimizer.learning_rate": "1e-3"}
  assert vs[4].name == "model.use_audio=False__seed=0__optimizer.learning_rate=1e-3"
  short = sweep.build_variants([(None, {"model.use_audio": "False"})], [], "short")
  assert short[0].name == "use_audio=False"
  assert [v.name for v in sweep.build_variants(named, [], "index")] == ["v000", "v001"]
  with pytest.raises(sweep.UsageError, match="not unique"):
    sweep.build_variants([(None, {"seed": "1"}), (None, {"seed": "1"})], [], "auto")


def test_assignments_and_variant_files(tmp_path):
  assert sweep.parse_assignments("a.b=1 --config.c='x y'", "t") == {"a.b": "1", "c": "x y"}
  with pytest.raises(sweep.UsageError, match="key=value"):
    sweep.parse_assignments("model.use_audio", "t")
  with pytest.raises(sweep.UsageError, match="seed=0,1,2"):
    sweep.parse_grid("seed=")
  txt = tmp_path / "v.txt"
  txt.write_text("# ablations\nfull:\nno_audio: model.use_audio=False\n\nloss.name=ce seed=2\n")
  assert sweep.read_variant_file(str(txt)) == [
      ("full", {}), ("no_audio", {"model.use_audio": "False"}),
      (None, {"loss.name": "ce", "seed": "2"})]
  js = tmp_path / "v.json"
  js.write_text(json.dumps({"lr3": {"optimizer.learning_rate": 1e-3, "model.use_audio": False}}))
  assert sweep.read_variant_file(str(js)) == [
      ("lr3", {"optimizer.learning_rate": "0.001", "model.use_audio": "False"})]


# ------------------------------------------------------------------------------ presets

CONFIGS = os.path.join(ROOT, "configs")
# A config of its own, so that only a lookup in the file can produce these rows.
OWN_CONFIG = """
from jaxaffect import config_lib

def get_config(arg=None):
  return config_lib.base_config()
"""
OWN_SWEEPS = """
def get_sweeps():
  return {"lr": [("fast", {"optimizer.learning_rate": 0.1}), ("slow", {"seed": "7"})],
          "seeds": [("s1", {"seed": "1"})]}
"""


def _own_config(tmp_path, body=OWN_SWEEPS):
  path = tmp_path / "mine.py"
  path.write_text(OWN_CONFIG + body)
  return str(path)


def test_ablation_presets_live_in_the_configs_and_use_their_keys():
  with_sweeps = {}
  for name in sorted(os.listdir(CONFIGS)):
    if name.endswith(".py"):
      try:
        with_sweeps[name] = sweep.presets(os.path.join(CONFIGS, name))
      except sweep.UsageError:
        continue
  assert set(with_sweeps) == {"vaanet_ve8.py", "vaanet_ekman6.py", "demo.py",
                              "tsl_tsl300.py", "bpmgcn_emogait.py", "cten_ve8.py",
                              "cten_ekman6.py", "cten_caer.py"}
  for name, presets in with_sweeps.items():
    config = sweep.load_config(os.path.join(CONFIGS, name))
    for preset, rows in presets.items():
      keys = [k for _, ov in rows for k in ov]
      assert keys and sweep.unknown_keys(config, keys) == [], (name, preset)
      assert rows[0] == ("baseline", {}), (name, preset)
  vaanet = dict(with_sweeps["vaanet_ve8.py"]["ablations"])
  assert len(vaanet) == 6 and vaanet["no_audio"] == {"model.use_audio": "False"}
  assert vaanet["no_pcce"] == {"loss.name": "ce"}
  # One VAANet table, read by the other VAANet configs.
  assert with_sweeps["vaanet_ekman6.py"] == with_sweeps["demo.py"] == with_sweeps["vaanet_ve8.py"]
  tsl = dict(with_sweeps["tsl_tsl300.py"]["ablations"])
  assert len(tsl) == 8 and tsl["cpc_paper_sign"] == {"loss.cpc_sign": "-1.0"}
  assert len(with_sweeps["bpmgcn_emogait.py"]["ablations"]) == 8  # test_bpmgcn_ablations.py
  cten = dict(with_sweeps["cten_ve8.py"]["ablations"])
  assert len(cten) == 11 and cten["no_erasing"] == {"erase.enabled": "False"}
  assert cten["audio_intra_erasing"] == {"model.use_visual": "False", "model.use_inter": "False"}
  assert with_sweeps["cten_ekman6.py"] == with_sweeps["cten_caer.py"] == with_sweeps["cten_ve8.py"]
  config = sweep.load_config(os.path.join(CONFIGS, "vaanet_ve8.py:smoke"))
  assert sweep.unknown_keys(config, ["model.nope", "loss.name"]) == ["model.nope"]


def test_preset_is_looked_up_in_the_config_file(tmp_path, capsys):
  config = _own_config(tmp_path)
  root = tmp_path / "never_created"
  assert sweep.main(["--config", config, "--root", str(root), "--preset", "lr",
                     "--dry-run"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 2
  assert lines[0].endswith(f"--workdir {root}/fast --config.optimizer.learning_rate=0.1")
  assert lines[1].endswith(f"--workdir {root}/slow --config.seed=7")
  assert not root.exists()
  assert sweep.main(["--config", config, "--list-presets"]) == 0
  assert capsys.readouterr().out.splitlines() == [
      "lr (2 variants):", "  fast  optimizer.learning_rate=0.1", "  slow  seed=7",
      "seeds (1 variants):", "  s1  seed=1"]
  # A real config's preset, as the README runs it.
  assert sweep.main(["--config", os.path.join(CONFIGS, "demo.py:smoke"), "--root", str(root),
                     "--preset", "ablations", "--dry-run"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 6 and lines[0].endswith(f"--workdir {root}/baseline")
  assert lines[4].endswith(f"--workdir {root}/no_audio --config.model.use_audio=False")


@pytest.mark.parametrize("body,preset,expected", [
    (OWN_SWEEPS, "seed", ["mine.py has no such preset (did you mean 'seeds'?); "
                          "its presets: lr, seeds"]),
    ("", "ablations", ["mine.py defines no get_sweeps(), so it has no presets"]),
    ("", None, ["mine.py defines no get_sweeps()"]),  # --list-presets
    ("def get_sweeps():\n  return {'x': [('a', 'seed=1')]}\n", "x",
     ["mine.py: get_sweeps() must return {preset name: [(variant name, {key: value}), ...]}"]),
])
def test_preset_errors_are_one_line_naming_the_config(tmp_path, capsys, body, preset,
                                                      expected):
  config = _own_config(tmp_path, body)
  args = ["--preset", preset, "--dry-run"] if preset else ["--list-presets"]
  assert sweep.main(["--config", config, "--root", str(tmp_path / "r"), *args]) == 2
  out, err = capsys.readouterr()
  assert out == "" and len(err.splitlines()) == 1 and err.startswith("error: "), err
  assert config in err
  for text in expected:
    assert text in err
  assert not (tmp_path / "r").exists()


def test_table_formats():
  a = sweep.Variant("a", {"seed": "0"}, status="ok",
                    results={"eval/top1": 0.5, "eval/accuracy/Joy": 1.0, "step": 3,
                             "eval/confusion": [[1]], "eval/mean_class_accuracy": 0.25})
  b = sweep.Variant("b|x", {}, status="failed")
  md = sweep.markdown_table([a, b]).splitlines()
  assert md[0] == ("| variant | overrides | status | step | eval/top1 | "
                   "eval/mean_class_accuracy |")
  assert md[2] == "| a | seed=0 | ok | 3 | 0.5000 | 0.2500 |"
  assert md[3] == "| b\\|x | - | failed |  |  |  |"
  rows = list(csv.reader(sweep.csv_table([a, b]).splitlines()))
  assert rows[0][-1] == "eval/accuracy/Joy" and rows[1][-1] == "1.0"


# ------------------------------------------------------------------------------ real sweep


@pytest.fixture(scope="module")
def swept(tmp_path_factory, smoke_data_dir):
  root = tmp_path_factory.getbasetemp() / "sweep"
  spec = tmp_path_factory.mktemp("spec") / "variants.txt"
  # A runtime failure first (bad value, main rejects it), then two good variants, then an
  # unknown key (rejected before anything runs).
  spec.write_text("bad_value: total_steps=abc\na: seed=0\nb: seed=1\n"
                  "bad_key: model.no_such_key=1\n")
  args = ["--config", "configs/demo.py:smoke", "--root", str(root), "--from-file", str(spec),
          "--", "--config.total_steps=1"]
  first = _sweep(*args, data_dir=smoke_data_dir)
  return root, args, first


def test_sweep_runs_variants_tabulates_and_reports_failures(swept):
  root, _, (r, _) = swept
  assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
  with open(root / "results.csv") as f:
    rows = {row["variant"]: row for row in csv.DictReader(f)}
  assert list(rows) == ["bad_value", "a", "b", "bad_key"]
  for name, seed in (("a", "0"), ("b", "1")):
    assert rows[name]["status"] == "ok" and rows[name]["step"] == "1"
    assert rows[name]["overrides"] == f"seed={seed}"
    assert 0.0 <= float(rows[name]["eval/top1"]) <= 1.0
    assert float(rows[name]["eval/mean_class_accuracy"]) >= 0.0
    assert os.path.exists(root / name / "results.json")
  assert rows["bad_value"]["status"] == "failed" and rows["bad_key"]["status"] == "failed"
  assert not (root / "bad_key").exists()  # rejected before it ran
  assert "bad_value" in r.stderr and "total_steps=abc" in r.stderr
  assert "bad_key" in r.stderr and "model.no_such_key" in r.stderr
  md = (root / "results.md").read_text()
  assert "| a | seed=0 | ok | 1 |" in md and "| a | seed=0 | ok | 1 |" in r.stdout
  assert "| b | seed=1 | ok | 1 |" in md


def test_rerun_skips_finished_variants(swept, smoke_data_dir):
  root, args, _ = swept
  logs = {n: (root / n / "sweep.log").read_text() for n in ("a", "b")}
  r, _ = _sweep(*args, data_dir=smoke_data_dir)
  assert r.returncode == 1  # the failing variants still fail
  assert "a: finished earlier" in r.stdout and "b: finished earlier" in r.stdout
  for n in ("a", "b"):
    assert (root / n / "sweep.log").read_text() == logs[n]  # not launched again
  assert "| b | seed=1 | ok | 1 |" in r.stdout


def test_a_workdir_is_not_reused_for_different_overrides(swept, smoke_data_dir, tmp_path):
  root, _, _ = swept
  spec = tmp_path / "v.txt"
  spec.write_text("a: seed=5\n")
  r, _ = _sweep("--config", "configs/demo.py:smoke", "--root", str(root), "--from-file",
                str(spec), "--", "--config.total_steps=1", data_dir=smoke_data_dir)
  assert r.returncode == 1 and "holds another variant" in r.stderr


def test_attention_figure_from_a_swept_checkpoint(swept, smoke_data_dir, tmp_path):
  """jaxaffect.methods.vaanet.attention on variant a, which the sweep above trained."""
  trained = swept[0] / "a"
  video = sorted(glob.glob(os.path.join(smoke_data_dir, "raw", "*", "Joy", "*.mp4")))[0]
  out, js = tmp_path / "att.png", tmp_path / "att.json"
  r = subprocess.run([sys.executable, "-m", "jaxaffect.methods.vaanet.attention", "--config",
                      "configs/demo.py:smoke", "--workdir", str(trained), "--video", video,
                      "--out", str(out), "--json_out", str(js)],
                     cwd=ROOT, env=_env(smoke_data_dir), capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 10_000 < out.stat().st_size < 3_000_000
  import matplotlib.image
  img = matplotlib.image.imread(str(out))
  assert img.ndim == 3 and img.shape[0] >= 400 and img.shape[1] >= 800
  assert img.std() > 0.05  # not a blank canvas
  res = json.loads(js.read_text())
  assert res["step"] == 1
  probs = res["probabilities"]
  assert list(probs) == ["Anger", "Anticipation", "Disgust", "Fear", "Joy", "Sadness",
                         "Surprise", "Trust"]
  assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
  assert res["predicted"] == max(probs, key=probs.get)
  assert len(res["gamma"]) == 2 and min(res["gamma"]) >= 0.0  # smoke: 2 segments, ReLU
  alpha = np.asarray(res["alpha"])                           # [S, T', H', W']
  assert alpha.shape == (2, *res["alpha_grid"])
  # alpha = hw * softmax: mean 1 over the positions of each segment.
  np.testing.assert_allclose(alpha.reshape(2, -1).mean(-1), 1.0, rtol=1e-5)


def test_predict_prints_the_distribution_and_draws_vaanet_figure(swept, smoke_data_dir,
                                                                  tmp_path):
  """python -m jaxaffect.predict on the same workdir: the same probabilities as the attention
  tool's (same decode, same eval transform), its figure, and one-line errors."""
  trained = swept[0] / "a"
  video = sorted(glob.glob(os.path.join(smoke_data_dir, "raw", "*", "Joy", "*.mp4")))[0]
  out = tmp_path / "pred.png"
  r = subprocess.run([sys.executable, "-m", "jaxaffect.predict", "--config",
                      "configs/demo.py:smoke", "--checkpoint", str(trained), "--out", str(out),
                      video], cwd=ROOT, env=_env(smoke_data_dir), capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.strip().splitlines()
  probs = {ln.split()[0]: float(ln.split()[1]) for ln in lines[:8]}
  assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
  assert lines[8].startswith(f"video={video} top={max(probs, key=probs.get)} ")
  assert "step=1" in lines[8] and out.stat().st_size > 10_000
  bad = subprocess.run([sys.executable, "-m", "jaxaffect.predict", "--config",
                        "configs/demo.py:smoke", "--checkpoint", str(trained),
                        str(tmp_path / "none.mp4")], cwd=ROOT, env=_env(smoke_data_dir),
                       capture_output=True, text=True, timeout=600)
  assert bad.returncode == 2 and bad.stderr.strip().endswith("none.mp4: no such video file")


# ------------------------------------------------------------------------------ aggregation


def _fake_split(root, split, top1, step=100, total=100):
  d = root / f"split{split}"
  d.mkdir()
  (d / "results.json").write_text(json.dumps({
      "eval/top1": top1, "eval/mean_class_accuracy": 0.3, "eval/confusion": [[1, 0], [0, 1]],
      "step": step}))
  (d / "config.json").write_text(json.dumps({"total_steps": total, "seed": 0,
                                             "dataset": {"split": split, "name": "ve8"}}))
  return d


def test_aggregate_splits_mean_and_sample_std(tmp_path, capsys):
  for k in range(1, 11):
    _fake_split(tmp_path, k, 0.40 + 0.02 * (k - 1))
  assert aggregate_splits.main([str(tmp_path / "split*"), "--format", "json"]) == 0
  agg = json.loads(capsys.readouterr().out)
  top1 = agg["metrics"]["eval/top1"]
  # values 0.40..0.58: mean 0.49; sample std = 0.02 * sqrt(82.5 / 9) = 0.0605530
  # (the population std would be 0.02 * sqrt(8.25) = 0.0574456).
  assert top1["mean"] == pytest.approx(0.49, abs=1e-12)
  assert top1["std"] == pytest.approx(0.0605530, abs=1e-7)
  assert (top1["min"], top1["max"], top1["n"]) == (pytest.approx(0.40), pytest.approx(0.58), 10)
  assert agg["metrics"]["eval/mean_class_accuracy"]["std"] == pytest.approx(0.0, abs=1e-12)
  assert "eval/confusion" not in agg["metrics"] and agg["std"] == "sample (n-1)"
  assert agg["splits"] == list(range(1, 11))
  assert aggregate_splits.main([str(tmp_path / "split*"), "--format", "markdown"]) == 0
  out = capsys.readouterr().out
  assert "| eval/top1 | 0.4900 | 0.0606 | 0.4000 | 0.5800 | 10 |" in out
  assert "sample (n-1)" in out


def test_aggregate_splits_rejects_missing_incomplete_and_duplicate(tmp_path, capsys):
  for k in range(1, 11):
    _fake_split(tmp_path, k, 0.5, step=50 if k == 7 else 100)
  os.remove(tmp_path / "split4" / "results.json")
  dup = _fake_split(tmp_path / "split2", 2, 0.5)  # a second run of split 2
  dirs = [str(tmp_path / f"split{k}") for k in range(1, 11)] + [str(dup)]
  assert aggregate_splits.main(dirs) == 1
  captured = capsys.readouterr()
  err = captured.err
  assert captured.out == ""
  assert "split4: no results.json" in err
  assert "split7: results.json is from step 50 of 100 (incomplete run)" in err
  assert "split 2 appears 2 times" in err
  assert "missing split(s) 4, 7 of 1..10" in err
  # --expect 0 aggregates whatever is complete (e.g. seeds of one split).
  assert aggregate_splits.main([str(tmp_path / "split1"), str(dup), "--expect", "0",
                                "--format", "json"]) == 0
  assert json.loads(capsys.readouterr().out)["n_runs"] == 2
