"""Platform tests on the toy method: sharding equivalence, checkpoint round trip, resume, guards."""
import json
import os

import jax
import numpy as np
import pytest

import toy_method
from jaxaffect import checkpointing
from jaxaffect import method as methods
from jaxaffect import sharding as shd
from jaxaffect import steps
from jaxaffect import trainer
from jaxaffect import xla_options
from jaxaffect.tools.profile_step import ynn_fused_ops as _ynn_fused_ops

methods.register("toy", toy_method.ToyMethod)


def _losses(mesh_cfg, devices, n=5, accum=1):
  c = toy_method.toy_config(**mesh_cfg)
  c.grad_accum_steps = accum
  losses, state, _ = toy_method.train_losses(toy_method.ToyMethod(c), c, devices, n)
  return losses, state, None


def test_mesh_shape_fill_and_errors():
  assert shd.mesh_shape(dict(data=-1, fsdp=2, tensor=1), 8) == (4, 2, 1)
  assert shd.mesh_shape(dict(data=2, fsdp=2, tensor=2), 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="at most one"):
    shd.mesh_shape(dict(data=-1, fsdp=-1, tensor=1), 8)
  with pytest.raises(ValueError, match="needs 4 devices"):
    shd.mesh_shape(dict(data=2, fsdp=2, tensor=1), 8)


@pytest.mark.parametrize("mesh", [dict(data=2, fsdp=2, tensor=2), dict(data=1, fsdp=4, tensor=2)])
def test_sharded_step_equals_single_device(mesh):
  ref, _, _ = _losses(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  got, state, _ = _losses(mesh, jax.devices())
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  assert ref[-1] < ref[0]
  kernel = state["params"]["Dense_0"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  # Adam moments follow their parameter's sharding.
  mu = jax.tree.leaves(state["opt_state"], is_leaf=lambda x: hasattr(x, "mu"))
  mus = [l.mu for l in mu if hasattr(l, "mu")]
  assert mus and mus[0]["Dense_0"]["kernel"].sharding.spec == kernel.sharding.spec


def test_init_program_is_compiled_at_o1_on_cpu_with_the_default_values():
  """xla_options.for_init: the init program's cheaper LLVM pipeline changes no value."""
  c = toy_method.toy_config(data=2, fsdp=2, tensor=2)
  s = steps.build(c, toy_method.ToyMethod(c), shd.make_mesh(c.mesh))
  assert xla_options.for_init("cpu") == {"xla_backend_optimization_level": 1}
  assert xla_options.for_init("gpu") is None
  with s.context():
    fast = jax.device_get(s.init_fn(jax.random.key(3)))
    # XLA's default level, explicitly (the test session's XLA_FLAGS lower it: conftest).
    default = jax.device_get(jax.jit(s.init_fn.__wrapped__, compiler_options={
        "xla_backend_optimization_level": 3})(jax.random.key(3)))
  leaves = jax.tree.leaves(fast)
  assert len(leaves) == len(jax.tree.leaves(default)) > 4
  for a, b in zip(leaves, jax.tree.leaves(default)):
    np.testing.assert_array_equal(a, b)


def test_cpu_step_programs_keep_convolutions_out_of_ynnpack(monkeypatch):
  """xla_options.for_step: on CPU the convolutions run as XLA's own (YNNPACK's were 2-2.6x
  slower), dots stay in YNNPACK, and the values are the default program's to rounding."""
  opts = xla_options.for_step("cpu")
  assert opts == {"xla_cpu_experimental_ynn_fusion_type": xla_options.CPU_LIBRARY_FUSIONS}
  assert xla_options.for_step("gpu") is None
  rng = np.random.default_rng(0)
  x = rng.standard_normal((8, 28, 28, 64)).astype(np.float32)  # a size YNNPACK would take
  k = rng.standard_normal((3, 3, 64, 64)).astype(np.float32) * 0.1
  w = rng.standard_normal((64, 4)).astype(np.float32)

  def f(x, k, w):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), [(1, 1)] * 2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(y) @ w  # no reduction: YNNPACK's reduce fusions absorb producers

  ours = jax.jit(f, compiler_options=opts).lower(x, k, w).compile()
  ynn = jax.jit(f, compiler_options={"xla_cpu_experimental_ynn_fusion_type": (
      "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")}).lower(x, k, w).compile()
  assert "convolution" in _ynn_fused_ops(ynn.as_text())
  assert "convolution" not in _ynn_fused_ops(ours.as_text())
  assert "dot" in _ynn_fused_ops(ours.as_text())
  np.testing.assert_allclose(ours(x, k, w), ynn(x, k, w), rtol=1e-5, atol=1e-4)
  # A user's own XLA_FLAGS choice of YNNPACK fusions wins.
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") +
                     " --xla_cpu_experimental_ynn_fusion_type=-individual_convolution")
  assert xla_options.for_step("cpu") is None


def test_train_and_eval_steps_are_compiled_with_the_step_options(monkeypatch):
  """steps.build passes xla_options.for_step to both jitted steps: options that take the dots
  out of YNNPACK show in the toy's compiled programs."""
  c = toy_method.toy_config(data=1, fsdp=1, tensor=1)
  m = toy_method.ToyMethod(c)
  ops = {}
  for name, opts in (("house", None), ("no_dots", {
      "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"})):
    if opts is not None:
      monkeypatch.setattr(xla_options, "for_step", lambda platform, o=opts: o)
    s = steps.build(c, m, shd.make_mesh(c.mesh, jax.devices()[:1]))
    batch = next(m.train_iterator(seed=0, global_batch_size=4, process_index=0,
                                  process_count=1))
    with s.context():
      b = steps.make_global_batch(batch, s.batch_sharding)
      state = s.init_fn(jax.random.key(0))
      ops[name] = (_ynn_fused_ops(s.train_step.lower(state, b, jax.random.key(0))
                                  .compile().as_text()),
                   _ynn_fused_ops(s.eval_step.lower(state, b).compile().as_text()))
  assert all("dot" in o for o in ops["house"])
  assert all("dot" not in o for o in ops["no_dots"])


def test_grad_accumulation_matches_full_batch():
  # BatchNorm makes microbatches differ from the full batch, so compare a step on a BN-free view:
  # the loss reported with accumulation is the mean of the microbatch losses.
  full, _, _ = _losses(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1], n=1)
  acc, _, _ = _losses(dict(data=2, fsdp=1, tensor=1), jax.devices()[:2], n=1, accum=2)
  assert np.isfinite(acc).all() and abs(acc[0] - full[0]) < 0.2


def test_checkpoint_round_trip_bit_exact_and_next_batch(tmp_path):
  c = toy_method.toy_config(data=2, fsdp=2, tensor=2)
  m = toy_method.ToyMethod(c)
  s = steps.build(c, m, shd.make_mesh(c.mesh))
  it = m.train_iterator(seed=0, global_batch_size=16, process_index=0, process_count=1)
  ck = checkpointing.Checkpointer(str(tmp_path / "ck"), every_steps=1, keep=2)
  with s.context():
    state = s.init_fn(jax.random.key(0))
    for _ in range(3):
      state, _ = s.train_step(state, steps.make_global_batch(next(it), s.batch_sharding),
                              jax.random.key(0))
    ck.save(3, state, it, {"note": "x"})
    ck.wait()
    expected_next = next(it)
    saved = jax.device_get(state)
    it2 = m.train_iterator(seed=0, global_batch_size=16, process_index=0, process_count=1)
    restored = ck.restore(3, s.abstract_state, it2)
  for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(jax.device_get(restored))):
    np.testing.assert_array_equal(a, b)
  got_next = next(it2)
  for k in expected_next:
    np.testing.assert_array_equal(expected_next[k], got_next[k])
  assert restored["params"]["Dense_0"]["kernel"].sharding == \
      s.state_sharding["params"]["Dense_0"]["kernel"]
  ck.close()


@pytest.mark.parametrize("ema", [0.0, 0.9])  # with an EMA its average resumes exactly too
def test_resume_matches_uninterrupted_run(tmp_path, ema):
  c = toy_method.toy_config(data=2, fsdp=2, tensor=2)
  c.method = "toy"
  c.ema.update(decay=ema, start_step=2)
  c.total_steps, c.checkpoint.every_steps, c.log_every_steps = 8, 4, 1
  full = trainer.train_and_evaluate(c, str(tmp_path / "a"))
  c2 = c.copy_and_resolve_references()
  c2.total_steps = 4
  trainer.train_and_evaluate(c2, str(tmp_path / "b"))
  os.remove(tmp_path / "b" / "results.json")
  c3 = c.copy_and_resolve_references()
  c3.resume_changes = "allow"  # total_steps 4 -> 8 stands in for a run killed at step 4
  resumed = trainer.train_and_evaluate(c3, str(tmp_path / "b"))
  assert resumed == full
  read = lambda d: [(r["step"], r["train/loss"]) for r in map(json.loads, open(d / "metrics.jsonl"))
                    if "train/loss" in r]
  assert read(tmp_path / "a") == read(tmp_path / "b")


def test_nan_guard_names_step_and_keeps_last_good_checkpoint(tmp_path):
  c = toy_method.toy_config()
  c.method = "toy"
  c.total_steps, c.checkpoint.every_steps, c.log_every_steps = 10, 1, 5
  c.optimizer.learning_rate = 1e30  # diverges within a few steps
  with pytest.raises(trainer.NonFiniteLossError, match=r"at step (\d+)") as e:
    trainer.train_and_evaluate(c, str(tmp_path))
  bad = int(str(e.value).split("at step ")[1].split(";")[0])
  ck = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), every_steps=1, keep=3)
  assert bad >= 2 and ck.latest_step() == bad - 1
  ck.close()


def test_optimizer_freezes_params_matching_patterns():
  c = toy_method.toy_config()
  c.frozen_params = ("Dense_0/.*",)
  m = toy_method.ToyMethod(c)
  s = steps.build(c, m, shd.make_mesh(c.mesh, jax.devices()[:1]))
  it = m.train_iterator(seed=0, global_batch_size=16, process_index=0, process_count=1)
  with s.context():
    state = s.init_fn(jax.random.key(0))
    before = jax.device_get(state["params"])
    state, _ = s.train_step(state, steps.make_global_batch(next(it), s.batch_sharding),
                            jax.random.key(0))
    after = jax.device_get(state["params"])
  np.testing.assert_array_equal(before["Dense_0"]["kernel"], after["Dense_0"]["kernel"])
  assert not np.array_equal(before["Dense_1"]["kernel"], after["Dense_1"]["kernel"])


def test_optimizer_reset_steps_start_a_fresh_optimizer():
  """A method's `optimizer_reset_steps` (MART's pretrain.reset_optimizer) re-initialise the
  optimizer state before that step's update: step 2 of a run with the reset equals one step
  of a new optimizer from step 2's params; without the reset the moments carry on."""
  c = toy_method.toy_config()
  c.optimizer.name = "adam"

  def run(reset, start=None, n=3):
    m = toy_method.ToyMethod(c)
    m.optimizer_reset_steps = reset
    s = steps.build(c, m, shd.make_mesh(c.mesh, jax.devices()[:1]))
    it = m.train_iterator(seed=0, global_batch_size=16, process_index=0, process_count=1)
    batches = [next(it) for _ in range(3)]
    with s.context():
      state = s.init_fn(jax.random.key(0)) if start is None else jax.device_put(
          start, s.state_sharding)
      states = [jax.device_get(state)]
      for i in range(n):
        b = batches[i if start is None else 2]
        state, _ = s.train_step(state, steps.make_global_batch(b, s.batch_sharding),
                                jax.random.key(0))
        states.append(jax.device_get(state))
    return s, states

  _, plain = run(())
  s, reset = run((2,))
  for a, b in zip(jax.tree.leaves(plain[2]), jax.tree.leaves(reset[2])):
    np.testing.assert_array_equal(a, b)  # identical up to the reset step
  # A fresh optimizer from step 2's params, stepped once on step 2's batch (same step index).
  fresh = dict(reset[2], opt_state=jax.device_get(s.tx.init(reset[2]["params"])))
  _, one = run((), start=fresh, n=1)
  for a, b in zip(jax.tree.leaves(reset[3]), jax.tree.leaves(one[1])):
    np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a, b) for a, b in
                 zip(jax.tree.leaves(plain[3]["params"]), jax.tree.leaves(reset[3]["params"])))


def test_init_from_loads_params_only(tmp_path):
  c = toy_method.toy_config()
  c.method = "toy"
  c.total_steps, c.checkpoint.every_steps = 3, 3
  trainer.train_and_evaluate(c, str(tmp_path / "src"))
  src = checkpointing.Checkpointer(str(tmp_path / "src" / "checkpoints"), every_steps=1, keep=1)
  s = trainer.setup(c, prepare_data=False)
  trained, _ = trainer.initial_state(s, c, src)
  src.close()
  c2 = c.copy_and_resolve_references()
  c2.init_from = str(tmp_path / "src")
  c2.seed = 7
  state, start = trainer.initial_state(s, c2, None)
  assert start == 0 and int(state["step"]) == 0
  for a, b in zip(jax.tree.leaves(jax.device_get(trained["params"])),
                  jax.tree.leaves(jax.device_get(state["params"]))):
    np.testing.assert_array_equal(a, b)
  c2.init_from = str(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="missing"):
    trainer.initial_state(s, c2, None)
