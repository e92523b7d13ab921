"""TSL-Net inference post-processing (jaxaffect.methods.tsl.postprocess)."""
import numpy as np
import pytest
from scipy.interpolate import interp1d

from jaxaffect.evaluation import localization
from jaxaffect.methods.tsl import postprocess as P


def _two_bumps(num_steps=20):
  """Class p: 0.8 on steps 4..7 and 12..15, 0 elsewhere; class n: 0; background 0.1 inside
  the bumps and 0.9 outside."""
  fused = np.zeros((num_steps, 3))
  fused[:, 2] = 0.9
  for a, b in ((4, 8), (12, 16)):
    fused[a:b, 1] = 0.8
    fused[a:b, 2] = 0.1
  return fused


def test_two_bumps_give_two_segments_in_seconds():
  # fps 25: one up-sampled index = 16 / (24 * 25) s = 1/37.5 s; step k sits at index 24k.
  # Winner per bump (highest score): class threshold 0.225, scored on the thresholded track, so
  # its outer margin (all below the threshold) counts 0. Rising edge 0.8 * (x - 3) >= 0.225 ->
  # x >= 3.28125 -> first index ceil(78.75) = 79; falling edge 0.8 * (8 - x) >= 0.225 ->
  # x <= 7.71875 -> last index 185. Segment [79, 185 + 1] / 37.5 s, score = mean(track[79..185])
  # + 0.3 * 0.9. Every other proposal of the bump overlaps it by > 0.5 (with the +1 s widths)
  # and is suppressed. The second bump is the same, 8 steps = 192 indices later.
  out = P.postprocess_video(_two_bumps(), np.array([0.1, 0.9]), 25.0)
  assert [o["label"] for o in out] == ["p", "p"]
  x = np.arange(79, 186) / 24
  track = np.minimum(0.8, np.minimum(0.8 * (x - 3), 0.8 * (8 - x)))
  score = track.mean() + 0.3 * 0.9
  got = sorted(out, key=lambda o: o["segment"][0])
  assert got[0]["segment"] == pytest.approx([79 / 37.5, 186 / 37.5], abs=1e-12)
  assert got[1]["segment"] == pytest.approx([271 / 37.5, 378 / 37.5], abs=1e-12)
  assert got[0]["score"] == pytest.approx(score, abs=1e-12)
  assert got[1]["score"] == pytest.approx(score, abs=1e-12)
  # the output is a valid ActivityNet results file that scores 1 against the bump times
  gt = {"database": {"v": {"subset": "test", "annotations": [
      {"segment": ["2.56", "5.12"], "label": "p"}, {"segment": ["7.68", "10.24"], "label": "p"}]}}}
  m = localization.evaluate_detection(gt, P.results_json({"v": out}), subset="test")
  assert m["average_mAP"] == 1.0


def test_time_conversion_uses_fps():
  out = P.postprocess_video(_two_bumps(), np.array([0.1, 0.9]), 29.97)
  f = 16 / (24 * 29.97)
  assert sorted(o["segment"][0] for o in out) == pytest.approx([79 * f, 271 * f], rel=1e-12)


def test_nms_plus_one_convention():
  props = [(1, 0.9, 0.0, 10.0), (1, 0.8, 0.5, 10.0), (1, 0.7, 20.0, 30.0), (1, 0.95, 20.0, 30.2)]
  kept = P.nms_plus_one(props, 0.5)
  assert kept == [props[3], props[0]]  # descending score; the two near-duplicates are gone
  # disjoint short segments: intersection -0.1 + 1 = 0.9, union 1.2 + 1.2 - 0.9 -> IoU 0.6
  short = [(0, 0.5, 0.0, 0.2), (0, 0.4, 0.3, 0.5)]
  assert P.nms_plus_one(short, 0.5) == short[:1]
  assert P.nms_plus_one(short, 0.61) == short
  # equal scores: generation order decides
  tie = [(0, 0.5, 0.0, 10.0), (0, 0.5, 1.0, 10.0)]
  assert P.nms_plus_one(tie, 0.5) == tie[:1]
  assert P.nms_plus_one(tie[::-1], 0.5) == tie[1:]
  assert P.nms_plus_one([], 0.5) == []


def test_postprocess_removes_duplicates():
  # The same bump is found at every one of the 24 thresholds; one proposal per bump survives.
  fused = _two_bumps()
  out = P.postprocess_video(fused, np.array([0.1, 0.9]), 25.0, nms_threshold=1.01)
  assert len(out) > 20
  assert len(P.postprocess_video(fused, np.array([0.1, 0.9]), 25.0)) == 2


def test_class_selection_rule():
  assert P.select_classes(np.array([0.6, 0.7])).tolist() == [0, 1]
  assert P.select_classes(np.array([0.5, 0.49])).tolist() == [0]  # >= 0.5
  assert P.select_classes(np.array([0.2, 0.4])).tolist() == [1]  # none: argmax
  assert P.select_classes(np.array([0.3, 0.3])).tolist() == [0]  # argmax: first on ties
  fused = _two_bumps()
  fused[:, 0] = fused[:, 1] / 2  # a weaker n track on the same bumps
  labels = lambda s: sorted({o["label"] for o in P.postprocess_video(fused, np.array(s), 25.0)})
  assert labels([0.6, 0.9]) == ["n", "p"]
  assert labels([0.1, 0.9]) == ["p"]
  assert labels([0.45, 0.2]) == ["n"]
  # the +0.3 * s_c term: n's proposals carry its video score
  out = P.postprocess_video(fused, np.array([0.6, 0.9]), 25.0)
  n_best = max(o["score"] for o in out if o["label"] == "n")
  p_best = max(o["score"] for o in out if o["label"] == "p")
  assert n_best < p_best


def test_only_index_zero_gives_no_proposal():
  # Up-sampled class track: 0.23 at index 0, then 0.23 - 0.23/24 < 0.225: the run is [0] alone,
  # which the original drops (`indices.any()` is False for [0]).
  fused = np.zeros((5, 3))
  fused[0, 1] = 0.23
  kw = dict(cas_thresholds=[0.225], agnostic_thresholds=[])
  assert P.postprocess_video(fused, np.array([0.0, 0.9]), 25.0, **kw) == []
  fused[1, 1] = 0.23  # the run now reaches index 24
  (o,) = P.postprocess_video(fused, np.array([0.0, 0.9]), 25.0, **kw)
  assert o["segment"][0] == 0.0 and o["label"] == "p"


def test_upsample_matches_scipy_interp1d_bitwise():
  rng = np.random.default_rng(0)
  for dtype in (np.float32, np.float64):
    for steps in (2, 7, 63):
      y = rng.random((steps, 2)).astype(dtype)
      ref = interp1d(np.arange(steps), y, kind="linear", axis=0, fill_value="extrapolate")(
          np.arange(0, steps, 1 / 24))
      np.testing.assert_array_equal(P.upsample_linear(y, 24), ref)
  assert P.upsample_linear(np.array([[0.3]]), 4).tolist() == [[0.3]] * 4  # T = 1: held
  assert P.postprocess_video(np.zeros((0, 3)), np.array([0.6, 0.2]), 25.0) == []


def test_contiguous_runs():
  runs = P.contiguous_runs(np.array([0, 1, 2, 5, 7, 8]))
  assert [r.tolist() for r in runs] == [[0, 1, 2], [5], [7, 8]]
  assert P.contiguous_runs(np.array([], int)) == []


# ---------------------------------------------------------------- reference (loop-based)
# The original test_all.py + utils.py flow re-stated with scipy's interp1d, Python loops and
# lists, to check the vectorised module on random score tracks.


def _reference(fused, vscore, fps, scale=24, lam=0.03, gamma=0.3):
  steps = fused.shape[0]
  chosen = [c for c in range(2) if vscore[c] >= 0.5] or [int(np.argmax(vscore))]
  grid = np.arange(0, steps, 1 / scale)
  up = lambda y: interp1d(np.arange(steps), y, kind="linear", axis=0,
                          fill_value="extrapolate")(grid)
  cas = up(fused[:, chosen])
  agn = up(1 - fused[:, 2])
  n = len(grid)
  factor = float(16 * steps) / (scale * steps * fps)
  table = {}

  def propose(c_col, positions, w):
    c = chosen[c_col]
    if len(positions) == 0 or max(positions) == 0:
      return
    runs, cur = [], [positions[0]]
    for i in positions[1:]:
      if i == cur[-1] + 1:
        cur.append(i)
      else:
        runs.append(cur)
        cur = [i]
    runs.append(cur)
    for run in runs:
      inner = np.mean([w[i] for i in run])
      lo = max(0, int(run[0] - lam * len(run)))
      hi = min(n - 1, int(run[-1] + lam * len(run)))
      outer_idx = list(range(lo, run[0])) + list(range(run[-1] + 1, hi + 1))
      outer = np.mean([w[i] for i in outer_idx]) if outer_idx else 0
      table.setdefault(c, []).append(
          [c, inner - outer + gamma * float(vscore[c]), run[0] * factor, (run[-1] + 1) * factor])

  for thr in np.arange(0, 0.25, 0.025):
    for k in range(len(chosen)):
      w = [v if v >= thr else 0.0 for v in cas[:, k]]
      propose(k, [i for i in range(n) if w[i] > 0], w)
  for thr in np.arange(0.4, 0.75, 0.025):
    for k in range(len(chosen)):
      propose(k, [i for i in range(n) if agn[i] >= thr and agn[i] > 0], list(cas[:, k]))
  out = []
  for c, props in table.items():
    todo = sorted(props, key=lambda p: -p[1])
    while todo:
      best = todo.pop(0)
      out.append({"segment": [best[2], best[3]], "label": "np"[c], "score": best[1]})
      keep = []
      for p in todo:
        inter = max(0.0, min(best[3], p[3]) - max(best[2], p[2]) + 1)
        iou = inter / ((best[3] - best[2] + 1) + (p[3] - p[2] + 1) - inter)
        if iou < 0.5:
          keep.append(p)
      todo = keep
  return out


@pytest.mark.parametrize("seed", range(4))
def test_matches_reference_on_random_tracks(seed):
  rng = np.random.default_rng(seed)
  steps = int(rng.integers(20, 50))
  logits = np.cumsum(rng.normal(0, 0.8, (steps, 3)), axis=0)
  sig = (1 / (1 + np.exp(-logits))).astype(np.float32)
  fused = np.concatenate([sig[:, :2] * (1 - sig[:, 2:]), sig[:, 2:]], axis=1)
  vscore = np.sort(sig[:, :2], axis=0)[::-1][:max(1, steps // 8)].mean(0)
  if seed == 3:
    vscore = np.array([0.7, 0.8], np.float32)  # both classes
  fps = float(rng.choice([23.976, 25.0, 29.97, 30.0]))
  got = P.postprocess_video(fused, vscore, fps)
  ref = _reference(fused, vscore, fps)
  assert len(got) == len(ref) > 0
  for g, r in zip(got, ref):
    assert g["label"] == r["label"]
    assert g["segment"] == pytest.approx(r["segment"], abs=1e-12)
    assert g["score"] == pytest.approx(r["score"], abs=1e-12)
