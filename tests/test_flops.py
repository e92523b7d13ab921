import jax
import jax.numpy as jnp
import numpy as np

from jaxaffect import flops


def test_dense_and_conv_flops_match_hand_counts():
  x = jax.ShapeDtypeStruct((4, 10), jnp.float32)
  w = jax.ShapeDtypeStruct((10, 3), jnp.float32)
  assert flops.count_flops(lambda a, b: a @ b, x, w) == 2 * 4 * 10 * 3
  img = jax.ShapeDtypeStruct((2, 8, 8, 5), jnp.float32)  # NHWC
  k = jax.ShapeDtypeStruct((3, 3, 5, 7), jnp.float32)    # HWIO
  conv = lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert flops.count_flops(conv, img, k) == 2 * (2 * 8 * 8 * 7) * 5 * 9


def test_flops_see_through_jit_scan_and_grad():
  w = jnp.ones((6, 6))
  def f(w):
    def body(c, _):
      return c @ w, None
    return jax.lax.scan(body, jnp.ones((1, 6)), None, length=5)[0].sum()
  assert flops.count_flops(jax.jit(f), w) == 5 * 2 * 6 * 6
  # Backward of a matmul chain: each forward matmul has two transposed matmuls (one here is
  # needed only for the carry), so the count is more than the forward alone.
  assert flops.count_flops(jax.grad(f), w) > 2 * flops.count_flops(f, w)
  assert np.isfinite(flops.count_flops(jax.grad(f), w))
