"""The builder on the layouts people download: VE-8 (class folders + split workbook or lists)
and Ekman-6 (class folders + ID lists or the alternating rule); the sources for them."""
import os

import av
import ml_collections
import numpy as np
import openpyxl
import pytest

from data_pipelines.builders import emotion_splits as es
from data_pipelines.builders import video_emotion as ve
from data_pipelines.synthetic import common
from jaxaffect.data import families
from jaxaffect.data import video_emotion
from jaxaffect.errors import PathNotFound, UserError

CONFIG = dict(fps=4, frame_short_side=16, audio_sr=22050, n_mfcc=8, n_fft=512, hop_length=256)
DUP = "3527012618_7ceb8fb27b_700"


def _clip(path, seed, audio=True, n=4):
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
  wave = (0.3 * np.sin(np.arange(n * 2000) * (0.01 + 0.01 * seed))).astype(np.float32)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  common.write_mp4(path, frames, 8, wave if audio else None, 16000)


def _avi(path, n=4):
  """A video-only AVI (MPEG-4 part 2): another container and codec PyAV reads."""
  with av.open(os.fspath(path), "w", format="avi") as out:
    s = out.add_stream("mpeg4", rate=8)
    s.width, s.height, s.pix_fmt = 16, 16, "yuv420p"
    for i in range(n):
      frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 40 * i, np.uint8), format="rgb24")
      frame.pts = i
      out.mux(s.encode(frame))
    out.mux(s.encode(None))


@pytest.fixture(scope="module")
def ve8_root(tmp_path_factory):
  """VE-8 as downloaded: <Class>/<name>.<ext>, the split workbook, no classInd.txt."""
  root = tmp_path_factory.mktemp("ve8") / "VideoEmotion8"
  for c, cls in enumerate(("Anger", "Disgust", "Joy", "Surprise")):
    _clip(root / cls / f"a_{cls}.mp4", 2 * c)
    _clip(root / cls / f"b_{cls}.mp4", 2 * c + 1)
  _clip(root / "Disgust" / f"{DUP}.mp4", 20)       # same basename, two classes
  _clip(root / "Fear" / f"{DUP}.mp4", 21)
  _clip(root / "Joy" / "silent.mp4", 22, audio=False)
  data = (root / "Anger" / "a_Anger.mp4").read_bytes()
  (root / "Anger" / "corrupt.mp4").write_bytes(data[: len(data) // 3])
  _clip(root / "Sadness" / "12345.mp4", 23)        # numeric name: a number cell
  _clip(root / "Trust" / "clip.wmv.mp4", 24)       # VE-8 lists such names as "clip.wmv"
  _avi(root / "Surprise" / "avi_clip.avi")
  _clip(root / "Anticipation" / "extra.mp4", 25)   # in no split
  (root / "Anticipation" / "notes.txt").write_text("not a video")
  wb = openpyxl.Workbook()
  # Split 1: the layout CTEN's SplitTrainTest.py reads (names in C/D from row 3), no header.
  ws = wb.active
  ws.title = "Split 1"
  ws.append(["VideoEmotion-8, split 1"])
  ws.append(["#", "", "", ""])
  train = ["a_Anger", "a_Disgust", "a_Joy", "a_Surprise", DUP, "silent", "corrupt", 12345.0,
           "clip.wmv", "avi_clip", "ghost", "b_Joy"]
  test = ["b_Anger", "b_Disgust", "b_Joy", "b_Surprise"]
  for i, name in enumerate(train):
    ws.append([i + 1, None, name, test[i] if i < len(test) else None])
  # Split 2: a header row names the columns (B/C here).
  ws2 = wb.create_sheet("Split 2")
  ws2.append(["id", "Training videos", "Testing videos"])
  for i, (tr, te) in enumerate([("b_Anger", "a_Anger"), ("b_Disgust", "a_Disgust"),
                                 (DUP, None)]):
    ws2.append([i, tr, te])
  wb.save(root / es.VE8_WORKBOOK)
  return root


@pytest.fixture(scope="module")
def ve8_built(ve8_root, tmp_path_factory):
  return ve.build_video_emotion(ve8_root, tmp_path_factory.mktemp("tfds_ve8"), CONFIG,
                                progress=False)


def _records(builder, split):
  src = builder.as_data_source(split)
  out = {}
  for i in range(len(src)):
    ex = src[i]
    key = ex["key"].decode() if isinstance(ex["key"], bytes) else ex["key"]
    out[key] = ex
  return out


def test_ve8_workbook_build(ve8_built):
  m = ve.load_manifest(ve8_built)
  assert "VideoEmotionDataset-TrainTestSplits.xlsx" in m["split_source"]
  assert "'Split 1'" in m["split_source"]
  train = _records(ve8_built, "train")
  assert set(train) == {"Anger/a_Anger", "Disgust/a_Disgust", "Joy/a_Joy", "Surprise/a_Surprise",
                        f"Disgust/{DUP}", f"Fear/{DUP}", "Joy/silent", "Sadness/12345",
                        "Trust/clip.wmv", "Surprise/avi_clip"}
  assert m["multi_class"] == {DUP: ["Disgust", "Fear"]}
  assert not np.array_equal(train[f"Disgust/{DUP}"]["video"], train[f"Fear/{DUP}"]["video"])
  assert [ve.VE8_CLASSES[int(train[k]["label"])] for k in (f"Disgust/{DUP}", f"Fear/{DUP}")] == [
      "Disgust", "Fear"]
  # Silent mp4 and the video-only AVI: zero audio, listed.
  assert m["zero_audio"] == ["Joy/silent", "Surprise/avi_clip"]
  assert not train["Joy/silent"]["audio"].any() and not bool(train["Joy/silent"]["has_audio"])
  assert train["Surprise/avi_clip"]["video"].shape == (2, 16, 16, 3)  # 4 frames at 8 fps -> 4 fps
  reasons = {s["key"]: s["reason"] for s in m["skipped"]}
  assert set(reasons) == {"Anger/corrupt", "?/ghost", "Joy/b_Joy"}
  assert "corrupt.mp4" in reasons["Anger/corrupt"]
  assert "'Split 1' cell C13" in reasons["?/ghost"]
  assert "kept in test only" in reasons["Joy/b_Joy"]
  assert m["unlisted"] == ["Anticipation/extra"]
  assert set(_records(ve8_built, "test")) == {"Anger/b_Anger", "Disgust/b_Disgust", "Joy/b_Joy",
                                               "Surprise/b_Surprise"}
  assert m["splits"]["train"]["per_class"]["Fear"] == 1
  assert m["contract"]["layout"] == "ve8"


def test_ve8_workbook_second_sheet_and_header(ve8_root):
  plan = es.plan_split(ve8_root, layout="ve8", split_index=2, class_names=es.VE8_CLASSES)
  assert "'Split 2'" in plan.source
  assert [i.key for i in plan.items["train"]] == [
      "Anger/b_Anger", "Disgust/b_Disgust", f"Disgust/{DUP}", f"Fear/{DUP}"]
  assert [i.key for i in plan.items["test"]] == ["Anger/a_Anger", "Disgust/a_Disgust"]
  assert es._header_kind("Training videos (732)") == "train"
  assert es._header_kind("TerrorTrain") is None  # a VE-8 video name, not a header
  with pytest.raises(es.RawLayoutError, match="no sheet for split 3"):
    es.plan_split(ve8_root, layout="ve8", split_index=3, class_names=es.VE8_CLASSES)


def test_ve8_lists_take_the_dup_as_two_items(ve8_root, tmp_path):
  (tmp_path / "trainlist01.txt").write_text(
      f"Disgust/{DUP} 3\nFear/{DUP} 4\nanger/a_Anger 1\nJoy/a_Joy 2\nSadness/12345\n")
  (tmp_path / "testlist01.txt").write_text("Anger/b_Anger\nTrust/clip.wmv 8\nNoClass/x\n")
  plan = es.plan_split(ve8_root, layout="ve8", split_index=1, class_names=es.VE8_CLASSES,
                       split_file=str(tmp_path))
  train = {i.key: i for i in plan.items["train"]}
  assert [train[k].label for k in (f"Disgust/{DUP}", f"Fear/{DUP}", "Anger/a_Anger")] == [2, 3, 0]
  assert train[f"Disgust/{DUP}"].path != train[f"Fear/{DUP}"].path
  assert "listed index 2 != 5" in train["Joy/a_Joy"].reason
  assert train["Sadness/12345"].path.endswith("12345.mp4")
  test = {i.key: i for i in plan.items["test"]}
  assert test["Trust/clip.wmv"].path.endswith("clip.wmv.mp4")
  assert "not one of" in test["NoClass/x"].reason
  with pytest.raises(FileNotFoundError, match="testlist02"):
    es.plan_split(ve8_root, layout="ve8", split_index=2, class_names=es.VE8_CLASSES,
                  split_file=str(tmp_path))


def test_missing_split_and_bad_class_index(tmp_path):
  _clip(tmp_path / "Anger" / "x.mp4", 0)
  with pytest.raises(FileNotFoundError, match="VideoEmotionDataset-TrainTestSplits.xlsx"):
    es.plan_split(tmp_path, layout="ve8", split_index=1, class_names=es.VE8_CLASSES)
  (tmp_path / "classInd.txt").write_text("1 anger\n2 disgust\n")
  with pytest.raises(es.RawLayoutError, match="classInd.txt lists"):
    es.plan_split(tmp_path, layout="ve8", split_index=1, class_names=es.VE8_CLASSES)


# ----------------------------------------------------------------------------- Ekman-6

# Ids straddle digit counts, so string order differs from numeric order ("1000" < "887").
EK6_FILES = ["anger/1000", "anger/887", "anger/999", "disgust/1", "disgust/10", "disgust/2",
             "fear/600", "joy/1112", "sadness/1417", "surprise/240", "surprise/241"]


@pytest.fixture(scope="module")
def ek6_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("ek6") / "Ekman6"
  for i, key in enumerate(EK6_FILES):
    _clip(root / f"{key}.mp4", 40 + i, n=2)
  return root


def _ds(name, manual_dir, data_dir, **kw):
  return ml_collections.ConfigDict(dict(
      name=name, manual_dir=str(manual_dir), data_dir=str(data_dir), split=1,
      extraction=dict(CONFIG), **kw))


def test_ekman6_alternating_rule_build_via_sources(ek6_root, tmp_path):
  ds = _ds("ekman6", ek6_root, tmp_path)
  families.prepare(video_emotion.FAMILY, ds)
  train = families.open_source(video_emotion.FAMILY, ds, "train")
  keys = sorted(train[i]["key"].decode() for i in range(len(train)))
  expected = ["anger/1000", "anger/999", "disgust/10", "fear/600", "sadness/1417", "surprise/241"]
  assert keys == expected == es.ekman6_alternating(EK6_FILES)["train"]
  ex = train[0]
  assert es.EK6_CLASSES[int(ex["label"])] == ex["key"].decode().split("/")[0]
  builder = ve.build_video_emotion(ek6_root, families.tfds_dir(video_emotion.FAMILY, ds),
                                   video_emotion.extraction_kwargs(ds), build=False)
  assert builder.builder_config.name.startswith("ekman6_split1_")
  m = ve.load_manifest(builder)
  assert m["layout"] == "ekman6" and m["splits"]["test"]["num_examples"] == 5
  assert "RenameEk6" in m["split_source"] and any("not the full 1,637" in n for n in m["notes"])
  assert m["contract"]["class_names"] == list(es.EK6_CLASSES)


def test_ekman6_id_lists_found_in_splits(tmp_path):
  for key in EK6_FILES:  # plan_split only looks at names: empty files suffice
    (tmp_path / key).parent.mkdir(exist_ok=True)
    (tmp_path / f"{key}.mp4").touch()
  (tmp_path / "splits").mkdir()
  (tmp_path / "splits" / "trainlist01.txt").write_text(
      "anger/887 1\nAnger/1000 1\ndisgust/1 2\njoy/1112 4\n")
  (tmp_path / "splits" / "testlist01.txt").write_text("anger/999 1\nsurprise/240 6\nfear/9999 3\n")
  plan = es.plan_split(tmp_path, layout="ekman6", split_index=1, class_names=es.EK6_CLASSES)
  assert plan.source.endswith("testlist01.txt")
  assert [(i.key, i.label) for i in plan.items["train"]] == [
      ("anger/887", 0), ("anger/1000", 0), ("disgust/1", 1), ("joy/1112", 3)]
  test = {i.key: i for i in plan.items["test"]}
  assert test["surprise/240"].label == 5 and test["surprise/240"].path.endswith("240.mp4")
  assert test["fear/9999"].path is None and "no video file" in test["fear/9999"].reason
  assert "disgust/10" in plan.unlisted


def test_sources_errors(ek6_root, tmp_path):
  with pytest.raises(PathNotFound, match="no_such_folder"):
    families.prepare(video_emotion.FAMILY,
                     _ds("ekman6", tmp_path / "no_such_folder", tmp_path))
  two = _ds("ekman6", ek6_root, tmp_path)
  two.split = 2
  with pytest.raises(UserError, match="split_index must be in 1..1"):
    families.prepare(video_emotion.FAMILY, two)
  with pytest.raises(UserError, match="unknown dataset"):
    video_emotion.extraction_kwargs(_ds("ek7", ek6_root, tmp_path))
  kw = video_emotion.extraction_kwargs(_ds("ve8", ek6_root, tmp_path,
                                            split_file="splits.xlsx"))
  assert kw["layout"] == "ve8" and kw["split_file"] == "splits.xlsx"
  # A VE-8 folder without any split is a one-line PathNotFound naming what was looked for.
  with pytest.raises(PathNotFound, match="TrainTestSplits.xlsx"):
    families.prepare(video_emotion.FAMILY, _ds("ve8", ek6_root, tmp_path))
