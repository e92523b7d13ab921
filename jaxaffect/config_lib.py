"""Helpers for config files: the keys every config has, argument parsing, defaults."""
from __future__ import annotations

import os

import ml_collections


def default_data_dir() -> str:
  return os.environ.get("JAXAFFECT_DATA_DIR", os.path.join("~", ".cache", "jaxaffect"))


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "smoke,split=3" into {smoke: True, split: 3}; unknown names are an error."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"config argument {key!r} unknown; known: {', '.join(sorted(defaults))}")
    if not value:
      out[key] = True
    else:
      kind = type(defaults[key])
      out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
  return ml_collections.ConfigDict(out)


def base_config() -> ml_collections.ConfigDict:
  """Keys every config has (DESIGN.md 'Contracts'); method configs fill in the rest."""
  c = ml_collections.ConfigDict()
  c.method = ""
  c.seed = 0
  c.total_steps = 100
  c.batch_size = 32
  c.eval_batch_size = 32
  c.grad_accum_steps = 1
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Logical axis -> mesh axes (None = replicated). See jaxaffect/sharding.py for the vocabulary.
  c.sharding_rules = [
      ("act_batch", ("data", "fsdp")), ("act_len", None), ("act_time", None),
      ("act_emb", None), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
      ("kv", None), ("vocab", "tensor"), ("classes", None), ("conv_in", "fsdp"),
      ("conv_out", "tensor"), ("layers", None),
  ]
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-3, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8,
      grad_clip_norm=0.0, lr_multipliers=[], multi_steps=1))
  c.schedule = ml_collections.ConfigDict(dict(name="constant", warmup_steps=0, end_factor=0.0))
  c.frozen_params = ()
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=100, keep=3))
  c.checkpoint["async"] = True
  c.init_from = ""
  c.log_every_steps = 10
  c.eval_every_steps = 0
  c.dataset = ml_collections.ConfigDict()
  c.dataset.data_dir = default_data_dir()
  c.model = ml_collections.ConfigDict()
  return c


def sibling_config(this_file: str, name: str, arg: str | None = None):
  """get_config(arg) of another config file in the same folder (configs/ is not a package)."""
  import importlib.util
  path = os.path.join(os.path.dirname(os.path.abspath(this_file)), name)
  spec = importlib.util.spec_from_file_location(f"jaxaffect_configs_{name[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
