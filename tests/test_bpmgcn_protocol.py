"""BPM-GCN evaluation protocol: held-out accuracy, per-class accuracy and confusion from the
method, and the original's "best test accuracy over epochs" only under its own name
(jaxaffect.tools.best_over_evals), never in place of the held-out number."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxaffect import config_lib, evaluators
from jaxaffect import method as methods
from jaxaffect.tools import best_over_evals as boe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_eval_metrics_accuracy_per_class_and_confusion():
  c = config_lib.sibling_config(os.path.join(ROOT, "configs", "x.py"), "bpmgcn_emogait.py",
                                "smoke")
  method = methods.get_method(c)
  labels = np.array([0, 0, 0, 1, 1, 2, 3, 3])
  pred = np.array([0, 0, 1, 1, 1, 3, 3, 0])
  logits = np.eye(4)[pred] * 5.0
  (evaluator,) = evaluators.from_config(c)  # the config's evals: classification, named "eval"
  assert evaluator.name == "eval"
  m = evaluator({"logits": logits}, {"label": labels}, method=method)
  assert m["top1"] == pytest.approx(5 / 8)
  assert m["confusion"] == [[2, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1], [1, 0, 0, 1]]
  assert m["accuracy/Happy"] == pytest.approx(2 / 3)
  assert m["accuracy/Sad"] == 1.0 and m["accuracy/Angry"] == 0.0
  assert m["accuracy/Neutral"] == 0.5
  assert m["mean_class_accuracy"] == pytest.approx((2 / 3 + 1 + 0 + 0.5) / 4)
  assert m["num_examples"] == 8


def _workdir(tmp_path, evals, final_step=300, name="run"):
  wd = tmp_path / name
  wd.mkdir()
  lines = [{"step": 10, "train/loss": 1.0}]
  for step, acc in evals:
    lines.append({"step": step, "eval/top1": acc, "eval/confusion": [[1]]})
  (wd / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines)
                                    + '{"step": 3')  # a line cut by a kill
  final = dict(evals)[final_step]
  results = {"eval/top1": final, "step": final_step}
  (wd / "results.json").write_text(json.dumps(results))
  return wd, results


def test_best_over_evals_is_the_max_and_keeps_the_held_out_number(tmp_path):
  wd, results = _workdir(tmp_path, [(100, 0.8), (200, 0.9125), (250, 0.9125), (300, 0.875)])
  r = boe.best_over_evals(str(wd))
  assert r[boe.NAME] == 0.9125 and r["best_step"] == 200  # first step reaching the max
  assert r["heldout_top1_final"] == 0.875 and r["final_step"] == 300
  assert r["num_evals"] == 4 and r["eval_steps"] == [100, 200, 250, 300]
  assert boe.NAME == "best_test_accuracy_over_evals"
  # The CLI writes its own file and leaves results.json exactly as it was.
  before = (wd / "results.json").read_text()
  p = subprocess.run([sys.executable, "-m", "jaxaffect.tools.best_over_evals", str(wd),
                      "--write"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr
  assert (wd / "results.json").read_text() == before
  assert json.loads(before) == results
  written = json.loads((wd / boe.OUT_FILE).read_text())
  assert written[boe.NAME] == 0.9125 and written["heldout_top1_final"] == 0.875
  assert "| 0.8750 | 300 | 0.9125 | 200 | 4 |" in p.stdout


def test_best_over_evals_errors_and_globs(tmp_path):
  a, _ = _workdir(tmp_path, [(100, 0.5), (200, 0.75)], final_step=200, name="a")
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\n')
  with pytest.raises(boe.HistoryError, match="no evaluation"):
    boe.best_over_evals(str(tmp_path / "empty"))
  with pytest.raises(boe.HistoryError, match="no metrics.jsonl"):
    boe.best_over_evals(str(tmp_path / "missing"))
  assert boe.main([str(tmp_path / "missing")]) == 1
  assert boe.main([str(tmp_path / "a*")]) == 0
  out = tmp_path / "all.json"
  assert boe.main([str(tmp_path / "a"), "--json-out", str(out)]) == 0
  assert json.loads(out.read_text())[0][boe.NAME] == 0.75
