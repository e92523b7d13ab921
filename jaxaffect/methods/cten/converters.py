"""Converter of checkpoints saved by the released CTEN code, and its command line.

  python -m jaxaffect.convert cten --config configs/cten_ve8.py:legacy IN.pth OUT_DIR
  python -m jaxaffect.convert cten --config configs/cten_ve8.py:legacy_visual IN.pth OUT_DIR

{'epoch', 'state_dict', 'optimizer'} (or a bare state_dict), keys with or without the
DataParallel "module." prefix -> every CTEN param and batch_stats of the model the config
builds: VAANetErase (`:legacy`) or VisualErase (`:legacy_visual`). Key names: the model's
module docstring; a missing or unexpected key is named in a one-line-per-key error.
"""
from __future__ import annotations

import copy
from typing import Any

from jaxaffect import config_lib
from jaxaffect.convert import keymap
from jaxaffect.convert.converters import Converted, method_variables, state_dict_of
from jaxaffect.methods.cten.method import Method


def cten_abstract(config) -> dict[str, Any]:
  """The abstract {"params", "batch_stats"} of the CTEN the config builds (as the trainer)."""
  if config.model.get("visual_input", "frames") != "frames":
    # A features-mode model has no backbone; convert the whole network all the same (the
    # feature cache takes visual_backbone, the trainer the rest).
    config = copy.deepcopy(config)
    config.model.visual_input = "frames"
  v = method_variables(Method(config))
  return {c: dict(v[c]) for c in ("params", "batch_stats") if c in v}


def cten(obj: Any, config, *, source: str = "checkpoint") -> Converted:
  """A released CTEN checkpoint -> the full CTEN variables for `config` (the optimizer state
  is not converted)."""
  sd, notes = state_dict_of(obj, source)
  abstract = cten_abstract(config)
  mapped = keymap.map_state_dict(
      sd, abstract, {"visual_backbone": keymap.sequential_resnet("resnet"),
                     "audio_backbone": keymap.sequential_resnet("a_resnet")},
      source=source,
      hint=lambda m, u: (
          "a VAANetErase checkpoint (a_resnet.*, v2a_attn.*) needs configs/cten_ve8.py:legacy, "
          "a VisualErase one :legacy_visual; do model.legacy_code, use_audio and "
          "dataset.num_segments / num_classes match the trained model?") if m or u else "")
  subtrees = [f"{c}/{t}" for c in abstract for t in abstract[c]]
  return Converted("cten", mapped.variables, subtrees, mapped.skipped, mapped.used,
                   mapped.dropped, dict(notes))


def add_commands(sub, io_args) -> None:
  """The `cten` subcommand of `python -m jaxaffect.convert`."""
  v = sub.add_parser("cten", help="checkpoint of the released CTEN code (VAANetErase or "
                                  "VisualErase) -> full CTEN")
  v.add_argument("--config", required=True,
                 help="config file[:arg] that builds the model, e.g. "
                      "configs/cten_ve8.py:legacy; add --config.a.b=value overrides after it")
  io_args(v)
  v.set_defaults(accepts_overrides=True, convert=lambda obj, args, overrides: cten(
      obj, config_lib.load(args.config, overrides), source=args.input))
