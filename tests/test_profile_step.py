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
