"""MART's data: fbank + tokenised subtitles in the video_emotion builder, the online transform,
its train/eval pipelines, and the text alignment / mood features against hand-made values."""
import datetime
import os
from fractions import Fraction

import ml_collections
import numpy as np
import pytest

from data_pipelines import media
from data_pipelines import text
from data_pipelines.builders import video_emotion as ve
from data_pipelines.synthetic import affect_world as aw
from data_pipelines.synthetic import common
from jaxaffect.data import audio_transforms as at
from jaxaffect.data import families
from jaxaffect.data import video_emotion as ve_family
from jaxaffect.data import video_transforms as vt
from jaxaffect.errors import UserError
from jaxaffect.methods.mart import data as md

EXTRACTION = dict(fps=0.0, frame_short_side=32, max_frames=64, audio_sr=16000, n_mfcc=13,
                  n_fft=512, hop_length=256, no_audio_policy="zeros", fbank_bins=128,
                  subtitles_vocab="vocab.txt", lexicon="lexicon.tsv")


def _config(raw, data_dir, source="both"):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = dict(
      name="ve8", manual_dir=str(raw), data_dir=str(data_dir), split=1, split_file="",
      eval_split="test", polarity=common.VE8_POLARITY, extraction=dict(EXTRACTION),
      num_segments=3, eval_num_segments=4, snippet_len=2, crop_size=16, augment="vaanet",
      augment_prob=0.3, rotation_degrees=20.0, brightness_min=0.5, flip_prob=0.5,
      legacy_random_eval=False, legacy_start_off_by_one=True, worker_count=0,
      audio_frames=10, freq_mask=24, time_mask=12)
  c.text = dict(source=source, max_len=12)
  return c


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  """1 train + 1 test clip per class with subtitles; one .srt moved to MART's srt/ layout,
  one removed, one malformed."""
  root = tmp_path_factory.mktemp("raw") / "ve8"
  aw.generate_ve8_style(root, seed=0, num_train_per_class=1, num_test_per_class=1, size=32,
                        fps=8, min_duration=0.5, max_duration=0.9, num_workers=1,
                        verbose=False, with_subtitles=True, num_unlabelled=0)
  (root / "srt" / "Joy").mkdir(parents=True)
  os.replace(root / "Joy/train_0000.srt", root / "srt/Joy/train_0000.srt")
  os.remove(root / "Fear/train_0000.srt")
  (root / "Anger/test_0000.srt").write_text("1\nnot a timestamp\nhello\n")
  return root


@pytest.fixture(scope="module")
def config(raw, tmp_path_factory):
  c = _config(raw, tmp_path_factory.mktemp("data"))
  families.prepare(ve_family.FAMILY, c.dataset)  # Builds through the family, as a Method does.
  return c


@pytest.fixture(scope="module")
def builder(raw, config):
  return ve.build_video_emotion(raw, families.tfds_dir(ve_family.FAMILY, config.dataset),
                                ve_family.extraction_kwargs(config.dataset), build=False)


def _records(builder, split):
  source = builder.as_data_source(split)
  return {r["key"].decode(): r for r in (source[i] for i in range(len(source)))}


# ----------------------------------------------------------------------------- builder


def test_stored_fbank_duration_and_tokens_equal_direct_computation(builder, raw):
  tok = text.WordPiece(raw / "vocab.txt")
  lexicon = text.read_lexicon(raw / "lexicon.tsv")
  records = {**_records(builder, "train"), **_records(builder, "test")}
  assert len(records) == 16
  for key, r in records.items():
    path = str(raw / f"{key}.mp4")
    channels, rate = media.read_audio_channels(path)
    np.testing.assert_array_equal(r["fbank"], media.mart_fbank(channels, rate, 128))
    assert r["fbank"].dtype == np.float32 and r["fbank"].shape[1] == 128
    assert Fraction(*r["duration"]) == Fraction(channels.shape[1], rate)
    srt = raw / f"{key}.srt"
    if key == "Joy/train_0000":
      srt = raw / "srt/Joy/train_0000.srt"
    if key in ("Fear/train_0000", "Anger/test_0000"):  # Missing and malformed: no lines.
      assert r["text_ids"].shape == (0,) and list(r["text_offsets"]) == [0]
      continue
    lines = text.read_srt(srt)
    assert len(lines) >= 2
    # HF's own ids ([CLS] pieces [SEP]), not the builder's vocabulary lookup.
    ids, mask = tok.encode([l.text for l in lines], max_len=256)
    expected = [row[1:m.sum() - 1] for row, m in zip(ids, mask)]
    got = [r["text_ids"][a:b] for a, b in zip(r["text_offsets"][:-1], r["text_offsets"][1:])]
    assert len(got) == len(lines)
    for g, e in zip(got, expected):
      np.testing.assert_array_equal(g, e)
    np.testing.assert_array_equal(r["text_start_us"],
                                  [l.start // datetime.timedelta(microseconds=1) for l in lines])
    np.testing.assert_array_equal(r["text_end_us"],
                                  [l.end // datetime.timedelta(microseconds=1) for l in lines])
    pieces = [p for l in lines for p in tok.tokens(l.text)]
    pol = [lexicon[p].polarity if p in lexicon else 0.0 for p in pieces]
    np.testing.assert_allclose(r["token_polarity"], pol, rtol=1e-6)
    for p, row in zip(pieces, r["token_moods"]):
      tags = [text.MOODS[i] for i in np.flatnonzero(row)]
      assert tags == ([text.MOODS[i] for i in sorted(lexicon[p].moods)] if p in lexicon else [])
    assert np.any(r["token_polarity"] != 0)  # Every synthetic clip names its emotion.


def test_manifest_counts_missing_and_malformed_subtitles(builder):
  m = ve.load_manifest(builder)
  assert m["no_subtitles"] == ["Fear/train_0000"]
  assert [(b["split"], b["key"]) for b in m["bad_subtitles"]] == [("test", "Anger/test_0000")]
  assert "test_0000.srt" in m["bad_subtitles"][0]["reason"]
  assert m["splits"]["train"]["num_no_subtitles"] == 1
  assert m["splits"]["test"]["num_bad_subtitles"] == 1
  assert m["contract"]["fbank_bins"] == 128 and m["contract"]["moods"] == list(text.MOODS)


def test_config_names_unchanged_when_off_and_hash_file_contents(tmp_path, raw):
  # The names every existing folder has: the settings' defaults add nothing.
  assert ve.VideoEmotionConfig().name == (
      "split1_fpsnative_side112_maxall_sr44100_mfcc32_fft2048_hop512_noaudio-zeros")
  assert ve.VideoEmotionConfig(layout="ekman6", fps=4, frame_short_side=24).name == (
      "ekman6_split1_fps4_side24_maxall_sr44100_mfcc32_fft2048_hop512_noaudio-zeros")
  plain = ve.VideoEmotion(data_dir=str(tmp_path), config=ve.VideoEmotionConfig())
  assert set(plain.info.features) == {"video", "audio", "has_audio", "label", "key"}
  vocab = tmp_path / "vocab.txt"
  vocab.write_bytes((raw / "vocab.txt").read_bytes())
  a = ve.VideoEmotionConfig(fbank_bins=128, subtitles_vocab=str(vocab))
  assert a.name.startswith(ve.VideoEmotionConfig().name + "_fbank128_vocab")
  assert ve.VideoEmotionConfig(fbank_bins=64, subtitles_vocab=str(vocab)).name != a.name
  with_lex = ve.VideoEmotionConfig(fbank_bins=128, subtitles_vocab=str(vocab),
                                   lexicon=str(raw / "lexicon.tsv"))
  assert with_lex.name.startswith(a.name + "_lex")
  vocab.write_bytes((raw / "vocab.txt").read_bytes() + b"extra\n")  # Same path, new content.
  assert ve.VideoEmotionConfig(fbank_bins=128, subtitles_vocab=str(vocab)).name != a.name
  full = ve.VideoEmotion(data_dir=str(tmp_path), config=with_lex)
  assert {"fbank", "duration", "text_ids", "text_offsets", "token_polarity",
          "token_moods"} <= set(full.info.features)
  with pytest.raises(ve.ExtractionConfigError, match="nope.txt"):
    ve.VideoEmotionConfig(subtitles_vocab=str(tmp_path / "nope.txt"))
  with pytest.raises(ve.ExtractionConfigError, match="needs subtitles_vocab"):
    ve.VideoEmotionConfig(lexicon=str(raw / "lexicon.tsv"))
  with pytest.raises(ve.ExtractionConfigError, match="fbank_bins"):
    ve.VideoEmotionConfig(fbank_bins=-1)


def test_family_generates_subtitles_only_when_asked():
  c = ml_collections.ConfigDict(dict(name="synthetic_ve8", data_dir="/d", manual_dir="",
                                     synthetic=dict(seed=0, num_train_per_class=2,
                                                    num_test_per_class=1)))
  plain = families.raw_dir(ve_family.FAMILY, c)
  assert plain == "/d/raw/synthetic_ve8_seed0_n2x1"  # Unchanged for existing configs.
  assert "with_subtitles" not in ve_family.FAMILY.generator_kwargs(c)
  c.synthetic.subtitles = True
  kw = ve_family.FAMILY.generator_kwargs(c)
  assert kw["with_subtitles"] and kw["num_unlabelled"] is None
  assert kw["pool_coupling"] == ve_family.POOL_COUPLING == aw.POOL_COUPLING
  with_text = families.raw_dir(ve_family.FAMILY, c)
  assert with_text.startswith(plain + "_")
  c.synthetic.pool_coupling = 1.0  # another pool, another folder
  assert ve_family.FAMILY.generator_kwargs(c)["pool_coupling"] == 1.0
  assert families.raw_dir(ve_family.FAMILY, c) not in (plain, with_text)


# ----------------------------------------------------------------------------- text by hand


def _line(start, end, words="x"):
  return text.SubtitleLine(datetime.timedelta(seconds=start), datetime.timedelta(seconds=end),
                           words)


def _spans_as_text(lines, ns, duration):
  us = lambda t: t // datetime.timedelta(microseconds=1)
  first, last = md.segment_spans([us(l.start) for l in lines], [us(l.end) for l in lines], ns,
                                 (duration.numerator, duration.denominator))
  return [" ".join(l.text for l, f, e in zip(lines, first, last) if f <= s <= e)
          for s in range(ns)]


def test_segment_spans_by_hand_and_as_srt2seg():
  lines = [_line(0.5, 1.5, "a"), _line(1.0, 2.0, "b"), _line(3.5, 5.0, "late")]
  # 4 windows of 1 s: "a" in 0..1, "b" starts on edge 1 (window 1) and ends on edge 2 (window
  # 1, the right edge is inclusive); "late" ends past the clip. The release kept the end index
  # of the previous line there (1 < 3: "late" lost); the guard puts it in the last window.
  assert _spans_as_text(lines, 4, Fraction(4)) == ["a", "a b", "", "late"]
  # Zero length on an inner edge: its end window precedes its start window, so nowhere.
  assert _spans_as_text([_line(1.0, 1.0, "z")], 4, Fraction(4)) == ["", "", "", ""]
  assert _spans_as_text([_line(-1, 0.1, "neg")], 2, Fraction(1)) == ["neg", ""]
  # Exact edges with an awkward rate: 4800 samples at 16 kHz = 0.3 s, 3 windows of 0.1 s.
  assert _spans_as_text([_line(0.1, 0.2, "m")], 3, Fraction(4800, 16000)) == ["", "m", ""]
  rng = np.random.default_rng(0)
  for _ in range(200):
    ns = int(rng.integers(1, 9))
    duration = Fraction(int(rng.integers(1, 80000)), int(rng.choice([16000, 44100, 48000])))
    lines = []
    for i in range(int(rng.integers(0, 6))):
      a, b = sorted(rng.integers(0, int(1.2e6 * duration) + 2, size=2) // 1000 * 1000)
      lines.append(text.SubtitleLine(datetime.timedelta(microseconds=int(a)),
                                     datetime.timedelta(microseconds=int(b)), f"w{i}"))
    assert _spans_as_text(lines, ns, duration) == text.srt2seg(lines, ns, duration)


def _hand_record():
  """Ids 10..15 in three lines over 4 s; ids 11 and 14 are emotion words."""
  return dict(
      text_ids=np.array([10, 11, 12, 13, 14, 15], np.int32),
      text_offsets=np.array([0, 2, 3, 6], np.int32),
      text_start_us=np.array([0, 1_000_000, 2_500_000], np.int64),
      text_end_us=np.array([1_500_000, 2_000_000, 4_000_000], np.int64),
      duration=np.array([4, 1], np.int64),
      token_polarity=np.array([0, -0.5, 0, 0, 0.25, 0], np.float32),
      token_moods=np.array([[0] * 8, [0, 1, 0, 0, 0, 0, 0, 1], [0] * 8, [0] * 8,
                            [1, 0, 0, 0, 1, 0, 0, 0], [0] * 8], np.float32))


def _text_cfg(source, max_len=8):
  return md.MartDataConfig(video=vt.TransformConfig(num_segments=4), text_source=source,
                           max_len=max_len, pad_id=0, cls_id=1, sep_id=2)


def test_text_sources_truncation_and_mood_by_hand():
  rec = _hand_record()
  # Windows of 1 s: line 0 -> 0..1, line 1 (1.0-2.0) -> 1, line 2 (2.5-4.0) -> 2..3.
  raw = md.text_features(rec, _text_cfg("raw"))
  np.testing.assert_array_equal(raw["text_ids"], [
      [1, 10, 11, 2, 0, 0, 0, 0], [1, 10, 11, 12, 2, 0, 0, 0],
      [1, 13, 14, 15, 2, 0, 0, 0], [1, 13, 14, 15, 2, 0, 0, 0]])
  np.testing.assert_array_equal(raw["text_mask"], raw["text_ids"] != 0)
  emo = md.text_features(rec, _text_cfg("emotion_words"))
  np.testing.assert_array_equal(emo["text_ids"][:, :3], [[1, 11, 2], [1, 11, 2], [1, 14, 2],
                                                         [1, 14, 2]])
  both = md.text_features(rec, _text_cfg("both"))
  np.testing.assert_array_equal(both["text_ids"][1], [1, 10, 11, 12, 11, 2, 0, 0])
  short = md.text_features(rec, _text_cfg("both", max_len=4))
  np.testing.assert_array_equal(short["text_ids"][1], [1, 10, 11, 2])
  assert short["text_mask"].all()
  # Segment 0/1: one word of weight 0.5 on #fear and #anger -> 0.5 each; 2/3: weight 0.25 on
  # #joy and #pleasantness.
  np.testing.assert_allclose(raw["mood"][0], [0, .5, 0, 0, 0, 0, 0, .5])
  np.testing.assert_allclose(raw["mood"][3], [.5, 0, 0, 0, .5, 0, 0, 0])
  np.testing.assert_array_equal(raw["mood_valid"], [True] * 4)
  # Two mixed words in one segment: weights 0.5 (fear, anger) and 0.25 (joy, pleasantness).
  rec["text_end_us"][0] = 3_000_000  # Line 0 now reaches window 2, where line 2 is.
  mixed = md.text_features(rec, _text_cfg("raw"))["mood"][2]
  np.testing.assert_allclose(mixed, np.array([.25, .5, 0, 0, .25, 0, 0, .5]) / 1.5, rtol=1e-6)
  no_words = dict(rec, text_ids=np.zeros(0, np.int32), text_offsets=np.zeros(1, np.int32),
                  text_start_us=np.zeros(0, np.int64), text_end_us=np.zeros(0, np.int64),
                  token_polarity=np.zeros(0, np.float32), token_moods=np.zeros((0, 8), np.float32))
  empty = md.text_features(no_words, _text_cfg("both"))
  np.testing.assert_array_equal(empty["text_ids"][:, :3], [[1, 2, 0]] * 4)
  assert not empty["mood"].any() and not empty["mood_valid"].any()
  without_lexicon = {k: v for k, v in _hand_record().items() if not k.startswith("token_")}
  with pytest.raises(ValueError, match="lexicon"):
    md.text_features(without_lexicon, _text_cfg("emotion_words"))


def test_spec_augment_by_hand():
  x = np.arange(40 * 6, dtype=np.float32).reshape(40, 6) + 1
  out = at.spec_augment(x, 4, 10, np.random.default_rng(3))
  u = np.random.default_rng(3).random(4)
  fw, fs = int(u[0] * 4), int(u[1] * (6 - u[0] * 4))
  tw, ts = int(u[2] * 10), int(u[3] * (40 - u[2] * 10))
  expected = x.copy()
  expected[:, fs:fs + fw] = 0
  expected[ts:ts + tw] = 0
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_array_equal(at.spec_augment(x, 0, 0, np.random.default_rng(0)), x)


# ----------------------------------------------------------------------------- transform


def test_transform_matches_vaanet_video_and_fbank_windows(config, builder):
  rec = _records(builder, "train")["Joy/train_0000"]
  train_cfg = md.data_config(config, train=True)
  out = md.MartTransform(train_cfg, train=True)(rec, np.random.default_rng(5))
  vaanet = vt.VideoAudioTransform(train_cfg.video, train=True)(rec, np.random.default_rng(5))
  np.testing.assert_array_equal(out["video"], vaanet["video"])
  assert out["video"].shape == (3, 2, 16, 16, 3) and out["video"].dtype == np.uint8
  assert out["fbank"].shape == (3, 10, 128) and out["fbank"].dtype == np.float32
  assert out["text_ids"].shape == (3, 12) and out["text_mask"].dtype == bool
  assert out["mood"].shape == (3, 8) and out["mood_valid"].shape == (3,)
  assert out["label"] == 4 and out["polarity"] == 1
  # Evaluation: centred windows of 10 frames per block, AST scaling, no SpecAugment.
  ev = md.MartTransform(md.data_config(config, train=False), train=False)(rec)
  fb = rec["fbank"]
  block = fb.shape[0] // 4
  starts = np.arange(4) * block + (block - 10) // 2
  want = (fb[starts[:, None] + np.arange(10)] - at.AST_MEAN) / (2 * at.AST_STD)
  np.testing.assert_allclose(ev["fbank"], want, rtol=1e-6)
  assert ev["video"].shape[0] == 4 and ev["text_ids"].shape == (4, 12)
  # The record's own lines, aligned by hand with srt2seg, give the eval text (source both).
  tok = text.WordPiece(config.dataset.manual_dir + "/vocab.txt")
  lexicon = text.read_lexicon(config.dataset.manual_dir + "/lexicon.tsv")
  lines = text.read_srt(config.dataset.manual_dir + "/srt/Joy/train_0000.srt")
  for s, seg in enumerate(text.srt2seg(lines, 4, Fraction(*rec["duration"]))):
    pieces = tok.tokens(seg)
    emotional = [p for p in pieces if lexicon.get(p) and lexicon[p].polarity != 0]
    ids = [tok.cls_id, *[tok.vocab[p] for p in pieces + emotional][:10], tok.sep_id]
    np.testing.assert_array_equal(ev["text_ids"][s, :len(ids)], ids)
    assert ev["text_mask"][s].sum() == len(ids)
    np.testing.assert_allclose(ev["mood"][s], text.segment_affect(pieces, lexicon).moods,
                               atol=1e-6)


def test_config_errors_name_the_key(config):
  bad = config.copy_and_resolve_references()
  bad.text.source = "words"
  with pytest.raises(UserError, match="text.source"):
    md.data_config(bad, train=True)
  bad = config.copy_and_resolve_references()
  bad.dataset.extraction.fbank_bins = 0
  with pytest.raises(UserError, match="fbank_bins"):
    md.data_config(bad, train=True)
  bad = config.copy_and_resolve_references()
  bad.dataset.extraction.lexicon = ""
  with pytest.raises(UserError, match="lexicon"):
    md.data_config(bad, train=True)
  bad = config.copy_and_resolve_references()
  bad.model = dict(text=dict(vocab_size=3))  # ids past the embedding table
  with pytest.raises(UserError, match="model.text.vocab_size=3 is smaller than"):
    md.data_config(bad, train=True)


def test_train_batches_do_not_depend_on_process_count(config):
  one = next(md.train_iterator(config, seed=1, global_batch_size=4, process_index=0,
                               process_count=1))
  halves = [next(md.train_iterator(config, seed=1, global_batch_size=4, process_index=p,
                                   process_count=2)) for p in range(2)]
  assert set(one) == {"video", "fbank", "text_ids", "text_mask", "mood", "mood_valid", "label",
                      "polarity"}
  assert one["video"].shape == (4, 3, 2, 16, 16, 3) and one["fbank"].shape == (4, 3, 10, 128)
  assert one["text_ids"].dtype == np.int32 and one["label"].dtype == np.int32
  for k in one:
    np.testing.assert_array_equal(one[k], np.concatenate([h[k] for h in halves]))
  np.testing.assert_array_equal(one["polarity"],
                                np.asarray(common.VE8_POLARITY)[one["label"]])


def test_eval_batches_cover_the_split_once(config):
  seen = []
  for p in range(2):
    for b in md.eval_batches(config, global_batch_size=6, process_index=p, process_count=2):
      assert b["fbank"].shape == (3, 4, 10, 128) and b["_mask"].dtype == bool
      seen += [k.decode() if isinstance(k, bytes) else str(k) for k in b["key"][b["_mask"]]]
  assert sorted(seen) == sorted(f"{c}/test_0000" for c in common.VE8_CLASSES)
