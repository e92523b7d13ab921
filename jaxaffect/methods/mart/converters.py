"""Converters of MART's released checkpoints (nku-zhichengzhang/MART) and the `mart` command of
`python -m jaxaffect.convert`.

The release saves `best.ckpt`, the state_dict of its EMA MBT (models/mbt/MBT.py), in timm naming:
  vid_model.*      VideoMAE ViT: patch_embed.proj, cls_token, blocks.i.{norm1, attn.qkv.weight
                   (fused, no bias), attn.q_bias, attn.v_bias, attn.proj, norm2, mlp.fc1,
                   mlp.fc2}, fc_norm, head. No position table (a fixed tensor, not a buffer).
  ast_model.v.*    AST's DeiT (distilled): cls_token, dist_token, pos_embed (already cropped to
                   the model's grid), patch_embed.proj, blocks.i.{..., attn.qkv.{weight, bias}},
                   norm, head, head_dist; and ast_model.mlp_head.{0, 1}.
  bottleneck, v_fc, a_fc, v_s_fc, a_s_fc.
Block i < L - F of each stream goes to its encoder (layers_i), block L - F + j to fusion layer j.
A fused qkv tensor is [q; k; v] along its rows, each [heads * head_dim, ...] head-major;
VideoMAE's key has no bias (ours neither). Dropped, with the reason in the account: vid_model.head
(Kinetics), ast_model.v.head / head_dist (DeiT's ImageNet heads), ast_model.mlp_head (AudioSet),
v_s_fc / a_s_fc (sentiment heads no released loss reads; MBT does not build them).

MART.py's stage-1 wrapper (the release never saves it; a user's own run may) holds `vit.` + the
above, lan_model.bert.* (a transformers BertModel), tacl.*, decoder_{embd, blocks.i, norm, pred}
and Vmask_token. `mart` maps them onto pretrain_model.MART's text, tacl, decoder and mask_token
(TACL's names: tacl.py's docstring); `mbt` (a bare MBT) accounts them as dropped.

Not stored in the weights, so the model (the config) must say it: num_heads (release 12),
fusion_layers (4) and the clip size (the video position table is fixed); AST's position rows,
the widths, depths and class count are checked against the keys' shapes.
"""
from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jaxaffect import config_lib
from jaxaffect.convert import keymap, torch_pickle
from jaxaffect.convert.converters import (Converted, abstract_variables, method_variables,
                                          state_dict_of)
from jaxaffect.convert.keymap import ConversionError
from jaxaffect.methods.mart.encoders import BertEncoder, ast_grid
from jaxaffect.methods.mart.hf_convert import (_BERT_V4, BERT_RULE, Part, _map, _normalise,
                                               _unscanned, bert_drop, crop_ast_positions)
from jaxaffect.methods.mart.method import Method
from jaxaffect.methods.mart.model import MBT
from jaxaffect.nn.transformer import stack_layers

WRAPPER_PREFIX = "vit."  # MART.py keeps its MBT as self.vit
# Our block's parameters -> timm Block modules (query/key/value come from the fused qkv).
_TIMM_BLOCK = {"ln_attn": "norm1", "out": "attn.proj", "ln_mlp": "norm2", "mlp_in": "mlp.fc1",
               "mlp_out": "mlp.fc2"}
_QKV = ("query", "key", "value")
_MBT_MODULES = {"video_fc_norm": "vid_model.fc_norm", "audio_norm": "ast_model.v.norm",
                "v_fc": "v_fc", "a_fc": "a_fc"}
# The wrapper's parts besides `vit.`: our MART subtree -> (key regex, what it is).
WRAPPER_PARTS = {"text": (r"lan_model\..*", "BERT text encoder"),
                 "tacl": (r"tacl\..*", "TACL block"),
                 "decoder": (r"decoder_(embd|blocks|norm|pred)\..*", "reconstruction decoder"),
                 "mask_token": (r"Vmask_token", "mask token")}
_DECODER = {"embed": "decoder_embd", "norm": "decoder_norm", "head": "decoder_pred"}
_TACL = {"ln_text": "l_norm", "ln_video": "v_norm", "ln_audio": "a_norm",
         "cross_video": "v2l_attn", "cross_audio": "a2l_attn", "proj_video": "v_proj",
         "proj_audio": "a_proj", "cpc_video": "v2a_contrast", "cpc_audio": "a2v_contrast",
         "cls_video": "v_fc", "cls_audio": "a_fc"}
_TACL_INNER = {"query": "linear_q", "key": "linear_k", "value": "linear_v", "out": "linear_o",
               "mlp_in": "fc1", "mlp_out": "fc2"}
_HINT = ("do config.model (hidden_size, mlp_dim, num_layers, bottleneck_tokens, text, decoder) "
         "and config.dataset (num_classes, fbank_bins, audio_frames) match the trained model?")


def _leaf(leaf: str) -> str:
  return "bias" if leaf == "bias" else "weight"


def _index(name: str) -> int:
  """'layers_3' -> 3."""
  return int(name.rsplit("_", 1)[1])


def timm_block_key(prefix: str, module: str, leaf: str, fused_bias: bool) -> str | Part:
  """The key of our block parameter module/leaf in the timm Block `prefix` ("vid_model.blocks.3").
  fused_bias: qkv.bias [3 * H * D] (timm's DeiT) instead of q_bias / v_bias (VideoMAE)."""
  if module in _QKV:
    i = _QKV.index(module)
    if leaf == "kernel":
      return Part(f"{prefix}.attn.qkv.weight", i, 3)
    if fused_bias:
      return Part(f"{prefix}.attn.qkv.bias", i, 3)
    return f"{prefix}.attn.{module[0]}_bias"
  return f"{prefix}.{_TIMM_BLOCK[module]}.{_leaf(leaf)}"


def _prefixed(prefix: str, key: str | Part) -> str | Part:
  return key._replace(key=prefix + key.key) if isinstance(key, Part) else prefix + key


def mbt_rule(model: MBT, prefix: str = "") -> Callable[[tuple[str, ...]], str | Part]:
  """MBT param path (no collection) -> released key (or Part), under a key `prefix`."""
  first = model.num_layers - model.fusion_layers
  streams = {"video": ("vid_model", False), "audio": ("ast_model.v", True)}

  def key(path):
    top = path[0]
    if top in streams:
      base, fused = streams[top]
      if path[1] == "encoder":
        return timm_block_key(f"{base}.blocks.{_index(path[2])}", path[3], path[4], fused)
      if path[1] == "patch_embed":
        return f"{base}.patch_embed.proj.{_leaf(path[2])}"
      return f"{base}.{path[1]}"  # cls_token, dist_token, pos_embed
    if top.startswith("fusion_layers_"):
      base, fused = streams[path[1]]
      return timm_block_key(f"{base}.blocks.{first + _index(top)}", path[2], path[3], fused)
    if top in _MBT_MODULES:
      return f"{_MBT_MODULES[top]}.{_leaf(path[1])}"
    if top == "bottleneck":
      return "bottleneck"
    raise ConversionError(f"no released MBT name for parameter {'/'.join(path)}")

  return lambda path: _prefixed(prefix, key(path))


def _mbt_drop(prefix: str) -> dict[str, str]:
  p = re.escape(prefix)
  return {p + r"vid_model\.head\.(weight|bias)": "VideoMAE's Kinetics head (MBT's is v_fc)",
          p + r"ast_model\.v\.head(_dist)?\.(weight|bias)":
              "DeiT's ImageNet heads inside AST (AST returns its CLS/DIST embedding)",
          p + r"ast_model\.mlp_head\.[01]\.(weight|bias)": "AST's AudioSet head (MBT's is a_fc)",
          p + r"[av]_s_fc\.(weight|bias)": "sentiment head that no released loss reads (not built)"}


def _decoder_key(path) -> str | Part:
  if path[0] == "blocks":
    return timm_block_key(f"decoder_blocks.{_index(path[1])}", path[2], path[3], False)
  return f"{_DECODER[path[0]]}.{_leaf(path[1])}"


def _tacl_key(path) -> str:
  module = _TACL[path[0]]
  if len(path) == 2:  # a LayerNorm
    return f"tacl.{module}.{_leaf(path[1])}"
  inner = path[1]
  inner = f"net.{2 * _index(inner)}" if inner.startswith("conv_") else _TACL_INNER[inner]
  return f"tacl.{module}.{inner}.{_leaf(path[2])}"


def _conv1d(arr: np.ndarray, shape) -> np.ndarray:
  """Conv1d weight [o, i, k] -> our kernel [k, i, o]."""
  return arr.transpose(2, 1, 0) if arr.ndim == 3 else arr


def is_wrapper(sd: Mapping[str, Any]) -> bool:
  """True for MART.py's stage-1 wrapper (the MBT under `vit.`), False for a bare MBT."""
  return any(k.startswith(WRAPPER_PREFIX) for k in sd)


def _stack(tree: dict) -> dict:
  """Unscanned -> scanned layout: every layers_i / fusion_layers_i family stacked."""
  tree = {k: _stack(v) if isinstance(v, dict) else v for k, v in tree.items()}
  for name in ("layers", "fusion_layers"):
    n = sum(re.fullmatch(rf"{name}_\d+", k) is not None for k in tree)
    if n:
      tree = stack_layers(tree, n, name)
  return tree


def _convert(sd, abstract, rule, *, drop, source, special=None):
  try:
    return _map(sd, {k: k for k in sd}, abstract, rule, drop=drop, source=source,
                special=special)
  except ConversionError as e:
    raise ConversionError(f"{e}\n  hint: {_HINT}") from None


def _layout(wrapper: bool) -> str:
  return ("MART stage-1 wrapper (vit. + text, TACL, decoder, mask token)" if wrapper
          else "released MBT state_dict (best.ckpt)")


def mbt(obj: Any, model: MBT, *, source: str = "checkpoint") -> Converted:
  """A released MBT state_dict (or the wrapper's `vit.` part) -> all params of `model`, in its
  layout (scanned when model.scan). The wrapper's other parts are dropped (accounted)."""
  sd, notes = state_dict_of(obj, source)
  wrapper = is_wrapper(sd)
  prefix = WRAPPER_PREFIX if wrapper else ""
  drop = _mbt_drop(prefix)
  if wrapper:
    drop.update({pat: f"MART wrapper's {what}, not part of MBT (`mart` maps it onto MART's "
                      f"{name})" for name, (pat, what) in WRAPPER_PARTS.items()})
  video = jax.ShapeDtypeStruct((1, model.num_frames, model.image_size, model.image_size, 3),
                               np.float32)
  fbank = jax.ShapeDtypeStruct((1, model.audio_frames, model.num_mel_bins), np.float32)
  abstract = abstract_variables(_unscanned(model), video, fbank)["params"]
  params, used, dropped = _convert(sd, abstract, mbt_rule(model, prefix), drop=drop,
                                   source=source)
  if model.scan:
    params = _stack(params)
  info = dict(notes, layout=_layout(wrapper), scan=model.scan)
  return Converted("mart-mbt", {"params": params}, [f"params/{t}" for t in sorted(params)], [],
                   used, dropped, info)


def mart_abstract(config):
  """(unscanned abstract params, the model) of the MART the config builds, as the trainer
  initialises it (stage 1's `pretrain` creates every subtree)."""
  config = copy.deepcopy(config)
  config.model.scan = False
  method = Method(config)
  return dict(method_variables(method)["params"]), method.model


def mart(obj: Any, config, *, source: str = "checkpoint") -> Converted:
  """A released MBT state_dict -> params/mbt of the MART model `config` builds (the rest keeps
  its init); the stage-1 wrapper -> params/{mbt, text, tacl, decoder, mask_token}."""
  sd, notes = state_dict_of(obj, source)
  wrapper = is_wrapper(sd)
  abstract, model = mart_abstract(config)
  mbt_model = MBT(num_classes=model.num_classes, **dict(model.mbt_kwargs or {}))
  rules = {"mbt": mbt_rule(mbt_model, WRAPPER_PREFIX if wrapper else "")}
  drop = _mbt_drop(WRAPPER_PREFIX if wrapper else "")
  special = None
  if wrapper:
    rules.update(text=lambda p: _prefixed("lan_model.bert.", BERT_RULE(p)), tacl=_tacl_key,
                 decoder=_decoder_key, mask_token=lambda p: "Vmask_token")
    drop.update(bert_drop(BertEncoder(**dict(model.text_kwargs or {})), "lan_model.bert."))
    special = {k: _conv1d for k in sd
               if re.fullmatch(r"tacl\.(v2a|a2v)_contrast\.net\.\d+\.weight", k)}
  unnamed = sorted(set(abstract) - set(rules))
  if wrapper and unnamed:  # a MART part added after this converter
    raise ConversionError(f"mart converter: no released names for MART's {unnamed}")
  abstract = {k: v for k, v in abstract.items() if k in rules}  # a bare MBT: the rest keeps init

  def rule(path):
    try:
      return rules[path[0]](path[1:])
    except KeyError as e:
      raise ConversionError(f"no released name for MART parameter {'/'.join(path)}") from e

  params, used, dropped = _convert(sd, abstract, rule, drop=drop, source=source,
                                   special=special)
  if bool(config.model.scan):
    params = _stack(params)
  info = dict(notes, layout=_layout(wrapper), scan=bool(config.model.scan))
  return Converted("mart", {"params": params}, [f"params/{t}" for t in sorted(params)], [],
                   used, dropped, info)


# --- the public backbones the release starts from (`mart-backbones`) -------------------------

_VIDEOMAE_PREFIXES = ("encoder.", "backbone.")  # stripped, as the release's loader does
_VIDEOMAE_DROP = {
    r"vid_model\.norm\.(weight|bias)": "VideoMAE's final norm (MART pools through fc_norm)",
    r"vid_model\.pos_embed": "fixed sin-cos table (recomputed by the model)",
    r"vid_model\.(decoder\..*|encoder_to_decoder\..*|mask_token)":
        "VideoMAE's pretraining decoder (not an encoder weight)"}
# Released MBT keys no backbone file holds: left to the model's init when absent.
_NOT_IN_BACKBONES = {
    r"vid_model\.cls_token": "not in the file (VideoMAE has no CLS token; the release copies "
                             "DeiT's)",
    r"vid_model\.fc_norm\.(weight|bias)": "not in the file (a pretraining VideoMAE has no fc_norm)",
    r"bottleneck": "MBT's fusion bottleneck tokens", r"[av]_fc\.(weight|bias)": "MBT's heads"}
_NOT_IN_FILES = {"params/tacl": "TACL block", "params/decoder": "reconstruction decoder",
                 "params/mask_token": "mask token"}


def _tensors(obj: Any, source: str) -> dict[str, np.ndarray]:
  """The state dict of a backbone file, unwrapped from "model" / "module" / "state_dict"."""
  while isinstance(obj, Mapping) and not any(isinstance(v, np.ndarray) for v in obj.values()):
    inner = next((k for k in ("model", "module", "state_dict") if k in obj), None)
    if inner is None:
      break
    obj = obj[inner]
  if not isinstance(obj, Mapping) or not obj:
    raise ConversionError(f"{source}: no state_dict found (got {type(obj).__name__})")
  bad = [str(k) for k, v in obj.items() if not isinstance(v, np.ndarray)]
  if bad:
    raise ConversionError(f"{source}: entries that are not tensors: {bad[:5]}")
  return dict(obj)


def _reprefix(sd: dict, strip: tuple[str, ...], prefix: str):
  """(state dict with `strip` prefixes replaced by `prefix`, its key -> the file's key)."""
  out, origin = {}, {}
  for k, v in sd.items():
    nk = prefix + next((k[len(p):] for p in strip if k.startswith(p)), k)
    if nk in out:
      raise ConversionError(f"key {k} duplicates {origin[nk]} once its prefix is stripped")
    out[nk], origin[nk] = v, k
  return out, origin


def _one_line(fn, *args, **kwargs):
  """_map with its report joined onto one line."""
  try:
    return fn(*args, **kwargs)
  except ConversionError as e:
    raise ConversionError("; ".join(x.strip() for x in str(e).splitlines())) from None


def _strict_map(sd, origin, abstract, rule, *, source, file_key, drop, special=None):
  """`_map` of one file, a missing key reported on one line under the file's own name."""
  flat = keymap.flatten({"params": abstract})
  missing = []
  for path in flat:
    key = rule(path[1:])
    key = key.key if isinstance(key, Part) else key
    if key not in sd:
      missing.append((file_key(key), "/".join(path)))
  if missing:
    (key, path), more = missing[0], len({k for k, _ in missing}) - 1
    raise ConversionError(f"{source}: missing key {key} (for {path})"
                          + (f" and {more} more" if more else ""))
  return _one_line(_map, sd, origin, abstract, rule, drop=drop, source=source, special=special)


def _load_bert(path: str) -> dict[str, np.ndarray]:
  """A transformers BERT state dict: DIR (model.safetensors or pytorch_model.bin) or a file."""
  try:
    import safetensors.numpy as st
  except ImportError:
    st = None
  if os.path.isdir(path):
    names = (["model.safetensors"] if st else []) + ["pytorch_model.bin"]
    found = [os.path.join(path, n) for n in names if os.path.exists(os.path.join(path, n))]
    if not found:
      raise ConversionError(f"{path}: no {' or '.join(names)} in the directory")
    path = found[0]
  if path.endswith(".safetensors"):
    if st is None:
      raise ConversionError(f"{path}: reading .safetensors needs the safetensors package")
    return st.load_file(path)
  return _tensors(torch_pickle.load(path), path)


def mart_backbones(videomae: Any, ast: Any, config, *, bert: Mapping[str, Any] | None = None,
                   sources: Mapping[str, str] | None = None) -> Converted:
  """The public VideoMAE and AST (AudioSet) files, and optionally BERT, -> params/mbt (and
  params/text) of the MART `config` builds, through the released MBT mapping (VideoMAE `X` ->
  `vid_model.X`, AST `[module.]v.X` -> `ast_model.v.X`). What no file holds (the video CLS
  token, bottleneck, v_fc, a_fc, fc_norm when absent) is left to the model's init (keep_init);
  TACL, decoder, mask token (and text without BERT) are not covered."""
  src = {"videomae": "videomae", "ast": "ast", "bert": "bert", **dict(sources or {})}
  abstract, model = mart_abstract(config)
  mbt_model = MBT(num_classes=model.num_classes, **dict(model.mbt_kwargs or {}))
  rule = mbt_rule(mbt_model)
  vraw = _tensors(videomae, src["videomae"])
  vsd, vorigin = _reprefix(vraw, _VIDEOMAE_PREFIXES, "vid_model.")
  vstrip = next((p for p in _VIDEOMAE_PREFIXES if any(k.startswith(p) for k in vraw)), "")
  araw = _tensors(ast, src["ast"])
  astrip = "module." if any(k.startswith("module.") for k in araw) else ""
  asd, aorigin = _reprefix(araw, ("module.",), "ast_model.")

  # Each leaf of MBT goes to the file its released key names, or to keep_init.
  parts: dict[str, dict] = {"video": {}, "audio": {}}
  keep_init, not_in = [], {}
  for path, spec in keymap.flatten({"params": abstract["mbt"]}).items():
    key = rule(path[1:])
    key = key.key if isinstance(key, Part) else key
    why = next((w for p, w in _NOT_IN_BACKBONES.items() if re.fullmatch(p, key)), None)
    if why and key not in vsd:
      name = "params/mbt/" + "/".join(path[1:])
      keep_init.append(name)
      not_in[name] = why
    else:
      parts["video" if key.startswith("vid_model.") else "audio"][path] = spec

  grid = ast_grid(mbt_model.num_mel_bins, mbt_model.audio_frames)
  info: dict[str, Any] = {"grid": grid}

  def crop(arr, shape):
    rows = arr.shape[1] - 2 if arr.ndim == 3 else -1
    if rows < 0 or rows % grid[0]:
      raise ConversionError(f"{src['ast']}: {astrip}v.pos_embed {arr.shape} is not [1, 2 + "
                            f"{grid[0]} x T, E]")
    info["ast_positions"] = f"{(grid[0], rows // grid[0])} -> {grid}"
    return crop_ast_positions(arr, (grid[0], rows // grid[0]), grid)

  drop = dict(_mbt_drop(""), **_VIDEOMAE_DROP)
  vparams, vused, vdropped = _strict_map(
      vsd, vorigin, keymap.unflatten(parts["video"])["params"], rule, source=src["videomae"],
      file_key=lambda k: vstrip + k[len("vid_model."):], drop=drop)
  aparams, aused, adropped = _strict_map(
      asd, aorigin, keymap.unflatten(parts["audio"])["params"], rule, source=src["ast"],
      file_key=lambda k: astrip + k[len("ast_model."):], drop=drop,
      special={"ast_model.v.pos_embed": crop})
  flat = {**keymap.flatten({"p": vparams}), **keymap.flatten({"p": aparams})}
  params = {"mbt": keymap.unflatten(flat)["p"]}
  used = {f"videomae:{k}": v for k, v in vused.items()}
  used.update({f"ast:{k}": v for k, v in aused.items()})
  dropped = {f"videomae:{k}": v for k, v in vdropped.items()}
  dropped.update({f"ast:{k}": v for k, v in adropped.items()})

  not_covered = dict(_NOT_IN_FILES)
  if bert is not None:
    bsd, borigin = _normalise(bert, "bert.", _BERT_V4)
    tparams, tused, tdropped = _strict_map(
        bsd, borigin, abstract["text"], BERT_RULE, source=src["bert"], file_key=lambda k: k,
        drop=bert_drop(BertEncoder(**dict(model.text_kwargs or {}))))
    params["text"] = tparams
    used.update({f"bert:{k}": v for k, v in tused.items()})
    dropped.update({f"bert:{k}": v for k, v in tdropped.items()})
  else:
    not_covered["params/text"] = "BERT (no --bert)"
  if bool(config.model.scan):
    params = _stack(params)
  info.update(layout="public backbones (VideoMAE, AST AudioSet"
                     + (", BERT)" if bert is not None else ")"),
              scan=bool(config.model.scan), left_to_init=not_in,
              not_covered_keep_init=not_covered)
  return Converted("mart-backbones", {"params": params},
                   [f"params/{t}" for t in sorted(params)], sorted(keep_init), used, dropped,
                   info)


def add_commands(sub, io_args) -> None:
  """The `mart` and `mart-backbones` subcommands of `python -m jaxaffect.convert`."""
  m = sub.add_parser("mart", help="checkpoint of the released MART code (best.ckpt: the MBT; "
                                  "or the stage-1 wrapper) -> the MART model of --config")
  m.add_argument("--config", required=True,
                 help="config file[:arg] that builds the model, e.g. configs/mart_ve8.py; add "
                      "--config.a.b=value overrides after it")
  io_args(m)
  m.set_defaults(accepts_overrides=True, convert=lambda obj, args, overrides: mart(
      obj, config_lib.load(args.config, overrides), source=args.input))
  b = sub.add_parser("mart-backbones", help="the public VideoMAE, AST (AudioSet) and optional "
                                            "BERT files -> the MART model of --config")
  b.add_argument("--config", required=True, help="config file[:arg], as for `mart`")
  # dest="input": the CLI reads this file first (its object reaches the converter).
  b.add_argument("--videomae", dest="input", required=True,
                 help="VideoMAE ViT-B .pth (e.g. videomae_base_patch16_224.pth)")
  b.add_argument("--ast", required=True, help="AST .pth (e.g. audioset_10_10_0.4593.pth)")
  b.add_argument("--bert", default=None,
                 help="transformers BERT: a directory or pytorch_model.bin / model.safetensors")
  b.add_argument("out_dir", help="output directory (an Orbax params checkpoint)")
  b.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
  b.set_defaults(accepts_overrides=True, convert=lambda obj, args, overrides: mart_backbones(
      obj, torch_pickle.load(args.ast), config_lib.load(args.config, overrides),
      bert=_load_bert(args.bert) if args.bert else None,
      sources=dict(videomae=args.input, ast=args.ast, bert=args.bert or "bert")))
