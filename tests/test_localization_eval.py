"""ActivityNet-style temporal localization metrics (jaxaffect.evaluation.localization)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxaffect.evaluation import localization as L

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("mAP@0.10", "mAP@0.15", "mAP@0.20", "mAP@0.25", "mAP@0.30", "average_mAP")


def _gt(videos, subset="validation"):
  """videos: {vid: [(s, e, label), ...]} -> ActivityNet ground-truth dict."""
  return {"database": {v: {"subset": subset, "annotations": [
      {"segment": [s, e], "label": lab} for s, e, lab in anns]} for v, anns in videos.items()}}


def _pred(videos):
  """videos: {vid: [(s, e, label, score), ...]} -> ActivityNet results dict."""
  return {"results": {v: [{"segment": [s, e], "label": lab, "score": sc}
                          for s, e, lab, sc in items] for v, items in videos.items()}}


# ---------------------------------------------------------------- reference (loop-based)
# A deliberately plain transcription of the ActivityNet/TSL eval_detection.py algorithm, one
# prediction and one ground truth at a time, with Python lists and loops (no shared code with
# the production module). Ties: stable orders (first listed first), as the module documents.


def _ref_tiou(a, b):
  inter = min(a[1], b[1]) - max(a[0], b[0])
  if inter < 0:
    inter = 0.0
  union = (b[1] - b[0]) + (a[1] - a[0]) - inter
  return inter / union if union > 0 else 0.0


def _ref_interp_ap(prec, rec):
  mprec = [0.0] + list(prec) + [0.0]
  mrec = [0.0] + list(rec) + [1.0]
  for i in range(len(mprec) - 2, -1, -1):
    mprec[i] = max(mprec[i], mprec[i + 1])
  ap = 0.0
  for i in range(1, len(mrec)):
    if mrec[i] != mrec[i - 1]:
      ap += (mrec[i] - mrec[i - 1]) * mprec[i]
  return ap


def _ref_class(gts, preds, thr):
  """gts: [(video, s, e)], preds: [(video, s, e, score)] -> (ap, mean prec, mean rec) lists."""
  n_thr = len(thr)
  if not preds:
    return [0.0] * n_thr, [0.0] * n_thr, [0.0] * n_thr
  npos = float(len(gts))
  order = sorted(range(len(preds)), key=lambda i: -preds[i][3])
  preds = [preds[i] for i in order]
  lock = [[-1] * len(gts) for _ in range(n_thr)]
  tp = [[0] * len(preds) for _ in range(n_thr)]
  fp = [[0] * len(preds) for _ in range(n_thr)]
  for idx, (vid, s, e, _) in enumerate(preds):
    mine = [j for j, g in enumerate(gts) if g[0] == vid]
    if not mine:
      for t in range(n_thr):
        fp[t][idx] = 1
      continue
    tious = {j: _ref_tiou((s, e), gts[j][1:]) for j in mine}
    by_tiou = sorted(mine, key=lambda j: -tious[j])
    for t in range(n_thr):
      for j in by_tiou:
        if tious[j] < thr[t]:
          fp[t][idx] = 1
          break
        if lock[t][j] >= 0:
          continue
        tp[t][idx] = 1
        lock[t][j] = idx
        break
      if fp[t][idx] == 0 and tp[t][idx] == 0:
        fp[t][idx] = 1
  aps, mps, mrs = [], [], []
  for t in range(n_thr):
    ctp = cfp = 0
    prec, rec = [], []
    for k in range(len(preds)):
      ctp += tp[t][k]
      cfp += fp[t][k]
      rec.append(ctp / npos)
      prec.append(ctp / (ctp + cfp))
    aps.append(_ref_interp_ap(prec, rec))
    mps.append(sum(prec) / len(prec))
    mrs.append(sum(rec) / len(rec))
  return aps, mps, mrs


def reference_eval(gt, pred, subset, thr, unknown_fp=False):
  index = {}
  gt_rows = []
  subset_videos = set()
  for vid, v in gt["database"].items():
    if v["subset"] != subset:
      continue
    subset_videos.add(vid)
    for ann in v["annotations"]:
      if ann["label"] not in index:
        index[ann["label"]] = len(index)
      gt_rows.append((vid, float(ann["segment"][0]), float(ann["segment"][1]), ann["label"]))
  pred_rows = []
  for vid, items in pred["results"].items():
    if vid not in subset_videos and not unknown_fp:
      continue
    for r in items:
      if r["label"] in index:
        pred_rows.append((vid, float(r["segment"][0]), float(r["segment"][1]), r["score"],
                          r["label"]))
  ap = np.zeros((len(thr), len(index)))
  mp, mr = np.zeros_like(ap), np.zeros_like(ap)
  for label, c in index.items():
    g = [row[:3] for row in gt_rows if row[3] == label]
    p = [row[:4] for row in pred_rows if row[4] == label]
    ap[:, c], mp[:, c], mr[:, c] = _ref_class(g, p, thr)
  prec, rec = mp.mean(axis=1), mr.mean(axis=1)
  f2 = [5 * a * b / (4 * a + b) if (4 * a + b) > 0 else 0.0 for a, b in zip(prec, rec)]
  return {"mAP": ap.mean(axis=1), "average": ap.mean(), "cAP": dict(zip(index, ap.mean(axis=0))),
          "ap": {lab: ap[:, c] for lab, c in index.items()}, "recall": rec, "precision": prec,
          "f2": np.asarray(f2)}


def _random_files(seed):
  rng = np.random.default_rng(seed)
  labels = ["p", "n", "x"]
  gt_videos, other = {}, {}
  for v in range(int(rng.integers(4, 9))):
    anns = []
    for _ in range(int(rng.integers(0, 6))):
      s = float(rng.uniform(0, 90))
      anns.append((s, s + float(rng.uniform(0.5, 20)), labels[int(rng.integers(0, 3))]))
    gt_videos[f"vid{v}"] = anns
  for v in range(2):
    other[f"train{v}"] = [(1.0, 5.0, "p")]
  gt = _gt(gt_videos)
  gt["database"].update(_gt(other, subset="training")["database"])
  if not any(gt_videos.values()):
    gt["database"]["vid0"]["annotations"].append({"segment": ["1.5", "4.25"], "label": "p"})
  # string segments, as in TSL-300's gt.json
  for entry in gt["database"].values():
    for ann in entry["annotations"][::2]:
      ann["segment"] = [repr(ann["segment"][0]), repr(ann["segment"][1])]
  preds = {}
  for vid, entry in gt["database"].items():
    items = []
    for ann in entry["annotations"]:  # jittered copies of the truth, some duplicated
      for _ in range(int(rng.integers(0, 3))):
        s, e = float(ann["segment"][0]), float(ann["segment"][1])
        j = rng.normal(0, 0.25 * (e - s), 2)
        s2, e2 = s + j[0], e + j[1]
        if e2 < s2:
          s2, e2 = e2, s2
        lab = ann["label"] if rng.random() < 0.85 else labels[int(rng.integers(0, 3))]
        items.append((s2, e2, lab, float(rng.random())))
    for _ in range(int(rng.integers(0, 6))):  # background noise
      s = float(rng.uniform(0, 95))
      items.append((s, s + float(rng.uniform(0.1, 15)), labels[int(rng.integers(0, 3))],
                    float(rng.random())))
    preds[vid] = items
  preds["not_in_gt"] = [(0.0, 3.0, "p", 0.99), (2.0, 9.0, "n", 0.5)]
  return gt, _pred(preds)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("unknown", ["ignore", "false_positive"])
def test_matches_reference_on_random_files(seed, unknown):
  gt, pred = _random_files(seed)
  thr = list(np.linspace(0.1, 0.3, 5)) if seed % 2 else [0.1, 0.3, 0.5, 0.7, 0.9]
  got = L.evaluate_detection(gt, pred, subset="validation", tiou_thresholds=thr,
                             unknown_videos=unknown)
  ref = reference_eval(gt, pred, "validation", thr, unknown_fp=unknown == "false_positive")
  keys = [L.tiou_key(t) for t in thr]
  for i, k in enumerate(keys):
    assert got[f"mAP@{k}"] == pytest.approx(ref["mAP"][i], abs=1e-9)
    assert got[f"tsl_mean_curve_recall@{k}"] == pytest.approx(ref["recall"][i], abs=1e-9)
    assert got[f"tsl_mean_curve_precision@{k}"] == pytest.approx(ref["precision"][i], abs=1e-9)
    assert got[f"tsl_mean_curve_f2@{k}"] == pytest.approx(ref["f2"][i], abs=1e-9)
    for lab, aps in ref["ap"].items():
      assert got[f"AP/{lab}@{k}"] == pytest.approx(aps[i], abs=1e-9)
  assert got["average_mAP"] == pytest.approx(ref["average"], abs=1e-9)
  assert got["tsl_mean_curve_recall@AVG"] == pytest.approx(ref["recall"].mean(), abs=1e-9)
  assert got["tsl_mean_curve_f2@AVG"] == pytest.approx(ref["f2"].mean(), abs=1e-9)
  for lab, v in ref["cAP"].items():
    assert got[f"average_AP/{lab}"] == pytest.approx(v, abs=1e-9)
  assert got["classes"] == list(ref["cAP"])
  assert 0 < got["average_mAP"] < 1  # the random files are not degenerate
  outside = [r for v, items in pred["results"].items() if not v.startswith("vid")
             for r in items if r["label"] in got["classes"]]
  assert len(outside) >= 1
  if unknown == "ignore":
    assert got["num_predictions_ignored_unknown_video"] == len(outside)


def test_perfect_predictions_score_one():
  gt = _gt({"a": [(0, 10, "p"), (20, 35.5, "n")], "b": [(3, 4, "p")]})
  pred = _pred({"a": [(0, 10, "p", 0.9), (20, 35.5, "n", 0.3)], "b": [(3, 4, "p", 0.1)]})
  m = L.evaluate_detection(gt, pred)
  for k in KEYS:
    assert m[k] == 1.0
  assert m["AP/p@0.10"] == m["AP/n@0.30"] == 1.0
  assert m["tsl_mean_curve_precision@AVG"] == 1.0
  # mean of the recall curve, p: (1/2 + 2/2) / 2, n: 1 -> (0.75 + 1) / 2
  assert m["tsl_mean_curve_recall@0.10"] == pytest.approx(0.875)


def test_no_predictions_score_zero():
  gt = _gt({"a": [(0, 10, "p"), (20, 30, "n")]})
  for pred in ({"results": {}}, {"results": {"a": []}}):
    m = L.evaluate_detection(gt, pred)
    for k in KEYS:
      assert m[k] == 0.0
    assert m["tsl_mean_curve_f2@AVG"] == 0.0 and m["num_predictions"] == 0


def test_hand_computed_ap_with_duplicate():
  # One class, GT G1 = [0, 10], G2 = [20, 30]. Ranked predictions:
  #   P1 [0, 10]  0.9 -> G1 (tIoU 1)                               TP
  #   P2 [1, 10]  0.8 -> best is G1 (tIoU 0.9) but taken; G2 tIoU 0 FP (duplicate)
  #   P3 [20, 28] 0.7 -> G2, tIoU 8/10 = 0.8                       TP if t <= 0.8
  # t <= 0.8: precision 1, 1/2, 2/3; recall 1/2, 1/2, 1. Envelope from the right: 1, 2/3, 2/3,
  #   AP = (1/2 - 0) * 1 + (1 - 1/2) * 2/3 = 5/6.
  #   mean-curve P = (1 + 1/2 + 2/3) / 3 = 13/18, R = (1/2 + 1/2 + 1) / 3 = 2/3,
  #   F2 = 5PR / (4P + R) = (65/27) / (64/18) = 65/96.
  # t = 0.85: P3 is a FP: precision 1, 1/2, 1/3; recall 1/2 throughout -> AP = 1/2.
  gt = _gt({"v": [(0, 10, "a"), (20, 30, "a")]})
  pred = _pred({"v": [(1, 10, "a", 0.8), (20, 28, "a", 0.7), (0, 10, "a", 0.9)]})
  m = L.evaluate_detection(gt, pred, tiou_thresholds=[0.5, 0.8, 0.85])
  assert m["mAP@0.50"] == pytest.approx(5 / 6, abs=1e-15)
  assert m["mAP@0.80"] == pytest.approx(5 / 6, abs=1e-15)  # tIoU == threshold matches
  assert m["mAP@0.85"] == pytest.approx(1 / 2, abs=1e-15)
  assert m["average_mAP"] == pytest.approx((5 / 6 + 5 / 6 + 1 / 2) / 3)
  assert m["tsl_mean_curve_precision@0.50"] == pytest.approx(13 / 18)
  assert m["tsl_mean_curve_recall@0.50"] == pytest.approx(2 / 3)
  assert m["tsl_mean_curve_f2@0.50"] == pytest.approx(65 / 96)
  assert m["tsl_mean_curve_recall@0.85"] == pytest.approx(1 / 2)


def test_tiou_edges():
  gt = _gt({"v": [(0, 10, "a")]})
  def ap(segment, thr, label="a", video="v"):
    return L.evaluate_detection(gt, _pred({video: [(*segment, label, 1.0)]}),
                                tiou_thresholds=[thr])[f"mAP@{L.tiou_key(thr)}"]
  assert ap((10, 20), 0.1) == 0.0  # touching: tIoU 0
  assert ap((10, 20), 0.0) == 1.0  # ActivityNet: tIoU >= 0 always passes threshold 0
  assert ap((0, 10), 1.0) == 1.0 and ap((0, 10.001), 1.0) == 0.0
  assert ap((0, 5), 0.5) == 1.0 and ap((0, 4.99), 0.5) == 0.0  # 5/10 == 0.5 passes
  assert ap((-5, 15), 0.5) == 1.0  # contains the GT, 10/20
  assert ap((0, 10), 0.3, label="b") == 0.0  # unknown label: ignored, AP of "a" = 0
  assert ap((0, 10), 0.3, video="w") == 0.0  # other video: ignored
  # zero-length identical segments: tIoU 0 (documented), not NaN
  assert L.segment_tiou([3, 3], np.array([[3.0, 3.0], [2.0, 4.0]])).tolist() == [0.0, 0.0]


def test_wrong_class_and_other_video_are_false_positives():
  gt = _gt({"v": [(0, 10, "a"), (0, 10, "b")], "w": [(50, 60, "b")]})
  # class a: FP (its GT is in v, prediction in w) ranked above the TP -> AP = 1/2 (P = 1/2 at R=1)
  pred = _pred({"w": [(0, 10, "a", 0.9)], "v": [(0, 10, "a", 0.5), (0, 10, "b", 0.4)]})
  m = L.evaluate_detection(gt, pred, tiou_thresholds=[0.5])
  assert m["AP/a@0.50"] == pytest.approx(0.5)
  # class b: one TP (v), GT in w missed -> precision 1 at recall 1/2 -> AP 1/2
  assert m["AP/b@0.50"] == pytest.approx(0.5)
  assert m["mAP@0.50"] == pytest.approx(0.5)


def test_subset_filtering_and_unknown_videos():
  gt = _gt({"t1": [(0, 10, "p")]}, subset="test")
  gt["database"].update(_gt({"tr1": [(0, 10, "p"), (20, 30, "n")]}, subset="train")["database"])
  pred = _pred({"t1": [(0, 10, "p", 0.5)], "tr1": [(0, 10, "p", 0.9), (20, 30, "n", 0.9)],
                "ghost": [(0, 1, "p", 0.8)]})
  m = L.evaluate_detection(gt, pred, subset="test", unknown_videos="ignore")
  assert m["classes"] == ["p"]  # n appears only in train
  assert m["mAP@0.10"] == 1.0 and m["num_ground_truth"] == 1 and m["num_videos"] == 1
  assert m["num_predictions_ignored_unknown_video"] == 2  # tr1 (p) and ghost
  assert m["num_predictions_ignored_unknown_label"] == 1  # tr1 (n)
  m = L.evaluate_detection(gt, pred, subset="test")  # the official protocol is the default
  # ranked: tr1 0.9 FP, ghost 0.8 FP, t1 0.5 TP -> precision 1/3 at recall 1
  assert m["mAP@0.10"] == pytest.approx(1 / 3)
  assert m["num_predictions_unknown_video_false_positive"] == 2
  m = L.evaluate_detection(gt, pred, subset="train")
  assert m["classes"] == ["p", "n"] and m["average_mAP"] == 1.0
  with pytest.raises(L.LocalizationInputError, match=r"subset 'validation'.*'test' \(1 videos, "
                     r"1 annotations\), 'train' \(1 videos, 2 annotations\)"):
    L.evaluate_detection(gt, pred)


def test_input_errors_name_the_key():
  gt = _gt({"v": [(0, 10, "a")]})
  with pytest.raises(L.LocalizationInputError, match="missing key 'database'"):
    L.evaluate_detection({"x": 1}, _pred({}))
  with pytest.raises(L.LocalizationInputError, match="missing key 'results'"):
    L.evaluate_detection(gt, {"database": {}})
  bad = {"results": {"v": [{"segment": [0, 1], "label": "a"}]}}
  with pytest.raises(L.LocalizationInputError, match=r"missing key 'score' in results\['v'\]\[0\]"):
    L.evaluate_detection(gt, bad, sources=("GT.json", "PRED.json"))
  with pytest.raises(L.LocalizationInputError, match="PRED.json"):
    L.evaluate_detection(gt, bad, sources=("GT.json", "PRED.json"))
  bad = {"results": {"v": [{"segment": [5, 1], "label": "a", "score": 1}]}}
  with pytest.raises(L.LocalizationInputError, match="starts after it ends"):
    L.evaluate_detection(gt, bad)
  bad = {"results": {"v": [{"segment": ["x", 1], "label": "a", "score": 1}]}}
  with pytest.raises(L.LocalizationInputError, match="not a number"):
    L.evaluate_detection(gt, bad)
  with pytest.raises(L.LocalizationInputError, match="tIoU thresholds"):
    L.evaluate_detection(gt, _pred({}), tiou_thresholds=[1.5])
  assert L.tiou_key(0.1) == "0.10" and L.tiou_key(0.125) == "0.125"


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "jaxaffect.evaluation.localization", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=60)


def test_cli_prints_one_json_object(tmp_path):
  gt = _gt({"a": [("0", "10.5", "p")], "b": [("2", "4", "n")]}, subset="test")
  gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
  gt_path.write_text(json.dumps(gt))
  pred_path.write_text(json.dumps(_pred({"a": [(0, 10.5, "p", 0.7)], "b": [(2, 3, "n", 0.2)]})))
  r = _cli("--ground-truth", str(gt_path), "--predictions", str(pred_path), "--subset", "test")
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  for k in KEYS:
    assert 0.0 <= out[k] <= 1.0
  assert out["mAP@0.10"] == 1.0  # b: tIoU 1/2
  assert "tsl_mean_curve_f2@AVG" in out and "AP/n@0.30" in out
  r = _cli("--ground-truth", str(gt_path), "--predictions", str(pred_path), "--subset", "test",
           "--tiou", "0.5,0.75")
  assert r.returncode == 0 and set(json.loads(r.stdout)) >= {"mAP@0.50", "mAP@0.75"}


def test_cli_errors(tmp_path):
  gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
  gt_path.write_text(json.dumps(_gt({"a": [(0, 1, "p")]}, subset="test")))
  missing = tmp_path / "nope.json"
  r = _cli("--ground-truth", str(gt_path), "--predictions", str(missing))
  assert r.returncode == 2 and str(missing) in r.stderr and r.stdout == ""
  assert len(r.stderr.strip().splitlines()) == 1
  pred_path.write_text("{not json")
  r = _cli("--ground-truth", str(gt_path), "--predictions", str(pred_path), "--subset", "test")
  assert r.returncode == 2 and "not valid JSON" in r.stderr and str(pred_path) in r.stderr
  pred_path.write_text(json.dumps({"version": "x"}))
  r = _cli("--ground-truth", str(gt_path), "--predictions", str(pred_path), "--subset", "test")
  assert r.returncode == 2 and "missing key 'results'" in r.stderr
  pred_path.write_text(json.dumps({"results": {}}))
  r = _cli("--ground-truth", str(gt_path), "--predictions", str(pred_path))
  assert r.returncode == 2 and "subsets present: 'test'" in r.stderr
