"""VAANet's attentions on one video, from a trained workdir, as a PNG.

  python -m jaxaffect.methods.vaanet.attention --config configs/x.py[:arg] --workdir DIR
      --video PATH.mp4 --out OUT.png [--step N] [--json_out OUT.json] [--label CLASS]

What the figure shows, where the model settings come from and the flags: README.md, section
"Sweeps, ablations, splits, figures". The video goes through the builder's `extract_example`
(the config's extraction settings) and the evaluation transform, so the model sees what it sees
in evaluation; alpha is reshaped to the layer4 grid T'xH'xW' and its cell for the shown frame is
upsampled bilinearly to the crop.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxaffect import checkpointing, config_lib
from jaxaffect import sharding as shd
from jaxaffect import steps as steps_lib
from jaxaffect import trainer
from jaxaffect.data import video_emotion as video_emotion_family  # not the builder module
from jaxaffect.data import video_transforms
from jaxaffect.errors import PathNotFound, UserError
from jaxaffect.methods.vaanet.model import VAANet
from jaxaffect.nn.resnet3d import ResNet3D

log = logging.getLogger(__name__)

# The workdir's model and dataset settings (shared with python -m jaxaffect.predict).
sync_with_workdir = config_lib.adopt_workdir_settings


# ----------------------------------------------------------------------------- compute


def decode_video(config, video_path: str, method) -> dict[str, np.ndarray]:
  """One model example {video [S,T,c,c,3], audio [A,F,M]} as the eval pipeline makes it."""
  from data_pipelines.builders import video_emotion
  if not os.path.isfile(video_path):
    raise PathNotFound(f"--video: {video_path} does not exist")
  kw = video_emotion_family.extraction_kwargs(config.dataset)
  kw["split_index"] = kw.pop("split", 1)
  kw["no_audio_policy"] = "zeros"  # a silent video still gets a figure
  known = {f.name for f in dataclasses.fields(video_emotion.VideoEmotionConfig)}
  ext_cfg = video_emotion.VideoEmotionConfig(**{k: v for k, v in kw.items() if k in known})
  example, note = video_emotion.extract_example(video_path, os.path.basename(video_path), 0,
                                                ext_cfg)
  if note:
    log.warning("%s: %s", video_path, note)
  transform = video_transforms.VideoAudioTransform(method.transform_config(), train=False)
  out = transform(example, np.random.default_rng(0))
  return {"video": out["video"], "audio": out["audio"]}


def feature_grid(method, snippet_len: int, crop: int, hw: int) -> tuple[int, int, int]:
  """(T', H', W') of the visual backbone's layer4 map for one snippet."""
  try:
    if hasattr(method, "backbone_feature_shape"):
      shape = (1, *method.backbone_feature_shape())
    else:
      m = method.model
      bb = ResNet3D(m.visual_depth, m.visual_width, conv1_t_size=m.conv1_t_size,
                    conv_impl=m.conv_impl)
      x = jax.ShapeDtypeStruct((1, snippet_len, crop, crop, 3), jnp.float32)
      shape = jax.eval_shape(lambda v: bb.init_with_output(
          jax.random.key(0), v, use_running_average=True)[0], x).shape
    grid = tuple(int(d) for d in shape[1:4])
  except Exception as e:  # pylint: disable=broad-except
    log.warning("could not trace the backbone for its grid (%s)", e)
    grid = ()
  if len(grid) != 3 or math.prod(grid) != hw:
    side = int(round(math.sqrt(hw)))
    grid = (1, side, side) if side * side == hw else (1, 1, hw)
    log.warning("alpha has %d positions; showing it as the grid %s", hw, grid)
  return grid


def attention_maps(config, workdir: str, video_path: str, step: int | None = None
                   ) -> dict[str, Any]:
  """Runs VAANet on one video; returns frames, alpha on the grid, gamma, probabilities."""

  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir) and not config.get("init_from", ""):
    raise PathNotFound(f"--workdir: no checkpoints under {ckpt_dir} (and no config.init_from)")
  s = trainer.setup(config, prepare_data=False)
  method = s.method
  if not isinstance(method.model, VAANet):
    raise UserError(f"viz.attention draws VAANet's attentions; config.method={config.method!r} "
                    f"builds {type(method.model).__name__}")
  if getattr(method, "visual_input", "frames") != "frames":
    raise UserError("viz.attention runs the model on decoded frames; this workdir was trained "
                    "on cached backbone features (model.visual_input="
                    f"{method.visual_input!r}), so its checkpoint lacks the visual backbone")
  example = decode_video(config, video_path, method)

  ckpt = checkpointing.Checkpointer(ckpt_dir, every_steps=1, keep=1) if os.path.isdir(
      ckpt_dir) else None
  try:
    if step is not None:
      if ckpt is None or step not in ckpt.manager.all_steps():
        have = [] if ckpt is None else sorted(ckpt.manager.all_steps())
        raise PathNotFound(f"--step {step}: no such checkpoint under {ckpt_dir} (have {have})")
      with s.context():
        state = ckpt.restore(step, s.abstract_state)
    else:
      if ckpt is not None and ckpt.latest_step() is None and not config.get("init_from", ""):
        raise PathNotFound(f"--workdir: no complete checkpoint under {ckpt_dir}")
      state, step = trainer.initial_state(s, config, ckpt)
  finally:
    if ckpt is not None:
      ckpt.close()

  # The batch must split over the data x fsdp devices: repeat the one example (eval-mode BN
  # treats examples independently).
  n = shd.batch_divisor(s.mesh)
  local = {k: np.repeat(v[None], n, axis=0) for k, v in example.items()}
  model = method.model
  with s.context():
    repl = shd.replicated(s.mesh)
    params = jax.device_put(state["params"], repl)
    model_state = jax.device_put(state["model_state"], repl)
    batch = steps_lib.make_global_batch(local, s.batch_sharding)
    fwd = jax.jit(lambda p, ms, v, a: model.apply({"params": p, **ms}, v, a, train=False),
                  out_shardings=repl)
    out = jax.device_get(fwd(params, model_state, batch["video"], batch["audio"]))

  video = example["video"]
  seg, t_len, crop = video.shape[0], video.shape[1], video.shape[2]
  alpha = np.asarray(out["alpha"][0], np.float64)                 # [S, hw]
  grid = feature_grid(method, t_len, crop, alpha.shape[-1])
  logits = np.asarray(out["logits"][0], np.float64)
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  ds = config.dataset
  names = list(ds.get("class_names", ())) or [str(i) for i in range(len(probs))]
  if len(names) != len(probs):
    names = [str(i) for i in range(len(probs))]
  return dict(
      video_path=video_path, workdir=workdir, step=int(step),
      frames=video[:, t_len // 2],                                   # [S, c, c, 3]
      frame_index=t_len // 2, snippet_len=t_len,
      alpha=alpha.reshape(seg, *grid), grid=grid,
      gamma=np.asarray(out["gamma"][0], np.float64),
      audio_gamma=np.asarray(out["audio_gamma"][0], np.float64) if model.use_audio else None,
      use_temporal_attention=bool(model.use_temporal_attention),
      use_spatial_attention=bool(model.use_spatial_attention),
      probs=probs, class_names=names)


# ----------------------------------------------------------------------------- plot


def upsample(att: np.ndarray, size: int) -> np.ndarray:
  """[h, w] -> [size, size], bilinear with half-pixel centres (edges clamped)."""
  h, w = att.shape

  def weights(n_in):
    pos = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    m = np.zeros((size, n_in))
    m[np.arange(size), lo] += 1 - (pos - lo)
    m[np.arange(size), hi] += pos - lo
    return m

  return weights(h) @ att @ weights(w).T


def plot(result: dict[str, Any], out_path: str, true_label: str | None = None) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib import gridspec

  frames, alpha, grid = result["frames"], result["alpha"], result["grid"]
  seg, crop = frames.shape[0], frames.shape[1]
  # The temporal cell of the layer4 map that holds the displayed (middle) frame.
  t_cell = min(grid[0] - 1, result["frame_index"] * grid[0] // max(result["snippet_len"], 1))
  maps = [upsample(alpha[i, t_cell], crop) for i in range(seg)]
  vmax = max(float(np.max(alpha)), 1e-6)
  ncols = min(seg, 6)
  nrows = math.ceil(seg / ncols)
  has_audio = result.get("audio_gamma") is not None
  fig = plt.figure(figsize=(max(2.2 * ncols, 9.0), 2.4 * nrows + 3.2))
  outer = gridspec.GridSpec(2, 1, height_ratios=[2.4 * nrows, 3.0], hspace=0.35, figure=fig)
  top = gridspec.GridSpecFromSubplotSpec(nrows, ncols, subplot_spec=outer[0], wspace=0.05,
                                         hspace=0.25)
  im = None
  frame_axes = []
  for i in range(nrows * ncols):
    ax = fig.add_subplot(top[i // ncols, i % ncols])
    ax.axis("off")
    frame_axes.append(ax)
    if i >= seg:
      continue
    ax.imshow(frames[i])
    im = ax.imshow(maps[i], cmap="jet", alpha=0.45, vmin=0.0, vmax=vmax,
                   extent=(-0.5, crop - 0.5, crop - 0.5, -0.5))
    ax.set_title(f"segment {i + 1}  γ={result['gamma'][i]:.2f}", fontsize=8)
  if im is not None:
    cb = fig.colorbar(im, ax=frame_axes, fraction=0.015, pad=0.01)
    cb.set_label("spatial attention α" + ("" if result.get("use_spatial_attention", True)
                                           else " (off)"), fontsize=8)

  bottom = gridspec.GridSpecFromSubplotSpec(1, 3 if has_audio else 2, subplot_spec=outer[1],
                                            wspace=0.45)
  ax = fig.add_subplot(bottom[0])
  ax.bar(np.arange(1, seg + 1), result["gamma"], color="tab:blue")
  ax.set_xlabel("segment")
  ax.set_title("temporal attention γ" + ("" if result.get("use_temporal_attention", True)
                                         else " (off: ones)"), fontsize=9)
  ax.set_xticks(np.arange(1, seg + 1))
  ax.set_ylim(0, max(1.0, 1.1 * float(np.max(result["gamma"]))))
  if has_audio:
    ag = result["audio_gamma"]
    ax = fig.add_subplot(bottom[1])
    ax.bar(np.arange(1, len(ag) + 1), ag, color="tab:green")
    ax.set_xlabel("audio chunk")
    ax.set_title("audio temporal attention", fontsize=9)
    ax.set_ylim(0, max(1.0, 1.1 * float(np.max(ag))))
  ax = fig.add_subplot(bottom[-1])
  probs, names = result["probs"], result["class_names"]
  pred = int(np.argmax(probs))
  colors = ["tab:orange" if i == pred else "tab:gray" for i in range(len(probs))]
  y = np.arange(len(probs))
  ax.barh(y, probs, color=colors)
  ax.set_yticks(y)
  ax.set_yticklabels(names, fontsize=8)
  ax.invert_yaxis()
  ax.set_xlim(0, 1)
  title = f"prediction: {names[pred]} ({probs[pred]:.2f})"
  if true_label:
    title += f"\ntrue: {true_label}"
  ax.set_title(title, fontsize=9)
  fig.suptitle(f"{os.path.basename(result['video_path'])}  ({result['workdir']}, step "
               f"{result['step']})", fontsize=10)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=100)
  plt.close(fig)


def to_json(result: dict[str, Any]) -> dict[str, Any]:
  probs, names = result["probs"], result["class_names"]
  ag = result.get("audio_gamma")
  return dict(video=result["video_path"], workdir=result["workdir"], step=result["step"],
              predicted=names[int(np.argmax(probs))],
              probabilities={n: float(p) for n, p in zip(names, probs)},
              gamma=[float(g) for g in result["gamma"]],
              audio_gamma=None if ag is None else [float(g) for g in ag],
              alpha_grid=list(result["grid"]), alpha=np.asarray(result["alpha"]).tolist())


# ----------------------------------------------------------------------------- CLI


def _cli():
  from absl import app, flags

  config_flag = flags.DEFINE_string("config", None, "Config file (path[:arg]); override keys "
                                    "with --config.a.b=value.")
  overrides: list[str] = []
  workdir = flags.DEFINE_string("workdir", None, "Trained workdir (its checkpoints).")
  video = flags.DEFINE_string("video", None, "Video file (any format PyAV decodes).")
  out = flags.DEFINE_string("out", None, "Output PNG.")
  step = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  json_out = flags.DEFINE_string("json_out", None, "Also write the numbers as JSON here.")
  label = flags.DEFINE_string("label", None, "True class name for the title (default: the "
                              "video's folder name when it is a class name).")

  def main(argv):
    del argv
    from absl import logging as absl_logging
    if not flags.FLAGS["verbosity"].present:
      absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("jaxaffect").setLevel(logging.INFO)
    for name, f in (("config", config_flag), ("workdir", workdir), ("video", video),
                    ("out", out)):
      if f.value is None:
        raise app.UsageError(f"--{name} is required")
    wd = os.path.abspath(os.path.expanduser(workdir.value))
    try:
      config = config_lib.load(config_flag.value, overrides, lock=False)
      changed = sync_with_workdir(config, wd)
      if changed:
        print(f"from {wd}/config.json: {', '.join(changed)}", flush=True)
      result = attention_maps(config, wd, video.value, step.value)
    except UserError as e:
      if os.environ.get("JAXAFFECT_DEBUG"):
        raise
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(1)
    true = label.value
    parent = os.path.basename(os.path.dirname(os.path.abspath(video.value)))
    if true is None and parent in result["class_names"]:
      true = parent
    plot(result, out.value, true)
    if json_out.value:
      with open(json_out.value, "w") as f:
        json.dump(to_json(result), f, indent=2)
    probs = result["probs"]
    print(f"wrote {out.value}: predicted {result['class_names'][int(np.argmax(probs))]} "
          f"({float(np.max(probs)):.3f}), gamma {np.round(result['gamma'], 3).tolist()}, "
          f"checkpoint step {result['step']}", flush=True)

  app.run(main, flags_parser=config_lib.absl_flags_parser(overrides))


if __name__ == "__main__":
  _cli()
