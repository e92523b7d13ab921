"""Writing converted checkpoints, and merging them into a freshly initialised model state.

On disk (OUT_DIR): an Orbax params checkpoint written by `checkpointing.save_params` whose tree is
{"params": ..., "batch_stats": ...} (Flax variable collections), plus `jaxaffect_convert.json`:
which subtrees the checkpoint covers ("params/visual_backbone", ...), which model variables
inside them deliberately keep their init (e.g. VAANet's new audio stem), what was dropped and
why, and the model settings the weights imply.

`restore_converted` is the init_from path for such a directory: every saved array must exist
in the model with the same shape; inside each covered subtree every model variable must come from
the checkpoint unless listed in keep_init (so a ResNet-50 file cannot silently half-fill a
ResNet-101); everything outside the covered subtrees keeps the fresh init.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxaffect import checkpointing, checksums
from jaxaffect.errors import ConversionError

log = logging.getLogger(__name__)

META_FILE = "jaxaffect_convert.json"


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  """{("params", "conv1", "kernel"): leaf} for a nested mapping (any Mapping type is a node)."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for path, v in flat.items():
    d = out
    for p in path[:-1]:
      d = d.setdefault(p, {})
    d[path[-1]] = v
  return out


def save_converted(out_dir: str, converted) -> None:
  """Writes `converted.variables` with save_params and the sidecar JSON next to the arrays."""
  tree = {c: t for c, t in converted.variables.items() if t}
  tree = _map_tree(lambda a: np.ascontiguousarray(a), tree)
  checkpointing.save_params(out_dir, tree)
  meta = dict(converted.meta())
  # Verified on every init_from, as training checkpoints are (jaxaffect/checksums.py).
  meta["checksums"] = checksums.of_named({"/".join(k): v for k, v in flatten(tree).items()})
  with open(os.path.join(out_dir, META_FILE), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True, default=str)


def _map_tree(fn, tree):
  if isinstance(tree, Mapping):
    return {k: _map_tree(fn, v) for k, v in tree.items()}
  return fn(tree)


def read_meta(path: str) -> dict[str, Any] | None:
  p = os.path.join(os.path.expanduser(path), META_FILE)
  if not os.path.exists(p):
    return None
  with open(p) as f:
    return json.load(f)


def is_converted(path: str) -> bool:
  """True for a directory written by `python -m jaxaffect.convert`."""
  return "://" not in path and read_meta(path) is not None


def _saved_tree(path: str) -> dict[tuple[str, ...], Any]:
  md = ocp.PyTreeCheckpointer().metadata(path)
  tree = getattr(getattr(md, "item_metadata", md), "tree", None)
  if tree is None:
    tree = md.item_metadata
  return flatten(tree)


def restore_converted(path: str, params: Any, model_state: Mapping[str, Any], *,
                      ignore_subtrees: tuple[str, ...] = ()) -> tuple[Any, dict[str, Any]]:
  """Merges the converted checkpoint at `path` into fresh (params, model_state).

  params: the freshly initialised params tree; model_state: {"batch_stats": tree, ...}. Leaves
  may be jax.Arrays (restored onto the same shardings) or NumPy arrays. Returns new
  (params, model_state) with the covered variables replaced.
  ignore_subtrees: top-level module names whose saved variables are deliberately not used
    (e.g. "visual_backbone" for a VAANet trained from cached backbone features).
  """
  path = os.path.abspath(os.path.expanduser(path))
  meta = read_meta(path) or {}
  saved = {k: v for k, v in _saved_tree(path).items() if k[1] not in ignore_subtrees}
  fresh = flatten({"params": params, **dict(model_state)})
  covered = [s for s in meta.get("subtrees") or sorted({"/".join(k[:2]) for k in saved})
             if s.split("/")[1] not in ignore_subtrees]
  keep_init = tuple(meta.get("keep_init", ()))

  def under(p: str, prefixes) -> bool:
    return any(p == s or p.startswith(s + "/") for s in prefixes)

  errors = []
  for k, md in saved.items():
    name = "/".join(k)
    if k not in fresh:
      errors.append(f"checkpoint variable {name} does not exist in the model")
    elif tuple(md.shape) != tuple(np.shape(fresh[k])):
      errors.append(f"{name}: checkpoint shape {tuple(md.shape)}, model shape "
                    f"{tuple(np.shape(fresh[k]))}")
  for k in fresh:
    name = "/".join(k)
    if under(name, covered) and k not in saved and not under(name, keep_init):
      errors.append(f"model variable {name} is not in the checkpoint (covered subtrees: "
                    f"{', '.join(covered)})")
  if errors:
    head = f"init_from: {path} does not fit the model ({meta.get('converter', 'converted')}):"
    raise ConversionError("\n  ".join([head] + errors[:30] + (
        [f"... and {len(errors) - 30} more"] if len(errors) > 30 else [])))

  restored = _restore(path, {k: fresh[k] for k in saved}) if saved else {}
  expected = meta.get("checksums")
  if expected is not None and restored:
    got = checksums.of_named({"/".join(k): v for k, v in restored.items()})
    bad = sorted(k for k, v in got.items() if expected.get(k) != v)
    if bad:
      raise ConversionError(f"init_from: {path} fails its checksums ({bad[0]}"
                            f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); "
                            "convert the original file again")
  merged = dict(fresh)
  merged.update(restored)
  tree = unflatten(merged)
  log.info("init_from %s: %d variables restored (%s), %d kept their init", path,
           len(restored), ", ".join(covered), len(fresh) - len(restored))
  return tree.pop("params"), tree


def _restore(path: str, targets: Mapping[tuple[str, ...], Any]) -> dict[tuple[str, ...], Any]:

  def args_for(x):
    if isinstance(x, jax.Array):
      return ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype, global_shape=x.shape)
    return ocp.RestoreArgs(restore_type=np.ndarray, dtype=np.asarray(x).dtype)

  item = unflatten({k: (jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding)
                               if isinstance(v, jax.Array) else np.asarray(v))
                           for k, v in targets.items()})
  restore_args = unflatten({k: args_for(v) for k, v in targets.items()})
  out = ocp.PyTreeCheckpointer().restore(
      path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                        partial_restore=True))  # ignore_subtrees: a subset
  return flatten(out)
