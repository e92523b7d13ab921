"""TSL-Net converter: the released `model_seed_123.pkl` (a bare torch.save(state_dict) of
`Model`) -> jaxaffect's TSLNet variables.

Widths are read from the keys (a_extractor.{0,4,10}, v_align.0, neck.0), as are the streams
present and whether the reverse-mapping (CPC) heads were saved. The step-encoding table is not
in the file (a plain attribute in the original); the model recomputes it. Every key is converted
or the conversion fails naming the keys.
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
from jaxaffect.methods.tsl.model import TSLNet

_PREFIX = "cls_module."


def infer_settings(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Model widths, streams and heads implied by the checkpoint's keys and shapes."""
  need = (_PREFIX + "neck.0.weight", _PREFIX + "classifier.0.weight")
  for k in need:
    if k not in sd:
      raise ConversionError(f"not a TSL-Net state_dict: no {k!r} (keys start with "
                            f"{sorted(sd)[:5]})")
  audio = _PREFIX + "a_extractor.0.weight" in sd
  visual = _PREFIX + "v_align.0.weight" in sd
  if not (audio or visual):
    raise ConversionError("TSL-Net state_dict without a_extractor.* and v_align.*")
  s: dict[str, Any] = dict(
      modalities="both" if audio and visual else ("audio" if audio else "visual"),
      neck_features=int(sd[_PREFIX + "neck.0.weight"].shape[0]),
      num_classes=int(sd[_PREFIX + "classifier.0.weight"].shape[0]) - 1,
      reverse_mapping=any(k.startswith(_PREFIX + "rev_f") for k in sd))
  if audio:
    s["audio_channels"] = tuple(int(sd[f"{_PREFIX}a_extractor.{i}.weight"].shape[0])
                                for i in (0, 4, 10))
  if visual:
    s["align_features"] = int(sd[_PREFIX + "v_align.0.weight"].shape[0])
    s["rgb_features"] = int(sd[_PREFIX + "v_align.0.weight"].shape[1])
  if s["reverse_mapping"]:
    layers = {int(k.split(".")[3]) for k in sd if k.startswith(_PREFIX + "rev_f")}
    s["cpc_layers"] = len(layers)
  return s


def tsl_abstract(settings: Mapping[str, Any]) -> dict[str, Any]:
  """Abstract {"params", "batch_stats"} of a TSLNet with these settings (fresh copy)."""
  return keymap.unflatten(keymap.flatten(_abstract(tuple(sorted(settings.items())))))


@functools.lru_cache(maxsize=8)
def _abstract(items: tuple) -> dict[str, Any]:
  s = dict(items)
  rgb = s.pop("rgb_features", 1024)
  model = TSLNet(**s)
  length = 16
  args = (jax.ShapeDtypeStruct((1, length, rgb), np.float32),
          jax.ShapeDtypeStruct((1, length, 32, 60), np.float32),
          jax.ShapeDtypeStruct((1, length), np.float32),
          jax.ShapeDtypeStruct((1,), np.int32))
  return abstract_variables(model, *args, train=False)


def _rename(path: tuple[str, ...]) -> str:
  """cls_module/a_extractor/a_extractor_i -> cls_module.a_extractor.i (the Flax tree nests the
  audio CNN once more than the PyTorch Sequential)."""
  parts = list(path)
  if len(parts) >= 3 and parts[1] == "a_extractor":
    parts = parts[:1] + parts[2:]
  return keymap.plain(tuple(parts))


def tsl(obj: Any, *, source: str = "checkpoint") -> Converted:
  """Released TSL-Net weights -> all TSLNet params and batch_stats."""
  sd, notes = state_dict_of(obj, source)
  s = infer_settings(sd)
  abstract = tsl_abstract(s)
  mapped = keymap.map_state_dict(sd, abstract, {"cls_module": _rename}, source=source)
  subtrees = [f"{c}/{t}" for c in abstract for t in abstract[c]]
  info = dict(notes, **{k: list(v) if isinstance(v, tuple) else v for k, v in s.items()})
  return Converted("tsl", mapped.variables, subtrees, [], mapped.used, mapped.dropped, info)


def add_commands(sub, io_args) -> None:
  """The `tsl` subcommand of `python -m jaxaffect.convert`."""
  t = sub.add_parser("tsl", help="state_dict of the released TSL-Net code "
                                 "(model_seed_123.pkl) -> TSLNet")
  io_args(t)
  t.set_defaults(convert=lambda obj, args, overrides: tsl(obj, source=args.input))
