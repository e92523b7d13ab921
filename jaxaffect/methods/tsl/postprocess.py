"""TSL-Net inference post-processing for one video, in NumPy (behaviour of TSL300's test_all.py
and utils.upgrade_resolution / get_proposal_oic / grouping / nms / result2json).

Inputs for one video with T feature steps (one step = 16 native-fps frames):
  fused_scores [T, C+1]: the model's fused scores, Ĉ_c = σ_c·(1 − σ_bg) for the C classes
                 (TSL-300: n, p) and σ_bg in the LAST channel (TSL's `cas_sigmoid_fuse`).
  video_score  [C]: per class, the mean of the top-k (k = T // 8) raw class sigmoids over time.
  fps: the video's native frame rate (TSL-300's fps_dict.json).

Steps (original defaults):
  1. Classes: every c with video_score[c] >= class_threshold (0.5); if none, the argmax (first on
     ties).
  2. Up-sampling by `scale` (24): linear interpolation of the selected classes' Ĉ and of the
     class-agnostic foreground 1 − σ_bg at x = np.arange(0, T, 1/scale) (T·scale points; the last
     scale − 1 points lie past step T − 1 and are linearly EXTRApolated from the last two steps,
     like scipy's interp1d(kind='linear', fill_value='extrapolate')).
  3. Proposals, two families, each over its thresholds in order:
     a. class thresholds arange(0, 0.25, 0.025): per selected class, Ĉ is set to 0 where it is
        below the threshold; the runs of consecutive indices where the result is > 0 are the
        proposals, scored on this thresholded Ĉ;
     b. agnostic thresholds arange(0.4, 0.75, 0.025): runs where 1 − σ_bg >= threshold (and > 0),
        the same runs for every selected class, scored on that class's unthresholded Ĉ.
     Score of a run [i0, i1] (length L = i1 − i0 + 1) for class c, on the up-sampled track w:
        mean(w[i0..i1]) − mean(w[outer]) + gamma · video_score[c],    gamma = 0.3,
     outer = [max(0, int(i0 − λL)), i0) ∪ (i1, min(N − 1, int(i1 + λL))], λ = 0.03, N = T·scale,
     int() truncating toward zero; the outer mean is 0 when outer is empty. (The original's
     `_lambda=0.03, gamma=0.3` defaults are the 0.03·length margin and +0.3·s_c.)
     Since int() truncates, away from the edges the left margin has ⌈λL⌉ indices and the right
     one ⌊λL⌋: a run shorter than 34 up-sampled indices gets 1 index on the left, none on the right.
     Times: [i0·f, (i1 + 1)·f] seconds with f = 16·T / (scale·T·fps) = 16 / (scale·fps).
  4. Per-class NMS at 0.5 on these second-valued segments with the frame-index "+1" convention:
     length = e − s + 1, intersection = max(0, min(e) − max(s) + 1); a proposal is dropped when its
     IoU with an already kept, higher-scored one is >= the threshold.
  5. Output: [{"segment": [s, e], "label": class_names[c], "score": x}], class by class in the
     order the classes first produced a proposal, each class's kept proposals by descending
     score. `results_json` wraps {video: that list} as an ActivityNet results file.

Original quirks reproduced on purpose:
  * A (class, threshold) whose only above-threshold index is 0 yields no proposal (the original
    tests `indices.any()`, which is False for [0]).
  * Class-threshold proposals are scored on the thresholded track (the outer margin can reach
    into a neighbouring run above the threshold; everything else outside is 0).
  * 1 − σ_bg is formed in the input's dtype (float32 for model outputs, as in torch), and the
    interpolation's y_hi − y_lo is taken in that dtype too (scipy's arithmetic), so float32
    model outputs give bit-identical tracks.
Deviations:
  * T = 1: the original's interp1d raises (needs 2 points); here the single step is held
    constant. T = 0 returns no proposals.
  * Equal scores in NMS: the original orders candidates with NumPy's unstable argsort,
    reversed, whose order on ties depends on the NumPy build; here equal scores keep the
    generation order (family a before b, thresholds ascending, runs left to right). Exact
    duplicates (same run, same score) are unaffected; two different equal-scored runs of one
    class overlapping by >= the NMS threshold may keep the other one than the original would.
  * 0.3·s_c is computed with s_c in float64, as the original did under NumPy 1.x (NumPy 2's
    NEP 50 would keep a float32 score in float32 there).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

DEFAULT_CLASS_NAMES = ("n", "p")  # TSL-300 class index 0 = negative, 1 = positive
FEATURE_STRIDE = 16  # native frames per I3D feature step


def default_cas_thresholds() -> np.ndarray:
  return np.arange(0, 0.25, 0.025)


def default_agnostic_thresholds() -> np.ndarray:
  return np.arange(0.4, 0.75, 0.025)


def select_classes(video_score: np.ndarray, class_threshold: float = 0.5) -> np.ndarray:
  """Indices c with video_score[c] >= class_threshold, ascending; else [argmax]."""
  s = np.asarray(video_score).reshape(-1)
  chosen = np.flatnonzero(s >= class_threshold)
  return chosen if chosen.size else np.array([int(np.argmax(s))])


def upsample_linear(track: np.ndarray, scale: int) -> np.ndarray:
  """[T, ...] -> [len(arange(0, T, 1/scale)), ...] float64, linear between steps and linear
  extrapolation of the last interval beyond step T − 1, with interp1d('linear', 'extrapolate')
  arithmetic: slope = (y_hi − y_lo) / (x_hi − x_lo), value = slope·(x − x_lo) + y_lo, where the
  difference y_hi − y_lo is taken in the input's float dtype (float32 stays float32 there)."""
  y = np.asarray(track)
  if not np.issubdtype(y.dtype, np.floating):
    y = y.astype(np.float64)
  n = y.shape[0]
  x_new = np.arange(0, n, 1 / scale)
  if n == 0:
    return np.zeros((0,) + y.shape[1:])
  if n == 1:
    return np.repeat(y.astype(np.float64), x_new.size, axis=0)
  x = np.arange(n).astype(np.float64)
  hi = np.clip(np.searchsorted(x, x_new), 1, n - 1)
  lo = hi - 1
  col = (-1,) + (1,) * (y.ndim - 1)
  slope = (y[hi] - y[lo]) / (x[hi] - x[lo]).reshape(col)
  return (slope * (x_new - x[lo]).reshape(col) + y[lo]).astype(np.float64)


def contiguous_runs(indices: np.ndarray) -> list[np.ndarray]:
  """Split sorted integer indices into runs of consecutive values."""
  idx = np.asarray(indices)
  if idx.size == 0:
    return []
  cuts = np.flatnonzero(idx[1:] - idx[:-1] != 1) + 1
  return list(np.split(idx, cuts))


def score_runs(runs: Sequence[np.ndarray], track: np.ndarray, class_score: float, *,
               margin: float = 0.03, video_score_weight: float = 0.3) -> list[float]:
  """Outer-inner-contrast-style score of each run on the up-sampled 1-D track (module doc)."""
  n = track.shape[0]
  out = []
  for run in runs:
    first, last, length = int(run[0]), int(run[-1]), len(run)
    inner = np.mean(track[run])
    left = max(0, int(first - margin * length))
    right = min(n - 1, int(last + margin * length))
    outer_idx = np.concatenate([np.arange(left, first), np.arange(last + 1, right + 1)])
    outer = np.mean(track[outer_idx]) if outer_idx.size else 0
    out.append(float(inner - outer + video_score_weight * class_score))
  return out


def nms_plus_one(proposals: Sequence[tuple[int, float, float, float]], threshold: float = 0.5
                 ) -> list[tuple[int, float, float, float]]:
  """Greedy NMS on (class, score, start, end) with the '+1' length convention; kept proposals in
  descending score order (equal scores: input order)."""
  if not proposals:
    return []
  arr = np.asarray([(p[1], p[2], p[3]) for p in proposals], np.float64)
  score, start, end = arr[:, 0], arr[:, 1], arr[:, 2]
  length = end - start + 1
  remaining = np.argsort(-score, kind="stable")
  kept = []
  while remaining.size:
    i, rest = remaining[0], remaining[1:]
    kept.append(proposals[i])
    inter = np.maximum(0.0, np.minimum(end[i], end[rest]) - np.maximum(start[i], start[rest]) + 1)
    iou = inter / (length[i] + length[rest] - inter)
    remaining = rest[iou < threshold]
  return kept


def postprocess_video(fused_scores: np.ndarray, video_score: np.ndarray, fps: float, *,
                      scale: int = 24, class_threshold: float = 0.5,
                      cas_thresholds: Sequence[float] | None = None,
                      agnostic_thresholds: Sequence[float] | None = None,
                      margin: float = 0.03, video_score_weight: float = 0.3,
                      nms_threshold: float = 0.5,
                      class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
                      feature_stride: int = FEATURE_STRIDE) -> list[dict]:
  """TSL-Net proposals for one video (see the module docstring); ActivityNet result entries."""
  fused = np.asarray(fused_scores)
  if fused.ndim != 2 or fused.shape[1] < 2:
    raise ValueError(f"fused_scores must be [T, C+1] (background last), got {fused.shape}")
  num_classes = fused.shape[1] - 1
  vscore = np.asarray(video_score).reshape(-1)
  if vscore.size != num_classes:
    raise ValueError(f"video_score has {vscore.size} entries for {num_classes} classes")
  if len(class_names) != num_classes:
    raise ValueError(f"{len(class_names)} class_names for {num_classes} classes")
  if not fps > 0:
    raise ValueError(f"fps must be > 0, got {fps}")
  cas_thr = default_cas_thresholds() if cas_thresholds is None else np.asarray(cas_thresholds)
  agn_thr = (default_agnostic_thresholds() if agnostic_thresholds is None
             else np.asarray(agnostic_thresholds))
  num_steps = fused.shape[0]
  if num_steps == 0:
    return []

  classes = select_classes(vscore, class_threshold)
  if not np.issubdtype(fused.dtype, np.floating):
    fused = fused.astype(np.float64)
  agnostic = 1 - fused[:, -1]  # in the input dtype, like the torch original
  cas_up = upsample_linear(fused[:, classes], scale)  # [N, K]
  agn_up = upsample_linear(agnostic, scale)  # [N]
  seconds_per_index = float(feature_stride * num_steps) / (scale * num_steps * float(fps))
  class_scores = vscore.astype(np.float64)

  by_class: dict[int, list] = {}  # insertion order = first class to produce a proposal

  def add(class_id: int, runs: list[np.ndarray], track: np.ndarray) -> None:
    if not runs:
      return
    scores = score_runs(runs, track, class_scores[class_id], margin=margin,
                        video_score_weight=video_score_weight)
    by_class.setdefault(class_id, []).extend(
        (class_id, sc, int(r[0]) * seconds_per_index, (int(r[-1]) + 1) * seconds_per_index)
        for r, sc in zip(runs, scores))

  def runs_of(mask: np.ndarray) -> list[np.ndarray]:
    idx = np.flatnonzero(mask)
    return contiguous_runs(idx) if idx.any() else []  # reproduces the original's `.any()`

  for thr in cas_thr:
    kept_track = np.where(cas_up < thr, 0.0, cas_up)
    for k, c in enumerate(classes):
      add(int(c), runs_of(kept_track[:, k] > 0), kept_track[:, k])
  for thr in agn_thr:
    above = np.where(agn_up < thr, 0.0, agn_up) > 0
    for k, c in enumerate(classes):
      add(int(c), runs_of(above), cas_up[:, k])

  out = []
  for class_id, props in by_class.items():
    for _, sc, s, e in nms_plus_one(props, nms_threshold):
      out.append({"segment": [float(s), float(e)], "label": class_names[class_id],
                  "score": float(sc)})
  return out


def results_json(per_video: Mapping[str, list], *, external_data: str = "Features from I3D "
                 "Network") -> dict:
  """{video: postprocess_video(...)} -> an ActivityNet results dict (TSL's temp_result.json)."""
  return {"version": "VERSION 1.3", "results": {str(k): list(v) for k, v in per_video.items()},
          "external_data": {"used": True, "details": external_data}}
