"""Weakly supervised keyframe detection: attention runs to timed detections by hand, the mAP of
perfect and of random keyframes against known segments, and the synthetic keyframe world (the
cue on only inside the annotated segment, the same draws as the plain world otherwise)."""
import numpy as np
import pytest

from data_pipelines.synthetic import affect_world
from jaxaffect.evaluation import keyframes


def test_runs_become_timed_detections():
  kf = np.array([0, 1, 1, 0, 0, 1, 0, 1], bool)
  score = np.array([0, 0.8, 0.6, 0, 0, 0.9, 0, 0.2])
  got = keyframes.detections(kf, score, 8.0)  # 1 s per segment
  assert [d["segment"] for d in got] == [[1.0, 3.0], [5.0, 6.0], [7.0, 8.0]]
  assert [d["score"] for d in got] == pytest.approx([0.7, 0.9, 0.2])
  assert keyframes.detections(np.zeros(4, bool), np.zeros(4), 4.0) == []


def test_perfect_keyframes_score_one_and_chance_lower():
  s, n = 8, 12
  rng = np.random.default_rng(0)
  gt, keys, kf = {"database": {}}, [], np.zeros((n, s), bool)
  for i in range(n):
    a = int(rng.integers(0, 5))
    b = a + int(rng.integers(2, 4))
    kf[i, a:b] = True
    keys.append(f"Joy/test_{i:04d}")
    gt["database"][keys[-1]] = {"subset": "test", "duration": 4.0,
                                "annotations": [{"segment": [a * 0.5, b * 0.5],
                                                 "label": "keyframe"}]}
  out = keyframes.evaluate(gt, keys, kf, kf.astype(float), chance_draws=5)
  assert out["average_mAP"] == pytest.approx(1.0)
  assert out["mAP@0.50"] == pytest.approx(1.0)
  assert out["chance_average_mAP"] < 0.8
  assert out["num_detections"] == n
  shifted = np.roll(kf, 3, axis=1)  # the same segments in the wrong place
  assert keyframes.evaluate(gt, keys, shifted, shifted.astype(float),
                            chance_draws=0)["average_mAP"] < 0.5
  with pytest.raises(keyframes.localization.LocalizationInputError, match="Joy/nope"):
    keyframes.evaluate(gt, ["Joy/nope"], kf[:1], kf[:1].astype(float))


def test_keyframe_world_shows_the_cue_only_inside_its_segment():
  spec = affect_world.ClipSpec(size=32, fps=10, sr=8000, min_duration=4.0, max_duration=6.0)
  label = affect_world.class_index(0, 1)  # red disc, pulsed high tone
  frames, audio, (start, end) = affect_world.render_keyframe_clip(
      label, spec, np.random.default_rng(1), np.random.default_rng(2))
  duration = len(frames) / spec.fps
  assert 0.3 * duration - 0.11 <= end - start <= 0.5 * duration + 0.11
  assert 0.0 <= start < end <= duration + 1e-9
  # The plain clip of the same draws has the object in every frame: the keyframe clip differs
  # from it exactly outside the segment.
  r = np.random.default_rng(1)
  r.uniform(spec.min_duration, spec.max_duration)  # the clip's duration, drawn first
  plain = affect_world.render_frames(0, len(frames), spec, r)
  t = np.arange(len(frames)) / spec.fps
  inside = (t >= start) & (t < end)
  same = np.all(frames == plain, axis=(1, 2, 3))
  assert same[inside].all() and not same[~inside].any()
  # The tone's energy sits inside the segment (noise alone outside).
  ts = np.arange(len(audio)) / spec.sr
  a_in = np.mean(audio[(ts >= start + 0.05) & (ts < end - 0.05)] ** 2)
  a_out = np.mean(audio[(ts < start - 0.05) | (ts >= end + 0.05)] ** 2)
  assert a_in > 1.5 * a_out
