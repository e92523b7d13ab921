"""CAER (Lee et al., ICCV 2019) in the video_emotion builder: the official split folders
(train/validation/test), the 7:1:2 rule on bare class folders, layout errors, and one build
through the family with a validation split (VE-8 / Ekman-6 builds keep train and test only)."""
import os
import random

import pytest

from data_pipelines.builders import emotion_splits as es
from data_pipelines.builders import video_emotion as ve
from jaxaffect.data import families
from jaxaffect.data import video_emotion
from jaxaffect.errors import UserError
from test_builder_real_layouts import CONFIG, _avi, _clip, _ds, _records

CAER = es.CAER_CLASSES


def _touch(root, rels):
  """Empty files (plan_split only looks at names)."""
  for rel in rels:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()


def _split_tree(root, per_split=None):
  """<root>/{train,validation,test}/<Class>/ for all 7 classes; the same names in each split."""
  per_split = per_split or {"train": 3, "validation": 1, "test": 2}
  for split, n in per_split.items():
    for cls in CAER:
      os.makedirs(os.path.join(root, split, cls), exist_ok=True)
      _touch(root, [f"{split}/{cls}/{i:04d}.avi" for i in range(1, n + 1)])


def test_layout_constants():
  assert es.LAYOUT_CLASSES["caer"] == (
      "Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
  assert es.layout_splits("caer") == ("train", "validation", "test")
  assert es.layout_splits("ve8") == es.layout_splits("ekman6") == ("train", "test") == es.SPLITS
  assert ve.VideoEmotionConfig(layout="caer").name.startswith("caer_split1_")
  with pytest.raises(ve.ExtractionConfigError, match="split_index must be in 1..1"):
    ve.VideoEmotionConfig(layout="caer", split_index=2)


def test_split_folders_are_the_split(tmp_path):
  _split_tree(tmp_path)
  (tmp_path / "train" / "Anger" / "readme.txt").write_text("not a video")
  plan = es.plan_split(tmp_path, layout="caer", split_index=1, class_names=CAER)
  assert set(plan.items) == {"train", "validation", "test"}
  counts = {s: len(v) for s, v in plan.items.items()}
  assert counts == {"train": 21, "validation": 7, "test": 14}
  train = {i.key: i for i in plan.items["train"]}
  test = {i.key: i for i in plan.items["test"]}
  # Same file name in two splits: two different keys, each with its own file.
  assert train["train/Anger/0001"].path == str(tmp_path / "train" / "Anger" / "0001.avi")
  assert test["test/Anger/0001"].path == str(tmp_path / "test" / "Anger" / "0001.avi")
  assert [i.key for i in plan.items["validation"]][:2] == ["validation/Anger/0001",
                                                           "validation/Disgust/0001"]
  assert {i.label for i in plan.items["validation"]} == set(range(7))
  assert train["train/Surprise/0003"].label == CAER.index("Surprise") == 6
  all_keys = [i.key for s in plan.items.values() for i in s]
  assert len(all_keys) == len(set(all_keys))
  assert all(i.reason is None for s in plan.items.values() for i in s)
  assert plan.source.startswith("split folders: ") and plan.unlisted == []
  assert es.check_raw_folder(tmp_path, CAER, layout="caer")["validation/Sad/0001"].endswith(
      os.path.join("validation", "Sad", "0001.avi"))


def test_split_folders_match_case_insensitively(tmp_path):
  for split in ("Train", "Validation", "TEST"):
    for cls in CAER:
      _touch(tmp_path, [f"{split}/{cls.lower()}/0001.avi"])
  plan = es.plan_split(tmp_path, layout="caer", split_index=1, class_names=CAER)
  assert [i.key for i in plan.items["validation"]][0] == "validation/Anger/0001"
  assert plan.items["test"][-1].key == "test/Surprise/0001"


def _flat(root, sizes):
  """<root>/<Class>/<i>.avi, created in shuffled order (listing order must not matter)."""
  rels = [f"{cls}/{i:04d}.avi" for cls, n in sizes.items() for i in range(n)]
  random.Random(0).shuffle(rels)
  _touch(root, rels)


SIZES = {"Anger": 10, "Disgust": 13, "Fear": 3, "Happy": 20, "Neutral": 1, "Sad": 6,
         "Surprise": 11}


def test_flat_layout_splits_7_1_2_per_class(tmp_path):
  _flat(tmp_path, SIZES)
  plan = es.plan_split(tmp_path, layout="caer", split_index=1, class_names=CAER)
  assert plan.source == es.CAER_RULE and "floor(7n/10)" in plan.source
  per_class = {s: {c: 0 for c in CAER} for s in es.CAER_SPLITS}
  for split, items in plan.items.items():
    for item in items:
      per_class[split][CAER[item.label]] += 1
      assert item.key.split("/")[0] == CAER[item.label] and item.path.endswith(".avi")
  # floor(7n/10) train, floor(8n/10) - floor(7n/10) validation, the rest test.
  assert per_class == {
      "train": {"Anger": 7, "Disgust": 9, "Fear": 2, "Happy": 14, "Neutral": 0, "Sad": 4,
                "Surprise": 7},
      "validation": {"Anger": 1, "Disgust": 1, "Fear": 0, "Happy": 2, "Neutral": 0, "Sad": 0,
                     "Surprise": 1},
      "test": {"Anger": 2, "Disgust": 3, "Fear": 1, "Happy": 4, "Neutral": 1, "Sad": 2,
               "Surprise": 3},
  }
  keys = {s: [i.key for i in items] for s, items in plan.items.items()}
  # Sorted names: the first 70% of a class train, then validation, then test.
  assert [k for k in keys["train"] if k.startswith("Anger/")] == [
      f"Anger/{i:04d}" for i in range(7)]
  assert [k for k in keys["validation"] if k.startswith("Anger/")] == ["Anger/0007"]
  assert [k for k in keys["test"] if k.startswith("Anger/")] == ["Anger/0008", "Anger/0009"]
  # No overlap, nothing lost, nothing unlisted.
  flat = [k for s in es.CAER_SPLITS for k in keys[s]]
  assert len(flat) == len(set(flat)) == sum(SIZES.values()) and plan.unlisted == []
  # Deterministic: the same folder, or the same names created in another order, same plan.
  again = es.plan_split(tmp_path, layout="caer", split_index=1, class_names=CAER)
  assert {s: [i.key for i in v] for s, v in again.items.items()} == keys
  other = tmp_path.parent / (tmp_path.name + "_other")
  _touch(other, sorted(f"{c}/{i:04d}.avi" for c, n in SIZES.items() for i in range(n)))
  assert {s: [i.key for i in v] for s, v in es.plan_split(
      other, layout="caer", split_index=1, class_names=CAER).items.items()} == keys
  assert es.caer_ratio_split([f"Anger/{i}" for i in range(10)]) == {
      "train": [f"Anger/{i}" for i in range(7)], "validation": ["Anger/7"],
      "test": ["Anger/8", "Anger/9"]}


def test_flat_layout_lists_win_over_the_rule(tmp_path):
  _flat(tmp_path, {c: 2 for c in CAER})
  (tmp_path / "splits").mkdir()
  (tmp_path / "splits" / "trainlist01.txt").write_text("Anger/0000\nhappy/0001\n")
  (tmp_path / "splits" / "validationlist01.txt").write_text("Sad/0000\n")
  (tmp_path / "splits" / "testlist01.txt").write_text("Fear/0000\nAnger/0000\n")
  plan = es.plan_split(tmp_path, layout="caer", split_index=1, class_names=CAER)
  assert plan.source.endswith("testlist01.txt")
  train = {i.key: i for i in plan.items["train"]}
  assert train["Happy/0001"].label == 3 and train["Happy/0001"].path is not None
  assert "kept in test only" in train["Anger/0000"].reason
  assert [i.key for i in plan.items["validation"]] == ["Sad/0000"]
  assert "Neutral/0001" in plan.unlisted


def _one_line_error(root, match):
  with pytest.raises(es.RawLayoutError, match=match) as e:
    es.plan_split(root, layout="caer", split_index=1, class_names=CAER)
  assert "\n" not in str(e.value)
  return str(e.value)


def test_missing_class_folder_is_named(tmp_path):
  _split_tree(tmp_path)
  (tmp_path / "validation" / "Fear" / "0001.avi").unlink()
  (tmp_path / "validation" / "Fear").rmdir()
  msg = _one_line_error(tmp_path, "class folder missing")
  assert msg.startswith(str(tmp_path / "validation" / "Fear") + ":")
  assert "missing: Fear" in msg
  # The builder's raw-folder check says the same before tfds starts.
  with pytest.raises(es.RawLayoutError, match=r"validation/Fear: class folder missing"):
    es.check_raw_folder(tmp_path, CAER, layout="caer")
  flat = tmp_path.parent / (tmp_path.name + "_flat")
  _flat(flat, {c: 1 for c in CAER if c != "Neutral"})
  assert _one_line_error(flat, "class folder missing").startswith(str(flat / "Neutral") + ":")


def test_unexpected_layouts_are_named(tmp_path):
  _split_tree(tmp_path / "a")
  _split_tree(tmp_path / "n", {"train": 1, "test": 1})  # no validation folder
  assert _one_line_error(tmp_path / "n", "split folder missing").startswith(
      str(tmp_path / "n" / "validation") + ":")
  _split_tree(tmp_path / "b")
  _touch(tmp_path / "b", ["Anger/0001.avi"])  # class folder beside the split folders
  assert _one_line_error(tmp_path / "b", "class folder next to the split folders").startswith(
      str(tmp_path / "b" / "Anger") + ":")
  _touch(tmp_path / "c", ["videos/0001.avi"])  # neither layout
  _one_line_error(tmp_path / "c", "no class folder found")
  _split_tree(tmp_path / "d", {"train": 0, "validation": 0, "test": 0})  # folders, no video
  _one_line_error(tmp_path / "d", "hold no video file")
  with pytest.raises(es.RawLayoutError, match="split_file"):
    es.plan_split(tmp_path / "a", layout="caer", split_index=1, class_names=CAER,
                  split_file="splits")


# ----------------------------------------------------------------------------- a real build


@pytest.fixture(scope="module")
def caer_root(tmp_path_factory):
  """Official layout, all 7 class folders in each split, a few tiny clips (0001 in all three
  splits: three different videos)."""
  root = tmp_path_factory.mktemp("caer") / "CAER"
  for split in es.CAER_SPLITS:
    for cls in CAER:
      (root / split / cls).mkdir(parents=True)
  _avi(root / "train" / "Anger" / "0001.avi", n=2)
  _avi(root / "train" / "Happy" / "0001.avi", n=4)
  _clip(root / "train" / "Sad" / "0002.mp4", 1)            # with audio
  _avi(root / "validation" / "Anger" / "0001.avi", n=4)
  _clip(root / "validation" / "Surprise" / "0003.mp4", 2)
  _avi(root / "test" / "Anger" / "0001.avi", n=6)
  _avi(root / "test" / "Neutral" / "0004.avi", n=4)
  return root


def test_caer_build_with_validation_split(caer_root, tmp_path):
  ds = _ds("caer", caer_root, tmp_path)
  ds.eval_split = "validation"
  families.prepare(video_emotion.FAMILY, ds)
  records = {s: _records_of(ds, s) for s in ("train", ds.eval_split, "test")}
  assert {s: sorted(r) for s, r in records.items()} == {
      "train": ["train/Anger/0001", "train/Happy/0001", "train/Sad/0002"],
      "validation": ["validation/Anger/0001", "validation/Surprise/0003"],
      "test": ["test/Anger/0001", "test/Neutral/0004"]}
  for split, recs in records.items():
    for key, ex in recs.items():
      assert CAER[int(ex["label"])] == key.split("/")[1]
  # 2, 4 and 6 frames at 8 fps, stored at 4 fps: three different files behind "Anger/0001".
  assert [records[s][f"{s}/Anger/0001"]["video"].shape[0] for s in es.CAER_SPLITS] == [1, 2, 3]
  assert bool(records["train"]["train/Sad/0002"]["has_audio"])
  builder = ve.build_video_emotion(caer_root, families.tfds_dir(video_emotion.FAMILY, ds),
                                   video_emotion.extraction_kwargs(ds), build=False)
  assert builder.builder_config.name.startswith("caer_split1_")
  assert set(builder.info.splits) == {"train", "validation", "test"}
  m = ve.load_manifest(builder)
  assert m["layout"] == "caer" and m["split_source"].startswith("split folders: ")
  assert m["splits"]["validation"]["per_class"] == {
      "Anger": 1, "Disgust": 0, "Fear": 0, "Happy": 0, "Neutral": 0, "Sad": 0, "Surprise": 1}
  assert m["splits"]["test"]["num_examples"] == 2 and m["skipped"] == []
  assert m["contract"]["class_names"] == list(CAER)


def _records_of(ds, split):
  src = families.open_source(video_emotion.FAMILY, ds, split)
  out = {}
  for i in range(len(src)):
    ex = src[i]
    out[ex["key"].decode() if isinstance(ex["key"], bytes) else ex["key"]] = ex
  return out


def test_ekman6_build_still_has_no_validation_split(tmp_path):
  raw = tmp_path / "Ekman6"
  _clip(raw / "anger" / "1.mp4", 3, n=2)
  _clip(raw / "joy" / "2.mp4", 4, n=2)
  ds = _ds("ekman6", raw, tmp_path)
  families.prepare(video_emotion.FAMILY, ds)
  builder = ve.build_video_emotion(raw, families.tfds_dir(video_emotion.FAMILY, ds),
                                   video_emotion.extraction_kwargs(ds), build=False)
  assert set(builder.info.splits) == {"train", "test"}
  assert set(ve.load_manifest(builder)["splits"]) == {"train", "test"}
  assert sorted(_records(builder, "train")) == ["anger/1"]
  with pytest.raises(UserError, match="no split 'validation'"):
    families.open_source(video_emotion.FAMILY, ds, "validation")
