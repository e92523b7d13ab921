"""media helpers and the `video_emotion` TFDS builder on a tiny raw set with bad items."""
import os
import pickle

import librosa
import numpy as np
import pytest

from data_pipelines import media
from data_pipelines.builders import video_emotion as ve
from data_pipelines.synthetic import affect_world as aw
from data_pipelines.synthetic import common

N_MFCC = 13
CONFIG = dict(fps=4, frame_short_side=24, audio_sr=22050, n_mfcc=N_MFCC, n_fft=512,
              hop_length=256)


def _append(path, lines):
  with open(path, "a") as f:
    f.writelines(line + "\n" for line in lines)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  """2 train + 1 test clips per class, plus one of each kind of trouble."""
  root = tmp_path_factory.mktemp("raw") / "ve8"
  aw.generate_ve8_style(root, seed=0, num_train_per_class=2, num_test_per_class=1, size=32, fps=8,
                        min_duration=0.5, max_duration=0.9, num_workers=1, verbose=False)
  spec = aw.ClipSpec(size=32, fps=8, min_duration=1.0, max_duration=1.0)
  # Truncated mp4 (the moov atom is at the end, so it cannot even be opened).
  data = (root / "Anger/train_0000.mp4").read_bytes()
  (root / "Anger/corrupt_0000.mp4").write_bytes(data[: len(data) // 3])
  # Video-only mp4.
  frames, _ = aw.render_clip(4, spec, common.rng_for(1, "silent"))
  common.write_mp4(root / "Joy/silent_0000.mp4", frames, 8, None)
  # Same basename in two class folders, different content.
  for label, cls in ((3, "Fear"), (5, "Sadness")):
    frames, wave = aw.render_clip(label, spec, common.rng_for(1, "dup", label))
    common.write_mp4(root / f"{cls}/dup_0000.mp4", frames, 8, wave, 16000)
  # Non-square clip: the short side (height) is resized, the aspect kept.
  frames, wave = aw.render_clip(6, spec, common.rng_for(1, "wide"))
  wide = np.concatenate([frames, frames[:, :, :16]], axis=2)  # 32 x 48.
  common.write_mp4(root / "Surprise/wide_0000.mp4", wide, 8, wave, 16000)
  _append(root / "splits/trainlist01.txt", [
      "Anger/corrupt_0000 1", "Joy/silent_0000 5", "Fear/dup_0000 4", "Sadness/dup_0000 6",
      "Trust/missing_0000 8", "Surprise/wide_0000 7"])
  return root


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  return ve.build_video_emotion(raw, data_dir, CONFIG, progress=False)


def test_build_survives_bad_items_and_manifest_lists_them(built):
  m = ve.load_manifest(built)
  assert m["splits"]["train"]["num_examples"] == 16 + 4  # + silent, 2 dups, wide.
  assert m["splits"]["train"]["num_listed"] == 16 + 6
  assert m["splits"]["test"]["num_examples"] == 8
  assert m["splits"]["train"]["per_class"] == {
      "Anger": 2, "Anticipation": 2, "Disgust": 2, "Fear": 3, "Joy": 3, "Sadness": 3,
      "Surprise": 3, "Trust": 2}
  reasons = {s["key"]: s["reason"] for s in m["skipped"]}
  assert set(reasons) == {"Anger/corrupt_0000", "Trust/missing_0000"}
  assert "corrupt_0000.mp4" in reasons["Anger/corrupt_0000"]
  assert "missing_0000" in reasons["Trust/missing_0000"]
  assert m["zero_audio"] == ["Joy/silent_0000"]
  c = m["contract"]
  assert (c["fps"], c["frame_short_side"], c["audio_sr"], c["n_mfcc"], c["hop_length"]) == (
      4, 24, 22050, N_MFCC, 256)
  assert c["class_names"] == list(common.VE8_CLASSES)
  assert built.info.splits["train"].num_examples == 20


def _records(builder, split):
  source = builder.as_data_source(split)
  return {ex["key"].decode() if isinstance(ex["key"], bytes) else ex["key"]: ex
          for ex in (source[i] for i in range(len(source)))}


def test_records_shapes_dtypes_and_values(built, raw):
  train = _records(built, "train")
  assert len(train) == 20
  for key, ex in train.items():
    video, audio = ex["video"], ex["audio"]
    assert video.dtype == np.uint8 and video.ndim == 4 and video.shape[-1] == 3
    assert min(video.shape[1:3]) == 24
    assert audio.dtype == np.float32 and audio.ndim == 2 and audio.shape[1] == N_MFCC
    assert common.VE8_CLASSES[int(ex["label"])] == key.split("/")[0]
    assert bool(ex["has_audio"]) == (key != "Joy/silent_0000")
  assert train["Surprise/wide_0000"]["video"].shape[1:] == (24, 36, 3)
  # 1.0 s at 8 fps resampled to 4 fps: 4 frames.
  assert train["Fear/dup_0000"]["video"].shape[0] == 4
  # Same basename, two classes: two distinct records.
  assert not np.array_equal(train["Fear/dup_0000"]["audio"][:5],
                            train["Sadness/dup_0000"]["audio"][:5])
  silent = train["Joy/silent_0000"]
  assert silent["audio"].shape == (1, N_MFCC) and not silent["audio"].any()
  # Records hold exactly what the media helpers compute; MFCC equals a direct librosa call.
  path = str(raw / "Fear/dup_0000.mp4")
  frames, _ = media.read_video_frames(path, fps=4, short_side=24)
  np.testing.assert_array_equal(train["Fear/dup_0000"]["video"], frames)
  wave = media.read_audio(path, 22050)
  direct = librosa.feature.mfcc(y=wave, sr=22050, n_mfcc=N_MFCC, n_fft=512, hop_length=256).T
  np.testing.assert_allclose(train["Fear/dup_0000"]["audio"], direct, rtol=1e-6, atol=1e-4)
  assert len(_records(built, "test")) == 8


def test_rebuild_is_a_noop_and_source_pickles(built, raw):
  manifest = os.path.join(built.data_dir, ve.MANIFEST_FILE)
  mtime = os.stat(manifest).st_mtime_ns
  data_root = os.path.dirname(os.path.dirname(os.path.dirname(built.data_dir)))  # <root>/name/cfg/v
  again = ve.build_video_emotion(raw, data_root, CONFIG, progress=False)
  assert again.data_dir == built.data_dir and os.stat(manifest).st_mtime_ns == mtime
  # "split" (the online config's name) aliases split_index; build=False only opens.
  same = ve.build_video_emotion("/nonexistent", data_root, {**CONFIG, "split": 1}, build=False)
  assert same.data_dir == built.data_dir
  with pytest.raises(FileNotFoundError, match="not built"):
    ve.build_video_emotion(raw, built.data_dir, {**CONFIG, "fps": 2}, build=False)
  with pytest.raises(ValueError, match="short_sid"):
    ve.build_video_emotion(raw, built.data_dir, {"short_sid": 3})
  source = pickle.loads(pickle.dumps(built.as_data_source("test")))  # grain workers need this.
  assert len(source) == 8 and source[0]["video"].dtype == np.uint8


def test_skip_policy_skips_silent_video(raw, tmp_path):
  b = ve.build_video_emotion(raw, tmp_path, {**CONFIG, "no_audio_policy": "skip"}, progress=False)
  m = ve.load_manifest(b)
  assert m["zero_audio"] == []
  assert {s["key"] for s in m["skipped"]} == {
      "Anger/corrupt_0000", "Trust/missing_0000", "Joy/silent_0000"}
  assert m["splits"]["train"]["num_examples"] == 19


def test_config_names_follow_settings():
  a, b = ve.VideoEmotionConfig(**CONFIG), ve.VideoEmotionConfig(**CONFIG)
  assert a.name == b.name
  assert a.name != ve.VideoEmotionConfig(**{**CONFIG, "fps": 5}).name
  assert ve.VideoEmotionConfig(fps=12.5).name != ve.VideoEmotionConfig(fps=125).name
  assert "." not in ve.VideoEmotionConfig(fps=12.5).name
  with pytest.raises(ValueError, match="no_audio_policy"):
    ve.VideoEmotionConfig(no_audio_policy="drop")
  with pytest.raises(ValueError, match="split_index"):
    ve.VideoEmotionConfig(split_index=11)


def test_media_temporal_resampling_and_cap(raw):
  path = str(raw / "Fear/dup_0000.mp4")  # 8 frames at 8 fps.
  native, fps = media.read_video_frames(path, short_side=None)
  assert fps == 8 and native.shape == (8, 32, 32, 3)
  half, _ = media.read_video_frames(path, fps=4, short_side=None)
  np.testing.assert_array_equal(half, native[::2])
  double, _ = media.read_video_frames(path, fps=16, short_side=None)
  np.testing.assert_array_equal(double, np.repeat(native, 2, axis=0))
  capped, _ = media.read_video_frames(path, short_side=None, max_frames=3)
  np.testing.assert_array_equal(capped, native[[0, 2, 5]])  # floor(k * 8 / 3).
  small, _ = media.read_video_frames(path, short_side=16)
  assert small.shape == (8, 16, 16, 3)


def test_media_errors_name_the_file(raw):
  bad = str(raw / "Anger/corrupt_0000.mp4")
  with pytest.raises(media.MediaError, match="corrupt_0000.mp4"):
    media.read_video_frames(bad)
  with pytest.raises(media.MediaError, match="corrupt_0000.mp4"):
    media.read_audio(bad, 16000)
  assert media.read_audio(str(raw / "Joy/silent_0000.mp4"), 16000) is None
