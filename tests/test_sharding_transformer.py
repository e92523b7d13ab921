"""A transformer block trains identically on 1 device and on 8 (data/fsdp/tensor), and fsdp=8
splits its large kernels eight ways."""
import jax
import numpy as np
import pytest

import toy_method
from jaxaffect import sharding as shd
from jaxaffect import steps


def _run(mesh_cfg, devices, n=5):
  c = toy_method.toy_config(**mesh_cfg)
  c.optimizer.learning_rate = 1e-3
  m = toy_method.TransformerMethod(c)
  s = steps.build(c, m, shd.make_mesh(c.mesh, devices))
  it = m.train_iterator(seed=0, global_batch_size=16, process_index=0, process_count=1)
  losses = []
  with s.context():
    state = s.init_fn(jax.random.key(0))
    for _ in range(n):
      state, met = s.train_step(state, steps.make_global_batch(next(it), s.batch_sharding),
                                jax.random.key(0))
      losses.append(float(met["loss"]))
  return np.array(losses), state


@pytest.fixture(scope="module")
def reference():
  return _run(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])[0]


@pytest.mark.parametrize("mesh", [dict(data=2, fsdp=2, tensor=2), dict(data=1, fsdp=4, tensor=2)])
def test_transformer_sharded_equals_single_device(reference, mesh):
  losses, _ = _run(mesh, jax.devices())
  np.testing.assert_allclose(losses, reference, rtol=1e-5)
  assert losses[-1] < losses[0]


def test_fsdp8_splits_largest_kernels_eight_ways(reference):
  losses, state = _run(dict(data=1, fsdp=8, tensor=1), jax.devices())
  np.testing.assert_allclose(losses, reference, rtol=1e-5)
  leaves = jax.tree_util.tree_leaves_with_path(state["params"])
  largest = sorted(leaves, key=lambda kv: -kv[1].size)[:4]
  for path, x in largest:
    shard = x.addressable_shards[0].data
    assert shard.size * 8 == x.size, (jax.tree_util.keystr(path), x.shape, shard.shape)
