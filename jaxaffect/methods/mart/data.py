"""MART's online input pipeline: per-example segments of video, filter bank and subtitle tokens.

Reads the video_emotion builder's records with MART's settings on (fbank_bins, subtitles_vocab,
optionally lexicon: data_pipelines/builders/fbank_subtitles.py) and makes, for Ns segments:

  video       uint8 [Ns, T, crop, crop, 3]  VAANet's snippets (video_transforms.sample_snippets)
  fbank       float32 [Ns, F, M]   audio_transforms.fbank_segments (random windows in training,
              centred in evaluation unless legacy_random_eval), SpecAugment in training,
              then AST's scaling
  text_ids    int32 [Ns, Lmax]     [CLS] pieces [SEP] [PAD]..., one text per segment
  text_mask   bool [Ns, Lmax]      True on [CLS], the pieces and [SEP]
  mood        float32 [Ns, 8]      |polarity|-weighted histogram of the segment's lexicon mood
              tags (text.MOODS order), summing to 1; zeros when no word carries weight
  mood_valid  bool [Ns]            the segment has a mood histogram
  label, polarity  int32 []        (-1 for records without a label); eval adds "key"

Subtitle lines go to segments by MART's srt2seg rule over Ns equal windows of the clip's
duration (a line joins every window from the one holding its start to the one holding its end;
past the last edge it lands in the last window: the release's stale end index is not kept).
The ids are the builder's per-line WordPiece ids concatenated, which equals tokenising the
space-joined segment string (BERT's tokenizer splits on whitespace before WordPiece).
`text.source`: "raw" (the subtitles), "emotion_words" (the pieces whose lexicon polarity is
not 0, in order, as the release's TextSentiment; the release re-tokenises that string, which
only differs for a "##" piece found in the lexicon) or "both" (raw then emotion words in one
sequence: one text per segment, fixing release defect 2, which gave two). Texts longer than
Lmax - 2 pieces are cut at the end. mood uses every piece of the segment, not only the kept.

Config keys read (configs/mart_*.py): dataset.* as VAANet's (name, manual_dir, data_dir,
split, split_file, eval_split, polarity, snippet_len, crop_size, augment and its parameters,
legacy_random_eval, legacy_start_off_by_one, worker_count, extraction, synthetic) and
  dataset.num_segments (12)       Ns in training (the release's seq_len)
  dataset.eval_num_segments (16)  Ns in evaluation (val_len)
  dataset.audio_frames (100)      fbank frames per segment
  dataset.freq_mask (24), dataset.time_mask (192)  SpecAugment widths; 0 = off
  dataset.extraction.fbank_bins (128), .subtitles_vocab (vocab.txt; relative = in the raw
      folder), .lexicon (needed by emotion_words, both and the mood features)
  text.source ("raw" | "emotion_words" | "both"), text.max_len (Lmax)
"""
from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from jaxaffect.data import audio_visual
from jaxaffect.data import families
from jaxaffect.data import pipeline
from jaxaffect.data import video_emotion
from jaxaffect.data import video_transforms
from jaxaffect.errors import PathNotFound, UserError

TEXT_SOURCES = ("raw", "emotion_words", "both")
NUM_MOODS = 8
_SPECIAL = ("[PAD]", "[CLS]", "[SEP]")


@dataclasses.dataclass(frozen=True)
class MartDataConfig:
  """What the per-example transform needs (built from the config by `data_config`)."""
  video: video_transforms.TransformConfig
  audio_frames: int = 100
  freq_mask: int = 24
  time_mask: int = 192
  text_source: str = "raw"
  max_len: int = 64
  pad_id: int = 0
  cls_id: int = 101
  sep_id: int = 102

  @property
  def num_segments(self) -> int:
    return self.video.num_segments


def special_ids(vocab_path: str) -> tuple[int, int, int]:
  """([PAD], [CLS], [SEP]) ids of a BERT vocab.txt (its line numbers)."""
  try:
    with open(vocab_path, encoding="utf-8-sig") as f:
      tokens = [line.strip() for line in f]
  except FileNotFoundError:
    raise PathNotFound(f"dataset.extraction.subtitles_vocab: {vocab_path} not found") from None
  missing = [t for t in _SPECIAL if t not in tokens]
  if missing:
    raise UserError(f"dataset.extraction.subtitles_vocab: {vocab_path} lacks {missing}")
  return tuple(tokens.index(t) for t in _SPECIAL)


def data_config(config, *, train: bool) -> MartDataConfig:
  """The transform settings of the train (train=True) or eval pipeline; config mistakes are
  one-line UserErrors naming the key."""
  ds, tx = config.dataset, config.text
  ex = ds.extraction
  if int(ex.get("fbank_bins", 0)) <= 0:
    raise UserError("dataset.extraction.fbank_bins: MART reads filter banks; set it (128)")
  if not ex.get("subtitles_vocab", ""):
    raise UserError("dataset.extraction.subtitles_vocab: MART reads subtitles; name a BERT "
                    "vocab.txt")
  if tx.source not in TEXT_SOURCES:
    raise UserError(f"text.source: {tx.source!r} is not one of {', '.join(TEXT_SOURCES)}")
  if tx.source != "raw" and not ex.get("lexicon", ""):
    raise UserError(f"dataset.extraction.lexicon: text.source={tx.source!r} needs a lexicon")
  if int(tx.max_len) < 2:
    raise UserError(f"text.max_len: needs room for [CLS] and [SEP], got {tx.max_len}")
  vocab = str(ex.subtitles_vocab)
  if not os.path.isabs(vocab):
    vocab = os.path.join(families.raw_dir(video_emotion.FAMILY, ds), vocab)
  pad, cls, sep = special_ids(vocab)
  with open(vocab, encoding="utf-8-sig") as f:
    num_tokens = sum(1 for _ in f)
  text_model = (config.get("model", None) or {}).get("text", None) or {}
  model_vocab = int(text_model.get("vocab_size", num_tokens))
  if num_tokens > model_vocab:  # an id past the embedding table would read garbage, silently
    raise UserError(f"model.text.vocab_size={model_vocab} is smaller than {vocab}'s "
                    f"{num_tokens} tokens")
  names = {f.name for f in dataclasses.fields(video_transforms.TransformConfig)}
  video = {k: ds[k] for k in names if k in ds}
  video["num_segments"] = int(ds.num_segments if train else ds.eval_num_segments)
  try:
    video_cfg = video_transforms.TransformConfig.create(video)
  except ValueError as e:
    raise UserError(f"dataset: {e}") from None
  return MartDataConfig(
      video=video_cfg, audio_frames=int(ds.get("audio_frames", 100)),
      freq_mask=int(ds.get("freq_mask", 24)), time_mask=int(ds.get("time_mask", 192)),
      text_source=str(tx.source), max_len=int(tx.max_len), pad_id=pad, cls_id=cls, sep_id=sep)


# ----------------------------------------------------------------------------- text


def segment_spans(start_us: Sequence[int], end_us: Sequence[int], num_segments: int,
                  duration: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """(first, last) window of each line, int64 [L]; a line covers first..last (none if last
  < first). Windows are Ns equal parts of duration = num/den seconds; exact integer arithmetic
  (times in microseconds), so a line on an edge goes where data_pipelines.text.srt2seg puts it:
  start in [edge, next edge), end in (edge, next edge], both clamped to the windows."""
  num, den = int(duration[0]), int(duration[1])
  n = len(start_us)
  if num <= 0 or den <= 0:  # No length to split: the text has no place.
    return np.zeros(n, np.int64), np.full(n, -1, np.int64)
  # Window of time t: t * Ns / duration = t * Ns * den / (10^6 * num).
  a, b = num_segments * den, 10**6 * num
  last = num_segments - 1
  first = [min(max((int(s) * a) // b, 0), last) for s in start_us]
  final = [min(max(-((-int(e) * a) // b) - 1, 0), last) for e in end_us]
  return np.asarray(first, np.int64), np.asarray(final, np.int64)


def segment_pieces(element: Mapping[str, Any], num_segments: int) -> list[np.ndarray]:
  """Per segment, the indices into element["text_ids"] of its pieces, in line order."""
  offsets = np.asarray(element["text_offsets"], np.int64)
  first, final = segment_spans(element["text_start_us"], element["text_end_us"], num_segments,
                               element["duration"])
  out = []
  for s in range(num_segments):
    lines = np.flatnonzero((first <= s) & (s <= final))
    out.append(np.concatenate([np.arange(offsets[l], offsets[l + 1]) for l in lines])
               if len(lines) else np.zeros(0, np.int64))
  return out


def text_features(element: Mapping[str, Any], cfg: MartDataConfig) -> dict[str, np.ndarray]:
  """text_ids, text_mask, mood, mood_valid of one record (see the module docstring)."""
  ns, length = cfg.num_segments, cfg.max_len
  ids = np.asarray(element["text_ids"], np.int32)
  has_lexicon = "token_polarity" in element
  if cfg.text_source != "raw" and not has_lexicon:
    raise ValueError(f"text.source={cfg.text_source!r} needs lexicon features; the dataset "
                     "was extracted without dataset.extraction.lexicon")
  polarity = np.asarray(element["token_polarity"], np.float32) if has_lexicon else None
  out_ids = np.full((ns, length), cfg.pad_id, np.int32)
  mask = np.zeros((ns, length), bool)
  mood = np.zeros((ns, NUM_MOODS), np.float32)
  for s, pieces in enumerate(segment_pieces(element, ns)):
    parts = []
    if cfg.text_source in ("raw", "both"):
      parts.append(pieces)
    if cfg.text_source in ("emotion_words", "both"):
      parts.append(pieces[polarity[pieces] != 0])
    kept = ids[np.concatenate(parts)][:length - 2]
    row = np.concatenate([[cfg.cls_id], kept, [cfg.sep_id]])
    out_ids[s, :len(row)] = row
    mask[s, :len(row)] = True
    if has_lexicon and len(pieces):
      moods = np.asarray(element["token_moods"], np.float32)[pieces]
      weights = (np.abs(polarity[pieces])[:, None] * moods).sum(axis=0)
      total = weights.sum()
      if total > 0:
        mood[s] = weights / total
  return dict(text_ids=out_ids, text_mask=mask, mood=mood, mood_valid=mood.sum(axis=1) > 0)


# ----------------------------------------------------------------------------- example


class MartTransform(grain.transforms.RandomMap):
  """Record dict (video_emotion or video_corpus builder) -> one MART example (module doc)."""

  def __init__(self, cfg: MartDataConfig, *, train: bool, keep_key: bool = False):
    self.cfg, self.train, self.keep_key = cfg, train, keep_key

  def random_map(self, element: Mapping[str, Any], rng: np.random.Generator) -> dict:
    cfg = self.cfg
    key = element.get("key", "?")
    try:
      video, fbank = audio_visual.snippets_and_fbank(
          element, cfg.video, cfg.num_segments, cfg.audio_frames, rng, train=self.train,
          freq_mask=cfg.freq_mask, time_mask=cfg.time_mask)
      out = dict(video=video, fbank=fbank, **text_features(element, cfg),
                 **audio_visual.label_fields(element, cfg.video.polarity, unlabelled=True))
    except (KeyError, ValueError) as e:
      raise ValueError(f"record {key!r}: {type(e).__name__}: {e}") from e
    if self.keep_key:
      out["key"] = np.asarray(key)
    return out

  def __call__(self, element: Mapping[str, Any], rng: np.random.Generator | None = None):
    """Direct use; deterministic (eval) paths accept rng=None."""
    return self.random_map(element, rng if rng is not None else np.random.default_rng(0))


# ----------------------------------------------------------------------------- preparation


def prepare(config) -> None:
  """Generates (synthetic names) and extracts the dataset once, and the unlabelled pool when
  stage 1 reads it; process 0 only."""
  if _reads_labelled(config):
    families.prepare(video_emotion.FAMILY, config.dataset)
  if _reads_pool(config):
    # The pool's extraction under a lock of its own, as the labelled set's (families.prepare).
    with families.preparing(_pool_data_dir(config), os.path.expanduser(config.dataset.data_dir)):
      _pool_builder(config, build=True)


# ----------------------------------------------------------------------------- unlabelled pool


def _reads_pool(config) -> bool:
  p = config.get("pretrain", None)
  return p is not None and p.get("data", "labelled") == "unlabelled" and int(p.steps) > 0


def _reads_labelled(config) -> bool:
  """False for label-free pretraining (stage 1 only, on the pool, no evaluation)."""
  only_pool = _reads_pool(config) and int(config.pretrain.steps) >= int(config.total_steps)
  return not (only_pool and config.get("no_eval", False))


def pool_dir(config) -> str:
  """The unlabelled videos: `pretrain.corpus_dir`, else the synthetic generator's pool
  (<raw folder>/unlabelled)."""
  corpus = str(config.pretrain.get("corpus_dir", "") or "")
  if corpus:
    return os.path.expanduser(corpus)
  return os.path.join(families.raw_dir(video_emotion.FAMILY, config.dataset), "unlabelled")


def _pool_data_dir(config) -> str:
  """Where the pool's extraction lives (one folder per pool path)."""
  root = pool_dir(config)
  return os.path.join(os.path.expanduser(config.dataset.data_dir), "tfds",
                      f"corpus_{os.path.basename(os.path.normpath(root))}_"
                      f"{zlib.crc32(os.path.abspath(root).encode()):08x}")


def _pool_builder(config, *, build: bool):
  """The video_corpus build of the pool with the labelled set's extraction settings (relative
  vocab / lexicon paths name files of the labelled raw folder)."""
  from data_pipelines.builders import video_corpus  # deferred: tensorflow_datasets
  ds = config.dataset
  ex = ds.extraction
  raw = families.raw_dir(video_emotion.FAMILY, ds)
  resolve = lambda f: (f if not f or os.path.isabs(f) else os.path.join(raw, f))
  root = pool_dir(config)
  if not os.path.isdir(root):
    raise PathNotFound(f"pretrain.corpus_dir: {root} does not exist (pretrain.data="
                       f"'unlabelled' reads videos there)")
  options = dict(fps=float(ex.fps) or None, frame_short_side=ex.get("frame_short_side"),
                 max_frames=ex.get("max_frames"), fbank_bins=int(ex.fbank_bins),
                 subtitles_vocab=resolve(str(ex.subtitles_vocab)),
                 lexicon=resolve(str(ex.get("lexicon", ""))),
                 no_audio_policy=str(ex.get("no_audio_policy", "zeros")))
  shards = int(config.pretrain.get("corpus_shards", 0) or 0)
  try:
    return video_corpus.build_video_corpus(root, _pool_data_dir(config), options, build=build,
                                           num_shards=shards or None)
  except (video_corpus.CorpusError, FileNotFoundError) as e:
    raise UserError(f"pretrain.corpus_dir {root}: {e}") from None


def pool_source(config):
  """Random access to the pool's records (the video_corpus builder's features; no labels),
  every shard checked (sources.open_split)."""
  from jaxaffect.data import sources  # the shard checks every split goes through
  return sources.open_split(config.dataset, "train", _pool_data_dir(config),
                            lambda: _pool_builder(config, build=False),
                            "run prepare_data (the trainer does, on process 0)")


# ----------------------------------------------------------------------------- pipelines


def _worker_init(worker_index: int, worker_count: int) -> None:
  del worker_index, worker_count
  pipeline.limit_blas_threads(1)


def train_iterator(config, *, seed: int, global_batch_size: int, process_index: int,
                   process_count: int, source=None):
  """Infinite shuffled per-process batches of MART examples (keys: module docstring, with
  the batch axis first), a checkpointable grain iterator; the global batch at each step does
  not depend on the process count (pipeline.per_process_iter). `source` overrides the
  dataset's train split (any random-access source of builder records)."""
  cfg = data_config(config, train=True)
  ds = config.dataset
  shuffled = lambda src, s: grain.MapDataset.source(src).seed(s).shuffle().repeat(None)
  if source is None and not _reads_labelled(config):
    source = pool_source(config)  # label-free pretraining: the pool is the train split
  elif source is None:
    source = families.open_source(video_emotion.FAMILY, ds, "train")
  if len(source) == 0:
    raise UserError(f"dataset {ds.name}: the train split is empty")
  stream = shuffled(source, seed)
  if _reads_pool(config) and _reads_labelled(config):
    # Stage 1 reads the pool, stage 2 the train split: one finite stream, pool examples first,
    # exactly pretrain.steps global batches of them, so a resumed iterator lands in the right
    # part (grain's iterator state is the position in this stream).
    pool = pool_source(config)
    if len(pool) == 0:
      raise UserError(f"pretrain.corpus_dir {pool_dir(config)}: no usable video")
    first = int(config.pretrain.steps) * global_batch_size
    rest = max(1, int(config.total_steps) - int(config.pretrain.steps) + 1) * global_batch_size
    stream = grain.MapDataset.concatenate([shuffled(pool, seed + 1)[:first], stream[:rest]])
  stream = stream.random_map(MartTransform(cfg, train=True))
  worker_count = int(ds.get("worker_count", 0))
  it = pipeline.per_process_iter(stream, global_batch_size=global_batch_size,
                                 process_index=process_index, process_count=process_count,
                                 worker_count=worker_count, worker_init_fn=_worker_init)
  if worker_count <= 0:
    pipeline.limit_blas_threads(1)
  return iter(it)


def eval_batches(config, *, global_batch_size: int, process_index: int, process_count: int,
                 source=None):
  """Per-process eval batches over `dataset.eval_split` (default "test") in source order,
  padded with copies of example 0 and marked by "_mask" bool [b]; plus "key" (host side)."""
  cfg = data_config(config, train=False)
  ds = config.dataset
  if source is None:
    source = families.open_source(video_emotion.FAMILY, ds, ds.get("eval_split", "test"))
  transform = MartTransform(cfg, train=False, keep_key=True)
  return pipeline.padded_eval_batches(
      source, pipeline.record_example(transform), global_batch_size=global_batch_size,
      process_index=process_index, process_count=process_count,
      seed=int(config.get("seed", 0)))
