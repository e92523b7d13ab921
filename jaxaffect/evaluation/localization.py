"""Temporal localization (detection) metrics in the ActivityNet format (no model, no trainer).

Command line, the input and output formats (keys), and the behaviour where the original code
is undefined or crashes: README.md, section "TSL-Net" (Stand-alone evaluator).

The average precision is the ActivityNet detection evaluator's (Evaluation/eval_detection.py, as
also used by TSL-Net's eval/eval_detection.py): for each class and each tIoU threshold t, the
class's predictions are ranked by score (descending) and walked in that order; a prediction is a
true positive when, among the not-yet-matched ground-truth segments of its class in the same
video, the one with the highest tIoU has tIoU >= t (that segment becomes matched), and a false
positive otherwise. AP is the VOC-2011 interpolated area under the precision/recall curve
(precision made monotone from the right, summed over the points where recall changes). mAP@t
is the mean over classes, average_mAP the mean over thresholds (default 0.10:0.05:0.30).
tIoU(a, b) = max(0, min(a_e, b_e) - max(a_s, b_s)) / (len a + len b - intersection).

Also reported, under explicit names, TSL-Net's non-standard "Recall"/"Precision"/"F2": per class
and threshold, the MEAN of the cumulative recall (resp. precision) curve over the ranked list
(not the value at the last operating point), averaged over classes ->
tsl_mean_curve_recall@t / tsl_mean_curve_precision@t; tsl_mean_curve_f2@t = 5PR / (4P + R) from
those two averages; the "@AVG" keys average the per-threshold values over the thresholds (for F2,
the mean of the per-threshold F2s, as TSL's best_record does). These reproduce the Recall/F2
columns of the TSL-Net paper; they are not standard detection recall/F-scores.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from jaxaffect.errors import UserError

DEFAULT_TIOU_THRESHOLDS = tuple(float(t) for t in np.linspace(0.1, 0.3, 5))
UNKNOWN_VIDEO_POLICIES = ("ignore", "false_positive")


class LocalizationInputError(UserError, ValueError):
  """A ground-truth/prediction file or dict that cannot be evaluated; the message names the
  source (file) and the key."""


def tiou_key(t: float) -> str:
  """'0.10' for 0.1; more decimals when 2 would not round-trip (0.125 -> '0.125')."""
  s = f"{t:.2f}"
  if abs(float(s) - t) > 1e-12:
    s = repr(float(t))
  return s


def segment_tiou(segment: Sequence[float], candidates: np.ndarray) -> np.ndarray:
  """tIoU between one [start, end] and each row of candidates [N, 2]; 0 where the union is 0."""
  candidates = np.asarray(candidates, np.float64).reshape(-1, 2)
  s, e = float(segment[0]), float(segment[1])
  inter = np.clip(np.minimum(e, candidates[:, 1]) - np.maximum(s, candidates[:, 0]), 0.0, None)
  union = (candidates[:, 1] - candidates[:, 0]) + (e - s) - inter
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def interpolated_average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
  """VOC-2011 interpolated AP (ActivityNet's interpolated_prec_rec): pad the curve with
  (recall 0, precision 0) in front and (recall 1, precision 0) behind, replace each precision by
  the max precision at or after it, and sum precision x recall step at every recall change."""
  prec = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
  rec = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
  envelope = np.maximum.accumulate(prec[::-1])[::-1]
  steps = np.flatnonzero(rec[1:] != rec[:-1]) + 1
  return float(np.sum((rec[steps] - rec[steps - 1]) * envelope[steps]))


# ----------------------------------------------------------------------------- input parsing


def _key(mapping: Any, key: str, where: str, source: str) -> Any:
  if not isinstance(mapping, Mapping):
    raise LocalizationInputError(f"{source}: {where or 'top level'} is a "
                                 f"{type(mapping).__name__}, expected an object")
  if key not in mapping:
    raise LocalizationInputError(f"{source}: missing key '{key}'"
                                 + (f" in {where}" if where else ""))
  return mapping[key]


def _short(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def _number(value: Any, where: str, source: str) -> float:
  try:
    x = float(value)
  except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past 1e308
    raise LocalizationInputError(f"{source}: {where} = {_short(value)} is not a number"
                                 ) from None
  if not math.isfinite(x):
    raise LocalizationInputError(f"{source}: {where} = {_short(value)} is not finite")
  return x


def _segment(item: Any, where: str, source: str) -> tuple[float, float]:
  seg = _key(item, "segment", where, source)
  if not isinstance(seg, (list, tuple)) or len(seg) != 2:
    raise LocalizationInputError(f"{source}: {where}['segment'] = {seg!r} is not [start, end]")
  s = _number(seg[0], f"{where}['segment'][0]", source)
  e = _number(seg[1], f"{where}['segment'][1]", source)
  if s > e:
    raise LocalizationInputError(f"{source}: {where}['segment'] = {seg!r} starts after it ends")
  return s, e


def _label(value: Any, where: str, source: str) -> str:
  if isinstance(value, (dict, list)) or value is None:
    raise LocalizationInputError(f"{source}: {where}['label'] = {value!r} is not a label")
  return str(value)


def parse_ground_truth(ground_truth: Mapping, subset: str, source: str = "ground truth"
                       ) -> tuple[list[str], list[dict]]:
  """-> (video ids of `subset` in file order, annotations [{video, start, end, label}])."""
  database = _key(ground_truth, "database", "", source)
  if not isinstance(database, Mapping):
    raise LocalizationInputError(f"{source}: 'database' is a {type(database).__name__}, "
                                 "expected an object {video_id: {...}}")
  videos, annotations, subsets = [], [], {}
  for vid, entry in database.items():
    where = f"database[{vid!r}]"
    sub = str(_key(entry, "subset", where, source))
    anns = _key(entry, "annotations", where, source) if sub == subset else entry.get(
        "annotations", [])
    if not isinstance(anns, list):
      raise LocalizationInputError(f"{source}: {where}['annotations'] is a "
                                   f"{type(anns).__name__}, expected a list")
    n_v, n_a = subsets.get(sub, (0, 0))
    subsets[sub] = (n_v + 1, n_a + len(anns))
    if sub != subset:
      continue
    videos.append(str(vid))
    for i, ann in enumerate(anns):
      w = f"{where}['annotations'][{i}]"
      s, e = _segment(ann, w, source)
      annotations.append({"video": str(vid), "start": s, "end": e,
                          "label": _label(_key(ann, "label", w, source), w, source)})
  if not annotations:
    present = ", ".join(f"'{k}' ({v} videos, {a} annotations)" for k, (v, a) in
                        sorted(subsets.items())) or "none (empty database)"
    raise LocalizationInputError(f"{source}: no ground-truth annotations in subset '{subset}'; "
                                 f"subsets present: {present}")
  return videos, annotations


def parse_predictions(predictions: Mapping, source: str = "predictions") -> list[dict]:
  """-> [{video, start, end, label, score}] in file order (videos, then list order)."""
  results = _key(predictions, "results", "", source)
  if not isinstance(results, Mapping):
    raise LocalizationInputError(f"{source}: 'results' is a {type(results).__name__}, expected "
                                 "an object {video_id: [...]}")
  out = []
  for vid, items in results.items():
    where = f"results[{vid!r}]"
    if not isinstance(items, list):
      raise LocalizationInputError(f"{source}: {where} is a {type(items).__name__}, expected a "
                                   "list of predictions")
    for i, item in enumerate(items):
      w = f"{where}[{i}]"
      s, e = _segment(item, w, source)
      out.append({"video": str(vid), "start": s, "end": e,
                  "label": _label(_key(item, "label", w, source), w, source),
                  "score": _number(_key(item, "score", w, source), f"{w}['score']", source)})
  return out


# ----------------------------------------------------------------------------- per class


def class_tp(gt_video: np.ndarray, gt_segments: np.ndarray, pred_video: np.ndarray,
             pred_segments: np.ndarray, tiou_thresholds: np.ndarray) -> np.ndarray:
  """True-positive flags [n_thresholds, n_pred] of ONE class's predictions, which must already
  be in rank order (best first). gt_video / pred_video: integer video codes."""
  thr = np.asarray(tiou_thresholds, np.float64)
  tp = np.zeros((thr.size, len(pred_video)), bool)
  matched = np.zeros((thr.size, len(gt_video)), bool)
  gt_rows = {}
  for j, v in enumerate(gt_video.tolist()):
    gt_rows.setdefault(v, []).append(j)
  gt_rows = {v: np.asarray(r) for v, r in gt_rows.items()}
  for k, v in enumerate(pred_video.tolist()):
    rows = gt_rows.get(v)
    if rows is None:
      continue
    tiou = segment_tiou(pred_segments[k], gt_segments[rows])  # [g]
    free = (tiou[None, :] >= thr[:, None]) & ~matched[:, rows]  # [n_thr, g]
    score = np.where(free, tiou[None, :], -1.0)
    best = np.argmax(score, axis=1)  # first max -> earliest GT on equal tIoU
    hit = free[np.arange(thr.size), best]
    tp[hit, k] = True
    matched[np.flatnonzero(hit), rows[best[hit]]] = True
  return tp


def class_curves(tp: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """-> (AP, mean of the precision curve, mean of the recall curve), each [n_thresholds]."""
  n_thr, n = tp.shape
  if n == 0:
    z = np.zeros(n_thr)
    return z, z.copy(), z.copy()
  tp_cum = np.cumsum(tp, axis=1, dtype=np.float64)
  recall = tp_cum / float(num_gt)
  precision = tp_cum / np.arange(1, n + 1, dtype=np.float64)
  ap = np.array([interpolated_average_precision(precision[i], recall[i]) for i in range(n_thr)])
  return ap, precision.mean(axis=1), recall.mean(axis=1)


def _f2(p: float, r: float) -> float:
  den = 4.0 * p + r
  return 5.0 * p * r / den if den > 0 else 0.0


# ----------------------------------------------------------------------------- public API


def evaluate_detection(ground_truth: Mapping, predictions: Mapping, *, subset: str = "validation",
                       tiou_thresholds: Sequence[float] = DEFAULT_TIOU_THRESHOLDS,
                       unknown_videos: str = "false_positive",
                       sources: tuple[str, str] = ("ground truth", "predictions")) -> dict:
  """ActivityNet-style detection metrics of `predictions` against `subset` of `ground_truth`
  (both the parsed JSON dicts). `sources` names the two inputs in error messages (file paths
  from the CLI). Returns a flat dict (its keys: README.md, "Stand-alone evaluator")."""
  if unknown_videos not in UNKNOWN_VIDEO_POLICIES:
    raise LocalizationInputError(f"unknown_videos must be one of {UNKNOWN_VIDEO_POLICIES}, "
                                 f"got {unknown_videos!r}")
  thr = np.asarray([float(t) for t in tiou_thresholds], np.float64)
  if thr.size == 0 or not np.all(np.isfinite(thr)) or thr.min() < 0 or thr.max() > 1:
    raise LocalizationInputError(f"tIoU thresholds must be non-empty numbers in [0, 1], got "
                                 f"{list(tiou_thresholds)}")
  keys = [tiou_key(t) for t in thr]
  if len(set(keys)) != len(keys):
    raise LocalizationInputError(f"duplicate tIoU thresholds: {keys}")
  gt_source, pred_source = sources
  videos, gt = parse_ground_truth(ground_truth, subset, gt_source)
  preds = parse_predictions(predictions, pred_source)

  classes = list(dict.fromkeys(a["label"] for a in gt))  # first-appearance order
  video_code = {v: i for i, v in enumerate(videos)}
  n_unknown_video = n_unknown_label = 0
  kept = []
  for x in preds:
    if x["label"] not in classes:
      n_unknown_label += 1
      continue
    if x["video"] not in video_code:
      n_unknown_video += 1
      if unknown_videos == "ignore":
        continue
      video_code.setdefault(x["video"], len(video_code))  # no GT: always a false positive
    kept.append(x)

  ap = np.zeros((thr.size, len(classes)))
  mean_prec = np.zeros_like(ap)
  mean_rec = np.zeros_like(ap)
  for c, label in enumerate(classes):
    cls_gt = [a for a in gt if a["label"] == label]
    cls_pred = [x for x in kept if x["label"] == label]
    order = np.argsort(-np.asarray([x["score"] for x in cls_pred], np.float64), kind="stable")
    cls_pred = [cls_pred[i] for i in order]  # rank order; equal scores keep file order
    tp = class_tp(
        np.asarray([video_code[a["video"]] for a in cls_gt], np.int64),
        np.asarray([[a["start"], a["end"]] for a in cls_gt], np.float64).reshape(-1, 2),
        np.asarray([video_code[x["video"]] for x in cls_pred], np.int64),
        np.asarray([[x["start"], x["end"]] for x in cls_pred], np.float64).reshape(-1, 2),
        thr)
    ap[:, c], mean_prec[:, c], mean_rec[:, c] = class_curves(tp, len(cls_gt))

  out: dict[str, Any] = {}
  m_ap = ap.mean(axis=1)
  for k, v in zip(keys, m_ap):
    out[f"mAP@{k}"] = float(v)
  out["average_mAP"] = float(m_ap.mean())
  for c, label in enumerate(classes):
    for k, v in zip(keys, ap[:, c]):
      out[f"AP/{label}@{k}"] = float(v)
    out[f"average_AP/{label}"] = float(ap[:, c].mean())
  prec, rec = mean_prec.mean(axis=1), mean_rec.mean(axis=1)
  f2 = np.array([_f2(float(a), float(b)) for a, b in zip(prec, rec)])
  for name, vals in (("recall", rec), ("precision", prec), ("f2", f2)):
    for k, v in zip(keys, vals):
      out[f"tsl_mean_curve_{name}@{k}"] = float(v)
    out[f"tsl_mean_curve_{name}@AVG"] = float(vals.mean())
  out.update({
      "subset": subset,
      "classes": classes,
      "tiou_thresholds": [float(t) for t in thr],
      "num_videos": len(videos),
      "num_ground_truth": len(gt),
      "num_predictions": len(kept),
      "num_predictions_ignored_unknown_video": n_unknown_video if unknown_videos == "ignore"
                                               else 0,
      "num_predictions_ignored_unknown_label": n_unknown_label,
  })
  if unknown_videos == "false_positive":
    out["num_predictions_unknown_video_false_positive"] = n_unknown_video
  return out


def read_text(path: str, what: str, encoding_note: str = "") -> str:
  """The file's text; LocalizationInputError naming it when it is missing, unreadable or not
  UTF-8 (a UTF-8 BOM is accepted)."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise LocalizationInputError(f"{what} file not found: {path}") from None
  except OSError as e:
    raise LocalizationInputError(f"cannot read {what} file {path}: {e.strerror or e}") from None
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise LocalizationInputError(
        f"{what} file {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
        f"{e.start}){encoding_note}") from None


def load_json(path: str, what: str) -> Any:
  """The parsed file; LocalizationInputError naming it when it is missing, unreadable, not
  UTF-8 text (JSON's encoding; a UTF-8 BOM is accepted) or not (complete) JSON."""
  text = read_text(path, what, "; JSON files must be UTF-8")
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    cut = " (truncated?)" if e.pos >= len(text.rstrip()) else ""
    raise LocalizationInputError(f"{what} file {path} is not valid JSON{cut}: {e}") from None
  except (ValueError, RecursionError) as e:  # a 5000-digit number, nesting too deep
    raise LocalizationInputError(f"{what} file {path} cannot be parsed: "
                                 f"{type(e).__name__}: {e}") from None


def evaluate_files(ground_truth_path: str, predictions_path: str, *, subset: str = "validation",
                   tiou_thresholds: Sequence[float] = DEFAULT_TIOU_THRESHOLDS,
                   unknown_videos: str = "false_positive") -> dict:
  """evaluate_detection on two JSON files; errors name the file."""
  gt = load_json(ground_truth_path, "ground-truth")
  pred = load_json(predictions_path, "predictions")
  return evaluate_detection(gt, pred, subset=subset, tiou_thresholds=tiou_thresholds,
                            unknown_videos=unknown_videos,
                            sources=(ground_truth_path, predictions_path))


def _parse_tiou(text: str) -> list[float]:
  try:
    vals = [float(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise LocalizationInputError(f"--tiou: expected comma-separated numbers, got {text!r}"
                                 ) from None
  if not vals:
    raise LocalizationInputError(f"--tiou: expected comma-separated numbers, got {text!r}")
  return vals


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxaffect.evaluation.localization",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--ground-truth", required=True, help="ActivityNet-style ground-truth JSON")
  p.add_argument("--predictions", required=True, help="ActivityNet-style results JSON")
  p.add_argument("--subset", default="validation",
                 help="ground-truth subset to evaluate (default validation; TSL-300: test)")
  p.add_argument("--tiou", default=",".join(tiou_key(t) for t in DEFAULT_TIOU_THRESHOLDS),
                 help="comma-separated tIoU thresholds (default 0.10,0.15,0.20,0.25,0.30)")
  p.add_argument("--unknown-videos", choices=("ignore", "false-positive"),
                 default="false-positive",
                 help="predictions for videos outside the subset: false positives, as in the "
                      "official ActivityNet code (default), or ignore and count them")
  args = p.parse_args(argv)
  try:
    result = evaluate_files(args.ground_truth, args.predictions, subset=args.subset,
                            tiou_thresholds=_parse_tiou(args.tiou),
                            unknown_videos=args.unknown_videos.replace("-", "_"))
  except LocalizationInputError as e:
    # One line even when a key read from the file holds a newline.
    print("error: " + " ".join(str(e).split("\n")), file=sys.stderr)
    return 2
  print(json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
