"""BPM-GCN through the platform: sharded training steps equal the single-device ones."""
import os

import jax
import numpy as np

import toy_method
from jaxaffect import config_lib
from jaxaffect import method as methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bpmgcn_sharded_equals_single_device(smoke_data_dir):
  c = config_lib.sibling_config(os.path.join(ROOT, "configs", "x.py"), "bpmgcn_emogait.py",
                                "smoke")
  c.dataset.data_dir = smoke_data_dir
  # A small step keeps 3 steps out of the chaotic regime, where float reduction order alone
  # (one device vs eight) would be amplified.
  c.optimizer.learning_rate = 1e-4
  method = methods.get_method(c)
  method.prepare_data()
  ref, _, start = toy_method.train_losses(method, c, jax.devices()[:1], n=3)
  c.mesh.update(dict(data=2, fsdp=2, tensor=2))
  got, state, _ = toy_method.train_losses(methods.get_method(c), c, jax.devices(), n=3,
                                          start=start)
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  assert np.isfinite(ref).all()
