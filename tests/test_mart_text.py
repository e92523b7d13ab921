"""MART's text inputs: SRT parsing and srt2seg, WordPiece ids, the lexicon; synthetic subtitles."""
import json

import numpy as np
import pytest

from data_pipelines import text
from data_pipelines.synthetic import __main__ as cli
from data_pipelines.synthetic import affect_world as aw
from data_pipelines.synthetic import common
from data_pipelines.synthetic import subtitles
from jaxaffect.errors import UserError

SRT = """1
00:00:00,000 --> 00:00:01,500
Hello there
my friend

2
00:00:01,600 --> 00:00:02,000
Conversion failed

3
00:00:02,500 --> 00:00:03,000
Café naïve 😀 ünïcode

4
00:00:03,900 --> 00:00:12,000
past the end
"""


def _line(start, end, words):
  return text.SubtitleLine(text.datetime.timedelta(seconds=start),
                           text.datetime.timedelta(seconds=end), words)


def test_parse_srt_drops_failed_lines_and_joins_line_breaks():
  lines = text.parse_srt(SRT)
  assert [l.text for l in lines] == ["Hello there my friend", "Café naïve 😀 ünïcode",
                                     "past the end"]
  assert lines[0].end.total_seconds() == 1.5 and lines[2].start.total_seconds() == 3.9
  assert text.parse_srt("") == []


def test_srt2seg_spans_windows_and_clamps_past_the_end():
  lines = text.parse_srt(SRT)
  # 4 s of audio, 4 windows of 1 s: line 1 covers [0, 1.5] -> windows 0, 1; line 3 sits in
  # window 2; line 4 ends past the last edge -> clamped to window 3 (not a stale index).
  assert text.srt2seg(lines, 4, 4.0) == [
      "Hello there my friend", "Hello there my friend", "Café naïve 😀 ünïcode",
      "past the end"]
  # 8 windows of 0.5 s: empty segments stay empty strings.
  assert text.srt2seg(lines, 8, 4.0) == [
      "Hello there my friend", "Hello there my friend", "Hello there my friend", "",
      "", "Café naïve 😀 ünïcode", "", "past the end"]


def test_srt2seg_edges_follow_the_release():
  # Start on an edge belongs to the window it opens; end on an edge to the window it closes.
  lines = [_line(1.0, 2.0, "a"), _line(0.0, 1.0, "b"), _line(5.0, 6.0, "late"),
           _line(2.0, 2.0, "zero")]
  assert text.srt2seg(lines, 4, 4.0) == ["b", "a", "", "late"]
  # Several lines in one window are space-joined in file order.
  assert text.srt2seg([_line(0.1, 0.2, "x"), _line(0.3, 0.4, "y")], 2, 1.0) == ["x y", ""]
  # Exact arithmetic: a third of a 0.3 s clip is not pushed across an edge by float error.
  assert text.srt2seg([_line(0.0, 0.1, "first")], 3, 0.3) == ["first", "", ""]
  assert text.srt2seg([_line(0.0, 0.1, "first")], 3, text.Fraction(4800, 16000)) == [
      "first", "", ""]
  with pytest.raises(ValueError, match="duration"):
    text.srt2seg([], 4, 0.0)


def test_malformed_or_missing_srt_is_a_one_line_user_error(tmp_path):
  bad = tmp_path / "clip.srt"
  bad.write_text("1\n00:00:00,000 --> nonsense\nhello\n", encoding="utf-8")
  with pytest.raises(text.TextInputError) as info:
    text.read_srt(bad)
  assert isinstance(info.value, UserError)
  message = str(info.value)
  assert message.startswith(str(bad)) and "\n" not in message and "malformed SRT" in message
  not_utf8 = tmp_path / "latin.srt"
  not_utf8.write_bytes("1\n00:00:00,000 --> 00:00:01,000\ncaf\xe9\n".encode("latin-1"))
  with pytest.raises(text.TextInputError, match="latin.srt.*UTF-8"):
    text.read_srt(not_utf8)
  with pytest.raises(UserError, match="missing.srt: subtitle file not found"):
    text.read_srt(tmp_path / "missing.srt")
  good = tmp_path / "good.srt"
  good.write_bytes(b"\xef\xbb\xbf" + SRT.encode("utf-8"))  # A BOM is fine.
  assert len(text.read_srt(good)) == 3


VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "##s", "is", "happy",
         "sad", "cafe", "joy"]


@pytest.fixture()
def vocab_file(tmp_path):
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
  return path


def test_wordpiece_ids_masks_truncation_and_case(vocab_file):
  tok = text.WordPiece(vocab_file)
  assert tok.tokens("The CATS is happy, Café dog") == [
      "the", "cat", "##s", "is", "happy", "[UNK]", "cafe", "[UNK]"]
  ids, mask = tok.encode(["The cats is HAPPY", "", "sad sad sad sad sad sad"], max_len=6)
  assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == (3, 6)
  np.testing.assert_array_equal(ids, [[2, 5, 6, 7, 8, 3],   # [CLS] the cat ##s is [SEP]
                                      [2, 3, 0, 0, 0, 0],   # empty text: [CLS] [SEP] pads
                                      [2, 10, 10, 10, 10, 3]])  # truncated, [SEP] kept last
  np.testing.assert_array_equal(mask, [[1] * 6, [1, 1, 0, 0, 0, 0], [1] * 6])
  cased = text.WordPiece(vocab_file, lowercase=False)
  assert cased.tokens("The cat") == ["[UNK]", "cat"]
  with pytest.raises(ValueError, match="max_len"):
    tok.encode(["x"], max_len=1)


def test_bad_vocab_files_are_one_line_user_errors(tmp_path):
  with pytest.raises(UserError, match="nope.txt: vocabulary file not found"):
    text.WordPiece(tmp_path / "nope.txt")
  empty = tmp_path / "empty.txt"
  empty.write_text("\n\n", encoding="utf-8")
  with pytest.raises(text.TextInputError, match="empty.txt: vocabulary file is empty"):
    text.WordPiece(empty)
  no_cls = tmp_path / "no_cls.txt"
  no_cls.write_text("[PAD]\n[UNK]\n[SEP]\nthe\n", encoding="utf-8")
  with pytest.raises(text.TextInputError, match=r"no_cls.txt: .*\['\[CLS\]'\]"):
    text.WordPiece(no_cls)
  twice = tmp_path / "twice.txt"
  twice.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\nthe\n", encoding="utf-8")
  with pytest.raises(text.TextInputError, match="twice.txt:6: token 'the' repeats line 5"):
    text.WordPiece(twice)


LEXICON_TSV = """# word<TAB>polarity<TAB>moods
happy\t0.8\t#joy,pleasantness
sad\t-0.5\t#sadness
the\t0
joy\t0.4\t#joy
cat\t-0.2\t#disgust,#anger
"""


def test_lexicon_tsv_and_json_agree(tmp_path):
  tsv = tmp_path / "lex.tsv"
  tsv.write_text(LEXICON_TSV, encoding="utf-8")
  lex = text.read_lexicon(tsv)
  assert lex["happy"] == text.LexiconEntry(0.8, (0, 4))
  assert lex["the"] == text.LexiconEntry(0.0, ())
  as_json = {w: {"polarity": e.polarity, "moods": [text.MOODS[m] for m in e.moods]}
             for w, e in lex.items()}
  js = tmp_path / "lex.json"
  js.write_text(json.dumps(as_json), encoding="utf-8")
  assert text.read_lexicon(js) == lex


@pytest.mark.parametrize("content, match", [
    ("happy\t1.5\t#joy\n", r"bad.tsv:1: polarity of 'happy' must be in \[-1, 1\]"),
    ("happy\tvery\t#joy\n", "bad.tsv:1: polarity of 'happy' must be a number"),
    ("happy\t0.5\t#bliss\n", "bad.tsv:1: unknown mood '#bliss'"),
    ("happy\t0.5\t#joy,#fear,#anger\n", "bad.tsv:1: 'happy' has 3 moods"),
    ("happy 0.5\n", "bad.tsv:1: expected 'word<TAB>polarity"),
    ("a\t0\na\t0.1\n", "bad.tsv:2: 'a' is listed twice"),
])
def test_bad_lexicon_lines_name_file_and_line(tmp_path, content, match):
  bad = tmp_path / "bad.tsv"
  bad.write_text(content, encoding="utf-8")
  with pytest.raises(text.TextInputError, match=match):
    text.read_lexicon(bad)


def test_bad_lexicon_json(tmp_path):
  bad = tmp_path / "bad.json"
  bad.write_text("{not json", encoding="utf-8")
  with pytest.raises(text.TextInputError, match="bad.json: malformed JSON"):
    text.read_lexicon(bad)
  bad.write_text('{"x": {"polarity": true}}', encoding="utf-8")
  with pytest.raises(text.TextInputError, match="must be a number"):
    text.read_lexicon(bad)


def test_segment_affect_by_hand():
  lex = text.parse_lexicon_tsv(LEXICON_TSV)
  got = text.segment_affect(["the", "happy", "cat", "dog", "sad", "the", "happy"], lex)
  assert got.emotion_words == "happy cat sad happy"  # 'the' matched but polarity 0.
  assert got.matched == 6
  assert got.polarity == pytest.approx((0 + 0.8 - 0.2 - 0.5 + 0 + 0.8) / 6)
  # |polarity| per mood: joy 0.8 + 0.8, pleasantness 0.8 + 0.8, disgust 0.2, anger 0.2,
  # sadness 0.5; total 4.1.
  expected = np.zeros(8)
  expected[[0, 4]] = 1.6 / 4.1
  expected[[6, 7]] = 0.2 / 4.1
  expected[3] = 0.5 / 4.1
  np.testing.assert_allclose(got.moods, expected, rtol=1e-6)
  assert got.moods.dtype == np.float32
  none = text.segment_affect(["dog", "the"], lex)
  assert none.emotion_words == "" and none.polarity == 0.0 and not none.moods.any()


def test_emotion_words_do_not_accumulate_across_segments(vocab_file):
  tok = text.WordPiece(vocab_file)
  lex = text.parse_lexicon_tsv(LEXICON_TSV)
  out = text.segments_affect(tok, ["The cat is happy", "", "so sad", "happy happy joy"], lex)
  assert [s.emotion_words for s in out] == ["cat happy", "", "sad", "happy happy joy"]


def test_synthetic_subtitles_are_aligned_and_use_the_vocab(tmp_path):
  out = tmp_path / "syn"
  aw.generate_ve8_style(out, seed=3, num_train_per_class=2, num_test_per_class=1, size=32,
                        fps=8, min_duration=0.5, max_duration=0.9, num_workers=1,
                        verbose=False, with_subtitles=True)
  tok = text.WordPiece(out / subtitles.VOCAB_FILE)
  lex = text.read_lexicon(out / subtitles.LEXICON_FILE)
  polarity_ok = 0
  for label, name in enumerate(common.VE8_CLASSES):
    for key in ("train_0000", "train_0001", "test_0000"):
      lines = text.read_srt(out / name / f"{key}.srt")
      assert 2 <= len(lines) <= 4
      assert lines[0].start.total_seconds() == 0.0 and lines[-1].end.total_seconds() <= 0.9
      words = [w for l in lines for w in tok.tokens(l.text)]
      assert "[UNK]" not in words
      emotional = [l for l in lines if text.segment_affect(tok.tokens(l.text), lex).emotion_words]
      # Emotion words only where the cue plays (after the latest audio onset).
      assert emotional and all(l.start.total_seconds() >= subtitles.EMOTION_START
                               for l in emotional)
      affect = text.segment_affect(words, lex)
      polarity_ok += (affect.polarity > 0) == bool(common.VE8_POLARITY[label])
      segs = text.srt2seg(lines, 4, 1.0)
      assert len(segs) == 4 and segs[0]
  assert polarity_ok == 24  # The text always tells the polarity, not always the class.
  # Same seed, same subtitle bytes; without the flag no text files at all.
  again = tmp_path / "again"
  aw.generate_ve8_style(again, seed=3, num_train_per_class=2, num_test_per_class=1, size=32,
                        fps=8, min_duration=0.5, max_duration=0.9, num_workers=1,
                        verbose=False, with_subtitles=True)
  assert (again / "Joy" / "test_0000.srt").read_bytes() == (out / "Joy" / "test_0000.srt"
                                                             ).read_bytes()
  plain = tmp_path / "plain"
  aw.generate_ve8_style(plain, seed=3, num_train_per_class=1, num_test_per_class=0, size=32,
                        fps=8, min_duration=0.5, max_duration=0.9, num_workers=1, verbose=False)
  names = {p.name for p in plain.rglob("*")}
  assert not {n for n in names if n.endswith((".srt", ".tsv"))} and "vocab.txt" not in names
  assert (plain / "Joy" / "train_0000.mp4").read_bytes() == (out / "Joy" / "train_0000.mp4"
                                                              ).read_bytes()


def test_cli_subtitles_flag(tmp_path):
  out = tmp_path / "cli"
  assert cli.main(["--out", str(out), "--num-train-per-class", "1", "--num-test-per-class", "0",
                   "--size", "32", "--fps", "8", "--min-duration", "0.5", "--max-duration",
                   "0.6", "--num-workers", "1", "--subtitles"]) == 0
  # One per labelled clip, plus the unlabelled pool's default 5x the train split.
  assert len([p for p in out.rglob("*.srt") if p.parent.name != "unlabelled"]) == 8
  assert len(list((out / "unlabelled").glob("*.srt"))) == 40
  assert (out / "vocab.txt").is_file() and (out / "lexicon.tsv").is_file()
