"""Per-video PNGs of TSL-Net's snippet scores with ground-truth and predicted segments.

  python -m jaxaffect.methods.tsl.figures --workdir DIR [--out DIR/eval_outputs/figures]
      [--video ID ...] [--max-videos N] [--top K]

Inputs (DIR/eval_outputs/: scores.npz, predictions.json, ground_truth.json), flags and what a
figure shows: README.md, section "TSL-Net" (Figures).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np
from tqdm import tqdm

from jaxaffect.errors import UserError
from jaxaffect.evaluation.localization import load_json

FEATURE_STRIDE = 16
COLORS = {"p": "tab:red", "n": "tab:blue", "bg": "0.5"}


def _object(value, path: str) -> dict:
  if not isinstance(value, dict):
    raise UserError(f"{path}: expected a JSON object, found {type(value).__name__}")
  return value


def load_eval_outputs(scores: str, predictions: str, ground_truth: str) -> dict[str, dict]:
  """{video: {"scores" [T, 3], "fps", "gt": [(s, e, label)], "pred": [(s, e, label, score)]}}."""
  for path in (scores, predictions, ground_truth):
    if not os.path.exists(path):
      raise UserError(f"{path}: not found (run --mode eval or training with evaluation first)")
  try:
    arrays = np.load(scores)
  except (OSError, ValueError) as e:  # truncated or not an .npz
    raise UserError(f"{scores}: not a readable .npz of eval outputs ({e})") from None
  pred = _object(load_json(predictions, "predictions"), predictions).get("results", {})
  gt = _object(load_json(ground_truth, "ground-truth"), ground_truth).get("database", {})
  videos: dict[str, dict] = {}
  for key in arrays.files:
    vid, _, field = key.rpartition("/")
    videos.setdefault(vid, {})[field] = arrays[key]
  out = {}
  for vid, d in videos.items():
    if "cas_sigmoid_fuse" not in d or "fps" not in d:
      raise UserError(f"{scores}: {vid} lacks cas_sigmoid_fuse or fps")
    out[vid] = dict(
        scores=np.asarray(d["cas_sigmoid_fuse"], np.float32), fps=float(d["fps"]),
        gt=[(float(a["segment"][0]), float(a["segment"][1]), str(a["label"]))
            for a in gt.get(vid, {}).get("annotations", [])],
        pred=[(float(p["segment"][0]), float(p["segment"][1]), str(p["label"]),
               float(p["score"])) for p in pred.get(vid, [])])
  return out


def draw_video(vid: str, data: dict, path: str, *, top: int = 5) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  scores, fps = data["scores"], data["fps"]
  t = (np.arange(len(scores)) + 0.5) * FEATURE_STRIDE / fps
  fig, (ax_gt, ax, ax_pr) = plt.subplots(
      3, 1, figsize=(10, 4.2), sharex=True, gridspec_kw=dict(height_ratios=[0.5, 3, 1.2]))
  ax.plot(t, scores[:, 1], color=COLORS["p"], lw=1.2, label="positive (fused)")
  ax.plot(t, scores[:, 0], color=COLORS["n"], lw=1.2, label="negative (fused)")
  ax.plot(t, scores[:, 2], color=COLORS["bg"], lw=1.0, ls="--", label="background")
  ax.set_ylim(0, 1)
  ax.set_ylabel("score")
  ax.legend(loc="upper right", fontsize=7, ncol=3)
  for s, e, lab in data["gt"]:
    ax_gt.axvspan(s, e, color=COLORS.get(lab, "k"), alpha=0.8)
    for a in (ax,):
      a.axvspan(s, e, color=COLORS.get(lab, "k"), alpha=0.07)
  ax_gt.set_yticks([])
  ax_gt.set_ylabel("GT", rotation=0, ha="right", va="center")
  rows = {"p": 1, "n": 0}
  for lab in ("n", "p"):
    best = sorted((p for p in data["pred"] if p[2] == lab), key=lambda p: -p[3])[:top]
    hi = max((p[3] for p in best), default=1.0) or 1.0
    for s, e, _, sc in best:
      ax_pr.barh(rows[lab], e - s, left=s, height=0.7, color=COLORS[lab],
                 alpha=float(np.clip(0.15 + 0.85 * sc / hi, 0, 1)))
  ax_pr.set_yticks([0, 1], ["n", "p"])
  ax_pr.set_ylabel(f"top {top}", rotation=0, ha="right", va="center")
  ax_pr.set_xlabel("time (s)")
  ax_pr.set_xlim(0, max(t[-1] + FEATURE_STRIDE / fps / 2, 1e-3))
  fig.suptitle(vid, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxaffect.methods.tsl.figures",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", help="a TSL-Net run; reads WORKDIR/eval_outputs/*")
  p.add_argument("--scores")
  p.add_argument("--predictions")
  p.add_argument("--ground-truth")
  p.add_argument("--out", help="folder for the PNGs (default WORKDIR/eval_outputs/figures)")
  p.add_argument("--video", action="append", default=[], help="only these video ids")
  p.add_argument("--max-videos", type=int, default=0, help="at most N videos (0 = all)")
  p.add_argument("--top", type=int, default=5, help="predicted segments drawn per class")
  args = p.parse_args(argv)
  base = os.path.join(args.workdir, "eval_outputs") if args.workdir else None
  pick = lambda given, name: given or (os.path.join(base, name) if base else None)
  paths = [pick(args.scores, "scores.npz"), pick(args.predictions, "predictions.json"),
           pick(args.ground_truth, "ground_truth.json")]
  if any(x is None for x in paths):
    raise UserError("give --workdir, or all of --scores, --predictions and --ground-truth")
  data = load_eval_outputs(*paths)
  vids = sorted(data)
  if args.video:
    unknown = sorted(set(args.video) - set(data))
    if unknown:
      raise UserError(f"video(s) {unknown} not in {paths[0]} (it has {len(data)} videos, "
                      f"e.g. {vids[:3]})")
    vids = list(args.video)
  if args.max_videos > 0:
    vids = vids[:args.max_videos]
  out = args.out or (os.path.join(base, "figures") if base else ".")
  os.makedirs(out, exist_ok=True)
  for vid in tqdm(vids, desc="figures", unit="video", disable=len(vids) < 5):
    draw_video(vid, data[vid], os.path.join(out, f"{vid}.png"), top=args.top)
  print(f"wrote {len(vids)} figure(s) to {out}")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
