"""BPM-GCN ablation switches (model.streams, model.fusion, model.affective_head,
loss.affective_weight) and the config's sweep preset that runs the paper's ablation rows."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxaffect import config_lib
from jaxaffect import method as methods
from jaxaffect.tools import summary
from jaxaffect.tools import sweep
from jaxaffect import trainer
from jaxaffect.errors import UserError
from jaxaffect.nn import count_params
from jaxaffect.methods.bpmgcn.model import BPMGCN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "bpmgcn_emogait.py")
HEAD = 256 * 31 * 48 + 31 * 48  # fc2_aff at T = 48: 382,416

# Exact parameter counts of every preset row (T = 48). The fusion rows are the released
# model's; a stream alone is its data_bn + 10 blocks + classifier (+ fc2_aff).
EXPECTED = {
    "baseline": 7_287_192,
    "fusion_paper": 7_287_192,
    "no_affective": 7_287_192 - HEAD,
    "no_fusion": 7_272_024,
    "no_fusion_no_affective": 7_272_024 - HEAD,
    "posture_only": 3_442_816 + 1028 + HEAD,
    "posture_only_no_affective": 3_442_816 + 1028,
    "movement_only": 3_444_736 + 1028,
}


def _config(arg="smoke", overrides=None):
  """The config exactly as `jaxaffect.main --config ... --config.k=v` parses it."""
  return config_lib.load(f"{CONFIG}:{arg}",
                         [f"--config.{k}={v}" for k, v in (overrides or {}).items()])


def _params(**kw):
  m = BPMGCN(**kw)
  v = jax.eval_shape(lambda s: m.init(jax.random.key(0), s),
                     jax.ShapeDtypeStruct((2, 48, 16, 3), jnp.float32))
  return v["params"], count_params(v)


def test_preset_rows_and_exact_parameter_counts():
  rows = dict(sweep.presets(CONFIG)["ablations"])
  assert list(rows) == list(EXPECTED)
  base = _config()
  assert sweep.unknown_keys(base, [k for ov in rows.values() for k in ov]) == []
  for name, overrides in rows.items():
    c = _config("smoke", overrides)
    c.dataset.num_frames = 48
    c.model.num_blocks = 10  # :smoke keeps 5
    s = trainer.setup(c, prepare_data=False)  # builds the model; no data, nothing compiled
    total, trainable = summary.param_counts(s)
    assert total == trainable == EXPECTED[name], name


def test_stream_and_head_switches_build_only_their_parameters():
  p, n = _params(streams="posture", fusion="none")
  assert n == EXPECTED["posture_only"]
  assert not any(k.endswith("_m") for k in p) and "fc2_aff" in p and "fc1_classifier_p" in p
  p, n = _params(streams="movement", fusion="none")
  assert n == EXPECTED["movement_only"]
  assert not any(k.endswith("_p") for k in p) and "fc2_aff" not in p
  p, n = _params(affective_head=False)
  assert n == EXPECTED["no_affective"] and "fc2_aff" not in p
  assert {"fusion1", "fusion2", "fusion3"} <= set(p)
  # The defaults are untouched by the switches.
  assert _params()[1] == 7_287_192 and _params(fusion="none")[1] == 7_272_024


def test_num_blocks_keeps_the_first_blocks_and_their_fusions():
  p, n = _params(num_blocks=5)
  assert {k for k in p if k[0] == "l"} == {f"l{i}_{s}" for i in range(1, 6) for s in "pm"}
  assert "fusion1" in p and "fusion2" not in p
  assert nn.unbox(p["fc1_classifier_p"]["kernel"]).shape[0] == 128  # block 5's channels
  full = _params()[0]
  blocks = lambda q: sum(x.size for k, v in q.items() if k[0] == "l"  # noqa: E731
                         for x in jax.tree.leaves(v))
  assert blocks(p) == sum(x.size for i in range(1, 6) for s in "pm"
                          for x in jax.tree.leaves(full[f"l{i}_{s}"]))


@pytest.mark.parametrize("kw,match", [
    (dict(num_blocks=0), "num_blocks must be in 1..10"),
    (dict(num_blocks=11), "num_blocks must be in 1..10"),
    (dict(streams="posture"), "fusion='none'"),           # default fusion="code"
    (dict(streams="movement", fusion="paper"), "fusion='none'"),
    (dict(streams="left"), "streams must be one of"),
])
def test_inconsistent_switches_are_rejected(kw, match):
  with pytest.raises(ValueError, match=match):
    _params(**kw)


def test_method_rejects_a_constraint_without_its_head():
  with pytest.raises(UserError, match="affective_weight"):
    methods.get_method(_config("smoke", {"model.streams": "movement", "model.fusion": "none"}))
  with pytest.raises(UserError, match="affective_weight"):
    methods.get_method(_config("smoke", {"model.affective_head": "False"}))
  with pytest.raises(UserError, match="fusion"):
    methods.get_method(_config("smoke", {"model.streams": "posture"}))


def _batch(method, b=2, t=8):
  rng = np.random.default_rng(0)
  skel = rng.normal(size=(b, t, 16, 3)).astype(np.float32)
  return {"skeleton": skel, "mask": np.ones((b, t), np.float32),
          "label": np.arange(b, dtype=np.int32) % 4}


@pytest.mark.parametrize("overrides,ce_keys,has_mse", [
    ({}, {"ce_posture", "ce_movement"}, True),
    ({"loss.affective_weight": "0.0"}, {"ce_posture", "ce_movement"}, False),
    ({"model.streams": "posture", "model.fusion": "none"}, {"ce_posture"}, True),
    ({"model.streams": "movement", "model.fusion": "none", "loss.affective_weight": "0.0"},
     {"ce_movement"}, False),
])
def test_loss_terms_follow_the_switches(overrides, ce_keys, has_mse):
  c = _config("smoke", overrides)
  c.dataset.num_frames = 8
  method = methods.get_method(c)
  batch = _batch(method)
  variables = jax.eval_shape(method.init_variables, jax.random.key(0), batch)
  loss, (metrics, _) = jax.eval_shape(
      lambda v: method.loss(v["params"], {"batch_stats": v["batch_stats"]}, batch,
                            jax.random.key(0)), variables)
  got = set(metrics) - {"top1"}
  assert got == ce_keys | ({"affective_mse"} if has_mse else set())
  assert loss.shape == ()


def test_movement_only_loss_is_its_cross_entropy_and_logits_are_the_stream_logits():
  c = _config("smoke", {"model.streams": "movement", "model.fusion": "none",
                        "loss.affective_weight": "0.0"})
  c.dataset.num_frames = 8
  method = methods.get_method(c)
  batch = _batch(method)
  v = method.init_variables(jax.random.key(1), batch)
  state = {"batch_stats": v["batch_stats"]}
  loss, (metrics, _) = method.loss(v["params"], state, batch, jax.random.key(0))
  np.testing.assert_allclose(loss, metrics["ce_movement"], rtol=1e-6)
  out = method.model.apply(v, **method.model_inputs(batch), train=False)
  assert set(out) == {"logits", "logits_movement", "frame_mask"}
  np.testing.assert_array_equal(out["logits"], out["logits_movement"])
  pred = method.predict(v["params"], state, batch)["logits"]
  np.testing.assert_allclose(pred, out["logits_movement"], rtol=1e-6)


def test_sweep_dry_run_expands_the_preset():
  r = subprocess.run([sys.executable, "-m", "jaxaffect.tools.sweep", "--config",
                      "configs/bpmgcn_emogait.py:synthetic", "--root", "/tmp/never_created",
                      "--preset", "ablations", "--dry-run"],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.strip().splitlines()
  assert len(lines) == len(EXPECTED)
  movement = next(l for l in lines if "/movement_only" in l)
  assert ("--config.model.streams=movement --config.model.fusion=none "
          "--config.loss.affective_weight=0.0") in movement
  assert not os.path.exists("/tmp/never_created")
