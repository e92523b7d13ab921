"""Evaluators named by `config.evals` (big_vision's pattern), and their registry.

`config.evals` maps a name to `{type, every_steps, **options}`. The name prefixes the metrics
("eval" gives `eval/top1`); `type` picks a registered evaluator; `every_steps` is its cadence
during training (absent: `config.eval_every_steps`; 0: only after the last step, which runs
every evaluator). All evaluators due at a step share one prediction pass over the eval split.

An evaluator is a host function `fn(outputs, fields, *, method, **options) -> {metric: value}`:
`outputs` holds the method's per-example predictions, `fields` the batch keys the method lists
in `Method.eval_label_keys` (taken from the host copy of the batch, never from the devices),
both with padding removed. Types register themselves where they are defined: shared ones in
`jaxaffect/evaluation/`, a paper's own in its package (TSL-Net's localization). Like the method
registry, this module names none of them.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Mapping

from jaxaffect.config_lib import nearest
from jaxaffect.errors import UserError

EvalFn = Callable[..., dict]

_TYPES: dict[str, EvalFn] = {}


def register(name: str) -> Callable[[EvalFn], EvalFn]:
  """Decorator: `@register("classification")` makes `type="classification"` resolve to fn."""
  def wrap(fn: EvalFn) -> EvalFn:
    _TYPES[name] = fn
    return fn
  return wrap


def known() -> tuple[str, ...]:
  return tuple(sorted(_TYPES))


def _lookup(kind: str) -> EvalFn | None:
  if kind not in _TYPES:
    # The shared evaluators live in jaxaffect/evaluation/ and register on import; a paper's
    # own are registered once its package is imported (the method registry does that).
    from jaxaffect import evaluation  # deferred: evaluation/ sits above the platform
    for m in pkgutil.iter_modules(evaluation.__path__):
      importlib.import_module(f"{evaluation.__name__}.{m.name}")
  return _TYPES.get(kind)


@dataclasses.dataclass(frozen=True)
class Evaluator:
  name: str           # the metric prefix
  type: str
  every_steps: int    # 0: only after the last step
  options: Mapping[str, Any]

  def due(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  def __call__(self, outputs, fields, *, method) -> dict:
    return _TYPES[self.type](outputs, fields, method=method, **self.options)


def from_config(config) -> list[Evaluator]:
  """The run's evaluators; a UserError naming the entry for an unknown type or bad cadence."""
  entries = config.get("evals", None)
  if not entries and config.get("no_eval", False):
    return []  # label-free runs (e.g. configs/mart_pretrain.py): nothing to evaluate
  if not entries:
    raise UserError("config.evals is empty: list at least one evaluator, e.g. "
                    "config.evals.eval = dict(type='classification')")
  default_every = int(config.get("eval_every_steps", 0) or 0)
  out = []
  for name, entry in entries.items():
    entry = dict(entry)
    kind = str(entry.pop("type", ""))
    if _lookup(kind) is None:
      raise UserError(f"config.evals.{name}.type={kind!r} is not a known evaluator "
                      f"({', '.join(known())}){nearest(kind, known())}")
    every = int(entry.pop("every_steps", default_every) or 0)
    if every < 0:
      raise UserError(f"config.evals.{name}.every_steps={every} must be >= 0")
    out.append(Evaluator(name=str(name), type=kind, every_steps=every, options=entry))
  return out
