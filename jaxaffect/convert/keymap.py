"""Strict PyTorch state_dict -> Flax variables mapping, driven by the Flax model's own tree.

The target is the model's abstract variables {"params": ..., "batch_stats": ...}; every leaf names
its PyTorch key by the project rule (the Flax modules' docstrings): module "name_i" -> "name.i",
kernel/scale -> weight, bias -> bias, batch_stats mean/var -> running_mean/running_var, and a
BatchNorm's optional `num_batches_tracked` is consumed with it. A per-converter `rename` maps the
first path component (e.g. visual_backbone -> "resnet" with Sequential indices).

Layouts: Conv3d [o, i, t, h, w] -> kernel [t, h, w, i, o]; Conv2d [o, i, h, w] -> [h, w, i, o];
Conv1d [o, i, k] -> [k, i, o];
Linear [o, i] and Conv1d(k=1) [o, i, 1] -> Dense kernel [i, o]; vectors as they are.

Every problem is collected and raised together as one ConversionError naming each key: a model
variable without a checkpoint key (missing), a checkpoint key nothing consumed (unexpected), a
shape mismatch (key, checkpoint shape, expected PyTorch shape and the Flax leaf).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from jaxaffect.converted_checkpoint import flatten, unflatten  # noqa: F401 (used as keymap.*)
from jaxaffect.errors import ConversionError, UserError  # ConversionError: re-exported

_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var",
               "alpha": "alpha"}  # a bare nn.Parameter of that name (CTEN's non-local gate)
_MAX_LISTED = 20


def module_name(flax_name: str) -> str:
  """'layer3_22' -> 'layer3.22', 'conv0_0' -> 'conv0.0', 'a_fc_0' -> 'a_fc.0'."""
  return re.sub(r"_(\d+)$", r".\1", flax_name)


def sequential_resnet(prefix: str) -> Callable[[tuple[str, ...]], str]:
  """Rename for a ResNet body held as nn.Sequential(children[:k]) in the original model:
  <top>/conv1 -> <prefix>.0, bn1 -> <prefix>.1, layerN_i -> <prefix>.<N+3>.i (relu and maxpool
  are 2 and 3 and hold no variables)."""

  def rename(path: tuple[str, ...]) -> str:
    head, rest = path[1], [module_name(p) for p in path[2:]]
    if head == "conv1":
      idx = "0"
    elif head == "bn1":
      idx = "1"
    else:
      m = re.fullmatch(r"layer(\d)_(\d+)", head)
      if not m:
        raise ConversionError(f"no Sequential index for backbone module {head!r}")
      idx = f"{int(m.group(1)) + 3}.{m.group(2)}"
    return ".".join(p for p in [prefix, idx, *rest] if p)

  return rename


def plain(path: tuple[str, ...]) -> str:
  """The default rule: every module component name_i -> name.i, joined by dots."""
  return ".".join(module_name(x) for x in path)


def below(prefix: str = "") -> Callable[[tuple[str, ...]], str]:
  """Rename for a stand-alone network stored under one top-level Flax name (e.g. a Hara
  ResNet under visual_backbone): drop that name, optionally prepend a key prefix."""

  def rename(path: tuple[str, ...]) -> str:
    return ".".join(p for p in [prefix, plain(path[1:])] if p)

  return rename


def torch_shape(flax_shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
  """The PyTorch tensor shape a Flax leaf comes from (Dense: the Linear form)."""
  s = tuple(flax_shape)
  if leaf == "kernel" and len(s) == 5:
    return (s[4], s[3], s[0], s[1], s[2])
  if leaf == "kernel" and len(s) == 4:
    return (s[3], s[2], s[0], s[1])
  if leaf == "kernel" and len(s) == 3:
    return (s[2], s[1], s[0])
  if leaf == "kernel" and len(s) == 2:
    return (s[1], s[0])
  return s


def to_flax(arr: np.ndarray, leaf: str, ndim: int) -> np.ndarray:
  """PyTorch tensor -> Flax layout (a view where possible; the caller checked the shape)."""
  if leaf == "kernel" and ndim == 5:
    return arr.transpose(2, 3, 4, 1, 0)
  if leaf == "kernel" and ndim == 4:
    return arr.transpose(2, 3, 1, 0)
  if leaf == "kernel" and ndim == 3:
    return arr.transpose(2, 1, 0)
  if leaf == "kernel" and ndim == 2:
    if arr.ndim == 3:  # Conv1d(k=1) weight [o, i, 1]
      arr = arr[..., 0]
    return arr.T
  return arr


def _shape_ok(got: tuple[int, ...], want: tuple[int, ...], leaf: str, ndim: int) -> bool:
  if got == want:
    return True
  return leaf == "kernel" and ndim == 2 and got == want + (1,)  # Conv1d(k=1) as Dense


@dataclasses.dataclass
class Mapped:
  """Result of `map_state_dict`: the Flax variables and an account of every checkpoint key."""
  variables: dict[str, Any]                 # {"params": ..., "batch_stats": ...} of NumPy arrays
  used: dict[str, str]                      # torch key -> Flax path ("params/a/b/kernel")
  dropped: dict[str, str]                   # torch key -> why it is not converted
  skipped: list[str]                        # Flax paths deliberately left to the model's init


def mismatch_lines(source: str, missing, unexpected, mismatched) -> list[str]:
  """The report of a checkpoint that does not match the model: each kind of mismatch with its
  count and up to _MAX_LISTED names (every converter words it the same way)."""
  lines = [f"{source} does not match the model:"]
  for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                       ("shape mismatches", mismatched)):
    if items:
      lines.append(f"  {len(items)} {title}:")
      lines += [f"    {x}" for x in items[:_MAX_LISTED]]
      if len(items) > _MAX_LISTED:
        lines.append(f"    ... and {len(items) - _MAX_LISTED} more")
  return lines


def map_state_dict(state_dict: Mapping[str, np.ndarray], abstract: Mapping[str, Any],
                   rename: Mapping[str, Callable[[tuple[str, ...]], str]], *,
                   drop: Mapping[str, str] | None = None,
                   skip: Iterable[str] = (), source: str = "checkpoint",
                   hint: Callable[[list[str], list[str]], str] | None = None) -> Mapped:
  """Maps `state_dict` onto `abstract` ({"params": tree, "batch_stats": tree} of shaped leaves).

  rename: top-level Flax module name -> function(module path, top name first, leaf excluded)
    returning the PyTorch module key (`sequential_resnet`, `below`); other names use `plain`.
  drop: PyTorch keys consumed on purpose without a Flax counterpart, with the reason; a key
    listed here that the file lacks is fine (e.g. an fc head saved or not).
  skip: Flax path prefixes ("params/audio_backbone/conv1") left to the model's init; their
    variables get no checkpoint key and are absent from the result.
  hint: optional function(missing, unexpected) -> extra text for the error message.
  """
  drop = dict(drop or {})
  skip = tuple(skip)
  flat = flatten(abstract)
  out: dict[tuple[str, ...], np.ndarray] = {}
  used: dict[str, str] = {}
  missing: list[str] = []
  mismatched: list[str] = []
  skipped: list[str] = []
  bn_modules: set[str] = set()
  for path, spec in flat.items():
    coll, top, *mods, leaf = path
    flax_path = "/".join(path)
    if any(flax_path == s or flax_path.startswith(s + "/") for s in skip):
      skipped.append(flax_path)
      continue
    if leaf not in _LEAF_NAMES:
      raise ConversionError(f"no PyTorch name for Flax leaf {flax_path}")
    module_key = rename.get(top, plain)((top, *mods))
    key = f"{module_key}.{_LEAF_NAMES[leaf]}" if module_key else _LEAF_NAMES[leaf]
    if leaf == "mean":
      bn_modules.add(module_key)
    shape = tuple(spec.shape)
    if key not in state_dict:
      missing.append(f"{key} (for {flax_path}, PyTorch shape {torch_shape(shape, leaf)})")
      continue
    arr = np.asarray(state_dict[key])
    want = torch_shape(shape, leaf)
    if not _shape_ok(tuple(arr.shape), want, leaf, len(shape)):
      mismatched.append(f"{key}: checkpoint shape {tuple(arr.shape)}, model expects {want} "
                        f"(for {flax_path} {shape})")
      used[key] = flax_path
      continue
    out[path] = to_flax(arr, leaf, len(shape)).astype(spec.dtype, copy=False)
    used[key] = flax_path
  for m in bn_modules:  # BatchNorm counters: consumed, not converted (old files lack them)
    k = f"{m}.num_batches_tracked"
    if k in state_dict:
      drop.setdefault(k, "BatchNorm step counter (Flax keeps none)")
  dropped = {k: why for k, why in drop.items() if k in state_dict}
  unexpected = [k for k in state_dict if k not in used and k not in dropped]
  if missing or unexpected or mismatched:
    lines = mismatch_lines(source, missing, unexpected, mismatched)
    if hint is not None:
      extra = hint([m.split(" ")[0] for m in missing], unexpected)
      if extra:
        lines.append(f"  hint: {extra}")
    raise ConversionError("\n".join(lines))
  return Mapped(variables=unflatten(out), used=used, dropped=dropped, skipped=skipped)
