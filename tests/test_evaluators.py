"""config.evals: the evaluator registry, cadences, metric prefixes, host-only fields and
per-example outputs gathered from a sharded eval step."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toy_method
from jaxaffect import evaluators, method as methods, sharding as shd, steps, trainer
from jaxaffect.errors import UserError

methods.register("toy", toy_method.ToyMethod)


def test_unknown_type_names_entry_and_nearest():
  c = toy_method.toy_config()
  c.evals.eval.type = "clasification"
  with pytest.raises(UserError, match=r"config.evals.eval.type='clasification'.*"
                                       r"did you mean 'classification'"):
    evaluators.from_config(c)


def test_empty_evals_and_negative_cadence_are_errors():
  c = toy_method.toy_config()
  c.evals.eval.every_steps = -1
  with pytest.raises(UserError, match="every_steps=-1"):
    evaluators.from_config(c)
  c.evals = {}
  with pytest.raises(UserError, match="config.evals is empty"):
    evaluators.from_config(c)
  c.no_eval = True  # label-free runs (configs/mart_pretrain.py) say so explicitly
  assert evaluators.from_config(c) == []


def test_cadences_and_prefixes_in_metrics(tmp_path):
  c = toy_method.toy_config()
  c.total_steps = 6
  c.eval_every_steps = 2          # "eval" inherits it
  c.evals.late = dict(type="classification", every_steps=0)   # only at the end
  c.evals.odd = dict(type="classification", every_steps=3, polarity=False)
  trainer.train_and_evaluate(c, str(tmp_path))
  evals = {}
  with open(tmp_path / "metrics.jsonl") as f:
    for line in f:
      rec = json.loads(line)
      for key in rec:
        if key.endswith("/top1") and not key.startswith("train/"):
          evals.setdefault(key.split("/")[0], []).append(rec["step"])
  assert evals == {"eval": [2, 4, 6], "odd": [3, 6], "late": [6]}
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  # One prediction pass serves all three: the same predictions give the same metrics.
  assert results["eval/top1"] == results["late/top1"] == results["odd/top1"]
  assert results["eval/num_examples"] == 40  # the toy eval split, padding removed


def test_labels_stay_on_host_and_outputs_are_per_example():
  c = toy_method.toy_config(data=4, fsdp=1, tensor=2)
  m = methods.get_method(c)
  traced, predict = [], m.predict
  m.predict = lambda *a: traced.append(1) or predict(*a)
  s = steps.build(c, m, shd.make_mesh(c.mesh))
  assert not traced  # building a step never traces predict (a training-only run skips it)
  assert s.predict_keys == ("x",)  # the toy's predict reads x only; label never travels
  assert s.predict_keys == ("x",) and len(traced) == 1  # traced once, on first use
  m.predict = predict
  with s.context():
    state = s.init_fn(jax.random.key(0))
    batch = next(iter(m.eval_batches(global_batch_size=16, process_index=0, process_count=1)))
    out = s.eval_step(state, steps.make_global_batch({"x": batch["x"]}, s.batch_sharding))
  logits = out["logits"]
  assert logits.sharding.spec == s.batch_sharding.spec  # not replicated
  rows = steps.process_rows(logits)
  ref = m.predict(state["params"], state["model_state"], {"x": jnp.asarray(batch["x"])})
  np.testing.assert_allclose(rows, np.asarray(ref["logits"]), rtol=1e-5, atol=1e-6)


def test_process_rows_dedups_replicas_in_order():
  mesh = shd.make_mesh(dict(data=2, fsdp=2, tensor=2))
  x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  g = steps.make_global_batch({"x": x}, shd.batch_sharding(mesh))["x"]
  assert len(g.addressable_shards) == 8  # 4 row blocks, each held twice (tensor replicas)
  np.testing.assert_array_equal(steps.process_rows(g), x)
