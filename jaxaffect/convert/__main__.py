"""CLI: python -m jaxaffect.convert {hara3d, torchvision-resnet, vaanet, bpmgcn, inspect} ...
(see jaxaffect/convert/__init__.py for usage)."""
from __future__ import annotations

import argparse
import os
import sys
import time

from jaxaffect import config_lib
from jaxaffect.errors import UserError


def _say(msg: str) -> None:
  print(f"[convert] {msg}", file=sys.stderr, flush=True)


def load_config(spec: str, overrides: list[str]):
  """configs/x.py[:arg] plus --config.a.b=value overrides, as `jaxaffect.main` reads them."""
  return config_lib.load(spec, overrides)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m jaxaffect.convert",
      description="Convert PyTorch checkpoints of the original models to jaxaffect params "
                  "checkpoints (use with --config.init_from=OUT_DIR).")
  sub = p.add_subparsers(dest="command", required=True)

  def io_args(sp):
    sp.add_argument("input", help="the PyTorch .pth file")
    sp.add_argument("out_dir", help="output directory (an Orbax params checkpoint)")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")

  h = sub.add_parser("hara3d", help="Hara et al. 3D ResNet (resnet-D-kinetics.pth, "
                                    "r3dD_*_200ep.pth) -> visual_backbone")
  h.add_argument("--depth", type=int, default=None, help="10/18/34/50/101/152/200 (default: "
                                                         "inferred from the keys)")
  h.add_argument("--conv1-t-size", type=int, default=None,
                 help="stem temporal kernel (default: read from conv1.weight)")
  io_args(h)
  for name in ("torchvision-resnet", "torchvision-resnet18"):
    t = sub.add_parser(name, help="torchvision ImageNet ResNet (resnet18-*.pth) -> "
                                  "audio_backbone (VAANet's audio stem keeps its init)")
    t.add_argument("--depth", type=int, default=None, help="18/34/50 (default: inferred)")
    io_args(t)
  v = sub.add_parser("vaanet", help="checkpoint of the released VAANet code -> full VAANet")
  v.add_argument("--config", required=True,
                 help="config file[:arg] that builds the model, e.g. configs/vaanet_ve8.py; "
                      "add --config.a.b=value overrides after it")
  io_args(v)
  g = sub.add_parser("bpmgcn", help="state_dict of the released BPM-GCN code -> BPMGCN")
  g.add_argument("--fusion", choices=("code", "paper", "none"), default=None,
                 help="fusion forward for the converted model (default: code when the "
                      "checkpoint has fusion weights, else none)")
  io_args(g)
  t = sub.add_parser("tsl", help="state_dict of the released TSL-Net code "
                                 "(model_seed_123.pkl) -> TSLNet")
  io_args(t)
  i = sub.add_parser("inspect", help="list the tensors of a .pth file (no torch needed)")
  i.add_argument("input")
  return p


def main(argv: list[str] | None = None) -> int:
  args, extra = _parser().parse_known_args(argv)
  if extra and args.command != "vaanet":
    raise UserError(f"unrecognised arguments: {' '.join(extra)}")
  from jaxaffect.convert import converters, store, torch_pickle
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
  if args.command == "hara3d":
    conv = converters.hara3d(obj, depth=args.depth, conv1_t_size=args.conv1_t_size,
                             source=args.input)
  elif args.command.startswith("torchvision-resnet"):
    depth = args.depth if args.depth is not None else (
        18 if args.command == "torchvision-resnet18" else None)
    conv = converters.torchvision_resnet(obj, depth=depth, source=args.input)
  elif args.command == "bpmgcn":
    from jaxaffect.convert import converters_bpmgcn
    conv = converters_bpmgcn.bpmgcn(obj, fusion=args.fusion, source=args.input)
  elif args.command == "tsl":
    from jaxaffect.convert import converters_tsl
    conv = converters_tsl.tsl(obj, source=args.input)
  else:
    config = load_config(args.config, extra)
    conv = converters.vaanet(obj, config, source=args.input)
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
