"""Optional per-video extraction of what MART reads: a Kaldi filter bank and tokenised subtitles.

Shared by the video_emotion and video_corpus builders; every setting is off by default, so a
builder whose settings are off writes the same features (and folder name) as before.

  fbank_bins > 0     "fbank" float32 [F, bins]: media.mart_fbank of the first channel at the
                     file's own rate (MART's torchaudio path), 10 ms frames; [1, bins] zeros
                     when the file has no audio or too little for one frame.
  subtitles_vocab    a BERT vocab.txt (an input, never downloaded): each video's subtitle lines
                     (<dir>/<name>.srt beside the video, else <root>/srt/<Class>/<name>.srt,
                     MART's layout) are tokenised once per line with text.WordPiece and stored
                     ragged: "text_ids" int32 [Ntok] (no [CLS]/[SEP]), "text_offsets" int32
                     [L + 1] (line l owns ids[offsets[l]:offsets[l + 1]]), "text_start_us" and
                     "text_end_us" int64 [L] (microseconds: tfds would store float64 as
                     float32). A missing .srt gives L = 0 and is counted; a malformed one
                     too, and its reason listed (the video is kept).
  lexicon            per stored token, "token_polarity" float32 [Ntok] (0 when not in the
                     lexicon) and "token_moods" float32 [Ntok, 8] (1 for each of its Hourglass
                     mood tags, text.MOODS order), so the online side filters emotion words
                     and builds mood histograms without the lexicon file.
Whenever one of them is on, "duration" int64 [2] holds the clip's length as an exact fraction
num/den seconds: audio samples / rate (what MART's srt2seg divides), else the container's
duration. Relative vocab and lexicon paths are read from the raw folder (see `resolve`).
"""
from __future__ import annotations

import dataclasses
import os
import zlib
from fractions import Fraction
from typing import Any, Sequence

import av
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import media
from data_pipelines import text

NO_SUBTITLES = "no_subtitles"
BAD_SUBTITLES = "bad_subtitles: "


@dataclasses.dataclass(frozen=True)
class Settings:
  """The three extraction settings; paths as given (resolved by `resolve`)."""
  fbank_bins: int = 0
  subtitles_vocab: str = ""
  lexicon: str = ""

  @property
  def enabled(self) -> bool:
    return bool(self.fbank_bins or self.subtitles_vocab)


def resolve(path: str, root) -> str:
  """`path` itself when absolute or empty, else the file of that name in the raw folder."""
  path = os.fspath(path or "")
  if not path or os.path.isabs(path) or root is None:
    return path
  return os.path.join(os.fspath(root), path)


def check(s: Settings, error_cls) -> None:
  if isinstance(s.fbank_bins, bool) or not isinstance(s.fbank_bins, (int, np.integer)) \
      or s.fbank_bins < 0:
    raise error_cls(f"fbank_bins must be 0 (off) or a number of mel bins, got {s.fbank_bins!r}")
  if s.lexicon and not s.subtitles_vocab:
    raise error_cls(f"lexicon {s.lexicon!r} needs subtitles_vocab (the lexicon is applied to "
                    "the subtitle tokens)")


def _digest(path: str, what: str, error_cls) -> str:
  try:
    with open(path, "rb") as f:
      return f"{zlib.crc32(f.read()):08x}"
  except OSError as e:
    raise error_cls(f"{what} {path}: {e.strerror or e}") from None


def name_parts(s: Settings, error_cls) -> list[str]:
  """Config-name parts; the files' contents are hashed (a new vocabulary is a new folder)."""
  parts = [f"fbank{s.fbank_bins}"] if s.fbank_bins else []
  if s.subtitles_vocab:
    parts.append("vocab" + _digest(s.subtitles_vocab, "subtitles_vocab", error_cls))
  if s.lexicon:
    parts.append("lex" + _digest(s.lexicon, "lexicon", error_cls))
  return parts


def features(s: Settings) -> dict[str, Any]:
  """The tfds features these settings add (none when all are off)."""
  out: dict[str, Any] = {}
  if s.fbank_bins:
    out["fbank"] = tfds.features.Tensor(shape=(None, s.fbank_bins), dtype=np.float32)
  if s.enabled:
    out["duration"] = tfds.features.Tensor(shape=(2,), dtype=np.int64)
  if s.subtitles_vocab:
    out["text_ids"] = tfds.features.Tensor(shape=(None,), dtype=np.int32)
    out["text_offsets"] = tfds.features.Tensor(shape=(None,), dtype=np.int32)
    out["text_start_us"] = tfds.features.Tensor(shape=(None,), dtype=np.int64)
    out["text_end_us"] = tfds.features.Tensor(shape=(None,), dtype=np.int64)
  if s.lexicon:
    out["token_polarity"] = tfds.features.Tensor(shape=(None,), dtype=np.float32)
    out["token_moods"] = tfds.features.Tensor(shape=(None, len(text.MOODS)), dtype=np.float32)
  return out


def contract(s: Settings) -> dict[str, Any]:
  """Manifest entries the online side may rely on (empty when all settings are off)."""
  if not s.enabled:
    return {}
  out: dict[str, Any] = dict(fbank_bins=s.fbank_bins, subtitles_vocab=s.subtitles_vocab,
                             lexicon=s.lexicon, fbank_frame_shift_ms=10.0)
  if s.subtitles_vocab:
    out["moods"] = list(text.MOODS)
  return out


# ------------------------------------------------------------------------------ extraction


_TOOLS: dict[tuple[str, str], tuple] = {}  # Per process: (tokenizer, lexicon) per file pair.


def _tools(s: Settings):
  key = (s.subtitles_vocab, s.lexicon)
  if key not in _TOOLS:
    _TOOLS[key] = (text.WordPiece(s.subtitles_vocab),
                   text.read_lexicon(s.lexicon) if s.lexicon else None)
  return _TOOLS[key]


def srt_candidates(video_path: str, key: str, root) -> list[str]:
  """Where a video's subtitles may be: beside it, then <root>/srt/<key>.srt (MART's layout),
  the class folder spelled as on disk first."""
  stem = key.rsplit("/", 1)[-1]
  out = [os.path.join(os.path.dirname(video_path), stem + ".srt")]
  if root is not None:
    folder = os.path.basename(os.path.dirname(video_path))
    out.append(os.path.join(os.fspath(root), "srt", folder, stem + ".srt"))
    out.append(os.path.join(os.fspath(root), "srt", key + ".srt"))
  return list(dict.fromkeys(out))


def _microseconds(t) -> int:
  return int(t.days * 86_400_000_000 + t.seconds * 1_000_000 + t.microseconds)


def tokenised_lines(lines: Sequence[text.SubtitleLine], s: Settings) -> dict[str, np.ndarray]:
  """The ragged text features of subtitle lines (see the module docstring)."""
  tokenizer, lexicon = _tools(s)
  ids, offsets, polarity, moods = [], [0], [], []
  for line in lines:
    pieces = tokenizer.tokens(line.text)
    ids += [tokenizer.vocab[p] for p in pieces]
    offsets.append(len(ids))
    if lexicon is not None:
      for piece in pieces:
        entry = lexicon.get(piece)
        row = np.zeros(len(text.MOODS), np.float32)
        if entry is not None:
          row[list(entry.moods)] = 1.0
        polarity.append(entry.polarity if entry is not None else 0.0)
        moods.append(row)
  out = dict(
      text_ids=np.asarray(ids, np.int32), text_offsets=np.asarray(offsets, np.int32),
      text_start_us=np.asarray([_microseconds(l.start) for l in lines], np.int64),
      text_end_us=np.asarray([_microseconds(l.end) for l in lines], np.int64))
  if lexicon is not None:
    out["token_polarity"] = np.asarray(polarity, np.float32)
    out["token_moods"] = np.asarray(moods, np.float32).reshape(-1, len(text.MOODS))
  return out


def read_subtitles(candidates: Sequence[str]) -> tuple[list[text.SubtitleLine], str | None]:
  """(lines, note): the first existing candidate's lines; note NO_SUBTITLES when none exists,
  BAD_SUBTITLES + reason (and no lines) when it cannot be read."""
  for path in candidates:
    if os.path.isfile(path):
      try:
        return text.read_srt(path), None
      except (text.TextInputError, OSError) as e:
        return [], BAD_SUBTITLES + str(e).splitlines()[0]
  return [], NO_SUBTITLES


def _container_duration(path: str) -> Fraction:
  try:
    with av.open(os.fspath(path)) as container:
      if container.duration is not None:
        return Fraction(int(container.duration), av.time_base)
      stream = container.streams.video[0]
      return Fraction(int(stream.duration or 0)) * stream.time_base
  except Exception as e:  # pylint: disable=broad-except
    raise media.MediaError(f"{path}: cannot read the duration: {type(e).__name__}: {e}") from e


def extract(path: str, srt_paths: Sequence[str], s: Settings) -> tuple[dict, bool, str | None]:
  """(features, has_audio, subtitle note) of one video for enabled settings `s`.

  has_audio is False when the file has no audio samples (the fbank is then zeros, and the
  caller applies its no-audio policy). Raises media.MediaError on unreadable media.
  """
  out: dict[str, Any] = {}
  got = media.read_audio_channels(path)
  has_audio = got is not None and got[0].shape[1] > 0
  if not s.enabled:
    return out, has_audio, None
  if has_audio:
    channels, rate = got
    duration = Fraction(channels.shape[1], rate)
  else:
    duration = _container_duration(path)
  out["duration"] = np.asarray([duration.numerator, duration.denominator], np.int64)
  if s.fbank_bins:
    fbank = media.mart_fbank(channels, rate, s.fbank_bins) if has_audio else None
    if fbank is None or fbank.shape[0] == 0:
      fbank = np.zeros((1, s.fbank_bins), np.float32)
    out["fbank"] = fbank
  note = None
  if s.subtitles_vocab:
    lines, note = read_subtitles(srt_paths)
    out.update(tokenised_lines(lines, s))
  return out, has_audio, note
