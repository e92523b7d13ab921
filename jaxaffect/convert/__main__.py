"""CLI: python -m jaxaffect.convert {hara3d, torchvision-resnet, inspect, <method converters>}.

Usage: README.md, section "VAANet at paper fidelity" (pretrained weights), and `--help`."""
from __future__ import annotations

import argparse
import os
import sys
import time

from jaxaffect import config_lib
from jaxaffect import converted_checkpoint as store
from jaxaffect import method as method_lib
from jaxaffect.convert import converters, torch_pickle
from jaxaffect.errors import UserError


def _say(msg: str) -> None:
  print(f"[convert] {msg}", file=sys.stderr, flush=True)


def load_config(spec: str, overrides: list[str]):
  """configs/x.py[:arg] plus --config.a.b=value overrides, as `jaxaffect.main` reads them."""
  return config_lib.load(spec, overrides)


def _io_args(sp) -> None:
  sp.add_argument("input", help="the PyTorch .pth file")
  sp.add_argument("out_dir", help="output directory (an Orbax params checkpoint)")
  sp.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")


def _hara3d(obj, args, overrides):
  return converters.hara3d(obj, depth=args.depth, conv1_t_size=args.conv1_t_size,
                           source=args.input)


def _torchvision(obj, args, overrides):
  depth = args.depth if args.depth is not None else (
      18 if args.command == "torchvision-resnet18" else None)
  return converters.torchvision_resnet(obj, depth=depth, source=args.input)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m jaxaffect.convert",
      description="Convert PyTorch checkpoints of the original models to jaxaffect params "
                  "checkpoints (use with --config.init_from=OUT_DIR).")
  sub = p.add_subparsers(dest="command", required=True)
  h = sub.add_parser("hara3d", help="Hara et al. 3D ResNet (resnet-D-kinetics.pth, "
                                    "r3dD_*_200ep.pth) -> visual_backbone")
  h.add_argument("--depth", type=int, default=None, help="10/18/34/50/101/152/200 (default: "
                                                         "inferred from the keys)")
  h.add_argument("--conv1-t-size", type=int, default=None,
                 help="stem temporal kernel (default: read from conv1.weight)")
  _io_args(h)
  h.set_defaults(convert=_hara3d)
  for name in ("torchvision-resnet", "torchvision-resnet18"):
    t = sub.add_parser(name, help="torchvision ImageNet ResNet (resnet18-*.pth) -> "
                                  "audio_backbone (VAANet's audio stem keeps its init)")
    t.add_argument("--depth", type=int, default=None, help="18/34/50 (default: inferred)")
    _io_args(t)
    t.set_defaults(convert=_torchvision)
  # Each method package may add converters of its paper's checkpoints (methods/<m>/converters.py
  # with add_commands(sub, io_args)); the registry finds them by name.
  for module in method_lib.plugin_modules("converters"):
    module.add_commands(sub, _io_args)
  i = sub.add_parser("inspect", help="list the tensors of a .pth file (no torch needed)")
  i.add_argument("input")
  return p


def main(argv: list[str] | None = None) -> int:
  args, extra = _parser().parse_known_args(argv)
  if extra and not getattr(args, "accepts_overrides", False):
    raise UserError(f"unrecognised arguments: {' '.join(extra)}")
  t0 = time.time()
  size = os.path.getsize(args.input) / 2**20 if os.path.exists(args.input) else 0
  _say(f"reading {args.input} ({size:.1f} MiB)")
  obj = torch_pickle.load(args.input)
  if args.command == "inspect":
    sd, notes = converters.state_dict_of(obj, args.input)
    for k, a in sd.items():
      print(f"{k}\t{tuple(a.shape)}\t{a.dtype}")
    _say(f"{len(sd)} tensors; {notes}")
    return 0
  out_dir = os.path.abspath(os.path.expanduser(args.out_dir))
  if os.path.exists(out_dir) and os.listdir(out_dir) and not args.overwrite:
    raise UserError(f"{out_dir} exists and is not empty (pass --overwrite to replace it)")
  conv = args.convert(obj, args, extra)
  n = sum(a.size for c in conv.variables.values() for a in _leaves(c))
  _say(f"mapped {len(conv.used)} tensors onto {', '.join(conv.subtrees)} ({n:,} values)")
  for k, why in sorted(conv.dropped.items()):
    if not k.endswith("num_batches_tracked"):
      _say(f"dropped {k}: {why}")
  nbt = sum(k.endswith("num_batches_tracked") for k in conv.dropped)
  if nbt:
    _say(f"dropped {nbt} BatchNorm num_batches_tracked counters")
  if conv.keep_init:
    _say(f"left to the model's init: {', '.join(conv.keep_init)}")
  for k, v in conv.info.items():
    _say(f"{k}: {v}")
  store.save_converted(out_dir, conv)
  _say(f"wrote {out_dir} in {time.time() - t0:.1f}s; use --config.init_from={out_dir}")
  return 0


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


if __name__ == "__main__":
  try:
    sys.exit(main())
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
