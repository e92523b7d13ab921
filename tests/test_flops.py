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
  # A jit with compiler options (the step programs') cannot be nested in a trace: counted too.
  opts = {"xla_backend_optimization_level": 1}
  assert flops.count_flops(jax.jit(f, compiler_options=opts), w) == 5 * 2 * 6 * 6
  # Backward of a matmul chain: each forward matmul has two transposed matmuls (one here is
  # needed only for the carry), so the count is more than the forward alone.
  assert flops.count_flops(jax.grad(f), w) > 2 * flops.count_flops(f, w)
  assert np.isfinite(flops.count_flops(jax.grad(f), w))


def test_fused_attention_counts_as_its_matmuls():
  # cuDNN's kernel cannot be traced without a GPU: a stand-in primitive under the same name and
  # operands (q [B, T, N, D], k [B, S, N, D], BTNH layout) is counted by the same rule, which
  # equals the XLA path's two matmuls forward and four backward.
  from jax.extend import core as jex_core
  b, t, s, n, d = 2, 6, 10, 4, 8
  prims = {}
  for name, out in (("dot_product_attention_fwd_wrapper", "q"),
                    ("dot_product_attention_bwd_wrapper", "qkv")):
    p = jex_core.Primitive(name)
    p.multiple_results = True
    p.def_abstract_eval(lambda q, k, v, *, out=out, **_: [
        jax.core.ShapedArray(a.shape, a.dtype) for a in ((q, k, v) if out == "qkv" else (q,))])
    prims[name] = p
  q = jax.ShapeDtypeStruct((b, t, n, d), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((b, s, n, d), jnp.bfloat16)
  fwd = lambda q, k, v, **kw: prims["dot_product_attention_fwd_wrapper"].bind(
      q, k, v, layout=0, **kw)
  bwd = lambda q, k, v: prims["dot_product_attention_bwd_wrapper"].bind(q, k, v, layout=0)
  xla = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")
  assert flops.count_flops(fwd, q, kv, kv) == flops.count_flops(xla, q, kv, kv) == \
      4 * b * t * n * d * s
  xla_bwd = lambda q, k, v: jax.vjp(xla, q, k, v)[1](jnp.ones((b, t, n, d), jnp.bfloat16))
  assert flops.count_flops(bwd, q, kv, kv) == 2 * flops.count_flops(fwd, q, kv, kv)
  assert flops.count_flops(xla_bwd, q, kv, kv) - flops.count_flops(xla, q, kv, kv) == \
      flops.count_flops(bwd, q, kv, kv)
  assert flops.count_flops(lambda q, k, v: fwd(q, k, v, mask_type="MaskType.CAUSAL"),
                           q, kv, kv) == 2 * b * t * n * d * s
