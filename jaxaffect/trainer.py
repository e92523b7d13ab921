"""The one train loop for every method: resume, train, log, checkpoint, evaluate.

Order of initialisation (big_vision / MaxText agree): this workdir's latest checkpoint, else
`config.init_from` (params only), else from scratch. Everything that decides numbers (the RNG per
step, the batch per step, the state) is saved or derived from the step, so a killed run resumes
to the same losses bit for bit.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from jaxaffect import checkpointing, config_lib
from jaxaffect import converted_checkpoint as convert_store
from jaxaffect import method as method_lib
from jaxaffect import metric_writer
from jaxaffect import sharding as shd
from jaxaffect import steps as steps_lib
from jaxaffect import workdir_lock
from jaxaffect.errors import PathNotFound, UserError, WorkdirInUse

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError):
  """A non-finite loss or gradient: the run stops, naming the step and the last good
  checkpoint."""


class _Preemption:
  """SIGTERM -> save and exit cleanly. Multi-process runs agree through JAX's sync point."""

  def __init__(self):
    self.requested = False
    if jax.process_count() == 1:
      try:
        signal.signal(signal.SIGTERM, self._handler)
      except ValueError:  # not the main thread (e.g. some test runners)
        pass

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except Exception:  # preemption service not available on this runtime
        return False
    return self.requested


def setup(config, *, prepare_data: bool = True, workdir: str | None = None
          ) -> steps_lib.Setup:
  method = method_lib.get_method(config, workdir=workdir)
  if prepare_data:
    if jax.process_index() == 0:
      method.prepare_data()
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("jaxaffect_data_prepared")
  mesh = shd.make_mesh(config.mesh)
  _check_batch(config, mesh)
  return steps_lib.build(config, method, mesh)


def _check_batch(config, mesh) -> None:
  div = shd.batch_divisor(mesh)
  for key in ("batch_size", "eval_batch_size"):
    b = int(config.get(key, config.batch_size))
    if b % div or b % jax.process_count():
      raise UserError(f"config.{key}={b} must be divisible by the data x fsdp mesh size ({div}) "
                       f"and the process count ({jax.process_count()})")
  accum = int(config.get("grad_accum_steps", 1) or 1)
  if (config.batch_size // accum) % div or config.batch_size % accum:
    raise UserError(f"config.batch_size={config.batch_size} / grad_accum_steps={accum} must be "
                     f"an integer divisible by the data x fsdp mesh size ({div})")


def initial_state(s: steps_lib.Setup, config, ckpt: checkpointing.Checkpointer | None,
                  train_iter=None) -> tuple[Any, int]:
  """Returns (state, start_step): the newest verified checkpoint of this workdir, else
  `init_from`, else a fresh init."""
  with s.context():
    if ckpt is not None:
      restored = ckpt.restore_latest(s.abstract_state, train_iter)
      if restored is not None:
        log.info("resuming from %s step %d", ckpt.directory, restored[1])
        saved = ckpt.saved_meta(restored[1])
        now = shd.describe(s.mesh)
        if saved.get("mesh") not in (None, now):
          log.info("step %d was written on mesh %s (%s devices); restored onto mesh %s (%d "
                   "devices): every array resharded to its sharding here", restored[1],
                   saved["mesh"], saved.get("devices", "?"), now, s.mesh.devices.size)
        return restored
    state = s.init_fn(jax.random.key(int(config.seed)))
    for path in filter(None, (p.strip() for p in str(config.get("init_from", "")).split(","))):
      state = _init_from(s, state, path)
  return state, 0


def _init_from(s: steps_lib.Setup, state, path: str):
  """Params (and model state such as BatchNorm statistics) from a converted checkpoint (its
  subtrees only; the rest keeps its init) or from another run's workdir/step (everything)."""
  if convert_store.is_converted(path):
    ignore = s.method.init_from_ignore
    params, model_state = convert_store.restore_converted(
        path, state["params"], state["model_state"], ignore_subtrees=ignore)
    log.info("initialised %s from converted checkpoint %s",
             ", ".join((convert_store.read_meta(path) or {}).get("subtrees", [])), path)
    return _with_ema(dict(state, params=params, model_state=model_state))
  params, model_state = checkpointing.restore_params(
      path, s.abstract_state["params"], s.abstract_state["model_state"])
  log.info("initialised params%s from %s", " and model state" if model_state else "", path)
  return _with_ema(dict(state, params=params, model_state=model_state or state["model_state"]))


def _with_ema(state):
  """The average starts from the loaded params (a copy: the train step donates its state)."""
  if "ema_params" in state:
    state["ema_params"] = jax.tree.map(jnp.copy, state["params"])
  return state


def evaluate(s: steps_lib.Setup, config, state, step: int | None = None) -> dict[str, Any]:
  """One prediction pass over the eval split, then every evaluator due at `step` (all of them
  when `step` is None: the final evaluation). Returns {"<evaluator>/<metric>": value}.

  Predictions come back per example from the devices that computed them (no replication);
  the fields evaluators read (labels, indices) never leave the host. With several processes
  each batch is gathered on the host so every process computes the same metrics."""
  due = [e for e in s.evaluators if step is None or e.due(step)]
  if not due:
    return {}
  method = s.method
  outputs: dict[str, list[np.ndarray]] = {}
  batches = method.eval_batches(global_batch_size=int(config.get("eval_batch_size",
                                                                 config.batch_size)),
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
  host_keys = tuple(method.eval_label_keys) + ("_mask",)
  with s.context():
    for local in batches:
      device_part = {k: local[k] for k in s.predict_keys}
      out = s.eval_step(state, steps_lib.make_global_batch(device_part, s.batch_sharding))
      rows = {k: steps_lib.process_rows(v) for k, v in out.items()}
      rows.update({k: np.asarray(local[k]) for k in host_keys})
      if jax.process_count() > 1:
        rows = multihost_utils.process_allgather(rows, tiled=True)
      keep = np.asarray(rows.pop("_mask"), bool)
      for k, v in rows.items():
        outputs.setdefault(k, []).append(np.asarray(v)[keep])
  merged = {k: _merge(v) for k, v in outputs.items()}
  fields = {k: merged.pop(k) for k in method.eval_label_keys}
  results = {}
  for e in due:
    results.update({f"{e.name}/{k}": v for k, v in e(merged, fields, method=method).items()})
  return results


def _merge(parts: list[np.ndarray]):
  """Concatenates per-batch outputs; when their trailing shapes differ (variable-length batches
  padded to different buckets) returns the list of per-example arrays instead."""
  if len({p.shape[1:] for p in parts}) <= 1:
    return np.concatenate(parts)
  return [row for p in parts for row in p]


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains (resuming from the workdir's newest verified checkpoint), then evaluates. Holds
  the workdir's lock throughout: a second run on the same workdir fails at once."""
  with workdir_lock.WorkdirLock(workdir, "train"):
    return _train_and_evaluate(config, workdir)


def _check_resume_config(config, workdir: str, ckpt) -> dict:
  """The changed keys (empty when none) of a resumed run; refused unless resume_changes=allow."""
  path = os.path.join(workdir, "config.json")
  if ckpt.latest_step() is None or not os.path.exists(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f"{path} is not readable JSON ({e}); restore it or use a new workdir"
                    ) from None
  diffs = config_lib.resume_differences(saved, config)
  if diffs and config.get("resume_changes", "refuse") != "allow":
    raise UserError(
        f"resume refused: the config differs from the run in {workdir} "
        f"({config_lib.describe_differences(diffs)}); pass --config.resume_changes=allow to "
        "continue with the change, or use a new --workdir")
  return diffs


def _train_and_evaluate(config, workdir: str) -> dict[str, float]:
  total = int(config.total_steps)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    every_steps=int(config.checkpoint.every_steps),
                                    keep=int(config.checkpoint.keep),
                                    async_save=bool(config.checkpoint.get("async", True)))
  results_path = os.path.join(workdir, "results.json")
  latest = ckpt.latest_step()
  if latest is not None and latest >= total and os.path.exists(results_path):
    with open(results_path) as f:
      results = json.load(f)
    log.info("workdir %s already holds the final checkpoint (step %d) and results",
                 workdir, latest)
    _print_results(results)
    ckpt.close()
    return results
  changes = _check_resume_config(config, workdir, ckpt)
  s = setup(config, workdir=workdir)
  writer = metric_writer.MetricWriter(workdir)
  train_iter = s.method.train_iterator(seed=int(config.seed),
                                       global_batch_size=int(config.batch_size),
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count())
  try:
    state, start = initial_state(s, config, ckpt, train_iter)
  except checkpointing.ModelChanged as e:
    writer.close()
    ckpt.close()
    keys = config_lib.describe_differences(changes) if changes else "none besides the model's"
    raise checkpointing.ModelChanged(f"{e}; changed config keys: {keys}") from None
  except BaseException:
    writer.close()
    ckpt.close()
    raise
  if start == 0:
    writer.start_fresh()
    _write_config(workdir, config)
  else:
    writer.truncate_after(start)
    if changes:
      _write_config(workdir, config, step=start, changes=changes)
      log.warning("resuming at step %d with changed config keys: %s", start,
                  config_lib.describe_differences(changes))
  # The mesh each checkpoint was written on: a resume onto another mesh says so (Orbax reshards).
  meta = {"config": json.loads(config.to_json_best_effort()), "mesh": shd.describe(s.mesh),
          "devices": int(s.mesh.devices.size)}
  base_rng = jax.random.key(int(config.seed))
  preempt = _Preemption()
  log_every = max(int(config.log_every_steps), 1)
  pbar = _progress(start, total)
  pending = None  # (step, metrics) of the previous step: checked one step late, keeps dispatch async
  t_last, step_last = time.perf_counter(), start
  step = start
  try:
    with s.context():
      for step in range(start + 1, total + 1):
        local = next(train_iter)
        batch = steps_lib.make_global_batch(local, s.batch_sharding)
        state, metrics = s.train_step(state, batch, base_rng)
        if pending is not None:
          _check_finite(*pending, ckpt, s.abstract_state)
        pending = (step, metrics)
        if step % log_every == 0 or step == total:
          _check_finite(*pending, ckpt, s.abstract_state)
          m = jax.device_get(metrics)
          now = time.perf_counter()
          rec = {f"train/{k}": float(v) for k, v in m.items() if k != "finite"}
          rec["train/steps_per_sec"] = (step - step_last) / max(now - t_last, 1e-9)
          rec["train/examples_per_sec"] = rec["train/steps_per_sec"] * int(config.batch_size)
          t_last, step_last = now, step
          writer.write(step, rec)
          if pbar is not None:
            pbar.set_postfix(loss=f"{rec['train/loss']:.4f}")
        if pbar is not None:
          pbar.update(1)
        if ckpt.should_save(step) or step == total:
          _check_finite(*pending, ckpt, s.abstract_state)  # never checkpoint a non-finite step
          ckpt.save(step, state, train_iter, meta)
        if step != total:
          results = evaluate(s, config, state, step)
          if results:
            writer.write(step, results)
        if preempt.reached(step):
          log.warning("preemption requested at step %d: saving and exiting", step)
          if ckpt.latest_step() != step:
            ckpt.save(step, state, train_iter, meta, force=True)
          ckpt.close()
          writer.close()
          raise SystemExit(0)
    if pending is not None:
      _check_finite(*pending, ckpt, s.abstract_state)
  except BaseException as e:
    writer.close()
    if not isinstance(e, SystemExit):  # preemption closed the checkpointer already
      if isinstance(e, KeyboardInterrupt):
        log.warning("interrupted at step %d; waiting for checkpoint writes to finish", step)
      _close_quietly(ckpt)
    raise
  finally:
    if pbar is not None:
      pbar.close()
  ckpt.wait()
  results = evaluate(s, config, state)
  writer.write(total, results)
  if jax.process_index() == 0:
    with open(results_path + ".tmp", "w") as f:
      json.dump(dict(results, step=total), f, indent=2, sort_keys=True)
    os.replace(results_path + ".tmp", results_path)
  _print_results(results)
  ckpt.close()
  writer.close()
  return results


def _close_quietly(ckpt) -> None:
  """Finishes in-flight checkpoint writes on the way out of a failed run; an error there (a
  full disk) must not hide the first one."""
  try:
    ckpt.close()
  except Exception as e:  # pylint: disable=broad-except
    log.warning("checkpoint writes did not finish: %s", str(e).splitlines()[0] if str(e) else e)


def evaluate_only(config, workdir: str) -> dict[str, float]:
  """--mode eval: restores the newest verified checkpoint of `workdir` (or `init_from`) and
  evaluates. Results are appended to metrics.jsonl when the workdir is writable and no run
  holds it; they are printed in any case."""
  s = setup(config, workdir=workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  ckpt = None
  if os.path.isdir(ckpt_dir):
    ckpt = checkpointing.Checkpointer(ckpt_dir, every_steps=1, keep=1, create=False,
                                      quarantine=False)
  if (ckpt is None or ckpt.latest_step() is None) and not config.get("init_from", ""):
    raise PathNotFound(f"--mode eval: no checkpoint under {ckpt_dir} and no config.init_from")
  state, step = initial_state(s, config, ckpt)
  results = evaluate(s, config, state)
  _print_results(results)
  try:
    with workdir_lock.WorkdirLock(workdir, "eval"):
      metric_writer.MetricWriter(workdir, tensorboard=False).write(step, results)
  except (UserError, OSError) as e:
    log.warning("results not written to %s/metrics.jsonl: %s", workdir,
                str(e).splitlines()[0])
  if ckpt is not None:
    ckpt.close()
  return results


def _check_finite(step: int, metrics: dict, ckpt, abstract_state) -> None:
  if not bool(jax.device_get(metrics["finite"])):
    loss = float(jax.device_get(metrics["loss"]))
    ckpt.wait()
    good = ckpt.newest_intact_step(abstract_state)
    where = (f"the last good (verified) checkpoint is step {good} in {ckpt.directory}"
             if good is not None else f"no verified checkpoint in {ckpt.directory}")
    raise NonFiniteLossError(
        f"non-finite loss ({loss}) or gradient at step {step}; stopping: {where}")


def _write_config(workdir: str, config, step: int = 0, changes: dict | None = None) -> None:
  """config.json: the run's config; a resume with accepted changes appends them to its
  history (key, old and new value, step, time)."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "config.json")
  history = []
  if changes and os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      history = json.load(f).get(config_lib.HISTORY_KEY, [])
  if changes:
    history.append({"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "changes": {k: [a, b] for k, (a, b) in changes.items()}})
  out = config_lib.as_json_dict(config)
  if history:
    out[config_lib.HISTORY_KEY] = history
  with open(path + ".tmp", "w") as f:
    json.dump(out, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


def _progress(start: int, total: int):
  if jax.process_index() != 0:
    return None
  return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
              mininterval=1.0)


def _print_results(results: dict) -> None:
  if jax.process_index() == 0:
    scalars = {k: v for k, v in sorted(results.items()) if isinstance(v, (int, float))
               and "/accuracy/" not in k}
    print("results: " + json.dumps(scalars), flush=True)
