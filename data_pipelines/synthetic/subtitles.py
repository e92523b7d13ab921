"""Subtitles for the synthetic VE-8-style clips (MART's text input), with a vocab and a lexicon.

Each clip gets an .srt beside its .mp4: 2 to 4 consecutive lines of neutral filler words
covering the clip, some of them carrying one or two emotion words. In a VE-8-style clip the
emotional cue spans the whole clip after the audio onset (at most 0.25 s in), so emotion
words go only into lines that start at or after 0.25 s: they always lie inside the cue.

The text is a third, partial cue, so text alone does not solve the task: per clip, the
emotion words come from the clip's own class with probability TEXT_CLASS_PROB, else from
another class of the same polarity (the text then still tells positive from negative).

`write_vocab` and `write_lexicon` write the tiny BERT-style vocab.txt and the lexicon
(data_pipelines/text.py's TSV format) that cover every word used here. The mood tags map
Plutchik's classes onto the Hourglass moods by hand (a synthetic choice, not SenticNet's).
Subtitles use their own random stream (keyed "ve8_srt"), so the clips are unchanged.
"""
from __future__ import annotations

import datetime
import os

import numpy as np
import srt

from data_pipelines.synthetic import common

VOCAB_FILE = "vocab.txt"
LEXICON_FILE = "lexicon.tsv"
TEXT_CLASS_PROB = 0.6
EMOTION_START = 0.25  # Seconds: the latest audio onset of a VE-8-style clip.

# Per VE-8 class (common.VE8_CLASSES order): (emotion words, their polarity, mood tags).
CLASS_WORDS = (
    (("angry", "furious", "rage", "hate"), -0.8, ("#anger",)),
    (("waiting", "hope", "soon", "eager"), 0.5, ("#eagerness",)),
    (("gross", "disgusting", "nasty", "yuck"), -0.7, ("#disgust",)),
    (("afraid", "scared", "terror", "panic"), -0.75, ("#fear",)),
    (("happy", "joy", "delight", "wonderful"), 0.9, ("#joy", "#pleasantness")),
    (("sad", "cry", "grief", "lonely"), -0.85, ("#sadness",)),
    (("wow", "surprise", "sudden", "amazing"), 0.6, ("#eagerness", "#joy")),
    (("trust", "loyal", "faith", "safe"), 0.7, ("#calmness", "#pleasantness")),
)
# Neutral words; the first few are also in the lexicon with polarity 0 (matched, not emotional).
FILLER = ("the", "a", "we", "it", "was", "and", "then", "here", "there", "look", "this", "that",
          "you", "they", "now", "with", "some", "people", "at", "place", "day", "time", "just",
          "really", "so", "okay", "went", "to", "see")
NEUTRAL_IN_LEXICON = ("the", "day", "time", "place")
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _polarity_class_pool(label: int) -> list[int]:
  """The other classes with the polarity of `label`."""
  return [c for c in range(len(common.VE8_CLASSES))
          if common.VE8_POLARITY[c] == common.VE8_POLARITY[label] and c != label]


def make_subtitles(label: int, duration: float, rng: np.random.Generator) -> list[srt.Subtitle]:
  """The subtitle lines of one clip of class `label` lasting `duration` seconds."""
  source = label
  if rng.uniform() >= TEXT_CLASS_PROB:
    source = int(rng.choice(_polarity_class_pool(label)))
  words = CLASS_WORDS[source][0]
  n_lines = int(rng.integers(2, 5))
  edges = np.sort(rng.uniform(0.0, duration, size=n_lines - 1))
  edges = np.concatenate([[0.0], edges, [duration]])
  emotional = [edges[i] >= EMOTION_START for i in range(n_lines)]
  if not any(emotional):  # Every clip names its emotion once: the last line, moved past onset.
    edges[-2] = max(edges[-2], min(EMOTION_START, 0.5 * duration))
    emotional[-1] = True
  subs = []
  for i in range(n_lines):
    start, end = float(edges[i]), float(edges[i + 1])
    gap = min(0.05, 0.25 * (end - start))  # A short pause between lines.
    text = list(rng.choice(FILLER, size=int(rng.integers(3, 7))))
    if emotional[i]:
      for _ in range(int(rng.integers(1, 3))):
        text.insert(int(rng.integers(0, len(text) + 1)), str(rng.choice(words)))
    subs.append(srt.Subtitle(
        index=i + 1, start=datetime.timedelta(milliseconds=round(start * 1000)),
        end=datetime.timedelta(milliseconds=round((end - gap) * 1000)), content=" ".join(text)))
  return subs


def write_clip_subtitles(path: str, label: int, duration: float,
                         rng: np.random.Generator) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write(srt.compose(make_subtitles(label, duration, rng), reindex=False))


def vocabulary() -> list[str]:
  words = sorted({*FILLER, *(w for ws, _, _ in CLASS_WORDS for w in ws)})
  return [*SPECIAL, *words]


def write_vocab(out_dir: str) -> str:
  path = os.path.join(out_dir, VOCAB_FILE)
  with open(path, "w", encoding="utf-8") as f:
    f.write("".join(w + "\n" for w in vocabulary()))
  return path


def write_lexicon(out_dir: str) -> str:
  path = os.path.join(out_dir, LEXICON_FILE)
  rows = [f"{w}\t0.0" for w in NEUTRAL_IN_LEXICON]
  for words, polarity, moods in CLASS_WORDS:
    rows += [f"{w}\t{polarity}\t{','.join(moods)}" for w in words]
  with open(path, "w", encoding="utf-8") as f:
    f.write("# word<TAB>polarity<TAB>moods: the synthetic world's lexicon "
            "(data_pipelines/text.py)\n")
    f.write("".join(r + "\n" for r in sorted(rows)))
  return path
