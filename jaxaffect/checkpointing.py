"""Orbax checkpointing of train state + grain iterator state + config, verified on restore.

One step directory holds `state/` (sharded arrays), `data_iter/` (one JSON per process), `meta/`
(the config, for humans and for `init_from`) and `integrity/`: the checksums of every array
(`jaxaffect.checksums`, summed shard by shard) and of every process's iterator state. Saves are
asynchronous and atomic: orbax commits a step only after every item, checksums included, is
written, so a step without its checksum record is unfinished. Restore verifies the checksums and
falls back to the newest intact step; unusable steps are moved (never deleted) to
`checkpoints_unusable/`. Restores target abstract arrays that carry the current shardings, so a
checkpoint written on one mesh restores onto another.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from jaxaffect import checksums
from jaxaffect.errors import NoIntactCheckpoint, PathNotFound, UserError

log = logging.getLogger(__name__)

_INTEGRITY_VERSION = 1


def _abs(path: str) -> str:
  return str(epath.Path(path).expanduser().resolve()) if "://" not in path else path


def _use_replica_parallel_only_across_processes() -> None:
  """Orbax's replica-parallel saving splits every replicated array into one slice per replica,
  each cut by its own small jitted program: thousands of dispatches (and ~130 compiles on the
  first save) for a model's state, ~2 s per save of the demo on 4 CPU devices. It only pays
  when the replicas live on different hosts, which then write their slices in parallel; in one
  process every slice goes through the same host anyway, so there it is off."""
  multi = jax.process_count() > 1
  if getattr(_use_replica_parallel_only_across_processes, "set_for", None) == multi:
    return
  # Keep the rest of Orbax's default handler (its per-host array-metadata store).
  store = getattr(ocp.type_handlers.get_type_handler(jax.Array), "_array_metadata_store", None)
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=multi,
                                                array_metadata_store=store), override=True)
  _use_replica_parallel_only_across_processes.set_for = multi


class ModelChanged(UserError):
  """The checkpoint's arrays have other shapes/dtypes than the current config's model."""


def _all_agree(ok: bool) -> bool:
  """True when `ok` holds on every process (a step is usable only if every process can read
  its part)."""
  if jax.process_count() == 1:
    return ok
  flags = multihost_utils.process_allgather(np.asarray([int(ok)], np.int32))
  return bool(np.all(flags))


def _short(e: BaseException) -> str:
  text = (str(e).strip().splitlines() or [type(e).__name__])[0]
  return f"{type(e).__name__}: {text[:300]}"


class Checkpointer:
  """ocp.CheckpointManager with the items this project saves, checksums and fallback."""

  def __init__(self, directory: str, *, every_steps: int, keep: int, async_save: bool = True,
               create: bool = True, quarantine: bool = True):
    self.directory = _abs(directory)
    self.quarantine = quarantine  # move unusable steps aside (off for read-only evaluation)
    self.every_steps = max(int(every_steps), 1)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max(int(keep), 1),
        enable_async_checkpointing=async_save,
        create=create,
        # Saves are decided by the trainer (interval, final step, preemption).
        save_interval_steps=1,
    )
    _use_replica_parallel_only_across_processes()
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self.verified_step: int | None = None  # the step restored and verified by this process

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    return step % self.every_steps == 0

  def _check_space(self, step: int, state: Any) -> None:
    """Refuses a save that cannot fit, before orbax's writer threads fail halfway through it."""
    need = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    need = int(need * 1.1) + (1 << 20)  # metadata, iterator state, json items
    try:
      free = shutil.disk_usage(self.directory).free
    except OSError:
      free = None
    if not _all_agree(free is None or free >= need):
      raise UserError(f"cannot write checkpoint step {step} to {self.directory}: about "
                      f"{need / 2**20:.0f} MiB needed, {(free or 0) / 2**20:.0f} MiB free on "
                      "that disk; free some space and rerun the same command to resume")

  def save(self, step: int, state: Any, data_iter=None, meta: dict | None = None,
           force: bool = False) -> bool:
    self.wait()  # one save in flight at a time; surfaces the previous save's error here
    self._check_space(step, state)
    integrity = {"version": _INTEGRITY_VERSION, "arrays": checksums.of_arrays(state)}
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      import grain  # deferred: only runs that checkpoint an iterator
      items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
      mine = np.frombuffer(bytes.fromhex(checksums.of_json(data_iter.get_state())), np.uint8)
      every = (multihost_utils.process_allgather(mine) if jax.process_count() > 1
               else mine[None])
      integrity["data_iter"] = [bytes(row).hex() for row in np.asarray(every, np.uint8)]
    if meta is not None:
      items["meta"] = ocp.args.JsonSave(meta)
    items["integrity"] = ocp.args.JsonSave(integrity)
    try:
      return self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"cannot write checkpoint step {step} to {self.directory}: "
                      f"{_short(e)}") from e

  # ---- restore with verification and fallback ---------------------------------------------

  def _integrity(self, step: int) -> dict:
    path = os.path.join(self.directory, str(step), "integrity", "metadata")
    if not os.path.exists(path):
      raise ValueError("no checksum record (an unfinished save, or written before checksums "
                       "existed)")
    with open(path, "rb") as f:
      record = json.loads(f.read().decode("utf-8"))
    if record.get("version") != _INTEGRITY_VERSION or "arrays" not in record:
      raise ValueError(f"unknown checksum record version {record.get('version')!r}")
    return record

  def _check_model(self, step: int, record: dict, abstract_state: Any) -> None:
    diffs = checksums.shape_differences(
        {k: {"shape": v["shape"], "dtype": v["dtype"]} for k, v in record["arrays"].items()},
        checksums.structure(abstract_state))
    if diffs:
      raise ModelChanged(
          f"cannot resume from {self.directory}/{step}: the config's model differs from the "
          f"checkpoint's ({'; '.join(diffs)}); restore the model settings or use a new workdir")

  def _verify_data_iter(self, step: int, record: dict) -> None:
    saved = record.get("data_iter")
    if saved is None:
      return
    p, n = jax.process_index(), jax.process_count()
    if len(saved) != n:
      raise ValueError(f"written by {len(saved)} processes, this run has {n}")
    path = os.path.join(self.directory, str(step), "data_iter", f"process_{p}-of-{n}.json")
    with open(path, "rb") as f:
      got = checksums.of_json(json.loads(f.read().decode("utf-8")))
    if got != saved[p]:
      raise ValueError(f"checksum mismatch in {os.path.relpath(path, self.directory)}")

  def _try_restore(self, step: int, abstract_state: Any, data_iter) -> tuple[Any, str | None]:
    """(state, None) when `step` reads and verifies on every process, else (None, reason).

    Three phases, agreed between processes before each collective one: the local checks
    (checksum record, model shapes, iterator file), the restore, then the array checksums."""
    def attempt(fn):
      try:
        return fn(), None
      except ModelChanged:
        raise
      except Exception as e:  # pylint: disable=broad-except
        return None, _short(e)

    def local_checks():
      record = self._integrity(step)
      self._check_model(step, record, abstract_state)
      if data_iter is not None:
        self._verify_data_iter(step, record)
      return record

    def restore():
      items = {"state": ocp.args.StandardRestore(abstract_state)}
      if data_iter is not None:
        import grain  # deferred: only runs that checkpoint an iterator
        items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
      return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

    record, reason = attempt(local_checks)
    if not _all_agree(reason is None):
      return None, reason or "unreadable on another process"
    state, reason = attempt(restore)
    if not _all_agree(reason is None):
      return None, reason or "unreadable on another process"
    got = checksums.of_arrays(state)
    bad = [k for k, v in record["arrays"].items() if got.get(k, {}).get("sum") != v["sum"]]
    if bad:
      more = f" and {len(bad) - 1} more arrays" if len(bad) > 1 else ""
      return None, f"checksum mismatch in {bad[0]}{more}"
    return state, None

  def saved_meta(self, step: int) -> dict:
    """The JSON metadata saved with `step` ({} when it has none or it does not read)."""
    try:
      return dict(self.manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"] or {})
    except Exception:  # pylint: disable=broad-except  (metadata only informs a log line)
      return {}

  def restore(self, step: int, abstract_state: Any, data_iter=None) -> Any:
    """The verified state of one step; a UserError naming the step when it is unusable."""
    state, reason = self._try_restore(step, abstract_state, data_iter)
    if reason is not None:
      raise UserError(f"checkpoint step {step} in {self.directory} is unusable ({reason})")
    return state

  def restore_latest(self, abstract_state: Any, data_iter=None) -> tuple[Any, int] | None:
    """(state, step) of the newest step that reads and verifies, or None without steps.

    Steps that fail are named in a warning and, once an older step restored, moved to
    `<workdir>/checkpoints_unusable/`. With no intact step, raises NoIntactCheckpoint and moves
    nothing. A step whose arrays have other shapes than the model's raises ModelChanged.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    failed: list[tuple[int, str]] = []
    for step in steps:
      state, reason = self._try_restore(step, abstract_state, data_iter)
      if reason is not None:
        failed.append((step, reason))
        log.warning("checkpoint step %d in %s is unusable (%s)%s", step, self.directory,
                    reason, "; trying the previous one" if step != steps[-1] else "")
        continue
      if failed and self.quarantine:
        self._quarantine([s for s, _ in failed])
        log.warning("resuming from step %d (verified); unusable steps %s moved to %s", step,
                    ", ".join(str(s) for s, _ in failed), self.quarantine_dir)
      self.verified_step = step
      return state, step
    if failed:
      listed = "; ".join(f"step {s}: {r}" for s, r in failed)
      raise NoIntactCheckpoint(
          f"no intact checkpoint in {self.directory} ({listed}); nothing was moved or deleted: "
          "move the checkpoints folder away to start over")
    return None

  @property
  def quarantine_dir(self) -> str:
    return os.path.join(os.path.dirname(self.directory), "checkpoints_unusable")

  def _quarantine(self, steps: list[int]) -> None:
    if jax.process_index() == 0:
      os.makedirs(self.quarantine_dir, exist_ok=True)
      for s in steps:
        dst = os.path.join(self.quarantine_dir, str(s))
        if os.path.exists(dst):
          dst += f".{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(os.path.join(self.directory, str(s)), dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("jaxaffect_checkpoints_quarantined")
    self.manager.reload()

  def newest_intact_step(self, abstract_state: Any) -> int | None:
    """The newest step that verifies (arrays only); used to name the last good checkpoint."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        if self._try_restore(step, abstract_state, None)[1] is None:
          return step
      except ModelChanged:
        return None
    return None

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"a checkpoint write to {self.directory} failed: {_short(e)}") from e

  def close(self) -> None:
    self.wait()
    self.manager.close()


def _init_from_step_dir(p: epath.Path) -> epath.Path:
  """The step folder `init_from` reads: `p` itself, or the newest finished step below a workdir
  or its checkpoints folder; unfinished saves (orbax temporaries, no commit marker) are named."""
  if (p / "checkpoints").is_dir():
    p = p / "checkpoints"
  if not p.is_dir():
    raise UserError(f"init_from: {p} is a file; expected a workdir, its checkpoints folder, a "
                    "step folder or a converted checkpoint")
  children = list(p.iterdir())
  if not children:
    raise UserError(f"init_from: {p} is empty; expected a workdir, its checkpoints folder, a "
                    "step folder or a converted checkpoint")
  steps = sorted((int(c.name) for c in children if c.name.isdigit()), reverse=True)
  if not steps:
    if any((p / f).exists() for f in ("state", "_METADATA", "_CHECKPOINT_METADATA")):
      return p
    unfinished = sorted(c.name for c in children if "tmp" in c.name)
    raise UserError(f"init_from: {p} holds no finished checkpoint"
                    + (f" (unfinished saves: {', '.join(unfinished)})" if unfinished else ""))
  return p / str(steps[0])


def restore_params(path: str, abstract_params: Any, abstract_model_state: Any = None) -> Any:
  """Params-only initialisation (`init_from`) from another run.

  `path` is a workdir, its checkpoints dir, one step dir, or a params checkpoint written by
  `save_params`. Every target parameter must be present with the same shape; optimizer state
  and iterator are ignored; a step's checksums are verified. With `abstract_model_state` (e.g.
  BatchNorm statistics), returns (params, model_state), model_state None when the checkpoint
  holds none.
  """
  p = epath.Path(_abs(path))
  if not p.exists():
    raise PathNotFound(f"init_from: {p} does not exist")
  p = _init_from_step_dir(p)
  wrapped = (p / "state").exists()
  item_dir = p / "state" if wrapped else p
  if not (item_dir / "_METADATA").exists() and not (item_dir / "_CHECKPOINT_METADATA").exists():
    raise UserError(f"init_from: {item_dir} is not a finished checkpoint (no _METADATA)")
  with_state = wrapped and abstract_model_state is not None and bool(
      jax.tree.leaves(abstract_model_state))
  target = ({"params": abstract_params, **({"model_state": abstract_model_state}
                                           if with_state else {})}
            if wrapped else abstract_params)
  restore_args = jax.tree.map(
      lambda x: ocp.ArrayRestoreArgs(sharding=getattr(x, "sharding", None), dtype=x.dtype,
                                     global_shape=x.shape), target)
  ckptr = ocp.PyTreeCheckpointer()
  try:
    restored = ckptr.restore(item_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"init_from: cannot read {item_dir} as the model's parameters "
                    f"({_short(e)})") from e
  if wrapped and (p / "integrity").exists():
    record = json.loads((p / "integrity" / "metadata").read_text())["arrays"]
    got = checksums.of_arrays(restored)
    bad = [k for k, v in got.items() if k in record and record[k]["sum"] != v["sum"]]
    if bad:
      raise UserError(f"init_from: {p} fails its checksums ({bad[0]}"
                      f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); pick another step")
  params = restored["params"] if wrapped else restored
  _check_shapes(params, abstract_params, str(item_dir))
  if abstract_model_state is None:
    return params
  model_state = restored.get("model_state") if with_state else None
  if model_state is not None:
    _check_shapes(model_state, abstract_model_state, str(item_dir))
  return params, model_state


def _check_shapes(params, abstract_params, where: str) -> None:
  got = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(params)}
  for k, v in jax.tree_util.tree_leaves_with_path(abstract_params):
    name = jax.tree_util.keystr(k)
    if name not in got:
      raise UserError(f"init_from: {where} lacks parameter {name}")
    if tuple(got[name]) != tuple(v.shape):
      raise UserError(f"init_from: {where} parameter {name} has shape {tuple(got[name])}, "
                       f"the model expects {tuple(v.shape)}")


def save_params(path: str, params: Any) -> None:
  """Writes a params-only checkpoint usable with `--config.init_from=PATH` (converters use it)."""
  handler = ocp.StandardCheckpointer()
  handler.save(_abs(path), params, force=True)
  handler.wait_until_finished()
  log.info("wrote params checkpoint %s", path)


def is_primary() -> bool:
  return jax.process_index() == 0


def ensure_dir(path: str) -> None:
  if "://" not in path:
    os.makedirs(path, exist_ok=True)
