"""TSL-Net through the platform: a smoke run end to end (metrics, prediction files, the
stand-alone evaluator and the figures agree), bounded compilations over variable-length videos,
optax.MultiSteps accumulation, the CPC sign flag and the ablation switches."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxaffect import config_lib, steps, trainer
from jaxaffect import method as methods
from jaxaffect import sharding as shd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_dir, **overrides):
  c = config_lib.sibling_config(os.path.join(ROOT, "configs", "x.py"), "tsl_tsl300.py", "smoke")
  c.dataset.data_dir = data_dir
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


@pytest.fixture(scope="module")
def smoke_run(smoke_data_dir, tmp_path_factory):
  c = _config(smoke_data_dir)
  workdir = str(tmp_path_factory.mktemp("tsl_smoke"))
  results = trainer.train_and_evaluate(c, workdir)
  return c, workdir, results


def test_smoke_run_writes_each_tiou_and_files(smoke_run):
  c, workdir, results = smoke_run
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  for t in ("0.10", "0.15", "0.20", "0.25", "0.30"):
    assert 0.0 <= saved[f"eval/mAP@{t}"] <= 1.0
  assert saved["eval/average_mAP"] == pytest.approx(
      np.mean([saved[f"eval/mAP@{t}"] for t in ("0.10", "0.15", "0.20", "0.25", "0.30")]))
  out = os.path.join(workdir, "eval_outputs")
  # The stand-alone evaluator on the written files gives the run's numbers.
  proc = subprocess.run(
      [sys.executable, "-m", "jaxaffect.evaluation.localization", "--ground-truth",
       os.path.join(out, "ground_truth.json"), "--predictions",
       os.path.join(out, "predictions.json"), "--subset", "test"],
      capture_output=True, text=True, cwd=ROOT, check=True)
  cli = json.loads(proc.stdout)
  assert cli["average_mAP"] == pytest.approx(saved["eval/average_mAP"], abs=1e-12)
  with open(os.path.join(out, "ground_truth.json")) as f:
    assert len(json.load(f)["database"]) == c.dataset.synthetic.num_test


def test_figures_from_the_run(smoke_run, tmp_path):
  _, workdir, _ = smoke_run
  from jaxaffect.methods.tsl import figures as viz
  assert viz.main(["--workdir", workdir, "--out", str(tmp_path), "--max-videos", "2"]) == 0
  pngs = sorted(p for p in os.listdir(tmp_path) if p.endswith(".png"))
  assert len(pngs) == 2
  assert all(os.path.getsize(os.path.join(tmp_path, p)) > 5000 for p in pngs)


def test_compilations_bounded_by_buckets_and_multi_steps(smoke_data_dir):
  """Variable-length videos compile once per bucket; optax.MultiSteps (2 in :smoke) leaves
  the parameters alone on the first step and updates them on the second (one test: both need
  the same compiled steps)."""
  c = _config(smoke_data_dir, batch_size=4, **{"mesh.data": 1})
  assert c.optimizer.multi_steps == 2
  # Smoke videos of every length fall into two of these (64 and 128 snippets) within 6 steps:
  # two compiles, each a few seconds.
  c.dataset.buckets = [64, 128, 256]
  method = methods.get_method(c)
  method.prepare_data()
  s = steps.build(c, method, shd.make_mesh(c.mesh, jax.devices()[:1]))
  it = method.train_iterator(seed=0, global_batch_size=4, process_index=0, process_count=1)
  leaf = lambda st: np.asarray(st["params"]["cls_module"]["neck_0"]["kernel"]).copy()  # noqa: E731
  lengths, kernels = set(), []
  with s.context():
    state = s.init_fn(jax.random.key(0))
    kernels.append(leaf(state))
    for _ in range(6):  # 2 epochs of 12 videos
      batch = next(it)
      lengths.add(batch["rgb"].shape[1])
      state, _ = s.train_step(state, steps.make_global_batch(batch, s.batch_sharding),
                              jax.random.key(0))
      kernels.append(leaf(state))
  assert lengths <= set(c.dataset.buckets)
  assert len(lengths) >= 2  # the test exercises several buckets
  assert s.train_step._cache_size() == len(lengths)
  np.testing.assert_array_equal(kernels[0], kernels[1])  # accumulating
  assert np.abs(kernels[2] - kernels[1]).max() > 0       # the update of steps 1 + 2
  np.testing.assert_array_equal(kernels[2], kernels[3])
  assert np.abs(kernels[4] - kernels[3]).max() > 0


def _loss_and_metrics(c, seed=0):
  method = methods.get_method(c)
  method.prepare_data()
  batch = next(method.train_iterator(seed=0, global_batch_size=4, process_index=0,
                                     process_count=1))
  variables = method.init_variables(jax.random.key(seed), batch)
  params = variables.pop("params")
  loss, (metrics, _) = jax.jit(method.loss)(params, variables, batch, jax.random.key(1))
  return method, params, float(loss), {k: float(v) for k, v in metrics.items()}


def test_cpc_sign_flag_and_ablations(smoke_data_dir):
  _, _, code, m = _loss_and_metrics(_config(smoke_data_dir))
  _, _, paper, m2 = _loss_and_metrics(_config(smoke_data_dir, **{"loss.cpc_sign": -1.0}))
  assert m["loss_cpc"] < 0  # a log-likelihood ratio
  np.testing.assert_allclose(code - paper, 2 * m["loss_cpc"], rtol=1e-4)
  lam = [2.0, 1.0, 0.5, 1.0]
  np.testing.assert_allclose(
      code, lam[0] * m["loss_video"] + lam[1] * ((1 - lam[2]) * m["loss_frame"] + lam[2] * (
          m["loss_background"] + m["loss_pseudo_action"])) + lam[3] * m["loss_cpc"], rtol=1e-4)
  # Switching terms off removes them (and the CPC heads with their parameters).
  method, params, only_video, m3 = _loss_and_metrics(_config(
      smoke_data_dir, **{"loss.frame": False, "loss.background": False,
                         "loss.pseudo_action": False, "loss.cpc": False}))
  assert "rev_fa" not in params["cls_module"] and "rev_fv" not in params["cls_module"]
  np.testing.assert_allclose(only_video, 2.0 * m3["loss_video"], rtol=1e-5)
  assert m3["loss_frame"] == m3["loss_cpc"] == 0.0
  # One stream only.
  for modality, absent in (("visual", "a_extractor"), ("audio", "v_align_0")):
    _, params, loss, _ = _loss_and_metrics(_config(smoke_data_dir,
                                                   **{"model.modalities": modality}))
    assert absent not in params["cls_module"] and np.isfinite(loss)
