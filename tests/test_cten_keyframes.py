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


def _write(path, text):
  path.write_text(text)
  return str(path)


def test_segment_table_in_seconds_and_in_frames(tmp_path):
  from jaxaffect.evaluation import segment_table
  secs = _write(tmp_path / "gt.csv", "# keyframes by hand\n"
                "Video,Start,End,Duration\n"
                "Joy/a,1.0,2.5,4\n"
                "Joy/a,3,4,4\n"
                "\n"
                "Fear/b,,,6\n"
                "Fear/c,0,0.5,2\n")
  got = segment_table.read(secs)["database"]
  assert list(got) == ["Joy/a", "Fear/b", "Fear/c"]
  assert got["Joy/a"] == {"subset": "test", "duration": 4.0, "annotations": [
      {"segment": [1.0, 2.5], "label": "keyframe"}, {"segment": [3.0, 4.0], "label": "keyframe"}]}
  assert got["Fear/b"]["annotations"] == [] and got["Fear/b"]["duration"] == 6.0
  # Frames 10..19 at 10 fps are [1.0, 2.0) s; 40 frames are 4 s.
  frames = _write(tmp_path / "gt.tsv", "end_frame\tvideo\tstart_frame\tfps\tnum_frames\tlabel\n"
                  "19\tJoy/a\t10\t10\t40\tkey\n")
  got = segment_table.read(frames)["database"]
  assert got == {"Joy/a": {"subset": "test", "duration": 4.0,
                           "annotations": [{"segment": [1.0, 2.0], "label": "key"}]}}


def test_keyframes_score_the_same_against_a_table_and_the_json(tmp_path):
  from jaxaffect.evaluation import segment_table
  gt = {"database": {
      "Joy/a": {"subset": "test", "duration": 4.0,
                "annotations": [{"segment": [1.0, 2.0], "label": "keyframe"}]},
      "Joy/b": {"subset": "test", "duration": 8.0,
                "annotations": [{"segment": [0.0, 4.0], "label": "keyframe"}]}}}
  table = segment_table.read(_write(tmp_path / "gt.csv", "video,start,end,duration\n"
                                    "Joy/a,1,2,4\nJoy/b,0,4,8\n"))
  assert table == gt
  kf = np.array([[0, 1, 1, 1], [1, 0, 0, 1]], bool)  # tIoU 1/3 on Joy/a: missed from 0.4
  a = keyframes.evaluate(gt, ["Joy/a", "Joy/b"], kf, kf.astype(float), chance_draws=2)
  b = keyframes.evaluate(table, ["Joy/a", "Joy/b"], kf, kf.astype(float), chance_draws=2)
  assert a == b and 0.0 < a["average_mAP"] < 1.0


@pytest.mark.parametrize("text,match", [
    ("", r"gt\.csv holds no header row"),
    ("start,end,duration\n", r"gt\.csv:1: the header .* has no 'video' column"),
    ("video,start,duration\nJoy/a,1,4\n", r"gt\.csv:1: the header needs either start,end"),
    ("video,start,end\nJoy/a,1,2\n", r"gt\.csv:1: the header needs a 'duration' column"),
    ("video,start,end,duration\nJoy/a,1,two,4\n", r"gt\.csv:2: end = 'two' is not a number"),
    ("video,start,end,duration\nJoy/a,1,2\n", r"gt\.csv:2: 3 cells, the header has 4"),
    ("video,start,end,duration\nJoy/a,1,5,4\n", r"gt\.csv:2: .* ends after the video \(4 s\)"),
    ("video,start,end,duration\nJoy/a,2,1,4\n", r"gt\.csv:2: the segment \[2, 1\] s"),
    ("video,start,end,duration\nJoy/a,1,2,4\nJoy/a,2,3,5\n",
     r"gt\.csv:3: 'Joy/a' has duration 5 s here and 4 s on line 2"),
    ("video,start,end,duration\nJoy/a,,,4\n", r"gt\.csv holds no annotated segment"),
    ("video,start,end,duration\n,1,2,4\n", r"gt\.csv:2: the video cell is empty"),
    ("video,start,end,duration\nJoy/a,-1,2,4\n", r"gt\.csv:2: start = '-1' is not a finite"),
    ("video,start_frame,end_frame,fps,duration\nJoy/a,1.5,3,10,4\n",
     r"gt\.csv:2: frame indices '1.5', '3' are not integers"),
    ("video,video,start,end,duration\n", r"gt\.csv:1: column 'video' appears twice"),
])
def test_segment_table_errors_name_the_line_and_the_cell(tmp_path, text, match):
  from jaxaffect.evaluation import segment_table
  path = _write(tmp_path / "gt.csv", text)
  with pytest.raises(keyframes.localization.LocalizationInputError, match=match):
    segment_table.read(path)
