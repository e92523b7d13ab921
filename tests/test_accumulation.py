"""Gradient accumulation inside the step (grad_accum_steps): with a method that reports
metrics["loss_weight"], micro-batches count by their weight, so the update equals the one of
the whole batch's weighted mean; without it, each micro-batch counts the same."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxaffect import config_lib
from jaxaffect import method as method_lib
from jaxaffect import sharding as shd
from jaxaffect import steps


class _Linear(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1, use_bias=False, kernel_init=nn.initializers.zeros)(x)[..., 0]


class MaskedRegression(method_lib.Method):
  """Mean squared error over the valid positions of each example (a variable-length loss)."""
  weighted = True

  def build_model(self):
    return _Linear()

  def example_batch(self, b):
    return {"x": np.zeros((b, 6, 3), np.float32), "y": np.zeros((b, 6), np.float32),
            "mask": np.zeros((b, 6), np.float32)}

  def model_inputs(self, batch):
    return {"x": batch["x"]}

  def init_variables(self, rng, batch):
    return self.model.init(rng, batch["x"])

  def loss(self, params, model_state, batch, rng, step=None):
    err = (self.model.apply({"params": params}, batch["x"]) - batch["y"]) ** 2
    units = jnp.sum(batch["mask"])
    metrics = {steps.LOSS_WEIGHT: units} if self.weighted else {}
    return jnp.sum(err * batch["mask"]) / units, (metrics, model_state)

  def predict(self, params, model_state, batch):
    return {}

  def train_iterator(self, **kw):
    raise NotImplementedError

  def eval_batches(self, **kw):
    raise NotImplementedError


def _step(accum, weighted, batch):
  c = config_lib.base_config()
  c.batch_size, c.grad_accum_steps = 8, accum
  c.optimizer.name, c.optimizer.learning_rate, c.optimizer.momentum = "sgd", 1.0, 0.0
  m = MaskedRegression(c)
  m.weighted = weighted
  s = steps.build(c, m, shd.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]))
  with s.context():
    state = s.init_fn(jax.random.key(0))
    state, metrics = s.train_step(state, steps.make_global_batch(batch, s.batch_sharding),
                                  jax.random.key(0))
  return np.asarray(state["params"]["Dense_0"]["kernel"]), float(metrics["loss"])


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  lengths = np.array([6, 6, 6, 6, 1, 2, 1, 1])  # micro-batch 2 (rows 1, 3, 5, 7) is short
  return {"x": rng.normal(size=(8, 6, 3)).astype(np.float32),
          "y": rng.normal(size=(8, 6)).astype(np.float32),
          "mask": (np.arange(6)[None] < lengths[:, None]).astype(np.float32)}


def test_weighted_accumulation_equals_the_whole_batch(batch):
  full_k, full_loss = _step(1, True, batch)
  acc_k, acc_loss = _step(2, True, batch)
  np.testing.assert_allclose(acc_k, full_k, rtol=1e-5, atol=1e-7)
  assert acc_loss == pytest.approx(full_loss, rel=1e-5)


def test_unweighted_accumulation_is_the_mean_of_micro_batch_means(batch):
  full_k, _ = _step(1, False, batch)
  acc_k, acc_loss = _step(2, False, batch)
  assert np.abs(acc_k - full_k).max() > 1e-3  # the short micro-batch counts as much as the long
  halves = [jax.tree.map(lambda x: x[j::2], batch) for j in (0, 1)]
  means = [float(np.sum(((0.0 - h["y"]) ** 2) * h["mask"]) / np.sum(h["mask"])) for h in halves]
  assert acc_loss == pytest.approx(np.mean(means), rel=1e-5)


def _multi_steps(k, weighted, batches, unit_weight=False):
  """Params after len(batches) train steps with optimizer.multi_steps=k (SGD, lr 1)."""
  c = config_lib.base_config()
  c.batch_size = batches[0]["x"].shape[0]
  c.optimizer.name, c.optimizer.learning_rate, c.optimizer.momentum = "sgd", 1.0, 0.0
  c.optimizer.multi_steps = k
  m = MaskedRegression(c)
  m.weighted = weighted
  if unit_weight:  # reports loss_weight = 1: must reproduce the unweighted path exactly
    m.loss = lambda *a, f=m.loss: (lambda l, aux: (l, ({steps.LOSS_WEIGHT: jnp.ones(())},
                                                       aux[1])))(*f(*a))
  s = steps.build(c, m, shd.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1]))
  with s.context():
    state = s.init_fn(jax.random.key(0))
    for b in batches:
      state, _ = s.train_step(state, steps.make_global_batch(b, s.batch_sharding),
                              jax.random.key(0))
  return np.asarray(state["params"]["Dense_0"]["kernel"])


def test_weighted_multi_steps_equal_the_whole_batch(batch):
  # Two train steps: 24 valid positions, then 5.
  halves = [jax.tree.map(lambda x: x[j * 4:(j + 1) * 4], batch) for j in (0, 1)]
  full = _multi_steps(1, True, [batch])
  np.testing.assert_allclose(_multi_steps(2, True, halves), full, rtol=1e-5, atol=1e-7)
  # optax.MultiSteps (unweighted) averages the two steps' means instead.
  assert np.abs(_multi_steps(2, False, halves) - full).max() > 1e-3
  # A constant weight of one is the unweighted path (optax.MultiSteps' formula), bit for bit.
  np.testing.assert_array_equal(_multi_steps(2, True, halves, unit_weight=True),
                                _multi_steps(2, False, halves))


def test_mean_multi_steps_is_optax_multisteps():
  """optim.mean_multi_steps (the inner update under a cond) against optax.MultiSteps itself:
  the same state layout (old checkpoints load), the same counters and accumulators bit for bit,
  and the same Adam updates to float32 rounding (XLA fuses the update differently inside a
  branch: 1 ulp here and there), over two full cycles of Adam with L2."""
  import optax
  from jaxaffect import optim
  inner = optax.chain(optax.add_decayed_weights(5e-4), optax.adam(1e-3))
  ours, ref = optim.mean_multi_steps(inner, 3), optax.MultiSteps(inner, every_k_schedule=3)
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.standard_normal((5, 4)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal((4,)), jnp.float32)}
  s_ours, s_ref = ours.init(params), ref.init(params)
  assert jax.tree.structure(s_ours) == jax.tree.structure(s_ref)
  for _ in range(7):
    g = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
    u_ours, s_ours = jax.jit(ours.update)(g, s_ours, params)
    u_ref, s_ref = jax.jit(ref.update)(g, s_ref, params)
    np.testing.assert_array_equal(s_ours.mini_step, s_ref.mini_step)
    np.testing.assert_array_equal(s_ours.gradient_step, s_ref.gradient_step)
    for a, b in zip(jax.tree.leaves(s_ours.acc_grads), jax.tree.leaves(s_ref.acc_grads)):
      np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves((u_ours, s_ours.inner_opt_state)),
                    jax.tree.leaves((u_ref, s_ref.inner_opt_state))):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)
    assert any(np.abs(np.asarray(u)).max() > 0 for u in jax.tree.leaves(u_ours)) == (
        int(s_ours.mini_step) == 0)  # an update exactly when a cycle completes
    params = optax.apply_updates(params, u_ref)
