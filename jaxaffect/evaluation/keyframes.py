"""Weakly supervised keyframe detection from a temporal attention: the segments a model marks as
keyframes become timed detections, scored against annotated emotional segments by the
ActivityNet detection mAP of localization.py (class-agnostic: every segment carries one label).

A video of duration d split into S equal segments (the TSN sampler's layout: segment i's
snippet is drawn from frames in [i d / S, (i + 1) d / S)) gives one detection per run of
consecutive keyframe segments, spanning the run's time, scored by the mean of its segments'
scores. The chance level is the same procedure on random scores (uniform per segment,
thresholded at the same quantile as the model's keyframes), averaged over draws.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from jaxaffect.evaluation import localization

LABEL = "keyframe"
TIOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)  # CTEN's Table 3


def detections(keyframe: np.ndarray, score: np.ndarray, duration: float) -> list[dict]:
  """keyframe bool [S], score float [S] -> [{segment: [s, e], score, label}] (one per run)."""
  keyframe = np.asarray(keyframe, bool)
  score = np.asarray(score, np.float64)
  s = keyframe.shape[0]
  out = []
  i = 0
  while i < s:
    if not keyframe[i]:
      i += 1
      continue
    j = i
    while j < s and keyframe[j]:
      j += 1
    out.append({"segment": [duration * i / s, duration * j / s],
                "score": float(score[i:j].mean()), "label": LABEL})
    i = j
  return out


def evaluate(ground_truth: Mapping, keys: Sequence[str], keyframe: np.ndarray,
             score: np.ndarray, *, subset: str = "test",
             tiou_thresholds: Sequence[float] = TIOU_THRESHOLDS, chance_draws: int = 10,
             seed: int = 0) -> dict[str, float]:
  """mAP@t and average_mAP of the keyframes of the videos `keys` (rows of keyframe/score
  [N, S]) against `ground_truth` (ActivityNet JSON, its `subset` restricted to `keys`), plus
  chance_average_mAP (random scores, same number of keyframes per video) and the counts."""
  database = ground_truth["database"]
  missing = [k for k in keys if k not in database]
  if missing:
    raise localization.LocalizationInputError(
        f"keyframe ground truth: no entry for {len(missing)} evaluated video(s), e.g. "
        f"{missing[0]!r}")
  gt = {"database": {k: {**database[k], "subset": subset} for k in keys}}
  keyframe = np.asarray(keyframe, bool)

  def mean_ap(kf, sc) -> dict:
    results = {k: detections(kf[i], sc[i], float(database[k]["duration"]))
               for i, k in enumerate(keys)}
    return localization.evaluate_detection(gt, {"results": results}, subset=subset,
                                           tiou_thresholds=tiou_thresholds)

  m = mean_ap(keyframe, score)
  out = {k: v for k, v in m.items() if k.startswith("mAP@") or k == "average_mAP"}
  rng = np.random.default_rng(seed)
  chance = []
  for _ in range(chance_draws):
    r = rng.random(keyframe.shape)
    # Each video keeps as many keyframes as the model marked, at random places.
    ranks = np.argsort(np.argsort(-r, axis=1), axis=1)
    chance.append(mean_ap(ranks < keyframe.sum(1, keepdims=True), r)["average_mAP"])
  out["chance_average_mAP"] = float(np.mean(chance)) if chance else float("nan")
  out["keyframe_fraction"] = float(keyframe.mean())
  out["num_detections"] = float(m["num_predictions"])
  out["num_videos"] = float(len(keys))
  return out
