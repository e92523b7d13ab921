"""Orbax checkpointing of train state + grain iterator state + config.

One step directory holds `state/` (sharded arrays), `data_iter/` (one JSON per process) and
`meta/` (the config, for humans and for `init_from`). Saves are asynchronous and atomic (orbax
commits a step only when every item is written), so a killed run resumes from the last complete
step. Restores target abstract arrays that carry the current shardings, so a checkpoint written on
one mesh restores onto another.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxaffect.errors import PathNotFound

log = logging.getLogger(__name__)


def _abs(path: str) -> str:
  return str(epath.Path(path).expanduser().resolve()) if "://" not in path else path


class Checkpointer:
  """Thin wrapper over ocp.CheckpointManager with the items this project saves."""

  def __init__(self, directory: str, *, every_steps: int, keep: int, async_save: bool = True):
    self.directory = _abs(directory)
    self.every_steps = max(int(every_steps), 1)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max(int(keep), 1),
        enable_async_checkpointing=async_save,
        create=True,
        # Saves are decided by the trainer (interval, final step, preemption).
        save_interval_steps=1,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    return step % self.every_steps == 0

  def save(self, step: int, state: Any, data_iter=None, meta: dict | None = None,
           force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      import grain
      items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    if meta is not None:
      items["meta"] = ocp.args.JsonSave(meta)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any, data_iter=None) -> Any:
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      import grain
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_params(path: str, abstract_params: Any, abstract_model_state: Any = None) -> Any:
  """Params-only initialisation (`init_from`) from another run.

  `path` is a workdir, its checkpoints dir, one step dir, or a params checkpoint written by
  `save_params`. Every target parameter must be present with the same shape; optimizer state
  and iterator are ignored. With `abstract_model_state` (e.g. BatchNorm statistics), returns
  (params, model_state), model_state None when the checkpoint holds none.
  """
  p = epath.Path(_abs(path))
  if not p.exists():
    raise PathNotFound(f"init_from: {p} does not exist")
  if (p / "checkpoints").exists():
    p = p / "checkpoints"
  steps = [int(c.name) for c in p.iterdir() if c.name.isdigit()] if p.is_dir() else []
  if steps:
    p = p / str(max(steps))
  wrapped = (p / "state").exists()
  item_dir = p / "state" if wrapped else p
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
  except (ValueError, KeyError) as e:
    raise ValueError(f"init_from: {item_dir} does not match the model's parameters: {e}") from e
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
      raise ValueError(f"init_from: {where} lacks parameter {name}")
    if tuple(got[name]) != tuple(v.shape):
      raise ValueError(f"init_from: {where} parameter {name} has shape {tuple(got[name])}, "
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
