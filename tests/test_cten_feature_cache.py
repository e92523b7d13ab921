"""CTEN's feature cache: the CLI's cache holds what CTEN.encode_visual computes (pooled, within
float16 rounding) with each view's own fbank windows; training from it gives the frames path's
loss on the same view (running-statistics BN); mismatched or missing caches fail in one line
naming the key; a run trains and evaluates from the cache, the keyframe evaluator included."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxaffect import config_lib
from jaxaffect.data import feature_cache
from jaxaffect.errors import UserError
from jaxaffect.method import get_method
from jaxaffect.methods.cten import model as cten_model
from test_cten_method import jitted_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIEWS = 2


def _config(data_dir, cache=None, audio=True):
  c = config_lib.load(os.path.join(ROOT, "configs", "cten_ve8.py:smoke"), lock=False)
  c.dataset.data_dir = data_dir
  c.model.update(dropout_rate=0.0, backbone_bn="running", train_backbone=False)
  if not audio:  # the visual stream alone: one small compile (the audio path is not cached)
    c.model.update(use_audio=False, use_inter=False)
  if cache:
    c.model.visual_input = "features"
    c.dataset.feature_cache = cache
  return c


@pytest.fixture(scope="module")
def cache(tmp_path_factory, smoke_data_dir):
  out = str(tmp_path_factory.mktemp("cten_cache") / "cache")
  r = subprocess.run([sys.executable, "-m", "jaxaffect.methods.cten.feature_cache",
                      "--config", "configs/cten_ve8.py:smoke", "--out", out, "--views",
                      str(VIEWS), "--batch_size", "4",
                      f"--config.dataset.data_dir={smoke_data_dir}"],
                     cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  return out


def test_cache_is_the_frames_path(cache, smoke_data_dir):
  frames = get_method(_config(smoke_data_dir, audio=False))
  feats = get_method(_config(smoke_data_dir, cache, audio=False))
  train = feature_cache.CachedFeatures(cache, "train")
  n, c = len(train), frames.model.visual_dim
  assert train.meta["per_view"] == ["features", "audio"] and train.pooled
  arrays = {k: np.load(os.path.join(train.dir, f"{k}.npy")) for k in ("features", "audio")}
  assert arrays["features"].shape == (VIEWS, n, 4, c)
  assert arrays["audio"].shape == (VIEWS, n, 4, 26, 128)
  assert not np.array_equal(arrays["audio"][0], arrays["audio"][1])  # random windows per view

  # A training batch: every row is one cached (view, video), its features and audio alike.
  batch = next(get_method(_config(smoke_data_dir, cache)).train_iterator(
      seed=0, global_batch_size=4, process_index=0, process_count=1))
  assert set(batch) == {"video_features", "audio", "label", "polarity"}
  for f, a in zip(batch["video_features"], batch["audio"]):
    hits = np.argwhere(np.all(arrays["features"] == f.astype(np.float16), axis=(2, 3)))
    assert len(hits) >= 1 and any(np.array_equal(arrays["audio"][v, i], a) for v, i in hits)

  # The backbone the cache used (the config's seed, no init_from) inside the frames model.
  backbone = nn.meta.unbox(feature_cache.backbone(frames.config)[1])
  fb = next(frames.eval_batches(global_batch_size=4, process_index=0, process_count=1))
  cb = next(get_method(_config(smoke_data_dir, cache)).eval_batches(
      global_batch_size=4, process_index=0, process_count=1))
  for k in ("label", "index", "_mask", "audio"):  # the eval view's fbank windows too
    np.testing.assert_array_equal(fb[k], cb[k], err_msg=k)
  fb = {k: fb[k] for k in ("video", "label")}  # no host-side strings into jit
  cb = {k: cb[k] for k in ("video_features", "label")}
  # The frames model's variables: the features model's (no backbone to compile) + the backbone.
  feat_vars = nn.meta.unbox(jax.jit(feats.init_variables)(jax.random.key(0), cb))
  variables = jax.tree.map(np.asarray, feat_vars)
  variables["params"]["visual_backbone"] = jax.device_get(backbone["params"])
  variables["batch_stats"]["visual_backbone"] = jax.device_get(backbone["batch_stats"])
  shapes = jax.eval_shape(frames.init_variables, jax.random.key(0), fb)
  assert jax.tree.structure(nn.meta.unbox(shapes)) == jax.tree.structure(variables)
  want = jax.jit(lambda v, x: frames.model.apply(
      v, x, False, method=cten_model.CTEN.encode_visual))(variables, fb["video"])
  np.testing.assert_allclose(cb["video_features"], want, rtol=2e-3,
                             atol=2e-3 * float(np.abs(want).max()))

  # First step on that view: frames (one backbone pass, erase.input="features") vs the cache.
  loss_f, mf = jax.device_get(jitted_loss(frames)(variables, fb))
  loss_c, mc = jax.device_get(jitted_loss(feats)(feat_vars, cb))
  assert float(loss_c) == pytest.approx(float(loss_f), rel=1e-3)
  for k in ("loss_original", "loss_rest", "loss_keyframes", "keyframe_fraction"):
    assert mc[k] == pytest.approx(mf[k], rel=1e-3, abs=1e-6), k


def _one_line_error(c, match):
  with pytest.raises(UserError, match=match) as e:
    get_method(c).prepare_data()
  assert "\n" not in str(e.value)


def test_mismatches_fail_in_one_line_naming_the_key(cache, smoke_data_dir, tmp_path):
  c = _config(smoke_data_dir, cache)
  c.dataset.num_segments = 8
  _one_line_error(c, r"dataset\.num_segments: cache 4, config 8")
  c = _config(smoke_data_dir, cache)
  c.model.visual_width = 16
  _one_line_error(c, r"C \(model\.visual_depth/visual_width\): cache 64, config 128")
  c = _config(smoke_data_dir, cache)
  c.erase.input = "frames"
  _one_line_error(c, r"erase\.input='frames'")
  c = _config(smoke_data_dir, cache)
  c.model.train_backbone = True
  _one_line_error(c, r"model\.train_backbone")
  c = _config(smoke_data_dir, str(tmp_path / "nope"))
  _one_line_error(c, r"nope/train does not exist; build it with python -m "
                     r"jaxaffect\.methods\.cten\.feature_cache")
  (tmp_path / "vaanet" / "train").mkdir(parents=True)  # a VAANet cache: maps, not pooled
  (tmp_path / "vaanet" / "train" / "meta.json").write_text(json.dumps(
      {"views": 1, "num_examples": 1, "feature_shape": [4, 1, 2, 2, 64]}))
  _one_line_error(_config(smoke_data_dir, str(tmp_path / "vaanet")), r"pooled \[S, C\]")
  (tmp_path / "torn" / "train").mkdir(parents=True)  # a meta.json cut short
  (tmp_path / "torn" / "train" / "meta.json").write_text('{"views": 1, "num_')
  _one_line_error(_config(smoke_data_dir, str(tmp_path / "torn")),
                  r"torn/train/meta\.json is unreadable")
  with pytest.raises(UserError, match=r"jaxaffect\.predict"):
    get_method(_config(smoke_data_dir, cache)).example_from_video("clip.mp4")


def test_batch_stats_bn_from_the_cache_is_flagged(cache, smoke_data_dir, caplog):
  c = _config(smoke_data_dir, cache)
  c.model.backbone_bn = "batch_stats"  # the released train-mode BatchNorm: not what was cached
  get_method(c)
  assert any("changes the legacy BatchNorm behaviour" in r.getMessage() for r in caplog.records)
  caplog.clear()
  get_method(_config(smoke_data_dir, cache))  # backbone_bn="running": nothing to flag
  assert not any("BatchNorm" in r.getMessage() for r in caplog.records)


def test_train_and_evaluate_from_the_cache(cache, smoke_data_dir, tmp_path):
  from jaxaffect import trainer
  feats = feature_cache.CachedFeatures(cache, "test")
  keys = feats.keys(range(len(feats)))
  assert len(set(keys)) == len(keys) and all("/" in k for k in keys)
  gt = {"database": {k: {"subset": "test", "duration": 4.0, "annotations": [
      {"segment": [1.0, 2.0], "label": "keyframe"}]} for k in keys}}
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  c = _config(smoke_data_dir, cache, audio=False)
  c.update(total_steps=1, batch_size=8, eval_batch_size=8)
  c.evals = dict(eval=dict(type="classification"),
                 keyframes=dict(type="cten_keyframes", ground_truth=str(tmp_path / "gt.json"),
                                chance_draws=1))
  results = trainer.train_and_evaluate(c, str(tmp_path / "wd"))
  assert 0.0 <= results["eval/top1"] <= 1.0
  assert results["keyframes/num_videos"] == len(keys)  # looked up through the cached index
  assert 0.0 <= results["keyframes/average_mAP"] <= 1.0


def test_an_interrupted_build_resumes_view_by_view(cache, smoke_data_dir, tmp_path):
  import shutil
  from jaxaffect.methods.cten import feature_cache as cten_cache
  out = tmp_path / "cache"
  shutil.copytree(cache, out)
  train = out / "train"
  # Killed during view 1: its progress entry and meta.json never written, its rows garbage.
  (train / "meta.json").unlink()
  (train / "views_done.json").write_text("[0]")
  full = np.load(train / "features.npy")
  part = np.lib.format.open_memmap(train / "features.npy", mode="r+")
  part[1] = 0
  part.flush()
  del part
  with pytest.raises(UserError, match="is incomplete"):
    get_method(_config(smoke_data_dir, str(out))).prepare_data()
  cten_cache.build_cache(_config(smoke_data_dir), str(out), views=VIEWS, batch_size=4)
  np.testing.assert_array_equal(np.load(train / "features.npy"), full)
  assert json.loads((train / "meta.json").read_text())["per_view"] == ["features", "audio"]
