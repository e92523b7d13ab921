"""Optax optimizer and learning-rate schedule built from the config.

The keys (config.optimizer, config.schedule, config.frozen_params) and what they do: README.md,
section "Optimizer and schedule"; multi_steps with loss weights: docs/architecture.md,
"Accumulation".
"""
from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from jaxaffect import config_lib
from jaxaffect.errors import UserError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "linear", "step")


def check_config(config) -> None:
  """Names and numbers of the optimizer and schedule, checked before any work starts."""
  config_lib.check_choice("optimizer.name", config.optimizer.get("name", "adam"), OPTIMIZERS)
  config_lib.check_choice("schedule.name", config.schedule.get("name", "constant"), SCHEDULES)
  multi_steps(config)
  if float(config.optimizer.learning_rate) < 0:
    raise UserError(
        f"config.optimizer.learning_rate={config.optimizer.learning_rate} is negative")


def multi_steps(config) -> int:
  k = int(config.optimizer.get("multi_steps", 1) or 1)
  if k < 1:
    raise UserError(f"config.optimizer.multi_steps must be >= 1, got {k}")
  return k


def make_schedule(config) -> Callable[[Any], Any]:
  opt, sch = config.optimizer, config.schedule
  lr = float(opt.learning_rate)
  total = max(int(config.total_steps) // multi_steps(config), 1)
  name = sch.get("name", "constant")
  warmup = int(sch.get("warmup_steps", 0))
  if name == "constant":
    base = optax.constant_schedule(lr)
  elif name in ("cosine", "warmup_cosine"):
    base = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else lr, peak_value=lr, warmup_steps=warmup,
        decay_steps=total, end_value=lr * float(sch.get("end_factor", 0.0)))
    return base
  elif name == "linear":
    base = optax.linear_schedule(lr, lr * float(sch.get("end_factor", 0.0)), total - warmup)
  elif name == "step":
    bounds = [int(b) for b in sch.boundaries]
    base = optax.piecewise_constant_schedule(
        lr, {b: float(f) for b, f in zip(bounds, sch.factors)})
  else:
    raise ValueError(f"schedule.name: unknown schedule {name!r} "
                     "(constant, cosine, warmup_cosine, linear, step)")
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), base], [warmup])
  return base


def _path_labels(params, patterns: list[tuple[str, str]], default: str) -> Any:
  flat = traverse_util.flatten_dict(params, sep="/")
  labels = {}
  for path in flat:
    labels[path] = default
    for regex, label in patterns:
      if re.fullmatch(regex, path):
        labels[path] = label
        break
  return traverse_util.unflatten_dict(labels, sep="/")


def trainable_mask(params, frozen_patterns) -> Any:
  """True for parameters that are trained (not matched by a frozen pattern)."""
  labels = _path_labels(params, [(p, "frozen") for p in frozen_patterns], "trainable")
  return jax.tree.map(lambda l: l == "trainable", labels)


def _base_optimizer(opt, schedule) -> optax.GradientTransformation:
  name = opt.get("name", "adam")
  wd = float(opt.get("weight_decay", 0.0))
  if name == "adam":
    # PyTorch-style L2 (added to the gradient before Adam), as torch.optim.Adam does.
    chain = [optax.add_decayed_weights(wd)] if wd else []
    chain.append(optax.scale_by_adam(b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999),
                                     eps=opt.get("eps", 1e-8)))
    chain.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*chain)
  if name == "adamw":
    return optax.adamw(schedule, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999),
                       eps=opt.get("eps", 1e-8), weight_decay=wd)
  if name == "sgd":
    chain = [optax.add_decayed_weights(wd)] if wd else []
    chain.append(optax.sgd(schedule, momentum=opt.get("momentum", 0.9) or None,
                           nesterov=bool(opt.get("nesterov", False))))
    return optax.chain(*chain)
  raise ValueError(f"optimizer.name: unknown optimizer {name!r} (adam, adamw, sgd)")


def make_optimizer(config, params, *, weighted: bool = False
                   ) -> tuple[optax.GradientTransformation, Callable]:
  """Returns (tx, schedule). `params` may be abstract; only the tree structure is used.
  `weighted`: the method reports a loss weight (steps.LOSS_WEIGHT); with multi_steps > 1 the
  update then takes `loss_weight=` and weighs each train step by it."""
  opt = config.optimizer
  schedule = make_schedule(config)
  frozen = list(config.get("frozen_params", ()) or ())
  multipliers = [(str(r), float(f)) for r, f in (opt.get("lr_multipliers", None) or [])]

  def make_tx(factor: float):
    sched = schedule if factor == 1.0 else (lambda s, f=factor: schedule(s) * f)
    return _base_optimizer(opt, sched)

  patterns = [(p, "frozen") for p in frozen]
  patterns += [(r, f"mult_{i}") for i, (r, _) in enumerate(multipliers)]
  transforms = {"frozen": optax.set_to_zero(), "default": make_tx(1.0)}
  for i, (_, f) in enumerate(multipliers):
    transforms[f"mult_{i}"] = make_tx(f)
  labels = _path_labels(params, patterns, "default")
  tx = optax.multi_transform(transforms, labels)
  clip = float(opt.get("grad_clip_norm", 0.0) or 0.0)
  if clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  k = multi_steps(config)
  if k > 1:
    # Unweighted: optax.MultiSteps' state and values (checkpoints of earlier runs still load).
    tx = weighted_multi_steps(tx, k) if weighted else mean_multi_steps(tx, k)
  return tx, schedule


def mean_multi_steps(tx: optax.GradientTransformation, k: int
                     ) -> optax.GradientTransformationExtraArgs:
  """optax.MultiSteps(tx, every_k_schedule=k), same state (optax.MultiStepsState) and same values
  bit for bit, but the inner optimizer runs under lax.cond on the emitting step only: MultiSteps
  computes it on every train step and selects (Adam over TSL-Net's 91M parameters 16 times per
  update, a fifth of its CPU step)."""
  reference = optax.MultiSteps(tx, every_k_schedule=k)

  def update(updates, state, params=None, **extra):
    n = state.mini_step
    acc = jax.tree.map(lambda g, a: a + (g - a) / (n + 1), updates, state.acc_grads)
    emit = n == k - 1
    inner_update = lambda inner: tx.update(optax.tree.cast_like(acc, updates), inner, params,
                                           **extra)

    def apply(inner):
      new_updates, new_inner = inner_update(inner)
      return (new_updates, jax.tree.map(lambda st, nst: nst.astype(st.dtype), inner, new_inner),
              jax.tree.map(jnp.zeros_like, acc))

    def hold(inner):
      shapes = jax.eval_shape(inner_update, inner)[0]
      return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes), inner, acc

    new_updates, inner, acc_grads = jax.lax.cond(emit, apply, hold, state.inner_opt_state)
    new_state = optax.MultiStepsState(
        mini_step=(n + 1) % k,
        gradient_step=emit * (state.gradient_step + 1) + (1 - emit) * state.gradient_step,
        inner_opt_state=inner, acc_grads=acc_grads, skip_state=state.skip_state)
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(reference.init, update)


class WeightedMultiStepsState(NamedTuple):
  mini_step: jax.Array        # train steps accumulated since the last update
  gradient_step: jax.Array    # optimizer updates so far
  inner_opt_state: Any
  acc_grads: Any              # the weighted mean of the accumulated steps' gradients
  acc_weight: jax.Array       # their total weight


def weighted_multi_steps(tx: optax.GradientTransformation, k: int
                         ) -> optax.GradientTransformationExtraArgs:
  """optax.MultiSteps with steps counted by weight: one update of `tx` every k train steps with
  sum_i(w_i g_i) / sum_i(w_i), where w_i is `loss_weight` (the units step i's mean loss is
  over: valid snippets, target tokens). The running mean is updated as
  acc + (g - acc) * w / (W + w), which with w = 1 is MultiSteps' own formula, rounding
  included."""

  def init(params):
    return WeightedMultiStepsState(
        mini_step=jnp.zeros((), jnp.int32), gradient_step=jnp.zeros((), jnp.int32),
        inner_opt_state=tx.init(params),
        acc_grads=jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
        acc_weight=jnp.zeros((), jnp.float32))

  def update(updates, state, params=None, *, loss_weight=1.0, **extra):
    del extra
    w = jnp.asarray(loss_weight, jnp.float32)
    total = state.acc_weight + w
    denom = jnp.where(total > 0, total, 1.0)  # a weightless step (all padding) adds nothing
    acc = jax.tree.map(lambda g, a: a + ((g.astype(jnp.float32) - a) * w) / denom,
                       updates, state.acc_grads)
    emit = state.mini_step == k - 1

    def inner_update(inner_state):
      return tx.update(jax.tree.map(lambda a, g: a.astype(g.dtype), acc, updates),
                       inner_state, params)

    # The inner optimizer runs on the emitting step only (a cond, not a select of both: over
    # TSL-Net's 91M parameters computing Adam on every train step was 40% of the step on CPU).
    def apply(inner_state):
      new_updates, inner = inner_update(inner_state)
      inner = jax.tree.map(lambda old, new: new.astype(old.dtype), inner_state, inner)
      return new_updates, inner, jax.tree.map(jnp.zeros_like, acc), jnp.zeros((), jnp.float32)

    def hold(inner_state):
      shapes = jax.eval_shape(inner_update, inner_state)[0]
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      return zeros, inner_state, acc, total

    new_updates, inner, acc_grads, acc_weight = jax.lax.cond(emit, apply, hold,
                                                             state.inner_opt_state)
    new_state = WeightedMultiStepsState(
        mini_step=(state.mini_step + 1) % k,
        gradient_step=state.gradient_step + emit.astype(jnp.int32),
        inner_opt_state=inner, acc_grads=acc_grads, acc_weight=acc_weight)
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init, update)
