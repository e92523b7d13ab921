"""The synthetic world's unlabelled pool and the `video_corpus` builder (MART's pretraining
corpus): scan, stable order, skipped files, stored features, per-host sharding."""
import hashlib
import json
import shutil

import numpy as np
import pytest

from data_pipelines import media
from data_pipelines import text
from data_pipelines.builders import video_corpus as vc
from data_pipelines.synthetic import __main__ as cli
from data_pipelines.synthetic import affect_world as aw
from data_pipelines.synthetic import common
from jaxaffect.data import video_transforms as vt
from jaxaffect.methods.mart import data as md

GEN = dict(seed=0, num_train_per_class=1, num_test_per_class=0, size=32, fps=8,
           min_duration=0.5, max_duration=0.7, num_workers=1, verbose=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  out = tmp_path_factory.mktemp("world") / "syn"
  aw.generate_ve8_style(out, with_subtitles=True, **GEN)
  return out


@pytest.fixture(scope="module")
def corpus(world, tmp_path_factory):
  """The pool plus a nested clip without subtitles, a silent clip, a corrupt file, a
  malformed .srt and files that are not videos."""
  root = tmp_path_factory.mktemp("corpus") / "pool"
  shutil.copytree(world / "unlabelled", root)
  (root / "deep" / "er").mkdir(parents=True)
  shutil.copy(world / "Joy" / "train_0000.mp4", root / "deep" / "er" / "nested.mp4")
  frames, _ = aw.render_clip(3, aw.ClipSpec(size=32, fps=8, min_duration=0.5, max_duration=0.5),
                             common.rng_for(1, "silent"))
  common.write_mp4(root / "silent.mp4", frames, 8, None)
  data = (root / "clip_00000.mp4").read_bytes()
  (root / "broken.mp4").write_bytes(data[:len(data) // 3])
  (root / "clip_00001.srt").write_text("1\nbad timing\nhello\n")
  (root / "notes.txt").write_text("not a video")
  (root / ".hidden.mp4").write_bytes(data)
  return root


@pytest.fixture(scope="module")
def built(world, corpus, tmp_path_factory):
  settings = dict(frame_short_side=16, subtitles_vocab=str(world / "vocab.txt"),
                  lexicon=str(world / "lexicon.tsv"))
  return vc.build_video_corpus(corpus, tmp_path_factory.mktemp("tfds"), settings,
                               num_shards=4, progress=False)


# ----------------------------------------------------------------------------- the pool


def test_pool_is_five_times_the_train_split_with_subtitles(world, tmp_path):
  pool = world / "unlabelled"
  clips = sorted(p.name for p in pool.glob("*.mp4"))
  assert clips == [f"clip_{i:05d}.mp4" for i in range(40)]  # 5 x 8 classes x 1 clip.
  assert sorted(p.stem for p in pool.glob("*.srt")) == [c[:-4] for c in clips]
  assert not [p for p in pool.iterdir() if p.is_dir()]
  done = json.loads((world / common.DONE_FILE).read_text())
  assert done["num_unlabelled"] == 40 and done["with_subtitles"]
  # Not listed in any split, and the labelled clips are the same bytes as without a pool.
  lists = (world / "splits" / "trainlist01.txt").read_text()
  assert "unlabelled" not in lists
  small = tmp_path / "small"
  aw.generate_ve8_style(small, with_subtitles=True, num_unlabelled=2, **GEN)
  assert (small / "Fear/train_0000.mp4").read_bytes() == (world / "Fear/train_0000.mp4"
                                                           ).read_bytes()
  # Same seed, same pool clip; the pool's class comes from its own stream.
  assert (small / "unlabelled/clip_00001.mp4").read_bytes() == (pool / "clip_00001.mp4"
                                                                 ).read_bytes()
  with pytest.raises(ValueError, match="num_unlabelled"):
    aw.generate_ve8_style(tmp_path / "neg", num_unlabelled=-1, **GEN)


def test_pool_subtitles_name_emotions_after_the_onset(world):
  tok = text.WordPiece(world / "vocab.txt")
  lexicon = text.read_lexicon(world / "lexicon.tsv")
  for i in range(5):
    lines = text.read_srt(world / "unlabelled" / f"clip_{i:05d}.srt")
    emotional = [l for l in lines
                 if text.segment_affect(tok.tokens(l.text), lexicon).emotion_words]
    assert emotional and all(l.start.total_seconds() >= 0.25 for l in emotional)


def test_cli_unlabelled_flag(tmp_path):
  args = ["--num-train-per-class", "1", "--num-test-per-class", "0", "--size", "32", "--fps",
          "8", "--min-duration", "0.5", "--max-duration", "0.5", "--num-workers", "1"]
  assert cli.main(["--out", str(tmp_path / "a"), *args, "--subtitles", "--unlabelled", "3"]) == 0
  assert len(list((tmp_path / "a" / "unlabelled").glob("*.mp4"))) == 3
  assert cli.main(["--out", str(tmp_path / "b"), *args]) == 0
  assert not (tmp_path / "b" / "unlabelled").exists()


# ----------------------------------------------------------------------------- the builder


def _all(builder):
  source = builder.as_data_source("train")
  return [source[i] for i in range(len(source))]


def test_manifest_lists_skipped_silent_and_unsubtitled(built):
  m = vc.load_manifest(built)
  s = m["splits"]["train"]
  assert (s["num_found"], s["num_examples"], s["num_skipped"]) == (43, 42, 1)
  assert [x["key"] for x in m["skipped"]] == ["broken"]
  assert "broken.mp4" in m["skipped"][0]["reason"]
  assert m["zero_audio"] == ["silent"]
  assert m["no_subtitles"] == ["deep/er/nested", "silent"]
  assert [b["key"] for b in m["bad_subtitles"]] == ["clip_00001"]
  assert m["contract"]["fbank_bins"] == 128


def test_records_in_sha1_order_with_direct_features(built, corpus, world):
  records = _all(built)
  keys = [r["key"].decode() for r in records]
  assert keys == sorted(keys, key=lambda k: hashlib.sha1(k.encode()).hexdigest())
  assert set(keys) == {f"clip_{i:05d}" for i in range(40)} | {"deep/er/nested", "silent"}
  assert "label" not in built.info.features
  tok = text.WordPiece(world / "vocab.txt")
  by_key = dict(zip(keys, records))
  for key in ("clip_00000", "deep/er/nested"):
    r, path = by_key[key], str(corpus / f"{key}.mp4")
    frames, _ = media.read_video_frames(path, short_side=16)
    np.testing.assert_array_equal(r["video"], frames)
    np.testing.assert_array_equal(r["fbank"], media.mart_fbank(*media.read_audio_channels(path)))
  lines = text.read_srt(corpus / "clip_00000.srt")
  np.testing.assert_array_equal(by_key["clip_00000"]["text_ids"],
                                [tok.vocab[p] for l in lines for p in tok.tokens(l.text)])
  assert by_key["deep/er/nested"]["text_ids"].shape == (0,)
  silent = by_key["silent"]
  assert not silent["has_audio"] and not silent["fbank"].any()
  assert silent["duration"][0] > 0  # The container's length, for the subtitle windows.


def test_each_example_once_over_hosts_and_shards_align(built):
  n = len(built.as_data_source("train"))
  for count in (1, 2, 3, 4, 5):
    got = [i for p in range(count) for i in vc.process_range(n, p, count)]
    assert got == list(range(n))
    sizes = [len(vc.process_range(n, p, count)) for p in range(count)]
    assert max(sizes) - min(sizes) <= 1
  lengths = built.info.splits["train"].shard_lengths
  assert len(lengths) == 4 and sum(lengths) == n
  ends = np.cumsum(lengths)
  for p in range(2):  # 4 shards over 2 hosts: each host's range is 2 whole files.
    assert vc.process_range(n, p, 2).stop == ends[2 * p + 1]
  with pytest.raises(ValueError, match="process_index"):
    vc.process_range(n, 2, 2)


def test_names_and_errors(world, tmp_path):
  assert vc.VideoCorpusConfig().name == "fpsnative_side112_maxall_noaudio-zeros_fbank128"
  a = vc.VideoCorpusConfig(subtitles_vocab=str(world / "vocab.txt"))
  other = tmp_path / "vocab.txt"
  other.write_text((world / "vocab.txt").read_text() + "more\n")
  assert vc.VideoCorpusConfig(subtitles_vocab=str(other)).name != a.name
  with pytest.raises(vc.CorpusError, match="unknown setting"):
    vc.build_video_corpus(tmp_path, tmp_path / "d", dict(label=1))
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "a.txt").write_text("x")
  with pytest.raises(vc.CorpusError, match="no video file"):
    vc.build_video_corpus(tmp_path / "empty", tmp_path / "d")


def test_mart_transform_reads_corpus_records(built, world):
  rec = _all(built)[0]
  cfg = md.MartDataConfig(video=vt.TransformConfig(num_segments=2, snippet_len=2, crop_size=16),
                          audio_frames=8, text_source="both", max_len=10,
                          **dict(zip(("pad_id", "cls_id", "sep_id"),
                                     md.special_ids(str(world / "vocab.txt")))))
  out = md.MartTransform(cfg, train=True)(rec, np.random.default_rng(0))
  assert out["label"] == -1 and "polarity" not in out
  assert out["video"].shape == (2, 2, 16, 16, 3) and out["fbank"].shape == (2, 8, 128)
  assert out["text_ids"].shape == (2, 10)
