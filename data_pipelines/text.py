"""Subtitles, WordPiece tokens and an emotion lexicon: the text inputs MART reads, per segment.

Offline helpers beside `media.py`: they read the user's raw files (.srt subtitles, a BERT
vocab.txt, an optional lexicon), and a builder stores their outputs (token ids, masks, mood
histograms) once, so the online pipeline only batches arrays. Semantics follow MART's
datasets/ve8.py and tools/text_emotion.py (research brief section 1.6), with the release's
defects fixed where noted. A malformed input raises `TextInputError` (a `UserError`: one
line naming the file).

Lexicon file format (a stand-in for SenticNet 6, which is not shipped): UTF-8, either
  - TSV: one entry per line, `word<TAB>polarity[<TAB>mood[,mood]]`; blank lines and lines
    starting with '#' followed by a space or end of line are comments; or
  - JSON (a `.json` file): {"word": {"polarity": p, "moods": ["#joy", ...]}, ...}.
polarity is a number in [-1, 1]; moods are 0 to 2 of the 8 Hourglass tags in MOODS (the '#'
is optional). Words are matched exactly against WordPiece tokens, so with a lower-casing
tokenizer write them in lower case.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
from fractions import Fraction
from typing import Mapping, Sequence

import numpy as np
import srt
import tokenizers

from jaxaffect.errors import PathNotFound, UserError

# The Hourglass-of-Emotions mood tags SenticNet 6 gives each concept (two per concept).
MOODS = ("#joy", "#fear", "#eagerness", "#sadness", "#pleasantness", "#calmness", "#disgust",
         "#anger")
# Transcription failures the MART subtitles contain; such lines are dropped.
FAILED_LINE = "Conversion failed"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


class TextInputError(UserError, ValueError):
  """A subtitle, vocabulary or lexicon file cannot be used; the message names the file."""


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  line = text.splitlines()[0] if text else type(e).__name__
  return line if len(line) <= 160 else line[:157] + "..."


def _read_text(path, what: str) -> str:
  path = os.fspath(path)
  try:
    with open(path, encoding="utf-8-sig") as f:  # -sig: a BOM is not part of the text.
      return f.read()
  except FileNotFoundError:
    raise PathNotFound(f"{path}: {what} not found") from None
  except UnicodeDecodeError as e:
    raise TextInputError(f"{path}: {what} is not UTF-8 ({_first_line(e)})") from None
  except OSError as e:
    raise TextInputError(f"{path}: cannot read {what}: {e.strerror or e}") from None


# ----------------------------------------------------------------------------- subtitles


@dataclasses.dataclass(frozen=True)
class SubtitleLine:
  start: datetime.timedelta
  end: datetime.timedelta
  text: str  # Whitespace (line breaks included) collapsed to single spaces.


def parse_srt(content: str, source: str = "<srt>") -> list[SubtitleLine]:
  """Subtitle lines in file order, without "Conversion failed" lines and empty texts."""
  try:
    subs = list(srt.parse(content))
  except Exception as e:  # srt raises SRTParseError, TimestampParseError, ValueError.
    raise TextInputError(f"{source}: malformed SRT: {_first_line(e)}") from None
  lines = []
  for sub in subs:
    text = " ".join(sub.content.split())
    if text and text != FAILED_LINE:
      lines.append(SubtitleLine(sub.start, sub.end, text))
  return lines


def read_srt(path) -> list[SubtitleLine]:
  """parse_srt of a UTF-8 .srt file; errors name the file."""
  return parse_srt(_read_text(path, "subtitle file"), os.fspath(path))


def _seconds(t: datetime.timedelta) -> Fraction:
  return Fraction(t // datetime.timedelta(microseconds=1), 10**6)


def srt2seg(lines: Sequence[SubtitleLine], num_segments: int,
            duration: float | Fraction) -> list[str]:
  """One string per segment: MART's alignment of subtitle lines to Ns equal windows.

  The audio duration (seconds) is split into `num_segments` equal windows; a line goes to
  every window from the one holding its start (left edge inclusive) to the one holding its
  end (right edge inclusive), its text appended with a space. Indices are clamped to the
  windows: a line starting or ending past the last edge lands in the last window (the
  release keeps the previous line's stale index there, brief section 1.13). A line whose end
  window precedes its start window (zero length on an edge, or end before start) lands
  nowhere, as in the release. Exact rational arithmetic, so edges never wobble: a float
  duration is read as its shortest decimal (0.3 is 3/10); pass Fraction(samples, rate) for
  the exact length of a waveform.
  """
  if num_segments < 1:
    raise ValueError(f"num_segments must be >= 1, got {num_segments}")
  if not duration > 0 or not math.isfinite(duration):
    raise ValueError(f"duration must be a positive number of seconds, got {duration}")
  exact = Fraction(repr(float(duration))) if isinstance(duration, float) else Fraction(duration)
  per_second = num_segments / exact
  texts: list[list[str]] = [[] for _ in range(num_segments)]
  last = num_segments - 1
  for line in lines:
    first = min(max(math.floor(_seconds(line.start) * per_second), 0), last)
    final = min(max(math.ceil(_seconds(line.end) * per_second) - 1, 0), last)
    for i in range(first, final + 1):
      texts[i].append(line.text)
  return [" ".join(t) for t in texts]


# ----------------------------------------------------------------------------- WordPiece


class WordPiece:
  """BERT WordPiece tokenisation (HF `tokenizers`) from a vocab.txt the user provides.

  The vocabulary is one token per line, its id the line number (BERT's vocab.txt); it must
  hold [PAD], [UNK], [CLS] and [SEP]. Nothing is downloaded.
  """

  def __init__(self, vocab_path, lowercase: bool = True):
    path = os.fspath(vocab_path)
    tokens = _read_text(path, "vocabulary file").splitlines()
    while tokens and not tokens[-1].strip():
      tokens.pop()
    if not tokens:
      raise TextInputError(f"{path}: vocabulary file is empty")
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
      token = token.strip()
      if not token:
        raise TextInputError(f"{path}:{i + 1}: empty token in the vocabulary")
      if token in vocab:
        raise TextInputError(f"{path}:{i + 1}: token {token!r} repeats line {vocab[token] + 1}")
      vocab[token] = i
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
      raise TextInputError(f"{path}: vocabulary lacks the special tokens {missing}")
    self.path = path
    self.vocab = vocab
    self.lowercase = bool(lowercase)
    self.pad_id, self.unk_id, self.cls_id, self.sep_id = (vocab[t] for t in SPECIAL_TOKENS)
    self._tok = tokenizers.BertWordPieceTokenizer(vocab, lowercase=self.lowercase)

  def tokens(self, text: str) -> list[str]:
    """WordPiece pieces of one text, without special tokens ("##" marks a continuation)."""
    return self._tok.encode(text, add_special_tokens=False).tokens

  def encode(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [N, max_len], mask int32 [N, max_len]): [CLS] pieces [SEP], then [PAD].

    Pieces beyond max_len - 2 are dropped ([SEP] stays last); an empty text gives
    [CLS] [SEP]. Fixed length (not MART's longest-in-batch) keeps shapes static; the mask
    marks the real positions, so a masked encoder sees the same tokens.
    """
    if max_len < 2:
      raise ValueError(f"max_len must be >= 2 ([CLS] and [SEP]), got {max_len}")
    ids = np.full((len(texts), max_len), self.pad_id, np.int32)
    mask = np.zeros((len(texts), max_len), np.int32)
    encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
    for row, enc in enumerate(encodings):
      pieces = [self.cls_id, *enc.ids[:max_len - 2], self.sep_id]
      ids[row, :len(pieces)] = pieces
      mask[row, :len(pieces)] = 1
    return ids, mask


# ----------------------------------------------------------------------------- lexicon


@dataclasses.dataclass(frozen=True)
class LexiconEntry:
  polarity: float
  moods: tuple[int, ...]  # Indices into MOODS, at most 2.


def _entry(source: str, word: str, polarity, moods) -> LexiconEntry:
  if isinstance(polarity, bool) or not isinstance(polarity, (int, float, str)):
    raise TextInputError(f"{source}: polarity of {word!r} must be a number, got {polarity!r}")
  try:
    value = float(polarity)
  except ValueError:
    raise TextInputError(f"{source}: polarity of {word!r} must be a number, "
                         f"got {polarity!r}") from None
  if not -1.0 <= value <= 1.0:  # Also rejects NaN.
    raise TextInputError(f"{source}: polarity of {word!r} must be in [-1, 1], got {polarity!r}")
  if isinstance(moods, str) or not all(isinstance(m, str) for m in moods):
    raise TextInputError(f"{source}: moods of {word!r} must be a list of tags, got {moods!r}")
  index = []
  for mood in moods:
    tag = mood if mood.startswith("#") else "#" + mood
    if tag not in MOODS:
      raise TextInputError(f"{source}: unknown mood {mood!r} for {word!r}; expected {MOODS}")
    index.append(MOODS.index(tag))
  if len(index) > 2:
    raise TextInputError(f"{source}: {word!r} has {len(index)} moods; at most 2")
  return LexiconEntry(value, tuple(index))


def parse_lexicon_tsv(content: str, source: str = "<lexicon>") -> dict[str, LexiconEntry]:
  lexicon: dict[str, LexiconEntry] = {}
  for n, raw in enumerate(content.splitlines(), 1):
    line = raw.rstrip("\r\n")
    if not line.strip() or line.strip() == "#" or line.lstrip().startswith("# "):
      continue
    fields = line.split("\t")
    where = f"{source}:{n}"
    if not 2 <= len(fields) <= 3 or not fields[0].strip():
      raise TextInputError(f"{where}: expected 'word<TAB>polarity[<TAB>mood,mood]', "
                           f"got {line[:60]!r}")
    word = fields[0].strip()
    if word in lexicon:
      raise TextInputError(f"{where}: {word!r} is listed twice")
    moods = [m.strip() for m in fields[2].split(",") if m.strip()] if len(fields) == 3 else []
    lexicon[word] = _entry(where, word, fields[1].strip(), moods)
  return lexicon


def parse_lexicon_json(content: str, source: str = "<lexicon>") -> dict[str, LexiconEntry]:
  try:
    data = json.loads(content)
  except json.JSONDecodeError as e:
    raise TextInputError(f"{source}: malformed JSON: {_first_line(e)}") from None
  if not isinstance(data, dict):
    raise TextInputError(f"{source}: expected an object word -> {{polarity, moods}}")
  lexicon = {}
  for word, value in data.items():
    if not isinstance(value, dict) or "polarity" not in value or set(value) - {"polarity",
                                                                              "moods"}:
      raise TextInputError(f"{source}: {word!r} must map to {{'polarity': p, 'moods': [...]}}")
    lexicon[word] = _entry(source, word, value["polarity"], value.get("moods", []))
  return lexicon


def read_lexicon(path) -> dict[str, LexiconEntry]:
  """The lexicon file at `path` (JSON if it ends in .json, else TSV; see the module doc)."""
  path = os.fspath(path)
  content = _read_text(path, "lexicon file")
  if path.lower().endswith(".json"):
    return parse_lexicon_json(content, path)
  return parse_lexicon_tsv(content, path)


@dataclasses.dataclass(frozen=True)
class SegmentAffect:
  emotion_words: str      # Space-joined tokens with non-zero polarity, in text order.
  moods: np.ndarray       # float32 [8]: mood histogram weighted by |polarity|, sums to 1 or 0.
  polarity: float         # Mean polarity of the tokens found in the lexicon (0.0 if none).
  matched: int            # How many tokens were found in the lexicon.


def segment_affect(tokens: Sequence[str], lexicon: Mapping[str, LexiconEntry]) -> SegmentAffect:
  """Lexicon features of one segment's tokens.

  emotion_words is what MART's tools/text_emotion.py returns (tokens missing from the lexicon
  count as polarity 0), built afresh per call: the release never resets that accumulator, so
  its strings grow across segments and videos. moods and polarity are the brief's suggested
  reconstruction of the paper's "temporal emotion distribution" (section 1.6), which the
  release does not implement: each matched token adds |polarity| to the bin of each of its
  mood tags; the histogram is normalised to sum 1 (all zeros when no weight was added).
  """
  words, weights, polarities = [], np.zeros(len(MOODS), np.float64), []
  for token in tokens:
    entry = lexicon.get(token)
    if entry is None:
      continue
    polarities.append(entry.polarity)
    if entry.polarity != 0.0:
      words.append(token)
    for mood in entry.moods:
      weights[mood] += abs(entry.polarity)
  total = weights.sum()
  moods = (weights / total if total > 0 else weights).astype(np.float32)
  polarity = float(np.mean(polarities)) if polarities else 0.0
  return SegmentAffect(" ".join(words), moods, polarity, len(polarities))


def segments_affect(tokenizer: WordPiece, texts: Sequence[str],
                    lexicon: Mapping[str, LexiconEntry]) -> list[SegmentAffect]:
  """segment_affect of each segment text, tokenised with the WordPiece tokenizer (as MART)."""
  return [segment_affect(tokenizer.tokens(text), lexicon) for text in texts]
