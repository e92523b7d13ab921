"""CTEN's erasing and its three-view loss: the keyframe masks and index maps against hand
values, the flat-attention fallback (the whole own video, never another sample's), each view
taking only its own video's segments, frames-level and features-level erasing agreeing where
they must, and the loss being the sum (paper) or mean (code) of the three cross-entropies."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxaffect import config_lib
from jaxaffect.errors import UserError
from jaxaffect.method import get_method
from jaxaffect.methods.cten import erasing

CONFIG = "configs/cten_ve8.py"


def test_masks_and_index_maps_by_hand():
  g = jnp.array([[0.0, 1.0, 0.8, 0.5],     # normalised as is: keys 1, 2; rest 0, 3
                 [2.0, 2.0, 2.0, 2.0]])    # flat: nothing to rank
  key, rest = erasing.keyframe_masks(g, None, 0.7, "legacy")
  np.testing.assert_array_equal(key, [[0, 1, 1, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(rest, [[1, 0, 0, 1], [0, 0, 0, 0]])
  # K = 2 kept of S = 4: new segment j is kept[floor(j * 2 / 4)]; nothing kept -> identity.
  np.testing.assert_array_equal(erasing.view_indices(key), [[1, 1, 2, 2], [0, 1, 2, 3]])
  np.testing.assert_array_equal(erasing.view_indices(rest), [[0, 0, 3, 3], [0, 1, 2, 3]])
  one = jnp.array([[False, False, True, False, False]])
  np.testing.assert_array_equal(erasing.view_indices(one), [[2, 2, 2, 2, 2]])
  three = jnp.array([[True, False, True, False, True, False]])
  np.testing.assert_array_equal(erasing.view_indices(three), [[0, 0, 2, 2, 4, 4]])
  # The paper's rule: keyframes where both modalities' normalised attentions reach theta.
  ga = jnp.array([[0.0, 0.2, 1.0, 0.9], [0.0, 1.0, 0.5, 0.2]])
  key, rest = erasing.keyframe_masks(g, ga, 0.7, "paper")
  np.testing.assert_array_equal(key, [[0, 0, 1, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(rest, [[1, 1, 0, 1], [0, 0, 0, 0]])  # flat visual: fallback


def test_gather_takes_only_the_own_videos_segments():
  b, s = 3, 5
  x = (100 * jnp.arange(b)[:, None] + jnp.arange(s)[None, :]).astype(jnp.float32)
  video = jnp.broadcast_to(x[:, :, None, None], (b, s, 2, 3))  # [B, S, ...] tagged b*100+s
  keep = jnp.array([[0, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
  out = erasing.gather_segments(video, erasing.view_indices(keep))
  for i in range(b):
    assert set(np.unique(np.asarray(out[i]) // 100)) == {i}
  np.testing.assert_array_equal(out[0, :, 0, 0], [1, 1, 1, 3, 3])  # floor(j * 2 / 5)
  np.testing.assert_array_equal(out[1, :, 0, 0], 100 + np.arange(s))  # empty -> whole video
  np.testing.assert_array_equal(out[2, :, 0, 0], 200 + np.arange(s))


def _config(arg="smoke", **erase):
  c = config_lib.load(f"{CONFIG}:{arg}", lock=False)
  c.model.dropout_rate = 0.0
  c.erase.update(erase)
  return c


def _batch(m, n, seed=0):
  r = np.random.default_rng(seed)
  b = m.example_batch(n)
  b["video"] = r.integers(0, 256, b["video"].shape).astype(np.uint8)
  if "audio" in b:
    b["audio"] = r.standard_normal(b["audio"].shape).astype(np.float32)
  b["label"] = r.integers(0, 8, (n,)).astype(np.int32)
  return b


def jitted_loss(m):
  """m's loss as a jitted (variables, batch) -> (loss, metrics) (dropout key 1, step 0)."""

  @jax.jit
  def fn(variables, batch):
    state = {k: v for k, v in variables.items() if k != "params"}
    loss, (metrics, _) = m.loss(variables["params"], state, batch, jax.random.key(1),
                                jnp.int32(0))
    return loss, metrics

  return fn


def _loss_fn(c):
  """(method, jitted loss): one compile per config."""
  m = get_method(c)
  return m, jitted_loss(m)


def _init(m, batch):
  # Jitted: one compile instead of every op compiled on its own the first time it runs.
  return nn.meta.unbox(jax.jit(m.init_variables)(jax.random.key(0), batch))


def test_audio_visual_loss_traces_with_every_view():
  """The paper's audio-visual model through the three-view loss (traced, not compiled: the
  numbers are checked on the visual stream below; the audio-visual forward against PyTorch in
  test_cten_convert.py)."""
  m = get_method(_config())
  batch = _batch(m, 2)
  variables = jax.eval_shape(m.init_variables, jax.random.key(0), batch)
  variables = nn.meta.unbox(variables)
  state = {k: v for k, v in variables.items() if k != "params"}
  loss, (metrics, new_state) = jax.eval_shape(
      lambda p, s, b: m.loss(p, s, b, jax.random.key(1), jnp.int32(0)),
      variables["params"], state, batch)
  assert loss.shape == () and set(metrics) >= {"loss_original", "loss_rest", "loss_keyframes"}
  assert "ta_net_a" in new_state["batch_stats"] and "audio_backbone" in new_state["batch_stats"]


def test_three_views_sum_and_flat_fallback():
  c = _config()
  c.model.update(use_audio=False, use_inter=False)  # one compile of the visual stream
  m, fn = _loss_fn(c)
  batch = _batch(m, 4)
  variables = _init(m, batch)
  assert float(variables["params"]["ta_net"]["fc"]["bias"].min()) == 1.0  # VAANet's init
  total, metrics = jax.device_get(fn(variables, batch))
  views = [metrics[f"loss_{v}"] for v in ("original", "rest", "keyframes")]
  assert float(total) == pytest.approx(sum(views), rel=1e-6)
  assert 0.0 < metrics["keyframe_fraction"] < 1.0  # random init ranks segments

  # A flat attention (the temporal fc zeroed: relu(0) everywhere) ranks nothing: both extra
  # views are the whole own video, so all three views give the same loss.
  flat = jax.tree.map(lambda x: x, variables)
  for name in ("ta_net",):
    fc = flat["params"][name]["fc"]
    flat["params"][name]["fc"] = {"kernel": jnp.zeros_like(fc["kernel"]),
                                  "bias": jnp.zeros_like(fc["bias"])}
  _, metrics = jax.device_get(fn(flat, batch))
  assert metrics["flat_fallback"] == 1.0 and metrics["keyframe_fraction"] == 0.0
  assert metrics["loss_rest"] == pytest.approx(metrics["loss_original"], rel=1e-6)
  assert metrics["loss_keyframes"] == pytest.approx(metrics["loss_original"], rel=1e-6)


def test_frames_and_features_erasing_agree_mean_and_no_erasing():
  """Visual stream only, backbone on running statistics: re-encoding the gathered frames must
  give the gathered features (the frames path gathers the right snippets); the frames run
  averages (erase.reduce="mean") what the features run sums; erase.enabled=False is the
  original view's loss alone."""
  c = _config()
  c.model.update(use_audio=False, use_inter=False, backbone_bn="running")
  m, features_fn = _loss_fn(c)
  batch = _batch(m, 4)
  variables = _init(m, batch)
  total, mf = jax.device_get(features_fn(variables, batch))
  assert 0.0 < mf["keyframe_fraction"] < 1.0
  c.erase.update(input="frames", reduce="mean")
  _, frames_fn = _loss_fn(c)
  mean, mr = jax.device_get(frames_fn(variables, batch))
  assert float(mean) == pytest.approx(float(total) / 3, rel=1e-5)
  for k in ("loss_original", "loss_rest", "loss_keyframes"):
    assert mr[k] == pytest.approx(mf[k], rel=1e-5)
  c.erase.enabled = False
  _, off_fn = _loss_fn(c)
  off, off_metrics = jax.device_get(off_fn(variables, batch))
  assert float(off) == pytest.approx(mf["loss_original"], rel=1e-6)
  assert "loss_rest" not in off_metrics


def test_audio_stream_alone_erases_by_its_own_attention():
  """The paper's audio rows (model.use_visual=False): no visual parameters and no frames read;
  the three views come from the audio temporal attention alone, with the flat fallback."""
  c = _config()
  c.model.update(use_visual=False, use_inter=False)
  m, fn = _loss_fn(c)
  r = np.random.default_rng(0)
  batch = m.example_batch(4)
  assert set(batch) == {"audio", "label"}
  batch["audio"] = r.standard_normal(batch["audio"].shape).astype(np.float32)
  batch["label"] = r.integers(0, 8, (4,)).astype(np.int32)
  assert set(m.model_inputs(dict(batch, video=np.zeros((4, 1), np.uint8)))) == {"audio"}
  variables = _init(m, batch)
  params = variables["params"]
  assert not {"visual_backbone", "nl_0", "ta_net", "v2a_attn"} & set(params)
  assert {"audio_backbone", "nl_a_0", "ta_net_a"} <= set(params)
  assert params["fc"]["kernel"].shape[0] == c.model.audio_dim
  total, metrics = jax.device_get(fn(variables, batch))
  views = [metrics[f"loss_{v}"] for v in ("original", "rest", "keyframes")]
  assert float(total) == pytest.approx(sum(views), rel=1e-6)
  assert 0.0 < metrics["keyframe_fraction"] < 1.0
  state = {k: v for k, v in variables.items() if k != "params"}
  pred = jax.jit(lambda p, b: m.predict(p, state, b))(params, batch)
  want, _ = erasing.keyframe_masks(pred["gamma_audio"], None, c.erase.theta, c.erase.rule)
  np.testing.assert_array_equal(pred["keyframes"], want)
  np.testing.assert_array_equal(pred["gamma"], pred["gamma_audio"])
  flat = jax.tree.map(lambda x: x, variables)
  fc = flat["params"]["ta_net_a"]["fc"]
  flat["params"]["ta_net_a"]["fc"] = {"kernel": jnp.zeros_like(fc["kernel"]),
                                      "bias": jnp.zeros_like(fc["bias"])}
  _, metrics = jax.device_get(fn(flat, batch))
  assert metrics["flat_fallback"] == 1.0
  assert metrics["loss_rest"] == pytest.approx(metrics["loss_original"], rel=1e-6)
  assert metrics["loss_keyframes"] == pytest.approx(metrics["loss_original"], rel=1e-6)


@pytest.mark.parametrize("overrides,match", [
    ({"use_inter": True}, r"use_visual=False needs model\.use_inter=False"),
    ({"use_inter": False, "legacy_code": True}, r"no legacy_code form"),
    ({"use_inter": False, "use_audio": False}, r"leave no stream"),
    ({"use_inter": False, "visual_input": "features"}, r"reads no visual features"),
])
def test_audio_rows_bad_settings_are_named(overrides, match):
  c = _config()
  c.model.update(use_visual=False, **overrides)
  with pytest.raises(UserError, match=match):
    get_method(c)


@pytest.mark.parametrize("key,value,match", [
    ("erase.rule", "both", r"erase\.rule"),
    ("erase.theta", 1.5, r"erase\.theta must be in \[0, 1\], got 1\.5"),
    ("erase.input", "pixels", r"erase\.input"),
])
def test_bad_erase_settings_are_named(key, value, match):
  c = _config()
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(UserError, match=match):
    get_method(c)


def test_legacy_and_paper_models_differ_where_the_paper_says():
  """The legacy model has alpha gates and no audio temporal attention; the paper model the
  reverse; the visual-only legacy model has no audio branch at all."""
  trees = {}
  for arg in ("smoke", "smoke,legacy", "smoke,legacy_visual"):
    c = _config(arg)
    m = get_method(c)
    trees[arg] = nn.meta.unbox(jax.eval_shape(m.init_variables, jax.random.key(0),
                                              _batch(m, 2)))["params"]
  assert "alpha" in trees["smoke,legacy"]["nl_0"] and "alpha" not in trees["smoke"]["nl_0"]
  assert "ta_net_a" in trees["smoke"] and "ta_net_a" not in trees["smoke,legacy"]
  assert not {"audio_backbone", "v2a_attn", "nl_a_0"} & set(trees["smoke,legacy_visual"])
