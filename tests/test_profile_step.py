"""python -m jaxaffect.tools.profile_step: a real trace of the toy's step, mapped to HLO ops."""
import json
import os

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
