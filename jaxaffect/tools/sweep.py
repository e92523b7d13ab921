"""Sweeps and ablations: run variants of one config, each in its own workdir, then tabulate.

Documented in the README, section "Sweeps, ablations, splits, figures": commands, flags,
presets (a config's get_sweeps()), variant files, resuming, the tables and the exit status.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import datetime
import hashlib
import io
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

from jaxaffect import config_lib
from jaxaffect.errors import UserError

RESULTS_FILE = "results.json"
SPEC_FILE = "sweep_variant.json"
LOG_FILE = "sweep.log"
# Metrics shown first (when present); the rest follow in sorted order.
_METRIC_ORDER = ("eval/average_mAP", "eval/mAP@0.10", "eval/mAP@0.30",
                 "eval/top1", "eval/mean_class_accuracy", "eval/polarity_accuracy",
                 "eval/num_examples")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class UsageError(ValueError):
  pass


@dataclasses.dataclass
class Variant:
  name: str
  overrides: dict[str, str]
  status: str = "pending"   # pending | ok | skipped | failed | incomplete
  message: str = ""
  seconds: float = 0.0
  results: dict[str, Any] | None = None

  def overrides_str(self) -> str:
    return " ".join(f"{k}={v}" for k, v in self.overrides.items())


# ------------------------------------------------------------------------------ variant specs


def parse_assignments(text: str, where: str) -> dict[str, str]:
  """"a.b=1 c='x y'" -> {"a.b": "1", "c": "x y"} (shell quoting; a leading --config. is ok)."""
  out: dict[str, str] = {}
  for item in shlex.split(text):
    key, eq, value = item.partition("=")
    key = key.removeprefix("--config.")
    if not eq or not _KEY_RE.match(key):
      raise UsageError(f"{where}: {item!r} is not an assignment key=value "
                       "(e.g. model.use_audio=False)")
    out[key] = value
  return out


def parse_grid(text: str) -> tuple[str, list[str]]:
  key, eq, values = text.partition("=")
  key = key.strip().removeprefix("--config.")
  vals = [v.strip() for v in values.split(",")] if eq else []
  if not _KEY_RE.match(key) or not vals or any(v == "" for v in vals):
    raise UsageError(f"--grid {text!r}: expected key=v1,v2,... (e.g. seed=0,1,2)")
  return key, vals


def _value_str(v: Any) -> str:
  if isinstance(v, str):
    return v
  if v is None or isinstance(v, (bool, int, float)):
    return repr(v)
  return json.dumps(v)


def read_variant_file(path: str) -> list[tuple[str | None, dict[str, str]]]:
  """Variants from a text file ("[name:] k=v ...") or a JSON file (list or {name: {k: v}})."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError as e:
    raise UsageError(f"--from-file: cannot read {path}: {e}") from e
  if path.endswith(".json"):
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise UsageError(f"--from-file: {path} is not valid JSON: {e}") from e
    items = list(data.items()) if isinstance(data, dict) else [(None, d) for d in data]
    out = []
    for name, d in items:
      if not isinstance(d, dict):
        raise UsageError(f"--from-file: {path}: each variant must be an object of key: value")
      for k in d:
        if not _KEY_RE.match(str(k)):
          raise UsageError(f"--from-file: {path}: bad key {k!r}")
      out.append((name, {str(k): _value_str(v) for k, v in d.items()}))
    return out
  out = []
  for i, line in enumerate(text.splitlines(), 1):
    line = line.strip()
    if line.startswith("#"):
      line = ""
    if not line:
      continue
    name = None
    m = re.match(r"^([A-Za-z0-9_.+-]+):(\s|$)", line)
    if m:
      name, line = m.group(1), line[m.end():]
    out.append((name, parse_assignments(line, f"{path}:{i}")))
  return out


def _slug(overrides: dict[str, str], short: bool) -> str:
  if not overrides:
    return "baseline"
  parts = []
  for k, v in overrides.items():
    k = k.rsplit(".", 1)[-1] if short else k
    parts.append(re.sub(r"[^A-Za-z0-9._=+-]", "_", f"{k}={v}"))
  name = "__".join(parts)
  if len(name) > 120:  # keep folder names sane; the hash keeps them unique
    name = name[:100] + "__" + hashlib.sha1(name.encode()).hexdigest()[:8]
  return name


def build_variants(named: Sequence[tuple[str | None, dict[str, str]]],
                   grid: Sequence[tuple[str, list[str]]], name_by: str) -> list[Variant]:
  """The override sets crossed with the grid's Cartesian product, named and de-duplicated."""
  base = list(named) or [(None, {})]
  combos = list(itertools.product(*[[(k, v) for v in vals] for k, vals in grid]))
  variants = []
  for name, ov in base:
    for combo in combos:
      overrides = dict(ov)
      overrides.update(combo)
      if name_by == "index":
        vname = f"v{len(variants):03d}"
      elif name_by == "auto" and name:
        vname = name + ("__" + _slug(dict(combo), short=False) if combo else "")
      else:
        vname = _slug(overrides, short=(name_by == "short"))
      variants.append(Variant(vname, overrides))
  seen: dict[str, int] = {}
  for v in variants:
    seen[v.name] = seen.get(v.name, 0) + 1
  dups = sorted(n for n, c in seen.items() if c > 1)
  if dups:
    raise UsageError(f"variant names are not unique: {dups} (two identical override sets, or "
                     "use --name-by overrides/index)")
  return variants


# ------------------------------------------------------------------------------ presets

Rows = list[tuple[str, dict[str, str]]]


def presets(spec: str) -> dict[str, Rows]:
  """The named override sets of the config file `path[:arg]`: its get_sweeps()."""
  path, _ = config_lib.split_spec(spec)
  try:
    module = config_lib.config_module(spec)
  except UserError as e:
    raise UsageError(str(e)) from None
  if not callable(getattr(module, "get_sweeps", None)):
    raise UsageError(f"{path} defines no get_sweeps(), so it has no presets (use --override, "
                     "--grid or --from-file)")
  sweeps = module.get_sweeps()
  try:
    # Non-string values are written as --from-file's JSON values are.
    return {str(name): [(str(n), {str(k): _value_str(v) for k, v in ov.items()})
                        for n, ov in rows]
            for name, rows in sweeps.items()}
  except (TypeError, ValueError, AttributeError):
    raise UsageError(f"{path}: get_sweeps() must return {{preset name: [(variant name, "
                     "{key: value}), ...]}") from None


def preset_rows(spec: str, name: str) -> Rows:
  """One preset of the config; an unknown name is a usage error listing the config's ones."""
  path, _ = config_lib.split_spec(spec)
  available = presets(spec)
  if name not in available:
    raise UsageError(f"--preset {name}: {path} has no such preset"
                     f"{config_lib.nearest(name, available)}; its presets: "
                     f"{', '.join(available) or 'none'}")
  return available[name]


def describe_presets(spec: str) -> str:
  lines = []
  for name, rows in presets(spec).items():
    lines.append(f"{name} ({len(rows)} variants):")
    width = max((len(n) for n, _ in rows), default=0)
    lines += [f"  {n:<{width}}  {' '.join(f'{k}={v}' for k, v in ov.items()) or '-'}"
              for n, ov in rows]
  return "\n".join(lines)


# ------------------------------------------------------------------------------ config checks


def load_config(spec: str):
  """get_config(arg) of `path[:arg]`, as `jaxaffect.main` reads it (unlocked: variants add
  their overrides later)."""
  try:
    return config_lib.load(spec, lock=False)
  except UserError as e:
    raise UsageError(str(e)) from None


def unknown_keys(config, keys) -> list[str]:
  bad = []
  for key in keys:
    node = config
    for part in key.split("."):
      try:
        node = node[part]
      except (KeyError, TypeError, AttributeError, IndexError):
        bad.append(key)
        break
  return bad


# ------------------------------------------------------------------------------ running


def variant_command(python: str, config: str, workdir: str, extra: Sequence[str],
                    overrides: dict[str, str]) -> list[str]:
  return [python, "-m", "jaxaffect.main", "--config", config, "--workdir", workdir, *extra,
          *[f"--config.{k}={v}" for k, v in overrides.items()]]


def read_results(workdir: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, RESULTS_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _last_error(log_path: str) -> str:
  try:
    with open(log_path, errors="replace") as f:
      lines = [l.strip() for l in f.read().replace("\r", "\n").splitlines() if l.strip()]
  except OSError:
    return ""
  for pattern in (r"^error:", r"^FATAL", r"^[\w.]*(Error|Exception)\b"):
    hits = [l for l in lines if re.match(pattern, l)]
    if hits:
      return hits[-1][:300]
  return (lines or [""])[-1][:300]


class Runner:
  """Runs variants as subprocesses; SIGTERM is forwarded (children save and exit)."""

  def __init__(self, args, extra: Sequence[str], env: dict[str, str]):
    self.args, self.extra, self.env = args, list(extra), env
    self.stop = threading.Event()
    self.children: set[subprocess.Popen] = set()
    self.lock = threading.Lock()
    self.counter = 0

  def _say(self, msg: str) -> None:
    with self.lock:
      print(msg, flush=True)

  def forward(self, signum) -> None:
    """First SIGINT/SIGTERM: children get SIGTERM (main saves a checkpoint and exits), no new
    variant starts. A second one kills them."""
    sig = signal.SIGKILL if self.stop.is_set() else signal.SIGTERM
    self.stop.set()
    print(f"\nsignal {signum}: stopping the running variant(s) "
          f"({'kill' if sig == signal.SIGKILL else 'save and exit'})", file=sys.stderr, flush=True)
    for p in list(self.children):
      try:
        p.send_signal(sig)
      except ProcessLookupError:
        pass

  def run(self, v: Variant, total: int) -> Variant:
    if self.stop.is_set():
      v.status, v.message = "incomplete", "not started (sweep interrupted)"
      return v
    workdir = os.path.join(self.args.root, v.name)
    os.makedirs(workdir, exist_ok=True)
    cmd = variant_command(self.args.python, self.args.config, workdir, self.extra, v.overrides)
    with self.lock:
      self.counter += 1
      i = self.counter
    self._say(f"[{i}/{total}] {v.name}: running ({v.overrides_str() or 'no overrides'}); "
              f"log {os.path.join(workdir, LOG_FILE)}")
    t0 = time.perf_counter()
    log_path = os.path.join(workdir, LOG_FILE)
    with open(log_path, "a") as log:
      log.write(f"\n=== {datetime.datetime.now().isoformat(timespec='seconds')} "
                f"{shlex.join(cmd)}\n")
      log.flush()
      p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                           start_new_session=True)  # our signal handler decides what it gets
      with self.lock:
        self.children.add(p)
      try:
        rc = p.wait()
      finally:
        with self.lock:
          self.children.discard(p)
    v.seconds = time.perf_counter() - t0
    v.results = read_results(workdir)
    if rc == 0 and v.results is not None:
      v.status = "ok"
      self._say(f"[{i}/{total}] {v.name}: ok in {v.seconds:.0f} s  {_headline(v.results)}")
    elif rc == 0:
      v.status = "incomplete"
      v.message = ("stopped by the signal" if self.stop.is_set() else
                   "exited before the end (preempted?)") + "; re-run the sweep to resume"
      self._say(f"[{i}/{total}] {v.name}: incomplete after {v.seconds:.0f} s")
    else:
      v.status = "failed"
      v.message = f"exit status {rc}: {_last_error(log_path)}"
      self._say(f"[{i}/{total}] {v.name}: FAILED after {v.seconds:.0f} s ({v.message})")
    return v


def _headline(results: dict) -> str:
  present = [k for k in _METRIC_ORDER if isinstance(results.get(k), (int, float))]
  return " ".join(f"{k}={results[k]:.4g}" for k in present[:2])


# ------------------------------------------------------------------------------ tables


def _scalar_keys(rows: Sequence[Variant], all_metrics: bool) -> list[str]:
  keys: set[str] = set()
  for v in rows:
    for k, x in (v.results or {}).items():
      if (k.startswith("eval/") and isinstance(x, (int, float)) and not isinstance(x, bool)
          and (all_metrics or "/accuracy/" not in k)):
        keys.add(k)
  first = [k for k in _METRIC_ORDER if k in keys]
  return first + sorted(keys - set(first))


def _fmt(x: Any) -> str:
  if x is None:
    return ""
  if isinstance(x, float):
    return f"{x:.4f}"
  return str(x)


def table_rows(variants: Sequence[Variant], all_metrics: bool):
  keys = _scalar_keys(variants, all_metrics)
  header = ["variant", "overrides", "status", "step", *keys]
  rows = []
  for v in variants:
    r = v.results or {}
    status = "ok" if v.status in ("ok", "skipped") else v.status
    rows.append([v.name, v.overrides_str(), status, r.get("step"), *[r.get(k) for k in keys]])
  return header, rows


def markdown_table(variants: Sequence[Variant]) -> str:
  header, rows = table_rows(variants, all_metrics=False)
  esc = lambda s: _fmt(s).replace("|", "\\|")
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|"]
  lines += ["| " + " | ".join(esc(c) or ("-" if i == 1 else "") for i, c in enumerate(r)) + " |"
            for r in rows]
  return "\n".join(lines)


def csv_table(variants: Sequence[Variant]) -> str:
  header, rows = table_rows(variants, all_metrics=True)
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(header)
  w.writerows([["" if c is None else c for c in r] for r in rows])
  return buf.getvalue()


def write_tables(root: str, variants: Sequence[Variant], title: str) -> str:
  md = markdown_table(variants)
  with open(os.path.join(root, "results.md"), "w") as f:
    f.write(f"{title}\n\n{md}\n")
  with open(os.path.join(root, "results.csv"), "w") as f:
    f.write(csv_table(variants))
  return md


def existing_variants(root: str) -> list[Variant]:
  """Every variant folder under root (for --table-only without a variant list)."""
  out = []
  names = sorted(os.listdir(root)) if os.path.isdir(root) else []
  # The order the sweep created them in (its spec file), then by name.
  spec_time = lambda n: os.path.getmtime(os.path.join(root, n, SPEC_FILE)) if os.path.exists(
      os.path.join(root, n, SPEC_FILE)) else float("inf")
  for name in sorted(names, key=lambda n: (spec_time(n), n)):
    wd = os.path.join(root, name)
    if name.startswith(".") or not os.path.isdir(wd):
      continue
    spec = _read_spec(wd) or {}
    v = Variant(name, dict(spec.get("overrides", {})))
    v.results = read_results(wd)
    v.status = "ok" if v.results is not None else "incomplete"
    out.append(v)
  return out


def _spec_key(spec: dict) -> tuple:
  """What must match for a workdir to be reused: config file (normalised path), arg, overrides,
  extra args."""
  path, _, arg = str(spec.get("config", "")).partition(":")
  return (os.path.realpath(path), arg, sorted(dict(spec.get("overrides", {})).items()),
          list(spec.get("extra_args", [])))


def _read_spec(workdir: str) -> dict | None:
  try:
    with open(os.path.join(workdir, SPEC_FILE)) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


# ------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m jaxaffect.tools.sweep", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      usage="%(prog)s --config PATH[:ARG] --root DIR (--override ... | --grid ... | --preset "
            "NAME | --from-file FILE | --baseline) [options] [-- extra jaxaffect.main args]")
  p.add_argument("--config", help="config file path[:arg], as for jaxaffect.main (required "
                 "except for --table-only without variants)")
  p.add_argument("--root", help="sweep folder; one workdir per variant (required)")
  p.add_argument("--override", action="append", default=[], metavar="'K=V [K=V ...]'",
                 help="one variant's overrides (repeat for more variants)")
  p.add_argument("--grid", action="append", default=[], metavar="K=V1,V2",
                 help="crossed with every variant (repeat: Cartesian product)")
  p.add_argument("--preset", action="append", default=[], metavar="NAME",
                 help="a named override set of the config's get_sweeps() (repeatable)")
  p.add_argument("--list-presets", action="store_true",
                 help="print the config's presets and their variants, run nothing")
  p.add_argument("--from-file", action="append", default=[], metavar="FILE",
                 help="variants from a text or .json file (repeatable)")
  p.add_argument("--baseline", action="store_true", help="add the unmodified config")
  p.add_argument("--name-by", choices=("auto", "overrides", "short", "index"), default="auto",
                 help="workdir names: auto (preset/file names, else overrides), overrides "
                      "(model.use_audio=False), short (use_audio=False), index (v000)")
  p.add_argument("--parallel", type=int, default=1, metavar="N",
                 help="variants run at once (default 1)")
  p.add_argument("--python", default=sys.executable, help="interpreter for the variants")
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  p.add_argument("--table-only", action="store_true",
                 help="run nothing; tabulate the variants (or every folder under --root)")
  p.add_argument("--no-compilation-cache", action="store_true",
                 help="no shared JAX compilation cache in ROOT/.jax_cache")
  return p


def _split_extra(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  argv = list(argv)
  if "--" in argv:
    i = argv.index("--")
    return argv[:i], argv[i + 1:]
  return argv, []


def main(argv: Sequence[str] | None = None) -> int:
  own, extra = _split_extra(sys.argv[1:] if argv is None else argv)
  parser = _parser()
  args = parser.parse_args(own)
  try:
    return _main(args, extra)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def _main(args, extra: list[str]) -> int:
  if args.list_presets:
    if not args.config:
      raise UsageError("--list-presets: --config is required")
    print(describe_presets(args.config))
    return 0
  if not args.root:
    raise UsageError("--root is required")
  args.root = os.path.abspath(os.path.expanduser(args.root))
  for a in extra:
    if a.split("=", 1)[0] in ("--config", "--workdir"):
      raise UsageError(f"extra argument {a!r}: --config/--workdir are set by the sweep")
  named: list[tuple[str | None, dict[str, str]]] = []
  if args.baseline:
    named.append(("baseline", {}))
  if args.preset and not args.config:
    raise UsageError("--preset: --config is required (presets are the config's get_sweeps())")
  for p in args.preset:
    named.extend(preset_rows(args.config, p))
  for path in args.from_file:
    named.extend(read_variant_file(path))
  named.extend((None, parse_assignments(o, "--override")) for o in args.override)
  grid = [parse_grid(g) for g in args.grid]

  if args.table_only and not (named or grid):
    variants = existing_variants(args.root)
    if not variants:
      raise UsageError(f"--table-only: no variant folders under {args.root}")
    print(write_tables(args.root, variants, f"Sweep {args.root}"))
    return 0 if all(v.results is not None for v in variants) else 1
  if not args.config:
    raise UsageError("--config is required")
  if not (named or grid):
    raise UsageError("no variants: give --override, --grid, --preset, --from-file or --baseline")
  if args.parallel < 1:
    raise UsageError("--parallel must be >= 1")
  variants = build_variants(named, grid, args.name_by)

  # Key check before anything runs: a typo fails its variant now, not hours into the sweep.
  try:
    config = load_config(args.config)
  except UsageError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    config = None
    print(f"warning: could not load {args.config} to check override keys "
          f"({type(e).__name__}: {e}); main will check them", file=sys.stderr)
  if config is not None:
    extra_keys = [a.split("=", 1)[0][len("--config."):] for a in extra
                  if a.startswith("--config.")]
    bad = unknown_keys(config, extra_keys)
    if bad:
      raise UsageError(f"extra arguments: unknown config key(s) {bad}")
    for v in variants:
      bad = unknown_keys(config, v.overrides)
      if bad:
        v.status, v.message = "failed", f"unknown config key(s) {bad} in {args.config}"

  if not args.dry_run:
    os.makedirs(args.root, exist_ok=True)
  todo = []
  for v in variants:
    wd = os.path.join(args.root, v.name)
    spec = {"config": args.config, "overrides": v.overrides, "extra_args": extra}
    if v.status == "failed":
      continue
    old = _read_spec(wd)
    if old is not None and _spec_key(old) != _spec_key(spec):
      v.status = "failed"
      v.message = (f"{wd} holds another variant ({old}); use another --root or remove it")
      continue
    if args.dry_run:
      print(shlex.join(variant_command(args.python, args.config, wd, extra, v.overrides)))
      continue
    v.results = read_results(wd)
    if v.results is not None:
      v.status = "skipped"
      print(f"{v.name}: finished earlier (results.json present), skipped", flush=True)
      continue
    os.makedirs(wd, exist_ok=True)
    if old is None:
      with open(os.path.join(wd, SPEC_FILE), "w") as f:
        json.dump(spec, f, indent=2)
    todo.append(v)
  for v in variants:
    if v.status == "failed":
      print(f"{v.name}: FAILED before start: {v.message}", file=sys.stderr, flush=True)
  if args.dry_run:
    return 0
  if args.table_only:
    for v in todo:
      v.status = "incomplete"
    todo = []

  env = dict(os.environ)
  if not args.no_compilation_cache and "JAX_COMPILATION_CACHE_DIR" not in env:
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(args.root, ".jax_cache")
  runner = Runner(args, extra, env)
  prev = {}
  if threading.current_thread() is threading.main_thread():
    prev = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in prev:
      signal.signal(s, lambda signum, frame: runner.forward(signum))
  t0 = time.perf_counter()
  try:
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:
      list(pool.map(lambda v: runner.run(v, len(todo)), todo))
  finally:
    for s, h in prev.items():
      signal.signal(s, h)
  wall = time.perf_counter() - t0

  md = write_tables(args.root, variants, f"Sweep of `{args.config}` ({len(variants)} variants)")
  print("\n" + md + "\n")
  print(f"wrote {os.path.join(args.root, 'results.md')} and "
        f"{os.path.join(args.root, 'results.csv')}; {sum(v.seconds > 0 for v in todo)} run, "
        f"{sum(v.status == 'skipped' for v in variants)} skipped, {wall:.0f} s", flush=True)
  bad = [v for v in variants if v.status in ("failed", "incomplete")]
  for v in bad:
    print(f"{v.status}: {v.name}: {v.message}", file=sys.stderr)
  if runner.stop.is_set():
    print("sweep interrupted; re-run the same command to resume", file=sys.stderr)
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
