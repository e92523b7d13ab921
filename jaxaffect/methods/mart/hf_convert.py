"""Hugging Face `transformers` state_dicts -> the params of MART's encoders (encoders.py).

`videomae(sd, model)` takes a VideoMAEModel (or VideoMAEForVideoClassification) state_dict,
`ast(sd, model)` an ASTModel (or ASTForAudioClassification) one, `bert(sd, model)` a BertModel
(or BertFor*) one; each returns a `convert.converters.Converted` whose variables are
{"params": ...} in `model`'s layout (scanned when model.scan, else layers_0, ...). The state_dict
is a mapping of NumPy arrays (`convert.torch_pickle.load` of a pytorch_model.bin, or
`{k: v.numpy()}` of a torch model); no torch or transformers import happens here.

Both key layouts are read: transformers >= 5 (VideoMAE `query.bias`/`value.bias`, AST
`layers.i.attention.q_proj`, `mlp.fc1`) and the files on the Hub written by 4.x (VideoMAE
`q_bias`/`v_bias`, AST `encoder.layer.i.attention.attention.query`, `intermediate.dense`; old
BERT files' LayerNorm `gamma`/`beta`); model prefixes (`videomae.`,
`audio_spectrogram_transformer.`, `bert.`) are stripped. Key accounting is strict: every model
parameter needs its key and every key is converted or dropped with a reason (heads, buffers),
else one ConversionError lists the missing and unexpected keys and the shape mismatches.

Layouts: Linear [out, in] -> kernel [in, out]; query/key/value kernels [E, heads, head_dim]
and out [heads, head_dim, E] are the same matrices reshaped; Conv3d [o, i, t, h, w] ->
[t, h, w, i, o]; Conv2d [o, i, h, w] -> [h, w, i, o]. A key rule may answer a `Part` of a fused
tensor (timm's qkv, read by the released-checkpoint converters in converters.py).

What the layouts do not carry, and the converters therefore do not invent:
- VideoMAE: Hugging Face's VideoMAE has no CLS token (MART copies DeiT-B distilled's); with
  model.use_cls the converter takes `cls_token` from `extra` (or reports it missing). Its
  `fc_norm` exists only in VideoMAEForVideoClassification; a bare VideoMAEModel converts into a
  model with pool="none" or takes fc_norm from `extra`.
- AST: the position table is centre-cropped to the model's grid when the checkpoint's is
  larger in time (AudioSet's 12 x 101 -> MART's 12 x 9, `crop_ast_positions`).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxaffect.convert import keymap
from jaxaffect.convert.converters import Converted, abstract_variables
from jaxaffect.convert.keymap import ConversionError
from jaxaffect.methods.mart.encoders import (AudioSpectrogramTransformer, BertEncoder, VideoViT,
                                             ast_grid)
from jaxaffect.nn.patches import crop_position_grid
from jaxaffect.nn.transformer import stack_layers

# Our block's parameter -> the torch module name under one layer, per layout.
_VIDEOMAE_BLOCK = {"ln_attn": "layernorm_before", "query": "attention.attention.query",
                   "key": "attention.attention.key", "value": "attention.attention.value",
                   "out": "attention.output.dense", "ln_mlp": "layernorm_after",
                   "mlp_in": "intermediate.dense", "mlp_out": "output.dense"}
_AST_BLOCK = {"ln_attn": "layernorm_before", "query": "attention.q_proj",
              "key": "attention.k_proj", "value": "attention.v_proj", "out": "attention.o_proj",
              "ln_mlp": "layernorm_after", "mlp_in": "mlp.fc1", "mlp_out": "mlp.fc2"}
_BERT_BLOCK = {"query": "attention.self.query", "key": "attention.self.key",
               "value": "attention.self.value", "out": "attention.output.dense",
               "ln_attn": "attention.output.LayerNorm", "mlp_in": "intermediate.dense",
               "mlp_out": "output.dense", "ln_mlp": "output.LayerNorm"}
# transformers 4.x key spellings -> 5.x (applied to the whole key, in order).
_VIDEOMAE_V4 = ((r"\.attention\.attention\.q_bias$", ".attention.attention.query.bias"),
                (r"\.attention\.attention\.v_bias$", ".attention.attention.value.bias"))
_AST_V4 = ((r"^encoder\.layer\.", "layers."),
           (r"\.attention\.attention\.query\.", ".attention.q_proj."),
           (r"\.attention\.attention\.key\.", ".attention.k_proj."),
           (r"\.attention\.attention\.value\.", ".attention.v_proj."),
           (r"\.attention\.output\.dense\.", ".attention.o_proj."),
           (r"\.intermediate\.dense\.", ".mlp.fc1."),
           (r"\.output\.dense\.", ".mlp.fc2."))
_BERT_V4 = ((r"\.gamma$", ".weight"), (r"\.beta$", ".bias"))


def _normalise(sd: Mapping[str, Any], prefix: str, renames) -> tuple[dict[str, np.ndarray],
                                                                     dict[str, str]]:
  """Keys with `prefix` stripped (when every model key has it) and 4.x spellings renamed;
  returns (state_dict, {new key: original key})."""
  keys = list(sd)
  strip = any(k.startswith(prefix) for k in keys)
  out, origin = {}, {}
  for k in keys:
    nk = k[len(prefix):] if strip and k.startswith(prefix) else k
    for pat, rep in renames:
      nk = re.sub(pat, rep, nk)
    out[nk] = np.asarray(sd[k])
    origin[nk] = k
  return out, origin


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape our leaf comes from."""
  leaf = path[-1]
  if leaf == "kernel" and len(shape) == 5:
    return keymap.torch_shape(shape, leaf)
  if leaf == "kernel" and len(shape) == 4:
    return keymap.torch_shape(shape, leaf)
  if leaf == "kernel":  # Linear: out kernel [H, D, E] <- [E, H*D]; others [E, ...] <- [.., E]
    if path[-2] == "out":
      return (shape[-1], math.prod(shape[:-1]))
    return (math.prod(shape[1:]), shape[0])
  if leaf == "bias":
    return (math.prod(shape),)
  return shape


def _to_flax(arr: np.ndarray, leaf: str, shape: tuple[int, ...]) -> np.ndarray:
  if leaf == "kernel" and len(shape) == 5:
    return arr.transpose(2, 3, 4, 1, 0)
  if leaf == "kernel" and len(shape) == 4:
    return arr.transpose(2, 3, 1, 0)
  if leaf == "kernel":
    return arr.T.reshape(shape)
  return arr.reshape(shape)


def _unscanned(model):
  return model.clone(scan=False) if getattr(model, "scan", False) else model


class Part(NamedTuple):
  """A rule's answer for a leaf stored inside a fused PyTorch tensor: chunk `index` of `count`
  equal chunks along axis 0 of `key` (timm's qkv: weight [3 * H * D, E], bias [3 * H * D])."""
  key: str
  index: int
  count: int


def _map(sd: dict[str, np.ndarray], origin: dict[str, str], abstract: dict, rule: Callable,
         *, drop: Mapping[str, str], source: str, special: Mapping[str, Callable] | None = None
         ) -> tuple[dict, dict[str, str], dict[str, str]]:
  """Strict mapping of `sd` onto the unscanned `abstract` params by `rule(path) -> torch key`
  (or a `Part` of a fused tensor; each fused key is checked and reported once).
  `special`: torch key -> fn(array, flax shape) -> array (instead of the layout rule).
  Returns (params, used {original key: flax path(s), comma-separated}, dropped {key: why})."""
  special = dict(special or {})
  flat = keymap.flatten({"params": abstract})
  out, used, missing, mismatched, reported = {}, {}, [], [], set()
  for path, spec in flat.items():
    shape = tuple(spec.shape)
    key = rule(path[1:])
    part = key if isinstance(key, Part) else None
    key = part.key if part else key
    flax_path = "/".join(path)
    want = _torch_shape(path, shape)
    if part:  # the whole fused tensor's shape
      want = (want[0] * part.count,) + want[1:]
    if key not in sd:
      if key not in reported:
        reported.add(key)
        missing.append(f"{key} (for {flax_path}, PyTorch shape {want})")
      continue
    used[key] = f"{used[key]}, {flax_path}" if key in used else flax_path
    arr = sd[key]
    if key in special:
      arr = special[key](arr, shape)
      if arr.shape != shape:
        mismatched.append(f"{origin[key]}: checkpoint shape {sd[key].shape} gives {arr.shape}, "
                          f"model expects {shape} (for {flax_path})")
        continue
      out[path] = arr.astype(spec.dtype)
      continue
    if tuple(arr.shape) != want:
      if key not in reported:
        reported.add(key)
        mismatched.append(f"{origin[key]}: checkpoint shape {tuple(arr.shape)}, model expects "
                          f"{want} (for {flax_path} {shape})")
      continue
    if part:
      arr = np.split(arr, part.count, axis=0)[part.index]
    out[path] = _to_flax(arr, path[-1], shape).astype(spec.dtype)
  dropped, unexpected = {}, []
  for k in sd:
    if k in used:
      continue
    why = next((w for pat, w in drop.items() if re.fullmatch(pat, k)), None)
    if why is None:
      unexpected.append(origin[k])
    else:
      dropped[origin[k]] = why
  if missing or unexpected or mismatched:
    raise ConversionError("\n".join(
        keymap.mismatch_lines(source, missing, unexpected, mismatched)))
  params = keymap.unflatten(out)["params"]
  return params, {origin[k]: p for k, p in used.items()}, dropped


def _finish(name: str, model, params: dict, used, dropped, info) -> Converted:
  if model.scan:
    params = dict(params, encoder=stack_layers(params["encoder"], model.num_layers))
  return Converted(name, {"params": params}, ["params"], [], used, dropped, info)


def _torch_leaf(path) -> str:
  """kernel / scale / embedding -> "weight", bias -> "bias"."""
  return "bias" if path[-1] == "bias" else "weight"


def _block_rule(table: Mapping[str, str], layer_prefix: str) -> Callable:
  """encoder/layers_i/<param>/<leaf> -> <layer_prefix>.i.<torch module>.<weight|bias>."""

  def rule(path):
    _, layer, mod, _ = path
    i = int(layer.rsplit("_", 1)[1])
    return f"{layer_prefix}.{i}.{table[mod]}.{_torch_leaf(path)}"

  return rule


def _top_rule(block, modules: Mapping[str, str], tensors: Mapping[str, str], what: str):
  """Flax path -> torch key: the stack's layers through `block`, our module `m` as
  `modules[m].<leaf>`, a bare parameter `t` as `tensors[t]`."""
  def rule(path):
    top = path[0]
    if top == "encoder":
      return block(path)
    if top in modules:
      return f"{modules[top]}.{_torch_leaf(path)}"
    if top in tensors:
      return tensors[top]
    raise ConversionError(f"no Hugging Face name for {what} parameter {'/'.join(path)}")

  return rule


def _with_extra(sd, origin, extra: Mapping[str, Any] | None):
  for k, v in (extra or {}).items():
    if k in sd:
      raise ConversionError(f"extra key {k!r} is also in the checkpoint")
    sd[k] = np.asarray(v)
    origin[k] = f"{k} (extra)"


def videomae(sd: Mapping[str, Any], model: VideoViT, *, extra: Mapping[str, Any] | None = None,
             source: str = "checkpoint") -> Converted:
  """VideoMAEModel / VideoMAEForVideoClassification weights -> VideoViT params.

  extra: tensors the Hugging Face layout lacks, by the names used here: "cls_token" [1, 1, E]
  (MART's CLS), "fc_norm.weight"/"fc_norm.bias" (from a bare VideoMAEModel). The classifier
  head is dropped (accounted)."""
  sd, origin = _normalise(sd, "videomae.", _VIDEOMAE_V4)
  _with_extra(sd, origin, extra)
  if "layernorm.weight" in sd:
    raise ConversionError(f"{source}: a VideoMAE with use_mean_pooling=False (final layernorm, "
                          "CLS-token head) is not the VideoMAE layout MART uses")
  rule = _top_rule(_block_rule(_VIDEOMAE_BLOCK, "encoder.layer"),
                   {"patch_embed": "embeddings.patch_embeddings.projection",
                    "fc_norm": "fc_norm"}, {"cls_token": "cls_token"}, "VideoViT")

  x = jax.ShapeDtypeStruct((1, model.num_frames, model.image_size, model.image_size, 3),
                           np.float32)
  abstract = abstract_variables(_unscanned(model), x)["params"]
  params, used, dropped = _map(
      sd, origin, abstract, rule, source=source,
      drop={r"classifier\.(weight|bias)": "video classification head (not an encoder weight)"})
  info = {"layout": "transformers VideoMAE", "use_cls": model.use_cls, "pool": model.pool,
          "num_patches": model.num_patches}
  return _finish("hf-videomae", model, params, used, dropped, info)


def crop_ast_positions(table: np.ndarray, grid: tuple[int, int], new_grid: tuple[int, int]
                       ) -> np.ndarray:
  """AST's position table [1, 2 + g0 * g1, E] (CLS, DIST, then the frequency-major grid) ->
  [1, 2 + n0 * n1, E]: the two token rows kept, the grid centre-cropped
  (`nn.patches.crop_position_grid`: AudioSet's 12 x 101 -> MART's 12 x 9 keeps time columns
  46..54)."""
  table = np.asarray(table)
  if table.ndim != 3 or table.shape[0] != 1:
    raise ConversionError(f"AST position table must be [1, N, E], got {table.shape}")
  grid_rows = crop_position_grid(table[0, 2:], tuple(grid), tuple(new_grid))
  return np.concatenate([table[0, :2], grid_rows], axis=0)[None]


def ast(sd: Mapping[str, Any], model: AudioSpectrogramTransformer, *,
        checkpoint_grid: tuple[int, int] | None = None, source: str = "checkpoint") -> Converted:
  """ASTModel / ASTForAudioClassification weights -> AudioSpectrogramTransformer params.

  The checkpoint's position grid is (model's frequency rows, the rest) unless `checkpoint_grid`
  says otherwise (AudioSet: ast_grid(128, 1024) = (12, 101)); a larger grid is centre-cropped
  to the model's (MART: 12 x 9). The classifier (`classifier.*`) is dropped (accounted)."""
  sd, origin = _normalise(sd, "audio_spectrogram_transformer.", _AST_V4)
  grid = model.grid
  pos_key = "embeddings.position_embeddings"
  info: dict[str, Any] = {"layout": "transformers AST", "grid": grid}

  def crop(arr, shape):
    rows = arr.shape[1] - 2
    g = checkpoint_grid
    if g is None:
      if rows % grid[0]:
        raise ConversionError(f"{source}: {pos_key} has {rows} grid rows, not a multiple of the "
                              f"model's {grid[0]} frequency rows; pass checkpoint_grid")
      g = (grid[0], rows // grid[0])
    info["checkpoint_grid"] = tuple(g)
    if tuple(g) == tuple(grid):
      return arr
    info["cropped_positions"] = f"{tuple(g)} -> {tuple(grid)}"
    return crop_ast_positions(arr, g, grid)

  rule = _top_rule(_block_rule(_AST_BLOCK, "layers"),
                   {"patch_embed": "embeddings.patch_embeddings.projection", "norm": "layernorm"},
                   {"cls_token": "embeddings.cls_token",
                    "dist_token": "embeddings.distillation_token", "pos_embed": pos_key}, "AST")

  x = jax.ShapeDtypeStruct((1, model.num_frames, model.num_mel_bins), np.float32)
  abstract = abstract_variables(_unscanned(model), x)["params"]
  head = "AudioSet classification head (not an encoder weight)"
  params, used, dropped = _map(
      sd, origin, abstract, rule, source=source, special={pos_key: crop},
      drop={r"classifier\.layernorm\.(weight|bias)": head,
            r"classifier\.dense\.(weight|bias)": head})
  return _finish("hf-ast", model, params, used, dropped, info)


# BertEncoder param path -> BertModel key (also MART's wrapper `lan_model.bert.*`, converters.py).
BERT_RULE = _top_rule(_block_rule(_BERT_BLOCK, "encoder.layer"),
                      {"word_embeddings": "embeddings.word_embeddings",
                       "position_embeddings": "embeddings.position_embeddings",
                       "token_type_embeddings": "embeddings.token_type_embeddings",
                       "embeddings_ln": "embeddings.LayerNorm", "pooler": "pooler.dense"},
                      {}, "BERT")


def bert_drop(model: BertEncoder, prefix: str = "") -> dict[str, str]:
  """BertModel keys with no BertEncoder parameter (regex -> why), under a key `prefix`."""
  p = re.escape(prefix)
  drop = {p + r"embeddings\.(position_ids|token_type_ids)": "buffer (recomputed)",
          p + r"cls\..*": "pretraining head (MLM / NSP; not an encoder weight)"}
  if not model.pooler:
    drop[p + r"pooler\.dense\.(weight|bias)"] = "pooler (the model is built without it)"
  return drop


def bert(sd: Mapping[str, Any], model: BertEncoder, *, source: str = "checkpoint") -> Converted:
  """BertModel (or BertForPreTraining / BertForMaskedLM: the `bert.` prefix) weights ->
  BertEncoder params. Pretraining heads (`cls.*`) and the `position_ids` / `token_type_ids`
  buffers are dropped (accounted)."""
  sd, origin = _normalise(sd, "bert.", _BERT_V4)
  ids = jax.ShapeDtypeStruct((1, 8), np.int32)
  abstract = abstract_variables(_unscanned(model), ids)["params"]
  params, used, dropped = _map(sd, origin, abstract, BERT_RULE, source=source,
                               drop=bert_drop(model))
  info = {"layout": "transformers BERT", "pooler": model.pooler}
  return _finish("hf-bert", model, params, used, dropped, info)


def videomae_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
  """VideoViT arguments equal to a transformers VideoMAEConfig (`config.to_dict()`): no CLS,
  mean pooling into fc_norm with PyTorch's default eps (VideoMAEForVideoClassification)."""
  c = config
  if not c.get("use_mean_pooling", True):
    raise ConversionError("VideoMAE with use_mean_pooling=False is not supported")
  if not c.get("qv_bias", True):
    raise ConversionError("VideoMAE with qv_bias=False is not supported (MART's has q/v biases)")
  _check_act(c)
  return dict(hidden_size=c["hidden_size"], num_layers=c["num_hidden_layers"],
              num_heads=c["num_attention_heads"], mlp_dim=c["intermediate_size"],
              patch_size=c["patch_size"], tubelet_size=c["tubelet_size"],
              num_frames=c["num_frames"], image_size=c["image_size"], use_cls=False,
              pool="mean", norm_eps=c["layer_norm_eps"], fc_norm_eps=1e-5)


def ast_kwargs(config: Mapping[str, Any], num_frames: int | None = None) -> dict[str, Any]:
  """AudioSpectrogramTransformer arguments equal to a transformers ASTConfig; `num_frames`
  (MART: 100) overrides its max_length (AudioSet: 1024)."""
  c = config
  if not c.get("qkv_bias", True):
    raise ConversionError("AST with qkv_bias=False is not supported")
  _check_act(c)
  return dict(hidden_size=c["hidden_size"], num_layers=c["num_hidden_layers"],
              num_heads=c["num_attention_heads"], mlp_dim=c["intermediate_size"],
              patch_size=c["patch_size"], frequency_stride=c["frequency_stride"],
              time_stride=c["time_stride"], num_mel_bins=c["num_mel_bins"],
              num_frames=num_frames or c["max_length"], norm_eps=c["layer_norm_eps"])


def bert_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
  """BertEncoder arguments equal to a transformers BertConfig."""
  c = config
  if c.get("is_decoder") or c.get("position_embedding_type", "absolute") != "absolute":
    raise ConversionError("only the absolute-position BERT encoder is supported")
  _check_act(c)
  return dict(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
              num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
              mlp_dim=c["intermediate_size"], max_positions=c["max_position_embeddings"],
              type_vocab_size=c["type_vocab_size"], norm_eps=c["layer_norm_eps"],
              dropout_rate=c["hidden_dropout_prob"],
              attention_dropout_rate=c["attention_probs_dropout_prob"])


def _check_act(c):
  if c.get("hidden_act", "gelu") != "gelu":
    raise ConversionError(f"hidden_act={c['hidden_act']!r}: only exact GELU is built")


__all__ = ["videomae", "ast", "bert", "crop_ast_positions", "videomae_kwargs", "ast_kwargs",
           "bert_kwargs", "ast_grid"]
