"""Config files: the keys every config has, loading `path[:arg]` with `--config.a.b=v`
overrides (one loader for main, the converters and the sweep), and checks of the values."""
from __future__ import annotations

import ast
import difflib
import json
import logging
import importlib.util
import os
import sys
from typing import Any, Iterable, Sequence

import ml_collections
from absl import flags

from jaxaffect.errors import PathNotFound, UserError


def default_data_dir() -> str:
  return os.environ.get("JAXAFFECT_DATA_DIR", os.path.join("~", ".cache", "jaxaffect"))


def nearest(word: str, candidates: Iterable[str]) -> str:
  """' (did you mean X?)' for the closest candidate, '' when none is close."""
  best = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
  return f" (did you mean {best[0]!r}?)" if best else ""


def check_choice(key: str, value: Any, choices: Sequence[str]) -> str:
  """`value` when it is one of `choices`, else a UserError naming the key and the nearest."""
  if value not in choices:
    raise UserError(f"config.{key}={value!r} is not one of {', '.join(choices)}"
                    f"{nearest(str(value), choices)}")
  return value


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "smoke,split=3" into {smoke: True, split: 3}; unknown names are an error."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise UserError(f"config argument {key!r} unknown{nearest(key, defaults)}; known: "
                      f"{', '.join(sorted(defaults)) or 'none'}")
    if not value:
      out[key] = True
      continue
    kind = type(defaults[key])
    try:
      out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    except ValueError:
      raise UserError(f"config argument {key}={value!r}: expected {kind.__name__}") from None
  return ml_collections.ConfigDict(out)


# Logical axis -> mesh axes (None = replicated); jaxaffect/sharding.py applies them. Every
# config carries a copy as `sharding_rules`, so an experiment can override one axis.
DEFAULT_SHARDING_RULES = (
    ("act_batch", ("data", "fsdp")),
    ("act_len", None),
    ("act_time", None),
    # Residual-stream activations stay replicated over "tensor" (the Megatron layout).
    ("act_emb", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("classes", None),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("layers", None),
    # The transformer stack (jaxaffect/nn/attention.py): key/value heads of GQA/MQA (a mesh
    # axis that does not divide their number is dropped for that weight), and the per-head
    # and MLP-hidden activations, split like their weights (Megatron).
    ("kv_heads", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    # A bias over MLP hidden units (nn/transformer_parts.BIAS_AXES): split like its kernel's
    # columns and, having no embed axis, over FSDP as well.
    ("mlp_bias", ("tensor", "fsdp")),
)


def base_config() -> ml_collections.ConfigDict:
  """Keys every config has (docs/architecture.md); method configs fill in the rest."""
  c = ml_collections.ConfigDict()
  c.method = ""
  c.seed = 0
  c.total_steps = 100
  c.batch_size = 32
  c.eval_batch_size = 32
  c.grad_accum_steps = 1
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = list(DEFAULT_SHARDING_RULES)
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-3, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8,
      grad_clip_norm=0.0, lr_multipliers=[], multi_steps=1))
  c.schedule = ml_collections.ConfigDict(dict(name="constant", warmup_steps=0, end_factor=0.0))
  c.frozen_params = ()
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=100, keep=3))
  c.checkpoint["async"] = True
  c.init_from = ""
  # Resuming with a config that differs from the workdir's: "refuse" (one line listing the
  # keys) or "allow" (continue; the change is recorded in config.json's history).
  c.resume_changes = "refuse"
  c.log_every_steps = 10
  # An exponential moving average of the params, used by evaluation when decay > 0
  # (jaxaffect/steps.py ema_update): copies the params before start_step, then averages with
  # decay * (1 - exp(-u / ramp_steps)) at its u-th step (ramp_steps 0: a constant decay).
  c.ema = ml_collections.ConfigDict(dict(decay=0.0, ramp_steps=0.0, start_step=0))
  # Peak FLOP/s of one device for MFU (--mode benchmark, tools.versus); 0: known chips by kind.
  c.benchmark_peak_flops = 0.0
  # Evaluators (jaxaffect/evaluators.py): name -> {type, every_steps, **options}; the name
  # prefixes the metrics. eval_every_steps is the cadence of those that set none (0: at the end).
  c.eval_every_steps = 0
  c.evals = ml_collections.ConfigDict({"eval": {"type": "classification"}})
  c.dataset = ml_collections.ConfigDict()
  c.dataset.data_dir = default_data_dir()
  c.model = ml_collections.ConfigDict()
  return c


# ---- loading ------------------------------------------------------------------------------


def split_spec(spec: str) -> tuple[str, str | None]:
  """'configs/x.py:smoke,split=2' -> ('configs/x.py', 'smoke,split=2')."""
  if ":" in spec and not os.path.exists(spec):
    path, _, arg = spec.rpartition(":")
    return path, arg
  return spec, None


def _import_file(path: str, name: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def config_module(spec: str):
  """The config file of `path[:arg]` as a module: its top level runs, nothing is called (the
  sweep reads get_sweeps() from it)."""
  path, _ = split_spec(spec)
  if not os.path.isfile(path):
    raise PathNotFound(f"--config: {path} does not exist")
  return _import_file(path, "jaxaffect_config_" + os.path.basename(path)[:-3])


def load(spec: str, overrides: Sequence[str] = (), *, lock: bool = True
         ) -> ml_collections.ConfigDict:
  """get_config(arg) of `path[:arg]`, then the overrides ("a.b=value" or "--config.a.b=value")."""
  path, arg = split_spec(spec)
  module = config_module(spec)
  if not hasattr(module, "get_config"):
    raise UserError(f"--config: {path} defines no get_config(arg)")
  try:
    config = module.get_config(arg) if arg is not None else module.get_config()
  except UserError as e:
    raise UserError(f"--config {spec}: {e}") from None
  apply_overrides(config, overrides)
  if lock:
    config.lock()
  return config


def sibling_module(this_file: str, name: str):
  """Another config file in the same folder, as a module (configs/ is not a package)."""
  return config_module(os.path.join(os.path.dirname(os.path.abspath(this_file)), name))


def sibling_config(this_file: str, name: str, arg: str | None = None):
  """get_config(arg) of another config file in the same folder."""
  return sibling_module(this_file, name).get_config(arg)


def tool_args(parser, argv: Sequence[str]):
  """(args, config) of a tool's command line: `--config.k=v` overrides are split off, the rest
  is parsed by `parser` (which defines --config), the config is loaded and checked."""
  rest, overrides = split_overrides(argv)
  args = parser.parse_args(rest)
  config = load(args.config, overrides)
  check_common(config)
  return args, config


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.a.b=v` / `--config.a.b v` from the other arguments."""
  rest, overrides = [], []
  it = iter(argv)
  for a in it:
    if a.startswith("--config."):
      if "=" not in a:
        value = next(it, None)
        if value is None:
          raise UserError(f"{a}: missing value (write {a}=VALUE)")
        a = f"{a}={value}"
      overrides.append(a)
    else:
      rest.append(a)
  return rest, overrides


def absl_flags_parser(overrides: list[str]):
  """An `app.run(..., flags_parser=...)` for CLIs with a string flag `--config`: keeps the
  `--config.a.b=v` overrides aside in `overrides` for `load`; one line on a bad flag."""
  def parse(argv: list[str]) -> list[str]:
    try:
      rest, found = split_overrides(argv[1:])
      overrides[:] = found
      return flags.FLAGS([argv[0], *rest])
    except (flags.Error, UserError) as e:
      print(f"error: {str(e).splitlines()[0]}", file=sys.stderr, flush=True)
      raise SystemExit(2) from None

  return parse


def flat_keys(config, prefix: str = "") -> dict[str, Any]:
  """{"optimizer.learning_rate": 0.001, ...} for every leaf of a (nested) ConfigDict/dict."""
  out = {}
  items = config.items() if hasattr(config, "items") else []
  for k, v in items:
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      out.update(flat_keys(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _parse_value(raw: str, old: Any, key: str) -> Any:
  if isinstance(old, bool):
    low = raw.lower()
    if low not in ("true", "false", "1", "0", "yes", "no"):
      raise UserError(f"--config.{key}={raw}: expected true or false")
    return low in ("true", "1", "yes")
  if isinstance(old, str):
    return raw
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    if old is None:
      return raw
    raise UserError(f"--config.{key}={raw}: expected {type(old).__name__}") from None
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(old, (list, tuple)) and isinstance(value, (list, tuple)):
    value = type(old)(value)
  if old is not None and not isinstance(value, type(old)):
    raise UserError(f"--config.{key}={raw}: expected {type(old).__name__}, got "
                    f"{type(value).__name__}")
  return value


def apply_overrides(config, overrides: Sequence[str]) -> None:
  for item in overrides:
    body = item[len("--config."):] if item.startswith("--config.") else item
    key, eq, raw = body.partition("=")
    if not eq or not key or key.startswith("-"):
      raise UserError(f"unrecognised argument {item!r} (overrides look like --config.a.b=value)")
    *parents, leaf = key.split(".")
    node = config
    for depth, p in enumerate(parents + [leaf]):
      has = isinstance(node, (ml_collections.ConfigDict, dict)) and p in node
      if not has:
        raise UserError(f"--config.{key}: no such config key{nearest(key, flat_keys(config))}")
      if depth < len(parents):
        node = node[p]
    old = node[leaf]
    if isinstance(old, (ml_collections.ConfigDict, dict)):
      raise UserError(f"--config.{key} is a group of keys; set one of its members, e.g. "
                      f"--config.{key}.{next(iter(old), 'x')}=...")
    value = _parse_value(raw, old, key)
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      raise UserError(f"--config.{key}={raw}: {e}") from None


def check_common(config) -> None:
  """Values every config shares, checked once where the config enters."""
  for key in ("batch_size", "eval_batch_size"):
    if key in config and int(config[key]) <= 0:
      raise UserError(f"config.{key}={config[key]} must be a positive number of examples")
  if int(config.total_steps) < 1:
    raise UserError(f"config.total_steps={config.total_steps} must be at least 1")
  for key in ("grad_accum_steps", "log_every_steps"):
    if key in config and int(config[key] or 1) < 1:
      raise UserError(f"config.{key}={config[key]} must be at least 1")
  if int(config.checkpoint.every_steps) < 1 or int(config.checkpoint.keep) < 1:
    raise UserError("config.checkpoint.every_steps and config.checkpoint.keep must be >= 1 "
                    f"(got {config.checkpoint.every_steps}, {config.checkpoint.keep})")
  check_choice("resume_changes", config.get("resume_changes", "refuse"), ("refuse", "allow"))
  if "ema" in config:
    e = config.ema
    if not 0.0 <= float(e.decay) < 1.0 or float(e.ramp_steps) < 0 or int(e.start_step) < 0:
      raise UserError(f"config.ema: decay must be in [0, 1) and ramp_steps, start_step >= 0 "
                      f"(got decay={e.decay}, ramp_steps={e.ramp_steps}, "
                      f"start_step={e.start_step})")
  if "dtype" in config.model:
    check_choice("model.dtype", config.model.dtype, ("float32", "bfloat16", "float16"))


# ---- resuming with a changed config --------------------------------------------------------

# Keys a resumed run may change freely: where and how the run executes, not what it computes
# (pods change size between jobs; data move; logging cadence). Prefixes end with ".".
RESUME_FREE = ("mesh.", "checkpoint.", "log_every_steps", "eval_every_steps", "eval_batch_size",
               "evals.",
               "dataset.data_dir", "dataset.manual_dir", "dataset.worker_count", "init_from",
               "resume_changes", "benchmark_peak_flops", "sharding_rules")
HISTORY_KEY = "_resume_history"  # config.json: the changes accepted with resume_changes=allow


def as_json_dict(config) -> dict:
  """The config as plain JSON values (tuples become lists), as config.json stores it."""
  import json
  return json.loads(config.to_json_best_effort())


def resume_differences(saved: dict, config) -> dict[str, tuple[Any, Any]]:
  """{key: (saved value, current value)} for keys that differ and are not RESUME_FREE."""
  old = flat_keys({k: v for k, v in saved.items() if k != HISTORY_KEY})
  new = flat_keys(as_json_dict(config))
  # A platform key added after the run was made, at its default, changes nothing it computed.
  defaults = flat_keys(as_json_dict(base_config()))
  for k, v in new.items():
    if k not in old and k in defaults and defaults[k] == v:
      old[k] = v
  free = lambda k: any(k == f or (f.endswith(".") and k.startswith(f)) for f in RESUME_FREE)
  return {k: (old.get(k, "<absent>"), new.get(k, "<absent>"))
          for k in sorted(set(old) | set(new)) if not free(k) and old.get(k) != new.get(k)}


def describe_differences(diffs: dict[str, tuple[Any, Any]], limit: int = 6) -> str:
  parts = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diffs.items())[:limit]]
  if len(diffs) > limit:
    parts.append(f"{len(diffs) - limit} more")
  return ", ".join(parts)


# ---- a trained workdir's settings ---------------------------------------------------------

# dataset keys that never change what the model computes (paths, generation, workers).
_DATASET_KEYS_NOT_ADOPTED = ("data_dir", "manual_dir", "auto_prepare", "worker_count", "synthetic",
                            "split", "split_file")


# ----------------------------------------------------------------------------- config


def _coerce(current: Any, saved: Any) -> Any:
  if isinstance(current, tuple) and isinstance(saved, list):
    return tuple(_coerce(c, s) for c, s in zip(current, saved)) if len(current) == len(
        saved) else tuple(saved)
  if isinstance(current, float) and isinstance(saved, int) and not isinstance(saved, bool):
    return float(saved)
  return saved


def adopt_workdir_settings(config, workdir: str) -> list[str]:
  """Adopts DIR/config.json's model and dataset-shape settings; returns the changed keys."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    saved = json.load(f)
  changed = []

  def visit(node, saved_node, prefix, skip=()):
    for key in list(node.keys()):
      if key in skip or key not in saved_node:
        continue
      cur, old = node[key], saved_node[key]
      if hasattr(cur, "keys") and isinstance(old, dict):
        visit(cur, old, f"{prefix}{key}.")
        continue
      new = _coerce(cur, old)
      if new != cur:
        try:
          node[key] = new
        except (TypeError, ValueError) as e:
          logging.warning("cannot adopt %s%s=%r from %s: %s", prefix, key, old, path, e)
          continue
        changed.append(f"{prefix}{key}")

  with config.unlocked():
    if "model" in config and isinstance(saved.get("model"), dict):
      visit(config.model, saved["model"], "model.")
    if "dataset" in config and isinstance(saved.get("dataset"), dict):
      visit(config.dataset, saved["dataset"], "dataset.", skip=_DATASET_KEYS_NOT_ADOPTED)
  return changed
