"""Class distribution (and the method's figure) of single videos from a trained checkpoint.

  python -m jaxaffect.predict --config configs/cten_ve8.py[:arg] --checkpoint DIR \\
      [--step N] [--out FIG.png] [--config.k=v ...] VIDEO [VIDEO ...]

DIR is a training workdir (its latest complete checkpoint, or --step N; the model and dataset
settings of its config.json are adopted, so a variant need not be repeated) or a converted
checkpoint (python -m jaxaffect.convert ...). Each video is decoded by the builder's own code
with the config's extraction settings and transformed as in evaluation; the output is one line
per class, most probable first, then `video=... top=CLASS p=...`. With --out the method's
figure is written there (several videos: FIG_<i>.png). Methods that support it: VAANet, CTEN.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from jaxaffect import config_lib
from jaxaffect.errors import PathNotFound, UserError


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m jaxaffect.predict", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="config file[:arg] the checkpoint was made by")
  p.add_argument("--checkpoint", required=True,
                 help="a training workdir or a converted checkpoint folder")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--out", default="", help="figure path (.png); several videos add _<i>")
  p.add_argument("videos", nargs="+", help="video files")
  return p


def load_state(config, checkpoint: str, step: int | None = None):
  """(trainer setup, state with params and model_state, step) for `checkpoint`: a workdir or
  a converted checkpoint; one-line errors naming what is missing."""
  from jaxaffect import checkpointing, trainer
  from jaxaffect import converted_checkpoint
  if not os.path.isdir(checkpoint):
    raise PathNotFound(f"--checkpoint: {checkpoint} is not a folder")
  if converted_checkpoint.is_converted(checkpoint):
    if step is not None:
      raise UserError("--step applies to a training workdir, not a converted checkpoint")
    with config.unlocked():
      config.init_from = checkpoint
    s = trainer.setup(config, prepare_data=False)
    state, _ = trainer.initial_state(s, config, None)
    return s, state, 0
  ckpt_dir = os.path.join(checkpoint, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise PathNotFound(f"--checkpoint: {checkpoint} is neither a workdir (no checkpoints/) nor "
                       f"a converted checkpoint")
  s = trainer.setup(config, prepare_data=False)
  ckpt = checkpointing.Checkpointer(ckpt_dir, every_steps=1, keep=1)
  try:
    have = sorted(ckpt.manager.all_steps())
    if step is None:
      step = ckpt.latest_step()
      if step is None:
        raise PathNotFound(f"--checkpoint: no complete checkpoint under {ckpt_dir}")
    elif step not in have:
      raise PathNotFound(f"--step {step}: no such checkpoint under {ckpt_dir} (have {have})")
    with s.context():
      state = ckpt.restore(step, s.abstract_state)
  finally:
    ckpt.close()
  return s, state, int(step)


def predict_example(s, state, example: dict) -> dict:
  """The method's `predict` on one example (repeated to divide the batch axes of the mesh);
  returns its outputs for that example (numpy, no batch axis)."""
  import jax
  import numpy as np

  from jaxaffect import sharding as shd
  from jaxaffect import steps as steps_lib
  from jaxaffect import xla_options
  n = shd.batch_divisor(s.mesh)
  local = {k: np.repeat(np.asarray(v)[None], n, axis=0) for k, v in example.items()}
  with s.context():
    repl = shd.replicated(s.mesh)
    params = jax.device_put(state["params"], repl)
    model_state = jax.device_put(state["model_state"], repl)
    batch = steps_lib.make_global_batch(local, s.batch_sharding)
    out = jax.jit(s.method.predict, out_shardings=repl,
                  compiler_options=xla_options.for_step(s.mesh.devices.flat[0].platform))(
                      params, model_state, batch)
  return {k: np.asarray(v)[0] for k, v in jax.device_get(out).items()}


def class_distribution(logits, class_names: Sequence[str]) -> list[tuple[str, float]]:
  """(class, probability) pairs, most probable first."""
  import numpy as np
  z = np.asarray(logits, np.float64)
  p = np.exp(z - z.max())
  p /= p.sum()
  names = list(class_names) if len(class_names) == len(p) else [str(i) for i in range(len(p))]
  return sorted(zip(names, p.tolist()), key=lambda x: -x[1])


def main(argv: Sequence[str] | None = None) -> int:
  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  try:
    args, config = config_lib.tool_args(_parser(), sys.argv[1:] if argv is None else argv)
    changed = config_lib.adopt_workdir_settings(config, args.checkpoint)
    if changed:
      print(f"[predict] adopted from {args.checkpoint}/config.json: {', '.join(changed)}",
            file=sys.stderr)
    s, state, step = load_state(config, args.checkpoint, args.step)
    names = list(config.dataset.get("class_names", ()))
    for i, video in enumerate(args.videos):
      example = s.method.example_from_video(video)
      outputs = predict_example(s, state, example)
      dist = class_distribution(outputs["logits"], names)
      for name, p in dist:
        print(f"{name:>16s}  {p:.4f}")
      print(f"video={video} top={dist[0][0]} p={dist[0][1]:.4f} step={step}", flush=True)
      if args.out:
        root, ext = os.path.splitext(args.out)
        path = args.out if len(args.videos) == 1 else f"{root}_{i}{ext or '.png'}"
        title = f"{os.path.basename(video)}: {dist[0][0]} ({dist[0][1]:.2f}), step {step}"
        s.method.prediction_figure(example, outputs, path, title)
        print(f"figure={path}", flush=True)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
