"""The jitted, sharded pieces every method shares: state init, train step, eval step.

State is a plain dict {"step", "params", "model_state", "opt_state"}. The train step is a pure
function of (state, global batch, base RNG); its RNG is fold_in(base, step), so a resumed run draws
the same numbers as an uninterrupted one. Shardings come from `jax.eval_shape` of the init under
the logical-axis rules; the step donates the state.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxaffect import evaluators, optim, xla_options
from jaxaffect import sharding as shd

# Key of the scalar a method's loss metrics may carry: the number of units its mean loss is
# over (see the accumulation in train_step and docs/architecture.md).
LOSS_WEIGHT = "loss_weight"


@dataclasses.dataclass
class Setup:
  method: Any
  mesh: jax.sharding.Mesh
  rules: tuple
  tx: optax.GradientTransformation
  schedule: Callable
  abstract_state: Any          # unboxed ShapeDtypeStructs carrying their shardings
  state_sharding: Any
  batch_sharding: jax.sharding.NamedSharding
  init_fn: Callable            # rng -> state
  train_step: Callable         # (state, batch, rng) -> (state, metrics)
  eval_step: Callable          # (state, batch) -> per-example outputs, sharded like the batch
  trainable_mask: Any
  evaluators: list             # jaxaffect.evaluators.Evaluator, from config.evals
  # () -> the batch keys `predict` reads; traced on first use of `predict_keys` only (a
  # forward trace costs seconds for a deep model; training alone never needs it).
  find_predict_keys: Callable = dataclasses.field(repr=False)

  @functools.cached_property
  def predict_keys(self) -> tuple | None:
    """Batch keys `predict` reads (None: unknown, send them all)."""
    return self.find_predict_keys()

  def context(self):
    """Mesh + logical rules; every trace (init, step, eval) runs under it."""
    return _Context(self.mesh, self.rules)


class _Context:

  def __init__(self, mesh, rules):
    self.mesh, self.rules = mesh, rules
    self._stack = []

  def __enter__(self):
    a, b = jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules)
    a.__enter__()
    b.__enter__()
    self._stack = [b, a]
    return self

  def __exit__(self, *exc):
    for c in self._stack:
      c.__exit__(*exc)
    return False


def _split_microbatches(batch, k: int):
  """[B, ...] -> [k, B/k, ...] with microbatch j = examples j, j+k, ... (keeps the sharded
  leading dim contiguous per device, so no cross-device shuffle is needed)."""
  def split(x):
    if x.shape[0] % k:
      raise ValueError(f"batch of {x.shape[0]} not divisible by grad_accum_steps={k}")
    y = x.reshape((x.shape[0] // k, k) + x.shape[1:])
    return jnp.moveaxis(y, 1, 0)
  return jax.tree.map(split, batch)


def ema_settings(config) -> tuple[float, float, int] | None:
  """(decay, ramp_steps, start_step) from config.ema, or None when off (decay 0)."""
  e = config.get("ema", None)
  decay = float(e.get("decay", 0.0)) if e is not None else 0.0
  if decay <= 0.0:
    return None
  return decay, float(e.get("ramp_steps", 0.0) or 0.0), int(e.get("start_step", 0) or 0)


def ema_update(averaged, params, step, settings, mask):
  """The average after train step `step` (0-based) produced `params`: a copy of the params
  before `start_step`, then a <- d * a + (1 - d) * p with d = decay * (1 - exp(-u / ramp)) at
  the u-th averaged step (u = 1, 2, ...; the timm/YOLO warm-up; d = decay without a ramp).
  Frozen parameters are copied."""
  decay, ramp, start = settings
  u = (step + 1 - start).astype(jnp.float32)
  d = decay * (1.0 - jnp.exp(-u / ramp)) if ramp > 0 else jnp.float32(decay)

  def blend(_):
    return jax.tree.map(lambda a, p, m: (d * a + (1.0 - d) * p).astype(a.dtype) if m else p,
                        averaged, params, mask)

  return jax.lax.cond(step >= start, blend, lambda _: params, None)


def build(config, method, mesh) -> Setup:
  rules = shd.rules_from_config(config)
  grad_accum = int(config.get("grad_accum_steps", 1) or 1)
  k_updates = optim.multi_steps(config)  # train steps per optimizer update (optax.MultiSteps)
  init_batch_size = shd.batch_divisor(mesh)
  example = method.example_batch(init_batch_size)
  example_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in example.items()}

  def init_variables(rng):
    batch = {k: jnp.zeros(s.shape, s.dtype) for k, s in example_specs.items()}
    return method.init_variables(rng, batch)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract_vars = jax.eval_shape(init_variables, jax.random.key(0))
  abstract_params = shd.unbox_abstract(abstract_vars["params"])
  # Does the method weigh its loss (metrics["loss_weight"])? Only multi-step accumulation needs
  # to know before the step is traced; one abstract trace of the loss answers it.
  weighted_updates = k_updates > 1 and _reports_loss_weight(
      method, abstract_vars, example_specs, mesh, rules)
  tx, schedule = optim.make_optimizer(config, abstract_params, weighted=weighted_updates)
  mask = optim.trainable_mask(abstract_params, config.get("frozen_params", ()) or ())
  ema = ema_settings(config)
  reset_steps = tuple(int(r) for r in method.optimizer_reset_steps)

  def state_of(variables):
    params = variables["params"]
    model_state = {c: variables[c] for c in method.state_collections if c in variables}
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "model_state": model_state,
             "opt_state": tx.init(shd.unbox_abstract(params))}
    if ema is not None:  # an average of the params (same boxes, so the same shardings)
      state["ema_params"] = params
    return state

  def init_state(rng):
    return state_of(init_variables(rng))

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    # From the abstract variables above: tracing the model once more would only repeat them
    # (seconds for a deep model, in every process that builds a step).
    boxed = jax.eval_shape(state_of, abstract_vars)
    # The optimizer state mirrors the params; give it the params' logical boxes.
    boxed["opt_state"] = _box_like_params(boxed["opt_state"], boxed["params"])
    state_sharding = shd.state_shardings(boxed, mesh, rules)
  unboxed = shd.unbox_abstract(boxed)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), unboxed, state_sharding)
  batch_sharding = shd.batch_sharding(mesh)
  repl = shd.replicated(mesh)

  platform = mesh.devices.flat[0].platform
  init_fn = jax.jit(lambda rng: shd.unbox_abstract(init_state(rng)),
                    out_shardings=state_sharding,
                    compiler_options=xla_options.for_init(platform))

  compute_sharding = shd.gathered(state_sharding["params"])
  # FSDP weights are gathered explicitly before use (the XLA:CPU exactness workaround, and the
  # FSDP schedule). The rule: a parameter with the "layers" logical axis (an nn.scan stack)
  # is gathered one layer at a time by its scanned body (sharding.gather_for_compute), so it
  # is passed through here; every other parameter is gathered here, whole, before the forward.
  per_layer = shd.gathered_per_layer(boxed["params"])

  def gather(params):
    return jax.tree.map(lambda p, s, own: p if own else jax.lax.with_sharding_constraint(p, s),
                        params, compute_sharding, per_layer)

  def loss_fn(params, model_state, batch, rng, step):
    return method.loss(gather(params), model_state, batch, rng, step)

  def grads_of(params, model_state, batch, rng, step):
    return jax.value_and_grad(loss_fn, has_aux=True)(params, model_state, batch, rng, step)

  def train_step(state, batch, base_rng):
    step = state["step"]
    rng = jax.random.fold_in(base_rng, step)
    params = state["params"]
    if grad_accum == 1:
      (loss, (metrics, model_state)), grads = grads_of(params, state["model_state"], batch, rng,
                                                       step)
    else:
      micro = _split_microbatches(batch, grad_accum)
      m_shape = jax.eval_shape(lambda: grads_of(params, state["model_state"],
                                                jax.tree.map(lambda x: x[0], micro), rng,
                                                step)[0][1][0])
      # A method whose loss is a mean over a variable number of units (valid snippets, target
      # tokens) reports that number as metrics["loss_weight"]: micro-batches then count by
      # their weight, so the result is the mean over all units of the global batch. Without
      # it every micro-batch counts the same (the mean of their means).
      weighted = LOSS_WEIGHT in m_shape

      def body(carry, xs):
        g_acc, ms, l_acc, w_acc, m_acc = carry
        j, mb = xs
        (l, (m, ms)), g = grads_of(params, ms, mb, jax.random.fold_in(rng, j), step)
        w = m[LOSS_WEIGHT].astype(jnp.float32) if weighted else jnp.ones((), jnp.float32)
        if weighted:
          g = jax.tree.map(lambda x: x * w.astype(x.dtype), g)
          l = l * w
        g_acc = jax.tree.map(jnp.add, g_acc, g)
        m_acc = jax.tree.map(jnp.add, m_acc, m)
        return (g_acc, ms, l_acc + l, w_acc + w, m_acc), None

      zeros_g = jax.tree.map(jnp.zeros_like, params)
      zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
      zero = jnp.zeros((), jnp.float32)
      (grads, model_state, loss, total_w, metrics), _ = jax.lax.scan(
          body, (zeros_g, state["model_state"], zero, zero, zeros_m),
          (jnp.arange(grad_accum), micro))
      if weighted:
        inv_w = 1.0 / jnp.maximum(total_w, 1e-12)
        grads = jax.tree.map(lambda g: g * inv_w.astype(g.dtype), grads)
        loss = loss * inv_w
      else:
        inv = 1.0 / grad_accum
        grads = jax.tree.map(lambda g: g * inv, grads)
        loss = loss * inv
      metrics = jax.tree.map(lambda m: m * (1.0 / grad_accum), metrics)
      if weighted:
        metrics[LOSS_WEIGHT] = total_w  # the global batch's total weight
    grad_norm = optax.tree.norm(jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g),
                                               grads, mask))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(_):
      opt_state = state["opt_state"]
      if reset_steps:  # a fresh optimizer from these steps on (e.g. MART's stage 2)
        opt_state = jax.lax.cond(jnp.any(step == jnp.asarray(reset_steps)),
                                 lambda: tx.init(params), lambda: opt_state)
      if weighted_updates:  # this step counts by its weight among the multi_steps
        weight = metrics[LOSS_WEIGHT] if LOSS_WEIGHT in metrics else jnp.ones((), jnp.float32)
        updates, opt_state = tx.update(grads, opt_state, params, loss_weight=weight)
      else:
        updates, opt_state = tx.update(grads, opt_state, params)
      # Frozen parameters (their updates are zeros) pass through: no add over a frozen backbone.
      new_params = jax.tree.map(lambda p, u, m: optax.apply_updates(p, u) if m else p,
                                params, updates, mask)
      averaged = (ema_update(state["ema_params"], new_params, step, ema, mask)
                  if ema is not None else None)
      return new_params, model_state, opt_state, averaged

    def skip(_):
      return (params, state["model_state"], state["opt_state"],
              state["ema_params"] if ema is not None else None)

    # A non-finite step leaves the state untouched; the host stops the run and names the step.
    # A cond, not a select of old and new: selecting cost a pass over every parameter and
    # optimizer slot per step (a fifth of TSL-Net's CPU step).
    new_params, new_model_state, opt_state, averaged = jax.lax.cond(finite, update, skip, None)
    new_state = {"step": step + 1, "params": new_params, "model_state": new_model_state,
                 "opt_state": opt_state}
    if ema is not None:
      new_state["ema_params"] = averaged
    out = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(step // k_updates),
           "finite": finite}
    out.update(metrics)
    return new_state, out

  def eval_step(state, batch):  # with config.ema on, evaluation uses the averaged params
    params = state["ema_params"] if ema is not None else state["params"]
    return dict(method.predict(gather(params), state["model_state"], batch))

  step_options = xla_options.for_step(platform)
  train_step_jit = jax.jit(train_step, in_shardings=(state_sharding, batch_sharding, repl),
                           out_shardings=(state_sharding, repl), donate_argnums=(0,),
                           compiler_options=step_options)
  # Outputs stay sharded like the batch: each process fetches its own examples' rows
  # (process_rows) instead of every device receiving the whole eval batch.
  eval_step_jit = jax.jit(eval_step, in_shardings=(state_sharding, batch_sharding),
                          out_shardings=batch_sharding, compiler_options=step_options)
  def find_predict_keys():
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      return _keys_read(method.predict, abstract_state, example_specs)

  return Setup(method=method, mesh=mesh, rules=rules, tx=tx, schedule=schedule,
               abstract_state=abstract_state, state_sharding=state_sharding,
               batch_sharding=batch_sharding, init_fn=init_fn, train_step=train_step_jit,
               eval_step=eval_step_jit, trainable_mask=mask,
               evaluators=evaluators.from_config(config), find_predict_keys=find_predict_keys)


def _reports_loss_weight(method, abstract_vars, example_specs, mesh, rules) -> bool:
  model_state = {c: abstract_vars[c] for c in method.state_collections if c in abstract_vars}

  def metrics(params, model_state, batch):
    step = jnp.zeros((), jnp.int32)
    return method.loss(params, model_state, batch, jax.random.key(0), step)[1][0]

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    out = jax.eval_shape(metrics, shd.unbox_abstract(abstract_vars["params"]),
                         shd.unbox_abstract(model_state),
                         example_specs)
  return LOSS_WEIGHT in out


class _ReadRecorder(Mapping):
  """A read-only view of a batch that records which keys are read."""

  def __init__(self, batch):
    self._batch, self.read = batch, set()

  def __getitem__(self, key):
    self.read.add(key)
    return self._batch[key]

  def __iter__(self):
    self.read.update(self._batch)
    return iter(self._batch)

  def __len__(self):
    return len(self._batch)


def _keys_read(predict, abstract_state, example_specs) -> tuple | None:
  """The batch keys `predict` reads, found by tracing it once without compute: only those go
  to the devices at eval time (labels and indices stay on the host). None when the trace
  needs a key the training batch lacks; then every numeric key is sent."""
  recorder = _ReadRecorder({})

  def trace(params, model_state, batch):
    recorder.__init__(batch)
    return predict(params, model_state, recorder)

  try:
    jax.eval_shape(trace, abstract_state["params"], abstract_state["model_state"],
                   example_specs)
  except KeyError:
    return None
  return tuple(sorted(recorder.read))


def process_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of an array sharded over its leading (batch) axis, in order: the
  inverse of make_global_batch. Replicas of a row block (tensor-parallel copies) are fetched
  once."""
  blocks = {}
  for shard in x.addressable_shards:
    blocks.setdefault(shard.index[0].start or 0, shard.data)
  return np.concatenate([np.asarray(blocks[k]) for k in sorted(blocks)])


def _box_like_params(opt_state, boxed_params):
  """Re-attaches each parameter's logical box to optimizer-state leaves of the same tree shape
  (Adam moments etc.); scalars such as counts stay replicated."""
  params_struct = jax.tree.structure(boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  boxes = jax.tree.leaves(boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))

  def visit(node):
    try:
      leaves = params_struct.flatten_up_to(node)
    except (ValueError, TypeError):
      leaves = None
    # optax.multi_transform (frozen parameters) leaves MaskedNode where a group has no slot;
    # without this, one frozen parameter left every Adam moment replicated on every device.
    if leaves is not None and all(hasattr(l, "shape") or isinstance(l, optax.MaskedNode)
                                  for l in leaves):
      boxed = [b.replace_boxed(l) if isinstance(b, nn.Partitioned) and hasattr(l, "shape")
               and l.shape == b.value.shape else l for b, l in zip(boxes, leaves)]
      return params_struct.unflatten(boxed)
    if isinstance(node, (list, tuple)) and not hasattr(node, "_fields"):
      return type(node)(visit(c) for c in node)
    if hasattr(node, "_fields"):  # namedtuple optimizer states
      return type(node)(*[visit(c) for c in node])
    if isinstance(node, dict):
      return {k: visit(v) for k, v in node.items()}
    return node

  return visit(opt_state)


def make_global_batch(local_batch: dict, sharding) -> dict:
  """Per-process numpy batch -> global jax.Arrays; host-only fields (strings) are dropped."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()
          if getattr(v, "dtype", None) is not None and v.dtype.kind in "biuf"}
