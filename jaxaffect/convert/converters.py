"""Shared converters: Hara 3D ResNets and torchvision 2D ResNets (backbones several methods
build), plus the `Converted` record and helpers every method's converters use.

Each takes the object `torch_pickle.load` returned (a checkpoint dict or a bare state_dict) and
returns a `Converted`: NumPy {"params", "batch_stats"} trees laid out as the jaxaffect model
names them, plus an account of every checkpoint key (converted, or dropped and why) and of the
model variables left to their init. Backbone converters return *partial* trees: only the
`visual_backbone` (Hara) or `audio_backbone` (torchvision) subtree.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxaffect.convert import keymap
from jaxaffect.convert.keymap import ConversionError
from jaxaffect.nn.resnet2d import RESNET2D_LAYERS, ResNet2D
from jaxaffect.nn.resnet3d import RESNET3D_LAYERS, ResNet3D

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Converted:
  converter: str
  variables: dict[str, Any]       # {"params": {...}, "batch_stats": {...}} NumPy arrays
  subtrees: list[str]             # "params/visual_backbone", ...: what the checkpoint covers
  keep_init: list[str]            # Flax paths (inside subtrees) deliberately left to the init
  used: dict[str, str]            # PyTorch key -> Flax path
  dropped: dict[str, str]         # PyTorch key -> reason
  info: dict[str, Any]            # model settings the weights imply, notes for the user

  def meta(self) -> dict[str, Any]:
    return dict(format="jaxaffect.convert/1", converter=self.converter, subtrees=self.subtrees,
                keep_init=self.keep_init, dropped=self.dropped, info=self.info,
                num_keys=len(self.used), key_map=dict(sorted(self.used.items())))


def state_dict_of(obj: Any, source: str = "checkpoint") -> tuple[dict[str, np.ndarray], dict]:
  """The state_dict inside a torch.save object, `module.` (DataParallel) prefix removed.

  Accepts {"state_dict": sd, ...} (Hara, VAANet training checkpoints; the other entries such as
  epoch/arch/optimizer/scheduler are reported, not converted) or a bare state_dict.
  """
  notes: dict[str, Any] = {}
  if isinstance(obj, Mapping) and "state_dict" in obj:
    sd = obj["state_dict"]
    notes["container_entries"] = sorted(str(k) for k in obj if k != "state_dict")
    for k in ("arch", "epoch"):
      if k in obj and isinstance(obj[k], (str, int)):
        notes[k] = obj[k]
  else:
    sd = obj
  if not isinstance(sd, Mapping) or not sd:
    what = type(obj).__name__
    if isinstance(obj, Mapping):
      what += f" with keys {sorted(map(str, obj))[:8]}"
    raise ConversionError(f"{source}: no state_dict found (got {what})")
  bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
  if bad:
    raise ConversionError(f"{source}: state_dict entries that are not tensors: {bad[:10]}")
  keys = list(sd)
  prefixed = [k for k in keys if k.startswith("module.")]
  if prefixed and len(prefixed) != len(keys):
    raise ConversionError(f"{source}: some keys carry the DataParallel 'module.' prefix and "
                          f"some do not, e.g. {prefixed[0]!r} and "
                          f"{next(k for k in keys if not k.startswith('module.'))!r}")
  if prefixed:
    sd = {k[len("module."):]: v for k, v in sd.items()}
    notes["stripped_prefix"] = "module."
  return dict(sd), notes


def unbox(tree):
  import flax.linen as nn
  return nn.meta.unbox(tree)


def abstract_variables(model, *args, **kwargs) -> dict[str, Any]:
  v = jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a, **kwargs), *args)
  v = unbox(dict(v))
  return {c: dict(v[c]) for c in ("params", "batch_stats") if c in v}


def method_variables(method) -> dict[str, Any]:
  """The (unboxed, abstract) variables a method's `init_variables` gives on a zero batch of one
  example: the tree the trainer initialises, for converters that fill a whole model."""
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in method.example_batch(1).items()}

  def init():
    return method.init_variables(jax.random.key(0),
                                 {k: jnp.zeros(s.shape, s.dtype) for k, s in batch.items()})

  return unbox(dict(jax.eval_shape(init)))


def _wrap(abstract: dict[str, Any], top: str) -> dict[str, Any]:
  return {c: {top: t} for c, t in abstract.items()}


def infer_resnet_depth(sd: Mapping[str, np.ndarray], layers_table: Mapping[int, tuple],
                       bottleneck_from: int = 50) -> int:
  """Depth of a (Hara or torchvision) ResNet from its block counts and block type."""
  blocks = [0, 0, 0, 0]
  for k in sd:
    m = re.match(r"layer([1-4])\.(\d+)\.conv1\.weight$", k)
    if m:
      s, i = int(m.group(1)) - 1, int(m.group(2))
      blocks[s] = max(blocks[s], i + 1)
  bottleneck = "layer1.0.conv3.weight" in sd
  for depth, layers in sorted(layers_table.items()):
    if tuple(layers) == tuple(blocks) and (depth >= bottleneck_from) == bottleneck:
      return depth
  raise ConversionError(f"cannot infer the ResNet depth: blocks per stage {tuple(blocks)}, "
                        f"{'bottleneck' if bottleneck else 'basic'} blocks; known depths "
                        f"{sorted(layers_table)}; pass --depth")


def _shortcut_hint(missing: list[str], unexpected: list[str]) -> str:
  if any(".downsample." in k for k in missing) and not any(".downsample." in k
                                                           for k in unexpected):
    return ("the checkpoint has no downsample (shortcut) weights: Hara's 2018 resnet-18/34-"
            "kinetics.pth use shortcut type A (parameter-free zero padding), which jaxaffect's "
            "ResNet3D does not implement (it builds type B, as every other Hara model)")
  if any(k.startswith("layer") for k in missing) or any(k.startswith("layer") for k in unexpected):
    return "is --depth right? (omit it to infer the depth from the keys)"
  return ""


def _fc_info(sd: Mapping[str, np.ndarray], notes: dict) -> dict[str, Any]:
  info: dict[str, Any] = {}
  if "fc.weight" in sd:
    n = int(sd["fc.weight"].shape[0])
    info["pretrain_classes"] = n
    guess = {400: "hara_2018", 700: "hara_2020", 1039: "hara_2020", 339: "hara_2020",
             800: "hara_2020", 1139: "hara_2020"}.get(n)
    if notes.get("stripped_prefix") and n == 400:
      guess = "hara_2018"
    if guess:
      info["normalization_matching_weights"] = guess
      info["normalization_note"] = (
          f"{guess} is how Hara et al. pretrained these weights (the backbone on its own); "
          "VAANet's released code feeds them with its own scaling, so VAANet configs keep "
          "model.normalization=vaanet_legacy")
  return info


def hara3d(obj: Any, *, depth: int | None = None, conv1_t_size: int | None = None,
           source: str = "checkpoint") -> Converted:
  """Hara et al.'s 3D ResNet (2018 resnet-D-kinetics.pth or 2020 r3dD_*_200ep.pth) -> the
  `visual_backbone` subtree of VAANet (a partial tree). The fc head is dropped (accounted)."""
  sd, notes = state_dict_of(obj, source)
  if depth is None:
    depth = infer_resnet_depth(sd, RESNET3D_LAYERS)
  if depth not in RESNET3D_LAYERS:
    raise ConversionError(f"--depth must be one of {sorted(RESNET3D_LAYERS)}, got {depth}")
  if conv1_t_size is None:
    w = sd.get("conv1.weight")
    conv1_t_size = int(w.shape[2]) if w is not None and w.ndim == 5 else 7
  model = ResNet3D(depth, 64, conv1_t_size=conv1_t_size)
  x = jax.ShapeDtypeStruct((1, 16, 112, 112, 3), np.float32)
  abstract = _wrap(abstract_variables(model, x, use_running_average=True), "visual_backbone")
  mapped = keymap.map_state_dict(
      sd, abstract, {"visual_backbone": keymap.below()},
      drop={"fc.weight": "Kinetics classifier head (VAANet uses the layer4 map)",
            "fc.bias": "Kinetics classifier head (VAANet uses the layer4 map)"},
      source=source, hint=_shortcut_hint)
  info = dict(notes, depth=depth, conv1_t_size=conv1_t_size, **_fc_info(sd, notes))
  info["config_overrides"] = {"model.visual_depth": depth, "model.visual_width": 64,
                              "model.conv1_t_size": conv1_t_size}
  return Converted("hara3d", mapped.variables, ["params/visual_backbone",
                                                "batch_stats/visual_backbone"],
                   mapped.skipped, mapped.used, mapped.dropped, info)


def torchvision_resnet(obj: Any, *, depth: int | None = None,
                       source: str = "checkpoint") -> Converted:
  """torchvision ImageNet ResNet-18/34/50 -> the `audio_backbone` subtree of VAANet (partial).

  VAANet replaces conv1 by a fresh 1-channel (7, 1) conv: the ImageNet conv1 and fc are dropped
  (accounted) and the model's audio_backbone/conv1 keeps its init (listed in keep_init)."""
  sd, notes = state_dict_of(obj, source)
  if depth is None:
    depth = infer_resnet_depth(sd, RESNET2D_LAYERS)
  if depth not in RESNET2D_LAYERS:
    raise ConversionError(f"--depth must be one of {sorted(RESNET2D_LAYERS)}, got {depth}")
  model = ResNet2D(depth, 64)
  x = jax.ShapeDtypeStruct((1, 256, 32, 1), np.float32)
  abstract = _wrap(abstract_variables(model, x, use_running_average=True), "audio_backbone")
  why_stem = "ImageNet 3-channel stem; VAANet's audio stem is a new 1-channel (7, 1) conv"
  mapped = keymap.map_state_dict(
      sd, abstract, {"audio_backbone": keymap.below()},
      drop={"conv1.weight": why_stem, "fc.weight": "ImageNet classifier head",
            "fc.bias": "ImageNet classifier head"},
      skip=["params/audio_backbone/conv1"], source=source,
      hint=lambda m, u: "is --depth right?" if m or u else "")
  info = dict(notes, depth=depth)
  info["config_overrides"] = {"model.audio_depth": depth, "model.audio_width": 64}
  return Converted("torchvision-resnet", mapped.variables,
                   ["params/audio_backbone", "batch_stats/audio_backbone"], mapped.skipped,
                   mapped.used, mapped.dropped, info)
