"""A two-block transformer stack, unscanned (its weights are gathered by the train step's
whole-tree gather), trains identically on 1 device and on 8 (data/fsdp/tensor), and fsdp=8
splits its large kernels eight ways. The scanned stack (per-layer gather) is covered in
test_transformer.py."""
import jax
import numpy as np
import pytest

import toy_method


def _run(mesh_cfg, devices, n=5):
  c = toy_method.toy_config(**mesh_cfg)
  c.optimizer.learning_rate = 1e-3
  return toy_method.train_losses(toy_method.TransformerMethod(c), c, devices, n)[:2]


@pytest.fixture(scope="module")
def reference():
  return _run(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])[0]


# (2, 2, 2) is covered for the scanned stack, with the rule that exposes XLA:CPU's
# miscompilation, by tests/test_transformer.py.
@pytest.mark.parametrize("mesh", [dict(data=1, fsdp=4, tensor=2)])
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
