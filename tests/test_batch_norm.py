"""BatchNorm's written-out train-mode gradient equals autodiff of its two-pass definition."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxaffect.nn.layers import BatchNorm, batch_norm_train


def _reference(xf, scale, bias, w, eps):
  """The definition, differentiated by JAX: two-pass statistics over the real entries."""
  axes = tuple(range(xf.ndim - 1))
  if w is None:
    mean = jnp.mean(xf, axes)
    var = jnp.mean(jnp.square(xf - mean), axes)
  else:
    n = jnp.maximum(jnp.sum(w), 1.0)
    mean = jnp.sum(xf * w, axes) / n
    var = jnp.sum(jnp.square(xf - mean) * w, axes) / n
  return (xf - mean) * (scale * jax.lax.rsqrt(var + eps)) + bias, mean, var


@pytest.mark.parametrize("masked", [False, True])
def test_gradients_equal_autodiff_of_the_definition_in_float64(masked):
  with jax.enable_x64():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(3.0, 2.0, (4, 5, 6, 7)))
    scale, bias = jnp.asarray(rng.normal(size=7)), jnp.asarray(rng.normal(size=7))
    w = (jnp.asarray(rng.random((4, 5, 6, 1)) > 0.3, jnp.float64) if masked else None)
    # Cotangents on all three outputs (mean and var too, which callers may use).
    cy, cm, cv = (jnp.asarray(rng.normal(size=s)) for s in ((4, 5, 6, 7), (7,), (7,)))

    def loss(f):
      def inner(x, scale, bias):
        y, m, v = f(x, scale, bias, w, 1e-5)
        return jnp.sum(y * cy) + jnp.sum(m * cm) + jnp.sum(v * cv)
      return inner

    got = jax.grad(loss(batch_norm_train), argnums=(0, 1, 2))(x, scale, bias)
    want = jax.grad(loss(_reference), argnums=(0, 1, 2))(x, scale, bias)
    for g, r in zip(got, want):
      np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)
    # Forward values are the definition's.
    for a, b in zip(batch_norm_train(x, scale, bias, w, 1e-5), _reference(x, scale, bias, w,
                                                                          1e-5)):
      np.testing.assert_allclose(a, b, rtol=1e-12)


def test_module_train_mode_gradient_and_running_stats():
  bn = BatchNorm()
  x = jnp.asarray(np.random.default_rng(1).normal(1.0, 3.0, (8, 3, 5)), jnp.float32)
  v = bn.init(jax.random.key(0), x, use_running_average=False)
  y, upd = bn.apply(v, x, use_running_average=False, mutable=["batch_stats"])
  np.testing.assert_allclose(y.mean((0, 1)), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.std((0, 1)), 1.0, rtol=1e-3)
  # PyTorch's running update: momentum 0.1 towards the mean and the unbiased variance.
  np.testing.assert_allclose(upd["batch_stats"]["var"],
                             0.9 + 0.1 * np.var(np.asarray(x).reshape(-1, 5), 0, ddof=1),
                             rtol=1e-5)
  g = jax.grad(lambda p: jnp.sum(bn.apply({**v, "params": p}, x, use_running_average=False,
                                          mutable=["batch_stats"])[0] ** 3))(v["params"])
  assert np.all(np.isfinite(jax.tree.leaves(g)[0]))
