"""Mean and standard deviation of final metrics over split workdirs (VE-8: 10 official splits).

  python -m jaxaffect.tools.aggregate_splits runs/ve8_split{1..10}      # or a quoted glob:
  python -m jaxaffect.tools.aggregate_splits 'runs/ve8_split*' [--expect 10] [--json-out F]

Prints a Markdown table and the same numbers as JSON; std is the sample standard deviation
(n-1). Inputs, output, the checks and the exit status: README.md, section "Sweeps, ablations,
splits, figures".
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys
from typing import Any, Sequence

import numpy as np

from jaxaffect.tools import json_files

STD_KIND = "sample (n-1)"
_METRIC_ORDER = ("eval/top1", "eval/mean_class_accuracy", "eval/polarity_accuracy")
# Config keys that may differ between the runs of one aggregate.
_EXPECTED_DIFFS = ("dataset.split", "seed", "init_from", "dataset.manual_dir",
                   "dataset.data_dir")


class AggregateError(ValueError):
  """Missing or inconsistent runs; the message lists every problem, one per line."""


def expand(paths: Sequence[str]) -> tuple[list[str], list[str]]:
  """(folders, errors) from arguments that are folders or glob patterns (sorted per pattern)."""
  out: list[str] = []
  errors = []
  for p in paths:
    if glob.has_magic(p):
      hits = sorted((h for h in glob.glob(os.path.expanduser(p)) if os.path.isdir(h)),
                    key=_natural)
      if not hits:
        errors.append(f"{p}: the pattern matches no folder")
      out.extend(hits)
    else:
      out.append(os.path.expanduser(p))
  seen, unique = set(), []
  for p in out:
    key = os.path.realpath(p)
    if key not in seen:
      seen.add(key)
      unique.append(p)
  return unique, errors


def _natural(path: str) -> list:
  """Sort key that puts split2 before split10."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(d, dict):
    return {prefix: d}
  out = {}
  for k, v in d.items():
    out.update(_flatten(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}"))
  return out


def _is_scalar(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def read_json_object(path: str) -> dict[str, Any]:
  """A JSON object from `path`; AggregateError naming the file when it is unusable."""
  return json_files.read_object(path, AggregateError)


def _int(value: Any, path: str, key: str) -> int | None:
  if value is None:
    return None
  try:
    return int(value)
  except (TypeError, ValueError, OverflowError):
    raise AggregateError(f"{path}: {key} = {str(value)[:40]!r} is not an integer") from None


def load_runs(dirs: Sequence[str], expect: int = 10, errors: Sequence[str] = ()
              ) -> list[dict[str, Any]]:
  """[{workdir, split, step, metrics, config}] checked for completeness; raises AggregateError
  listing every problem (plus `errors` found earlier, e.g. by `expand`)."""
  runs, errors = [], list(errors)
  for d in dirs:
    res_path = os.path.join(d, "results.json")
    if not os.path.isdir(d):
      errors.append(f"{d}: no such workdir")
      continue
    if not os.path.exists(res_path):
      errors.append(f"{d}: no results.json (the run has not finished)")
      continue
    try:
      results = read_json_object(res_path)
      cfg_path = os.path.join(d, "config.json")
      config = read_json_object(cfg_path) if os.path.exists(cfg_path) else {}
      metrics = {k: float(v) for k, v in results.items() if k != "step" and _is_scalar(v)}
      if not metrics:
        raise AggregateError(f"{res_path}: no scalar metrics")
      step, total = results.get("step"), config.get("total_steps")
      step_n, total_n = _int(step, res_path, "step"), _int(total, cfg_path, "total_steps")
      if step_n is not None and total_n is not None and step_n < total_n:
        raise AggregateError(f"{d}: results.json is from step {step} of {total} "
                             "(incomplete run)")
      dataset = config.get("dataset") or {}
      split = _int(dataset.get("split") if isinstance(dataset, dict) else None, cfg_path,
                   "dataset.split")
    except AggregateError as e:
      errors.append(str(e))
      continue
    runs.append(dict(workdir=d, split=split, step=step, metrics=metrics, config=config))
  if not runs and not errors:
    errors.append("no workdirs given")
  if runs and all(r["split"] is not None for r in runs):
    runs.sort(key=lambda r: r["split"])
  if expect > 0:
    errors += _check_splits(runs, expect)
  errors += _check_metrics(runs)
  if errors:
    raise AggregateError("\n".join(errors))
  return runs


def _check_splits(runs, expect: int) -> list[str]:
  errors = []
  by_split: dict[int, list[str]] = {}
  for r in runs:
    if r["split"] is not None:
      by_split.setdefault(r["split"], []).append(r["workdir"])
  for s, ds in sorted(by_split.items()):
    if len(ds) > 1:
      errors.append(f"split {s} appears {len(ds)} times: {', '.join(ds)}")
  if runs and all(r["split"] is not None for r in runs):
    missing = sorted(set(range(1, expect + 1)) - set(by_split))
    extra = sorted(set(by_split) - set(range(1, expect + 1)))
    if missing:
      errors.append(f"missing split(s) {', '.join(map(str, missing))} of 1..{expect}")
    if extra:
      errors.append(f"split(s) {', '.join(map(str, extra))} outside 1..{expect}")
  elif len(runs) != expect:
    errors.append(f"{len(runs)} complete run(s), expected {expect} (--expect)")
  return errors


def _check_metrics(runs) -> list[str]:
  """Headline metrics must be in every run; per-class ones may be absent (class not in a test
  list) and are averaged over the runs that have them."""
  errors = []
  keys = set().union(*(r["metrics"] for r in runs)) if runs else set()
  for k in sorted(keys):
    if "/accuracy/" in k:
      continue
    lacking = [r["workdir"] for r in runs if k not in r["metrics"]]
    if lacking:
      errors.append(f"metric {k} missing from {', '.join(lacking)}")
  return errors


def config_differences(runs) -> list[str]:
  flat = [_flatten(r["config"]) for r in runs if r["config"]]
  if len(flat) < 2:
    return []
  keys = set().union(*flat)
  return sorted(k for k in keys if k not in _EXPECTED_DIFFS
                and len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1)


def _ordered(keys) -> list[str]:
  first = [k for k in _METRIC_ORDER if k in keys]
  return first + sorted(set(keys) - set(first))


def aggregate(runs) -> dict[str, Any]:
  """{"std": STD_KIND, "n_runs", "splits", "metrics": {k: {mean, std, min, max, n}}, "runs"}."""
  keys = _ordered(set().union(*(r["metrics"] for r in runs)))
  stats = {}
  for k in keys:
    x = np.asarray([r["metrics"][k] for r in runs if k in r["metrics"]], np.float64)
    std = float(np.std(x, ddof=1)) if x.size > 1 else None
    stats[k] = dict(mean=float(np.mean(x)), std=std, min=float(np.min(x)), max=float(np.max(x)),
                    n=int(x.size))
  return dict(std=STD_KIND, n_runs=len(runs), splits=[r["split"] for r in runs],
              metrics=stats,
              runs=[dict(workdir=r["workdir"], split=r["split"], step=r["step"],
                         metrics=r["metrics"]) for r in runs])


def _f(x: float | None) -> str:
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def markdown(agg: dict[str, Any]) -> str:
  splits = [s for s in agg["splits"] if s is not None]
  what = f"splits {', '.join(map(str, sorted(splits)))}" if splits else "runs"
  lines = [f"{agg['n_runs']} runs ({what}); std = {agg['std']} standard deviation", "",
           "| metric | mean | std | min | max | n |", "|---|---:|---:|---:|---:|---:|"]
  for k, s in agg["metrics"].items():
    lines.append(f"| {k} | {_f(s['mean'])} | {_f(s['std'])} | {_f(s['min'])} | "
                 f"{_f(s['max'])} | {s['n']} |")
  head = [k for k in agg["metrics"] if "/accuracy/" not in k]
  lines += ["", "| split | workdir | " + " | ".join(head) + " |",
            "|---:|---|" + "---:|" * len(head)]
  for r in agg["runs"]:
    vals = " | ".join(_f(r["metrics"].get(k)) for k in head)
    lines.append(f"| {'' if r['split'] is None else r['split']} | {r['workdir']} | {vals} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxaffect.tools.aggregate_splits",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("workdirs", nargs="+", help="workdirs or glob patterns")
  p.add_argument("--expect", type=int, default=10,
                 help="number of splits (1..N must all be there); 0 = no check (default 10)")
  p.add_argument("--format", choices=("both", "markdown", "json"), default="both")
  p.add_argument("--json-out", help="also write the JSON to this file")
  args = p.parse_args(argv)
  try:
    dirs, errors = expand(args.workdirs)
    runs = load_runs(dirs, expect=args.expect, errors=errors)
  except AggregateError as e:
    for line in str(e).splitlines():
      print(f"error: {line}", file=sys.stderr)
    return 1
  diffs = config_differences(runs)
  if diffs:
    print(f"warning: the runs' configs differ in {', '.join(diffs[:20])}"
          f"{' ...' if len(diffs) > 20 else ''}", file=sys.stderr)
  agg = aggregate(runs)
  if diffs:
    agg["config_differences"] = diffs
  text = json.dumps(agg, indent=2)
  if args.format in ("both", "markdown"):
    print(markdown(agg))
  if args.format == "both":
    print()
  if args.format in ("both", "json"):
    print(text)
  if args.json_out:
    with open(args.json_out, "w") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
