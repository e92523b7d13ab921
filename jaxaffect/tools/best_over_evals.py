"""The "best test accuracy over epochs" that BPM-GCN (and STEP) report, under its own name.

  python -m jaxaffect.tools.best_over_evals WORKDIR [WORKDIR ...]   # or quoted globs
  python -m jaxaffect.tools.best_over_evals 'sweeps/bpmgcn/*' [--metric eval/top1]
      [--write] [--json-out FILE]

The maximum of --metric over the evaluations in WORKDIR/metrics.jsonl: selected on the test
split, so optimistic. The held-out number stays the final checkpoint's (results.json), which
this tool never changes. Output columns, files and exit status: README.md, section "BPM-GCN"
(Protocol).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from typing import Any, Sequence

from jaxaffect import metric_writer
from jaxaffect.tools import json_files

NAME = "best_test_accuracy_over_evals"
OUT_FILE = "best_over_evals.json"


class HistoryError(ValueError):
  pass


def eval_history(workdir: str, metric: str = "eval/top1") -> list[tuple[int, float]]:
  """[(step, value)] of every metrics.jsonl record that holds `metric`, in file order."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise HistoryError(f"{workdir}: no metrics.jsonl")
  out = []
  try:
    for rec in metric_writer.read_records(path):
      v = rec.get(metric) if isinstance(rec, dict) else None
      if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        step = rec.get("step", 0)
        if not isinstance(step, (int, float)) or isinstance(step, bool) or not math.isfinite(step):
          raise HistoryError(f"{path}: a record of {metric!r} has step {str(step)[:40]!r}, "
                             "expected a number")
        out.append((int(step), float(v)))
  except UnicodeDecodeError as e:
    raise HistoryError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x}: "
                       f"{e.reason})") from None
  except OSError as e:
    raise HistoryError(f"{path}: unreadable: {e.strerror or e}") from None
  except (ValueError, RecursionError) as e:  # a line json.loads rejects otherwise
    raise HistoryError(f"{path}: cannot be parsed: {type(e).__name__}: {e}") from None
  if not out:
    raise HistoryError(f"{workdir}: metrics.jsonl holds no evaluation of {metric!r}")
  return out


def best_over_evals(workdir: str, metric: str = "eval/top1") -> dict[str, Any]:
  hist = eval_history(workdir, metric)
  best_step, best = max(hist, key=lambda sv: (sv[1], -sv[0]))  # first step reaching the max
  rec: dict[str, Any] = {
      "workdir": workdir, "metric": metric, NAME: best, "best_step": best_step,
      "num_evals": len({s for s, _ in hist}), "eval_steps": sorted({s for s, _ in hist}),
      "heldout_top1_final": None, "final_step": None,
  }
  res_path = os.path.join(workdir, "results.json")
  if os.path.exists(res_path):
    res = _read_results(res_path)
    rec["heldout_top1_final"] = res.get(metric)
    rec["final_step"] = res.get("step")
  return rec


def _read_results(path: str) -> dict[str, Any]:
  """results.json as a dict; HistoryError naming it when unreadable, not UTF-8 or not JSON."""
  return json_files.read_object(path, HistoryError)


def _expand(paths: Sequence[str]) -> list[str]:
  out = []
  for p in paths:
    p = os.path.expanduser(p)
    if glob.has_magic(p):
      out.extend(sorted(h for h in glob.glob(p)
                        if os.path.isfile(os.path.join(h, "metrics.jsonl"))))
    else:
      out.append(p)
  return out


def _fmt(x: Any) -> str:
  return f"{x:.4f}" if isinstance(x, float) else ("" if x is None else str(x))


def markdown(records: Sequence[dict]) -> str:
  cols = ("workdir", "heldout_top1_final", "final_step", NAME, "best_step", "num_evals")
  lines = ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
  lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in records]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxaffect.tools.best_over_evals",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("workdirs", nargs="+", help="workdirs or quoted glob patterns")
  p.add_argument("--metric", default="eval/top1")
  p.add_argument("--write", action="store_true", help=f"write WORKDIR/{OUT_FILE}")
  p.add_argument("--json-out", default="")
  args = p.parse_args(argv)
  records, errors = [], []
  dirs = _expand(args.workdirs)
  if not dirs:
    errors.append(f"no workdir with a metrics.jsonl matches {args.workdirs}")
  for d in dirs:
    try:
      records.append(best_over_evals(d, args.metric))
    except HistoryError as e:
      errors.append(str(e))
  for e in errors:
    print(f"error: {e}", file=sys.stderr)
  if errors:
    return 1
  if args.write:
    for r in records:
      with open(os.path.join(r["workdir"], OUT_FILE), "w") as f:
        json.dump(r, f, indent=2, sort_keys=True)
  if args.json_out:
    with open(args.json_out, "w") as f:
      json.dump(records, f, indent=2, sort_keys=True)
  print(markdown(records))
  print(f"\n{NAME}: the maximum over the evaluations during training, selected on the test "
        "split (optimistic; the original's protocol). The held-out number is "
        "heldout_top1_final.")
  print(json.dumps(records, sort_keys=True))
  return 0


if __name__ == "__main__":
  sys.exit(main())
