"""MART's method on the platform's train step (configs/mart_ve8.py:smoke sizes, random batches,
no data): the two stages in one compiled step, the stage-1 objective's terms, the masking
ratio schedule, the frozen AST lower half, the EMA starting with stage 2, and the :released
variant's frozen wrapper."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxaffect import config_lib, optim, steps
from jaxaffect import sharding as shd
from jaxaffect.errors import UserError
from jaxaffect.method import get_method

CONFIG = "configs/mart_ve8.py"


def _config(arg="smoke"):
  return config_lib.load(f"{CONFIG}:{arg}", lock=False)


def _batch(m, n, seed):
  r = np.random.default_rng(seed)
  b = m.example_batch(n)
  b["video"] = r.integers(0, 256, b["video"].shape).astype(np.uint8)
  b["fbank"] = r.standard_normal(b["fbank"].shape).astype(np.float32)
  b["text_ids"] = r.integers(1, 20, b["text_ids"].shape).astype(np.int32)
  length = r.integers(1, b["text_mask"].shape[-1] + 1, b["text_mask"].shape[:2])
  b["text_mask"] = np.arange(b["text_mask"].shape[-1]) < length[..., None]
  b["label"] = r.integers(0, 8, (n,)).astype(np.int32)
  return b


def _train(c, num_steps):
  m = get_method(c)
  s = steps.build(c, m, shd.make_mesh(c.mesh, jax.devices()[:1]))
  out, states = [], []
  with s.context():
    state = s.init_fn(jax.random.key(0))
    states.append(jax.device_get(state))
    for i in range(num_steps):
      batch = steps.make_global_batch(_batch(m, c.batch_size, i), s.batch_sharding)
      state, metrics = s.train_step(state, batch, jax.random.key(1))
      out.append(jax.device_get(metrics))
      states.append(jax.device_get(state))
  return m, out, states


@pytest.fixture(scope="module")
def smoke_run():
  c = _config()
  c.grad_accum_steps = 1  # one compile less (accumulation is the platform's, tested there)
  # :smoke clips have 4 patches; mask half of them in every clip so L_rec is never empty.
  c.mask.update(ratio_base=0.5, clip_prob=1.0)
  return c, *_train(c, 4)


def _leaf(tree, path):
  for k in path.split("/"):
    tree = tree[k]
  return np.asarray(tree)


def test_stages_switch_at_stage1_steps_with_their_terms(smoke_run):
  c, _, metrics, _ = smoke_run
  assert [float(m["stage"]) for m in metrics] == [1.0, 1.0, 2.0, 2.0]
  lc = c.loss
  for m in metrics:
    assert bool(m["finite"])
    want = sum(float(lc[f"{k}_weight"]) * float(m[f"loss_{k}"])
               for k in ("rec", "comp", "cls", "cls_c", "dist"))
    np.testing.assert_allclose(float(m["loss"]), want, rtol=1e-5)
  stage1, stage2 = metrics[:2], metrics[2:]
  assert all(float(m["loss_rec"]) > 0 and float(m["loss_comp"]) != 0 for m in stage1)
  assert all(float(m["loss_rec"]) == 0 and float(m["loss_comp"]) == 0 for m in stage2)
  # The ratio schedule: steps_per_epoch 1, so epoch = step + 1: r = 0.5 + 0.8 min(.5, e / 100).
  for i, m in enumerate(stage1):
    r = 0.5 + 0.8 * min(0.5, (i + 1) / 100)
    np.testing.assert_allclose(float(m["mask_ratio"]), r, rtol=1e-6)
    np.testing.assert_allclose(float(m["masked_fraction"]), np.floor(4 * r) / 4)


def test_ast_lower_half_frozen_fusion_trained_ema_from_stage2(smoke_run):
  _, _, _, states = smoke_run
  first, last = states[0], states[-1]
  for path in ("mbt/audio/pos_embed", "mbt/audio/patch_embed/kernel"):
    np.testing.assert_array_equal(_leaf(first["params"], path), _leaf(last["params"], path))
  assert not np.array_equal(_leaf(first["params"], "mbt/bottleneck"),
                            _leaf(last["params"], "mbt/bottleneck"))
  fused = jax.tree.leaves(first["params"]["mbt"]["fusion_layers"]["audio"])
  fused_after = jax.tree.leaves(last["params"]["mbt"]["fusion_layers"]["audio"])
  assert any(not np.array_equal(a, b) for a, b in zip(fused, fused_after))
  # EMA start_step = stage1_steps = 2: a copy of the params after steps 0 and 1, then lagging.
  for i in (1, 2):
    for a, b in zip(jax.tree.leaves(states[i]["ema_params"]), jax.tree.leaves(states[i]["params"])):
      np.testing.assert_array_equal(a, b)
  assert not np.array_equal(_leaf(last["ema_params"], "mbt/bottleneck"),
                            _leaf(last["params"], "mbt/bottleneck"))


def test_released_variant_freezes_the_wrapper():
  """The trainer leaves parameters outside the trainable mask untouched (test_platform); here
  the mask of :released covers exactly the wrapper and AST's lower half."""
  c = _config("smoke,released")
  m = get_method(c)
  abstract = jax.eval_shape(m.init_variables, jax.random.key(0),
                            {k: jnp.asarray(v) for k, v in m.example_batch(1).items()})
  mask = optim.trainable_mask(shd.unbox_abstract(abstract["params"]), c.frozen_params)
  top = {k: set(jax.tree.leaves(v)) for k, v in mask.items()}
  assert top["decoder"] == top["tacl"] == top["text"] == {False} and not mask["mask_token"]
  mbt = {k: set(jax.tree.leaves(v)) for k, v in mask["mbt"].items()}
  assert mbt.pop("audio") == {False} and all(v == {True} for v in mbt.values())
  assert c.model.legacy_unmasked_pooling


def test_predict_is_the_mbt_sum_of_heads(smoke_run):
  c, m, _, states = smoke_run
  params = states[-1]["params"]
  b = _batch(m, 2, 9)
  b["video"] = np.concatenate([b["video"]] * 2, axis=1)[:, :c.dataset.eval_num_segments]
  b["fbank"] = np.concatenate([b["fbank"]] * 2, axis=1)[:, :c.dataset.eval_num_segments]
  logits = m.predict(params, {}, b)["logits"]
  out = m.model.apply({"params": params}, b["video"], b["fbank"])
  np.testing.assert_allclose(logits, out["logits_a"] + out["logits_v"], rtol=1e-6)
  assert logits.shape == (2, 8)


def test_unlabelled_examples_count_in_reconstruction_and_cpc_only(smoke_run):
  c, m, _, states = smoke_run
  params = states[-1]["params"]
  b = {k: jnp.asarray(v) for k, v in _batch(m, 4, 3).items()}
  step = jnp.zeros((), jnp.int32)
  loss = jax.jit(lambda batch: m._stage1(params, batch, jax.random.key(0), step)[1])
  none = loss(dict(b, label=jnp.full((4,), -1, jnp.int32)))
  assert float(none["loss_cls"]) == 0 and float(none["loss_cls_c"]) == 0
  assert float(none["loss_rec"]) > 0 and float(none["loss_comp"]) != 0
  # Two of four labelled: the classification terms are those of the labelled two alone.
  half = loss(dict(b, label=b["label"].at[2:].set(-1)))
  two = loss({k: jnp.concatenate([v[:2]] * 2) for k, v in b.items()})  # same size: no compile
  np.testing.assert_allclose(float(half["loss_cls"]), float(two["loss_cls"]), rtol=1e-5)
  np.testing.assert_allclose(float(half["loss_cls_c"]), float(two["loss_cls_c"]), rtol=1e-5)
  c2 = _config()
  c2.pretrain.data = "bogus"
  with pytest.raises(UserError, match="pretrain.data='bogus'"):
    get_method(c2)
  c3 = _config()
  c3.pretrain.steps = 0  # fine-tuning only, the EMA still set to start after stage 1
  with pytest.raises(UserError, match="ema.start_step=2 but pretrain.steps=0"):
    get_method(c3)


def test_distribution_target_kl_and_its_term():
  from jaxaffect.methods.mart import method as mart_method
  r = np.random.default_rng(0)
  logits = r.standard_normal((6, 8)).astype(np.float32)
  p = r.random((6, 8)) * (r.random((6, 8)) > 0.5)
  p = (p / np.maximum(p.sum(-1, keepdims=True), 1e-9)).astype(np.float32)
  valid = p.sum(-1) > 0
  q = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  kl = [np.sum(np.where(pi > 0, pi * np.log(np.where(pi > 0, pi, 1) / qi), 0))
        for pi, qi in zip(p, q)]
  want = np.sum(np.array(kl) * valid) / max(valid.sum(), 1)
  got = mart_method._mood_kl(jnp.asarray(logits), jnp.asarray(p.reshape(2, 3, 8)),
                             jnp.asarray(valid.reshape(2, 3)))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  c = _config()
  c.loss.distribution = True
  c.dataset.extraction.lexicon = ""
  with pytest.raises(UserError, match="loss.distribution=True needs mood tags"):
    get_method(c)
  c.dataset.extraction.lexicon = "lexicon.tsv"
  m = get_method(c)
  b = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in m.example_batch(2).items()}
  assert b["mood"].shape == (2, c.dataset.num_segments, 8) and "mood_valid" in b
  # Traced, not compiled: the head exists and its term reaches the loss.
  v = jax.eval_shape(m.init_variables, jax.random.key(0), b)
  assert v["params"]["mood_head"]["kernel"].value.shape[-1] == 8
  seen = {}

  def kl(logits, target, valid):
    seen["logits"] = logits.shape
    return jnp.zeros((), jnp.float32)

  import unittest.mock
  with unittest.mock.patch.object(mart_method, "_mood_kl", kl):
    jax.eval_shape(lambda p, bb: m._stage1(p, bb, jax.random.key(0), jnp.zeros((), jnp.int32)),
                   v["params"], b)
  assert seen["logits"] == (2 * c.dataset.num_segments, 8)


def test_reset_optimizer_restarts_adam_at_the_stage_switch_only_when_asked():
  """pretrain.reset_optimizer names the first stage-2 step to the platform's optimizer reset
  (tests/test_platform.py checks the reset itself); off (the release) and one-stage runs
  have none."""
  c = _config()
  assert get_method(c).optimizer_reset_steps == ()
  c.pretrain.reset_optimizer = True
  assert get_method(c).optimizer_reset_steps == (int(c.pretrain.steps),) == (2,)
  c.pretrain.steps = 0
  c.ema.start_step = 0
  assert get_method(c).optimizer_reset_steps == ()
