"""The demo (VAANet :smoke) on a mesh with every axis split equals one device."""
import jax
import numpy as np

import toy_method
from jaxaffect import method as methods
from test_end_to_end import _config


def test_demo_smoke_sharded_equals_single_device(smoke_data_dir):
  c = _config(smoke_data_dir)
  method = methods.get_method(c)
  method.prepare_data()
  ref, _, start = toy_method.train_losses(method, c, jax.devices()[:1])
  # One mesh with every axis split (the toy and transformer tests cover more mesh shapes).
  c.mesh.update(dict(data=2, fsdp=2, tensor=2))
  got, _, _ = toy_method.train_losses(methods.get_method(c), c, jax.devices(), start=start)
  np.testing.assert_allclose(got, ref, rtol=1e-5)
