"""Converter of checkpoints saved by the released VAANet code, and its command line.

  python -m jaxaffect.convert vaanet --config configs/vaanet_ve8.py [--config.a.b=v ...] \
      IN.pth OUT_DIR

{'epoch', 'state_dict', 'optimizer'} -> all VAANet params and batch_stats for the model that
config builds (the backbones' converters are shared: jaxaffect/convert/converters.py).
"""
from __future__ import annotations

import copy
from typing import Any


from jaxaffect import config_lib
from jaxaffect.convert import keymap
from jaxaffect.convert.converters import Converted, method_variables, state_dict_of
from jaxaffect.methods.vaanet.method import Method


def vaanet_abstract(config) -> dict[str, Any]:
  """The abstract {"params", "batch_stats"} of the VAANet the config builds (as the trainer)."""
  if config.model.get("visual_input", "frames") != "frames":
    # A features-mode model has no backbone; convert the whole network all the same (the
    # feature cache takes visual_backbone, the trainer the rest).
    config = copy.deepcopy(config)
    config.model.visual_input = "frames"
  v = method_variables(Method(config))
  return {c: dict(v[c]) for c in ("params", "batch_stats") if c in v}


def vaanet(obj: Any, config, *, source: str = "checkpoint") -> Converted:
  """A checkpoint of the released VAANet code ({'epoch', 'state_dict', 'optimizer'}) -> the
  full VAANet variables for `config` (all of params and batch_stats, incl. the fine-tuned
  backbone's running statistics). The optimizer state is not converted."""
  sd, notes = state_dict_of(obj, source)
  abstract = vaanet_abstract(config)
  drop = {}
  if "fc" not in abstract["params"]:  # model built with keep_unused_fc=False
    drop = {"fc.weight": "VisualStream.fc, unused by VAANet's forward",
            "fc.bias": "VisualStream.fc, unused by VAANet's forward"}
  mapped = keymap.map_state_dict(
      sd, abstract, {"visual_backbone": keymap.sequential_resnet("resnet"),
                     "audio_backbone": keymap.sequential_resnet("a_resnet")},
      drop=drop, source=source,
      hint=lambda m, u: ("do config.model (visual_depth, audio_depth, widths, dims) and "
                         "config.dataset (num_segments, audio_segments, num_classes, crop "
                         "size: hw) match the trained model?") if m or u else "")
  subtrees = [f"{c}/{t}" for c in abstract for t in abstract[c]]
  return Converted("vaanet", mapped.variables, subtrees, mapped.skipped, mapped.used,
                   mapped.dropped, dict(notes))


def add_commands(sub, io_args) -> None:
  """The `vaanet` subcommand of `python -m jaxaffect.convert`."""
  v = sub.add_parser("vaanet", help="checkpoint of the released VAANet code -> full VAANet")
  v.add_argument("--config", required=True,
                 help="config file[:arg] that builds the model, e.g. configs/vaanet_ve8.py; "
                      "add --config.a.b=value overrides after it")
  io_args(v)
  v.set_defaults(accepts_overrides=True, convert=lambda obj, args, overrides: vaanet(
      obj, config_lib.load(args.config, overrides), source=args.input))
