"""A checkpoint written on one mesh resumes on another (Orbax reshards every array to the new
shardings): fsdp=4 on 4 devices -> data=2 x tensor=2, and -> 1 device; the continued losses
equal the uninterrupted run's, and the log says the mesh changed."""
import logging

import jax
import numpy as np
import pytest

import toy_method
from jaxaffect import checkpointing, steps, trainer
from jaxaffect import sharding as shd


def _setup(n_devices, **mesh):
  c = toy_method.toy_config(**mesh)
  m = toy_method.ToyMethod(c)
  return c, m, steps.build(c, m, shd.make_mesh(c.mesh, jax.devices()[:n_devices]))


def _train(s, state, it, n):
  losses = []
  with s.context():
    for _ in range(n):
      state, out = s.train_step(state, steps.make_global_batch(next(it), s.batch_sharding),
                                jax.random.key(0))
      losses.append(float(out["loss"]))
  return state, losses


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """3 steps on fsdp=4, a checkpoint, then 3 more steps: (checkpoint dir, last 3 losses)."""
  c, m, s = _setup(4, data=1, fsdp=4, tensor=1)
  it = m.train_iterator(seed=0, global_batch_size=16, process_index=0, process_count=1)
  with s.context():
    state = s.init_fn(jax.random.key(0))
  state, _ = _train(s, state, it, 3)
  directory = str(tmp_path_factory.mktemp("mesh") / "checkpoints")
  ck = checkpointing.Checkpointer(directory, every_steps=1, keep=2)
  with s.context():
    ck.save(3, state, it, {"mesh": shd.describe(s.mesh), "devices": 4})
    ck.wait()
  ck.close()
  _, after = _train(s, state, it, 3)
  return directory, after


@pytest.mark.parametrize("n_devices,mesh", [(4, dict(data=2, fsdp=1, tensor=2)),
                                            (1, dict(data=1, fsdp=1, tensor=1))])
def test_resume_onto_another_mesh(saved, caplog, n_devices, mesh):
  directory, want = saved
  c, m, s = _setup(n_devices, **mesh)
  it = m.train_iterator(seed=0, global_batch_size=16, process_index=0, process_count=1)
  ck = checkpointing.Checkpointer(directory, every_steps=1, keep=2)
  with caplog.at_level(logging.INFO, logger="jaxaffect"):
    state, step = trainer.initial_state(s, c, ck, it)
  ck.close()
  assert step == 3
  assert any("was written on mesh data=1 fsdp=4 tensor=1 (4 devices); restored onto mesh "
             f"{shd.describe(s.mesh)} ({n_devices} devices)" in r.getMessage()
             for r in caplog.records), [r.getMessage() for r in caplog.records]
  _, got = _train(s, state, it, 3)
  np.testing.assert_allclose(got, want, rtol=1e-5)
