"""CTEN's figure of one prediction: the three views of a video with its temporal attention.

Rows: the original S segments (the middle frame of each snippet), the "keyframes" view and the
"rest" view as the training step forms them from this attention (erasing.view_indices: each
view re-sampled to S segments of the same video), then the per-segment attention (visual, and
audio under the paper's rule; min-max normalised) with the threshold theta.
"""
from __future__ import annotations

import numpy as np

from jaxaffect.methods.cten import erasing


def three_views(video: np.ndarray, outputs: dict, path: str, title: str, theta: float) -> None:
  """video uint8 [S, T, H, W, 3]; outputs: predict's for this video (keyframes [S] bool,
  gamma [S], gamma_audio [S])."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  video = np.asarray(video)
  s, t = video.shape[:2]
  frames = video[:, t // 2]
  key = np.asarray(outputs["keyframes"], bool)
  views = [("original", np.arange(s))]
  for name, keep in (("keyframes", key), ("rest", ~key if key.any() else key)):
    views.append((name, np.asarray(erasing.view_indices(keep[None]))[0]))
  fig, axes = plt.subplots(len(views) + 1, s, figsize=(1.3 * s, 1.45 * (len(views) + 1)),
                           squeeze=False)
  for r, (name, idx) in enumerate(views):
    for j in range(s):
      ax = axes[r, j]
      ax.imshow(frames[idx[j]])
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(f"seg {idx[j]}", fontsize=7)
      if r == 0 and key[j]:
        for spine in ax.spines.values():
          spine.set_edgecolor("red")
          spine.set_linewidth(2)
    axes[r, 0].set_ylabel(name, fontsize=8)
  gs = axes[-1, 0].get_gridspec()
  for ax in axes[-1]:
    ax.remove()
  bar = fig.add_subplot(gs[-1, :])
  x = np.arange(s)
  nv = np.asarray(erasing.normalise(np.asarray(outputs["gamma"])[None])[0])[0]
  na = np.asarray(erasing.normalise(np.asarray(outputs["gamma_audio"])[None])[0])[0]
  bar.bar(x - 0.2, nv, 0.4, label="visual attention")
  if not np.allclose(nv, na):
    bar.bar(x + 0.2, na, 0.4, label="audio attention")
  bar.axhline(theta, color="red", lw=1, ls="--", label=f"theta {theta:g}")
  bar.set_xticks(x)
  bar.set_xlim(-0.5, s - 0.5)
  bar.set_ylim(0, 1.05)
  bar.set_xlabel("segment")
  bar.legend(fontsize=7, loc="upper right")
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
