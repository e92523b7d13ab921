"""BPM-GCN converter: a state_dict saved by the released code (exped1230/BPM-GCN, 2s-AGCN's
main loop saves the bare model state_dict, 'module.' stripped) -> jaxaffect's BPMGCN variables.

The model settings are read from the keys: fusion modules present or not (fusion1.*), the number
of classes (fc1_classifier_p.weight), frames T (fc2_aff.weight rows / num_affective, checked
against fusion1's T-attention size). Key mapping is keymap's rule (module "name_i" <-> "name.i",
conv [o, i, kh, kw] -> kernel [kh, kw, i, o]); the learned graph offsets `*.gcn1.PA` [3, V, V]
are copied as they are. Every key is converted or the conversion fails naming the keys.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxaffect.convert import keymap
from jaxaffect.convert.converters import Converted, abstract_variables, state_dict_of
from jaxaffect.convert.keymap import ConversionError
from jaxaffect.methods.bpmgcn.model import BPMGCN

_PA = "PA"


def bpmgcn_abstract(*, fusion: str = "code", num_frames: int = 48, num_classes: int = 4,
                    num_affective: int = 31) -> dict[str, Any]:
  """Abstract {"params", "batch_stats"} of BPMGCN for a [1, T, 16, 3] input (a fresh copy of a
  cached tree: tracing the model's init takes seconds)."""
  return keymap.unflatten(keymap.flatten(
      _abstract(fusion, num_frames, num_classes, num_affective)))


@functools.lru_cache(maxsize=8)
def _abstract(fusion: str, num_frames: int, num_classes: int, num_affective: int):
  model = BPMGCN(num_classes=num_classes, num_affective=num_affective, fusion=fusion)
  x = jax.ShapeDtypeStruct((1, num_frames, 16, 3), np.float32)
  return abstract_variables(model, x, train=False)


def infer_settings(sd: Mapping[str, np.ndarray], num_affective: int = 31) -> dict[str, Any]:
  """num_classes, num_frames and whether fusion weights exist, from the key shapes."""
  for k in ("fc1_classifier_p.weight", "fc2_aff.weight"):
    if k not in sd:
      raise ConversionError(f"not a BPM-GCN state_dict: no {k!r} (keys start with "
                            f"{sorted(sd)[:5]})")
  rows = int(sd["fc2_aff.weight"].shape[0])
  if rows % num_affective:
    raise ConversionError(f"fc2_aff.weight has {rows} rows, not a multiple of num_affective="
                          f"{num_affective}")
  t = rows // num_affective
  has_fusion = any(k.startswith("fusion") for k in sd)
  if has_fusion and "fusion1.att_T_p.fc1.weight" in sd:
    t_fusion = int(sd["fusion1.att_T_p.fc1.weight"].shape[0])
    if t_fusion != t:
      raise ConversionError(f"fusion1.att_T_p.fc1.weight is sized for T={t_fusion} frames but "
                            f"fc2_aff.weight for T={t} ({rows}/{num_affective})")
  return dict(num_classes=int(sd["fc1_classifier_p.weight"].shape[0]), num_frames=t,
              has_fusion=has_fusion)


def bpmgcn(obj: Any, *, fusion: str | None = None, num_affective: int = 31,
           source: str = "checkpoint") -> Converted:
  """Released BPM-GCN weights -> all BPMGCN params and batch_stats.

  fusion: "code" or "paper" for a checkpoint with fusion modules (default "code", the forward
  those weights were trained with), "none" for one without (default when there are none)."""
  sd, notes = state_dict_of(obj, source)
  s = infer_settings(sd, num_affective)
  if fusion is None:
    fusion = "code" if s["has_fusion"] else "none"
  abstract = bpmgcn_abstract(fusion=fusion, num_frames=s["num_frames"],
                             num_classes=s["num_classes"], num_affective=num_affective)
  pa_paths = [p for p in keymap.flatten(abstract) if p[-1] == _PA]
  pa_keys = {".".join(keymap.module_name(x) for x in p[1:-1]) + "." + _PA: p for p in pa_paths}
  mapped = keymap.map_state_dict(
      sd, abstract, {}, skip=["/".join(p) for p in pa_paths],
      drop={k: "graph offset PA (copied as is)" for k in pa_keys}, source=source,
      hint=lambda m, u: (f"the checkpoint {'has' if s['has_fusion'] else 'has no'} fusion "
                         f"weights; --fusion {fusion} builds "
                         f"{'none' if fusion == 'none' else 'fusion1..3'}")
      if any("fusion" in k for k in m + u) else "")
  flat = keymap.flatten(mapped.variables)
  problems = []
  for key, path in pa_keys.items():
    want = tuple(keymap.flatten(abstract)[path].shape)
    if key not in sd:
      problems.append(f"missing key {key} (for {'/'.join(path)}, shape {want})")
    elif tuple(sd[key].shape) != want:
      problems.append(f"{key}: checkpoint shape {tuple(sd[key].shape)}, model expects {want}")
    else:
      flat[path] = np.asarray(sd[key], np.float32)
  if problems:
    raise ConversionError(f"{source} does not match the model:\n  " + "\n  ".join(problems))
  used = dict(mapped.used, **{k: "/".join(p) for k, p in pa_keys.items()})
  dropped = {k: v for k, v in mapped.dropped.items() if k not in pa_keys}
  subtrees = [f"{c}/{t}" for c in abstract for t in abstract[c]]
  info = dict(notes, fusion=fusion, num_frames=s["num_frames"], num_classes=s["num_classes"],
              num_affective=num_affective)
  return Converted("bpmgcn", keymap.unflatten(flat), subtrees, [], used, dropped, info)


def add_commands(sub, io_args) -> None:
  """The `bpmgcn` subcommand of `python -m jaxaffect.convert`."""
  g = sub.add_parser("bpmgcn", help="state_dict of the released BPM-GCN code -> BPMGCN")
  g.add_argument("--fusion", choices=("code", "paper", "none"), default=None,
                 help="fusion forward for the converted model (default: code when the "
                      "checkpoint has fusion weights, else none)")
  io_args(g)
  g.set_defaults(convert=lambda obj, args, overrides: bpmgcn(obj, fusion=args.fusion,
                                                             source=args.input))
