"""CTEN's input pipeline on the synthetic keyframe world (configs/cten_ve8.py:keyframes,smoke):
the generated keyframes.json matches the extracted records, batches carry the shapes the model
reads (snippets, fbank windows with AST scaling, the eval index), and the cten_keyframes
evaluator reads the annotations through the eval index: the true segments score mAP 1."""
import json
import os

import numpy as np
import pytest

from jaxaffect import config_lib
from jaxaffect.data import audio_transforms, families
from jaxaffect.data import video_emotion
from jaxaffect.errors import UserError
from jaxaffect.method import get_method
from jaxaffect.methods.cten import data as cten_data
from jaxaffect.methods.cten import method as cten_method


def _text(value) -> str:
  v = np.asarray(value).item()
  return v.decode() if isinstance(v, bytes) else str(v)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  c = config_lib.load("configs/cten_ve8.py:keyframes,smoke", lock=False)
  c.dataset.data_dir = str(tmp_path_factory.mktemp("cten_data"))
  m = get_method(c)
  m.prepare_data()
  return c, m


def test_world_annotations_and_batches(setup):
  c, m = setup
  raw = families.raw_dir(video_emotion.FAMILY, c.dataset)
  gt = json.load(open(os.path.join(raw, cten_method.KEYFRAMES_FILE)))["database"]
  source = cten_data.eval_source(c)
  keys = [_text(source[i]["key"]) for i in range(len(source))]
  assert len(keys) == 8 and all(gt[k]["subset"] == "test" for k in keys)
  # The evaluator's key lookup reads the same keys without decoding the frames.
  assert cten_data.eval_keys(c, [5, 0, 7]) == [keys[5], keys[0], keys[7]]
  for k in keys:
    (s, e), = [a["segment"] for a in gt[k]["annotations"]]
    assert 0 <= s < e <= gt[k]["duration"] and 4.0 <= gt[k]["duration"] <= 6.0 + 1e-6

  ds = c.dataset
  batch = next(m.train_iterator(seed=0, global_batch_size=4, process_index=0, process_count=1))
  assert batch["video"].shape == (4, ds.num_segments, ds.snippet_len, ds.crop_size,
                                  ds.crop_size, 3) and batch["video"].dtype == np.uint8
  assert batch["audio"].shape == (4, ds.num_segments, ds.audio_frames, 128)
  assert batch["audio"].dtype == np.float32 and batch["label"].shape == (4,)
  # Evaluation: centred fbank windows with AST's scaling, and the record's index.
  ev = next(iter(m.eval_batches(global_batch_size=4, process_index=0, process_count=1)))
  np.testing.assert_array_equal(ev["index"], [0, 1, 2, 3])
  want = audio_transforms.ast_normalize(audio_transforms.fbank_segments(
      source[2]["fbank"], ds.num_segments, ds.audio_frames, None))
  np.testing.assert_allclose(ev["audio"][2], want, rtol=1e-6)


def test_keyframe_evaluator_reads_the_ground_truth_through_the_index(setup):
  c, m = setup
  raw = families.raw_dir(video_emotion.FAMILY, c.dataset)
  gt = json.load(open(os.path.join(raw, cten_method.KEYFRAMES_FILE)))["database"]
  source = cten_data.eval_source(c)
  s = c.dataset.num_segments
  order = np.array([3, 0, 7, 5, 1, 2, 6, 4])  # outputs in any order: the index carries the key
  kf = np.zeros((8, s), bool)
  for row, i in enumerate(order):
    k = _text(source[int(i)]["key"])
    (a, b), = [x["segment"] for x in gt[k]["annotations"]]
    d = gt[k]["duration"]
    centres = (np.arange(s) + 0.5) * d / s
    kf[row] = (centres >= a) & (centres < b)
    kf[row, np.argmin(np.abs(centres - (a + b) / 2))] = True  # at least one segment
  out = cten_method.keyframe_evaluator(
      {"keyframes": kf, "keyframe_score": kf.astype(np.float32)},
      {"index": order, "label": np.zeros(8, np.int32)}, method=m, chance_draws=3)
  assert out["mAP@0.10"] == pytest.approx(1.0)
  assert out["chance_average_mAP"] < out["average_mAP"]
  shuffled = cten_method.keyframe_evaluator(
      {"keyframes": kf, "keyframe_score": kf.astype(np.float32)},
      {"index": np.roll(order, 1), "label": np.zeros(8, np.int32)}, method=m, chance_draws=0)
  assert shuffled["average_mAP"] < out["average_mAP"]  # wrong index -> wrong ground truth
  with pytest.raises(UserError, match=r"nope\.json does not exist"):
    cten_method.keyframe_evaluator({}, {"index": order}, method=m,
                                   ground_truth=os.path.join(raw, "nope.json"))


def test_keyframe_evaluator_reads_a_segment_table_as_the_json(setup, tmp_path):
  c, m = setup
  raw = families.raw_dir(video_emotion.FAMILY, c.dataset)
  gt = json.load(open(os.path.join(raw, cten_method.KEYFRAMES_FILE)))["database"]
  rows = ["video,start,end,duration"] + [
      f"{k},{a!r},{b!r},{v['duration']!r}" for k, v in gt.items()
      for (a, b) in [x["segment"] for x in v["annotations"]]]
  (tmp_path / "gt.csv").write_text("\n".join(rows) + "\n")
  s = c.dataset.num_segments
  kf = np.zeros((8, s), bool)
  kf[:, 1:3] = True
  kf[::3, 0] = True
  outputs = {"keyframes": kf, "keyframe_score": kf.astype(np.float32)}
  fields = {"index": np.arange(8), "label": np.zeros(8, np.int32)}
  from_json = cten_method.keyframe_evaluator(outputs, fields, method=m, chance_draws=2)
  from_table = cten_method.keyframe_evaluator(outputs, fields, method=m, chance_draws=2,
                                              ground_truth=str(tmp_path / "gt.csv"))
  assert from_table == from_json
  (tmp_path / "bad.csv").write_text("video,start,end,duration\nJoy/x,1,9,4\n")
  with pytest.raises(UserError, match=r"bad\.csv:2: .* ends after the video"):
    cten_method.keyframe_evaluator(outputs, fields, method=m,
                                   ground_truth=str(tmp_path / "bad.csv"))
  # Ekman-6's config scores the table after the last step when given one.
  e6 = config_lib.load(f"configs/cten_ekman6.py:keyframe_annotations={tmp_path}/gt.csv",
                       lock=False)
  assert e6.evals.keyframes.to_dict() == {"type": "cten_keyframes", "every_steps": 0,
                                          "ground_truth": f"{tmp_path}/gt.csv"}
