"""python -m jaxaffect.tools.versus: both sides run, alternating (in a process pair and in one
process), and the report ends with the documented line (no timing assertions). The side-by-side
runs use the toy method: compiling a paper model's train step takes 40 s or more on 2 cores.
Each paper's PyTorch step (its loss, backward and optimizer) runs here once on tiny shapes,
without a JAX compile."""
import json
import os
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxaffect import config_lib  # noqa: E402
from jaxaffect import method as methods  # noqa: E402
from jaxaffect.tools import versus  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAST_LINE = re.compile(r"^ours_s=(\S+) torch_s=(\S+) ratio=(\S+)$")


@pytest.mark.parametrize("mode", ["process_pair", "in_process"])
def test_versus_runs_both_sides_and_ends_with_the_ratio_line(capsys, mode):
  rc = versus.main(["--config", os.path.join(ROOT, "tests", "configs", "toy.py"),
                    "--warmup", "1", "--steps", "2", "--eval_steps", "1",
                    "--config.model.hidden=8", "--config.benchmark_peak_flops=1e12"]
                   + (["--in_process"] if mode == "in_process" else []))
  out = capsys.readouterr().out.strip().splitlines()
  assert rc == 0
  m = LAST_LINE.match(out[-1])
  assert m, out[-1]
  ours, theirs, ratio = map(float, m.groups())
  assert ours > 0 and theirs > 0 and ratio == pytest.approx(ours / theirs, rel=1e-3)
  res = json.loads(out[-2])
  for side in ("ours", "torch"):
    r = res[side]
    assert r["train"]["n"] == 2 and r["eval"]["n"] == 1, side
    assert r["train"]["median_s"] == pytest.approx(ours if side == "ours" else theirs, rel=1e-5)
    assert r["train_compile_s"] == pytest.approx(r["first_train_s"] - r["train"]["median_s"])
    assert r["host_rss_step_peak_bytes"] > 0
    for kind in ("train", "eval"):  # MFU: our step's FLOPs / this side's median / the peaks
      flops = res["ours_info"]["flops_per_step"][kind]
      assert flops > 0
      peak = 1e12 * res["ours_info"]["num_devices"]
      assert r[f"{kind}_mfu"] == pytest.approx(flops / r[kind]["median_s"] / peak, rel=1e-9)
  assert res["torch_info"]["threads"] == res["cpus"] == len(os.sched_getaffinity(0))
  assert res["in_process"] == (mode == "in_process")
  assert any("torch.set_num_threads" in line for line in out)


def test_versus_names_a_setting_the_reference_lacks(capsys):
  rc = versus.main(["--config", os.path.join(ROOT, "configs", "vaanet_ve8.py:smoke"),
                    "--in_process"])  # the reference is built first: it fails before a compile
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 1 and len(err) == 1
  assert err[0] == ("error: versus: model.visual_width=8 has no PyTorch reference "
                    "(it implements visual_width=64)")


# Tiny shapes of each paper's reference (one optimizer update per train call).
TINY = {
    "bpmgcn": ("bpmgcn_emogait.py:smoke", ["dataset.num_frames=8", "batch_size=2"]),
    "tsl": ("tsl_tsl300.py:smoke", ["dataset.example_length=24", "batch_size=1",
                                    "optimizer.multi_steps=1"]),
    "vaanet": ("vaanet_ve8.py", ["model.visual_depth=10", "dataset.num_segments=1",
                                 "dataset.audio_segments=1", "dataset.snippet_len=4",
                                 "dataset.crop_size=32", "batch_size=2"]),
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bfloat16: under torch.autocast
@pytest.mark.parametrize("name", sorted(TINY))
def test_reference_step_updates_the_trainable_parameters(name, dtype):
  spec, overrides = TINY[name]
  config = config_lib.load(os.path.join(ROOT, "configs", spec),
                           [f"--config.{o}" for o in overrides + [f"model.dtype={dtype}"]])
  method = methods.get_method(config)
  ref_mod = versus.reference_module(config.method)
  batch = ref_mod.versus_batch(config, method.example_batch(int(config.batch_size)),
                               np.random.default_rng(0))
  ctx = versus.TorchContext(torch, config, torch.device("cpu"))
  torch.manual_seed(0)
  ref = ref_mod.versus_reference(config, method, batch, ctx)
  params = dict(ref["module"].named_parameters())
  before = {k: p.detach().clone() for k, p in params.items()}
  loss = ref["train"]()
  ref["eval"]()
  assert torch.isfinite(loss)
  moved = {k for k, p in params.items() if not torch.equal(p.detach(), before[k])}
  trainable = {k for k, p in params.items() if p.requires_grad}
  assert moved and moved <= trainable
  if name == "vaanet":  # the frozen backbone keeps its weights
    assert not any(k.startswith("resnet.") for k in moved) and len(trainable) < len(params)
  assert ref["recipe"]


def test_versus_table_script_runs_each_row_in_each_dtype(tmp_path):
  """launch/versus_table.sh: one log per row and dtype, each row's last line echoed, a failing
  row fails the script without stopping the others (a stand-in PYTHON records the calls)."""
  import subprocess
  fake = tmp_path / "python"
  fake.write_text("#!/bin/sh\n"
                  "case \"$*\" in *bpmgcn*bfloat16*) echo boom; exit 3;; esac\n"
                  "echo \"args: $*\"\necho ours_s=1 torch_s=2 ratio=0.5\n")
  fake.chmod(0o755)
  r = subprocess.run(["launch/versus_table.sh", str(tmp_path / "out"), "--steps", "3"],
                     cwd=ROOT, capture_output=True, text=True, timeout=60,
                     env=dict(os.environ, PYTHON=str(fake), ROWS="bpmgcn_b32 tsl_600"))
  assert r.returncode == 1, r.stderr
  assert r.stdout.splitlines() == [
      "bpmgcn_b32 float32: ours_s=1 torch_s=2 ratio=0.5",
      "tsl_600 float32: ours_s=1 torch_s=2 ratio=0.5",
      "bpmgcn_b32 bfloat16: boom",
      "tsl_600 bfloat16: ours_s=1 torch_s=2 ratio=0.5"]
  args = (tmp_path / "out" / "tsl_600_bfloat16.log").read_text().splitlines()[0]
  assert args == ("args: -m jaxaffect.tools.versus --config configs/tsl_tsl300.py "
                  "--config.dataset.example_length=600 --config.model.dtype=bfloat16 --steps 3")
