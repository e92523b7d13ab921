"""python -m jaxaffect.tools.profile_step: a real trace of the toy's step, mapped to HLO ops."""
import json
import os

import pytest

from jaxaffect.tools import profile_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "tests", "configs", "toy.py")


def test_profile_of_the_toy_step_names_its_matmuls(capsys, tmp_path):
  rc = profile_step.main(["--config", TOY, "--top", "5", "--trace_dir", str(tmp_path),
                          "--json", str(tmp_path / "rows.json")])
  out = capsys.readouterr().out
  assert rc == 0, out
  assert "by op kind:" in out and "by source op" in out
  kinds = out.split("by op kind:")[1].split("by source op")[0]
  assert " dot" in kinds  # the MLP's Dense layers, found through the HLO of the step
  assert any(f.endswith(".xplane.pb") for _, _, fs in os.walk(tmp_path) for f in fs)
  rows = json.load(open(tmp_path / "rows.json"))
  assert any(k.startswith("dot") for k in rows["by_kind"]) and rows["op_time_s"] > 0
  rc = profile_step.main(["--config", TOY, "--eval", "--trace_dir", str(tmp_path / "e")])
  assert rc == 0


def test_bad_config_is_one_line(capsys):
  rc = profile_step.main(["--config", TOY, "--config.no_such_key=1"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 1 and len(err) == 1 and "no_such_key" in err[0]


def test_eigen_convolutions_are_counted_apart_from_ynnpack_ones():
  """The profile warns that XLA:CPU's own convolutions are not timed by the trace; YNNPACK's
  are (they are fusions with events of their own)."""
  import jax
  import numpy as np

  from jaxaffect import xla_options
  x, k = np.ones((8, 28, 28, 64), np.float32), np.ones((3, 3, 64, 64), np.float32)
  f = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
      x, k, (1, 1), [(1, 1)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ynn = jax.jit(f, compiler_options={"xla_cpu_experimental_ynn_fusion_type":
                                     "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"})
  assert profile_step._eigen_convolutions(ynn.lower(x, k).compile().as_text()) == 0
  eigen = jax.jit(f, compiler_options=xla_options.for_step("cpu"))
  assert profile_step._eigen_convolutions(eigen.lower(x, k).compile().as_text()) == 1


@pytest.mark.parametrize("case", ["2d_stride_pad_dilate", "1d", "3d", "grouped"])
def test_eigen_convolutions_are_rebuilt_from_the_hlo(case):
  """conv_timing rebuilds each of XLA:CPU's own convolutions from its HLO instruction: the
  rebuilt forward convolution gives the step's values on the same inputs, and every
  convolution of its gradient program is rebuilt with the HLO's output shape (time_alone
  checks the shape)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax import lax

  from jaxaffect import xla_options
  from jaxaffect.tools import conv_timing
  rng = np.random.default_rng(0)
  x_shape, k_shape, kw = {
      "2d_stride_pad_dilate": ((2, 12, 10, 6), (3, 3, 6, 8),
                               dict(window_strides=(2, 1), padding=[(1, 1), (0, 2)],
                                    rhs_dilation=(1, 2),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))),
      "1d": ((2, 30, 16), (3, 16, 24), dict(window_strides=(1,), padding=[(1, 1)],
                                            dimension_numbers=("NHC", "HIO", "NHC"))),
      "3d": ((1, 6, 10, 10, 3), (3, 7, 7, 3, 8),
             dict(window_strides=(1, 2, 2), padding=[(1, 1), (3, 3), (3, 3)],
                  dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))),
      "grouped": ((2, 9, 9, 8), (3, 3, 4, 8), dict(window_strides=(1, 1), padding="SAME",
                                                  feature_group_count=2,
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))),
  }[case]
  x = rng.standard_normal(x_shape).astype(np.float32)
  k = rng.standard_normal(k_shape).astype(np.float32)
  conv = lambda x, k: lax.conv_general_dilated(x, k, **kw)  # noqa: E731
  options = xla_options.for_step("cpu")
  fwd = jax.jit(conv, compiler_options=options)
  (rebuilt,) = conv_timing.parse_convolutions(fwd.lower(x, k).compile().as_text()).values()
  np.testing.assert_allclose(jax.jit(rebuilt.apply)(x, k), fwd(x, k), rtol=1e-6, atol=1e-6)
  grad = jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k) ** 2), argnums=(0, 1)),
                 compiler_options=options)
  convs = conv_timing.parse_convolutions(grad.lower(x, k).compile().as_text())
  assert len(convs) >= 2  # the forward and at least one gradient are convolutions
  for c in convs.values():
    assert conv_timing.time_alone(c, compiler_options=options, repeats=1) > 0


def test_profile_times_eigen_convolutions_alone(capsys, tmp_path):
  """On CPU the profile's convolution rows come from timing each Eigen convolution alone
  (their trace events time only the launch): TSL-Net's smoke eval step has five."""
  rc = profile_step.main(["--config", os.path.join(ROOT, "configs", "tsl_tsl300.py:smoke"),
                          "--eval", "--top", "5", "--json", str(tmp_path / "rows.json")])
  out = capsys.readouterr().out
  assert rc == 0, out
  rows = json.load(open(tmp_path / "rows.json"))
  assert rows["eigen_convolutions"] > 0, out
  assert rows["convolutions_timed_alone"] == rows["eigen_convolutions"], out
  assert not rows["convolutions_not_timed"], out
  assert rows["by_kind"][profile_step.CONV_ALONE] > 0
  assert "timed alone" in out.split("by op kind:")[0]
