"""TFDS builder `video_corpus`: any folder of videos -> unlabelled ArrayRecord examples (MART's
pretraining corpus; no TensorFlow needed).

Every video file under `manual_dir` (recursively; hidden folders and files are ignored) gives
one example with the per-video extraction of the labelled builders: frames (media.py) plus
MART's inputs (fbank_subtitles.py: Kaldi fbank, and with `subtitles_vocab` the subtitles in
`<name>.srt` beside the video, tokenised once per line). There are no labels and one split,
"train". Keys are the paths relative to the folder without the extension ("a/b/clip").

Many hosts: examples are stored in a stable order, by SHA-1 of the key (adding videos
interleaves the new ones without reordering the rest), so the order does not depend on the
file system. `process_range(n, p, P)` gives host p its contiguous, even share; with
`num_shards` a multiple of P those shares are whole ArrayRecord files (tfds puts shard
boundaries at round(n * i / num_shards)), so each host reads only its own files. Bad videos are
skipped and listed in manifest.json with their reasons, as are videos without subtitles.

Usage:
  builder = build_video_corpus(folder, data_dir, dict(subtitles_vocab="/x/vocab.txt"),
                               num_shards=64)
  source = builder.as_data_source("train")
  mine = process_range(len(source), jax.process_index(), jax.process_count())
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import media
from data_pipelines.builders import common as builders_common
from data_pipelines.builders import fbank_subtitles
from data_pipelines.builders.emotion_splits import VIDEO_EXTENSIONS

NO_AUDIO_POLICIES = builders_common.NO_AUDIO_POLICIES
SPLIT = "train"


class CorpusError(ValueError):
  """The corpus folder or a setting cannot be used; the message names it."""


@dataclasses.dataclass(eq=False)
class VideoCorpusConfig(tfds.core.BuilderConfig):
  """Extraction settings (as video_emotion's; MART's fbank on by default); `name` derived."""
  name: str = ""
  fps: float | None = None
  frame_short_side: int | None = 112
  max_frames: int | None = None
  fbank_bins: int = 128
  subtitles_vocab: str = ""
  lexicon: str = ""
  no_audio_policy: str = "zeros"

  @property
  def extras(self) -> fbank_subtitles.Settings:
    return fbank_subtitles.Settings(self.fbank_bins, self.subtitles_vocab, self.lexicon)

  def __post_init__(self):
    builders_common.check_video_settings(self, CorpusError)
    self.subtitles_vocab = os.fspath(self.subtitles_vocab or "")
    self.lexicon = os.fspath(self.lexicon or "")
    fbank_subtitles.check(self.extras, CorpusError)
    if not self.name:
      self.name = self.derived_name()
    if not self.description:
      self.description = "unlabelled videos: " + self.name

  def derived_name(self) -> str:
    num = builders_common.name_number
    return "_".join([
        f"fps{num(self.fps, 'native')}", f"side{num(self.frame_short_side, 'orig')}",
        f"max{num(self.max_frames, 'all')}", f"noaudio-{self.no_audio_policy}",
        *fbank_subtitles.name_parts(self.extras, CorpusError)])

  def contract(self) -> dict[str, Any]:
    return dict(fps=self.fps, frame_short_side=self.frame_short_side,
                max_frames=self.max_frames, no_audio_policy=self.no_audio_policy,
                order="sha1 of key", **fbank_subtitles.contract(self.extras))


def scan(root) -> dict[str, str]:
  """key ("a/b/clip") -> path of every video under `root`, one per key (extension order of
  VIDEO_EXTENSIONS when a name exists with several)."""
  root = os.fspath(root)
  rank = {e: i for i, e in enumerate(VIDEO_EXTENSIONS)}
  found: dict[str, tuple[int, str]] = {}
  for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for filename in files:
      stem, ext = os.path.splitext(filename)
      if filename.startswith(".") or not stem or ext.lower() not in rank:
        continue
      path = os.path.join(folder, filename)
      key = os.path.relpath(os.path.join(folder, stem), root).replace(os.sep, "/")
      if key not in found or rank[ext.lower()] < found[key][0]:
        found[key] = (rank[ext.lower()], path)
  return {k: p for k, (_, p) in found.items()}


def stable_order(keys) -> list[str]:
  return sorted(keys, key=lambda k: hashlib.sha1(k.encode("utf-8")).hexdigest())


def process_range(num_examples: int, process_index: int, process_count: int) -> range:
  """Host `process_index`'s examples: [round(n p / P), round(n (p + 1) / P)); every example
  goes to exactly one host, and the shares differ by at most one."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} outside 0..{process_count - 1}")
  return range(round(num_examples * process_index / process_count),
               round(num_examples * (process_index + 1) / process_count))


def extract_example(path: str, key: str, config: VideoCorpusConfig):
  """(example or None, note, subtitle note): note None, "zero_audio" or "skip: <reason>";
  the subtitle note as fbank_subtitles.extract's. Raises media.MediaError."""
  frames, _ = media.read_video_frames(
      path, fps=config.fps, short_side=config.frame_short_side, max_frames=config.max_frames)
  extras, has_audio, text_note = fbank_subtitles.extract(
      path, fbank_subtitles.srt_candidates(path, key, None), config.extras)
  note = None
  if not has_audio:
    if config.no_audio_policy == "skip":
      return None, f"skip: {path}: no audio samples (no_audio_policy='skip')", None
    note = "zero_audio"
  return dict(video=frames, has_audio=has_audio, key=key, **extras), note, text_note


def _extract_safe(args):
  key, path, config = args
  try:
    return (key, *extract_example(path, key, config))
  except media.MediaError as e:
    return key, None, f"skip: {e}", None
  except Exception as e:  # Any other decoder failure: still skip, naming the file.
    return key, None, f"skip: {path}: {type(e).__name__}: {e}", None


logging.getLogger("absl").addFilter(builders_common.QuietCustomConfig())


class VideoCorpus(tfds.core.GeneratorBasedBuilder):
  """Unlabelled videos (frames, fbank, tokenised subtitles) from a manual directory."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Frames + fbank + subtitle tokens per video, no labels."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Point manual_dir at any folder of videos (searched recursively), with optional <name>.srt
  subtitles beside each video. The synthetic generator's --unlabelled pool
  (<out>/unlabelled/) is one.
  """
  BUILDER_CONFIG_CLASS = VideoCorpusConfig

  def __init__(self, *, num_workers: int = 1, **kwargs):
    self._num_workers = max(1, int(num_workers))
    self._report: dict[str, Any] = {}
    super().__init__(**kwargs)

  @property
  def config(self) -> VideoCorpusConfig:
    cfg = self.builder_config
    if not isinstance(cfg, VideoCorpusConfig):
      raise ValueError(f"{self.data_dir}: video_corpus needs a VideoCorpusConfig "
                       f"(got {type(cfg).__name__}); use build_video_corpus()")
    return cfg

  def _info(self) -> tfds.core.DatasetInfo:
    extras = getattr(self.builder_config, "extras", fbank_subtitles.Settings())
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Tensor(shape=(None, None, None, 3), dtype=np.uint8,
                                          encoding="bytes"),
            "has_audio": tfds.features.Scalar(dtype=np.bool_),
            "key": tfds.features.Text(),
            **fbank_subtitles.features(extras),
        }),
        supervised_keys=None,
        disable_shuffling=True,  # Our own stable order (module docstring), not tfds' hash.
        homepage="https://github.com/jaxaffect",
    )

  def _split_generators(self, dl_manager):
    videos = scan(dl_manager.manual_dir)
    self._report = dict(found=len(videos), skipped=[], zero_audio=[], no_subtitles=[],
                        bad_subtitles=[], seconds=0.0)
    return {SPLIT: self._generate_examples(videos)}

  def _generate_examples(self, videos: dict[str, str]):
    cfg, report = self.config, self._report
    start, kept = time.time(), 0
    jobs = [(key, videos[key], cfg) for key in stable_order(videos)]
    for key, example, note, text_note in builders_common.map_jobs(_extract_safe, jobs,
                                                                  self._num_workers):
      if example is None:
        report["skipped"].append(dict(key=key, reason=note[len("skip: "):]))
        logging.getLogger(__name__).warning("video_corpus: skipped %s", note[len("skip: "):])
        continue
      if note == "zero_audio":
        report["zero_audio"].append(key)
      if text_note == fbank_subtitles.NO_SUBTITLES:
        report["no_subtitles"].append(key)
      elif text_note:
        report["bad_subtitles"].append(
            dict(key=key, reason=text_note[len(fbank_subtitles.BAD_SUBTITLES):]))
      kept += 1
      yield key, example
    report["seconds"] = round(time.time() - start, 2)
    if not kept:
      raise CorpusError(f"video_corpus: no usable video ({len(report['skipped'])} skipped: "
                        f"{report['skipped'][:3]} ...)")

  def _download_and_prepare(self, dl_manager, download_config=None):
    super()._download_and_prepare(dl_manager, download_config)
    r, cfg = self._report, self.config
    manifest = dict(
        dataset="video_corpus", config=cfg.name, version=str(self.version),
        splits={SPLIT: dict(num_examples=r["found"] - len(r["skipped"]), num_found=r["found"],
                            num_skipped=len(r["skipped"]), num_zero_audio=len(r["zero_audio"]),
                            extract_seconds=r["seconds"])},
        skipped=r["skipped"], zero_audio=sorted(r["zero_audio"]), contract=cfg.contract())
    if cfg.subtitles_vocab:
      manifest["splits"][SPLIT].update(num_no_subtitles=len(r["no_subtitles"]),
                                       num_bad_subtitles=len(r["bad_subtitles"]))
      manifest.update(no_subtitles=sorted(r["no_subtitles"]), bad_subtitles=r["bad_subtitles"])
    builders_common.write_manifest_file(self, manifest)


def load_manifest(builder) -> dict:
  return builders_common.load_manifest(builder, "build_video_corpus")


def _check_folder(root: str) -> None:
  if not scan(root):
    raise CorpusError(f"{root}: no video file found (extensions {', '.join(VIDEO_EXTENSIONS)})")


def build_video_corpus(manual_dir, data_dir, config_kwargs: dict | None = None, *,
                       build: bool = True, num_workers: int = 1, num_shards: int | None = None,
                       progress: bool = True) -> VideoCorpus:
  """Builds (once) and returns the `video_corpus` builder for these settings.

  `config_kwargs` are VideoCorpusConfig fields (relative vocab/lexicon paths: in the folder);
  an unknown key is an error naming it. `num_workers` and `num_shards` shape the build, not
  the data, so they are not part of the config name.
  """
  kwargs = dict(config_kwargs or {})
  for field in ("subtitles_vocab", "lexicon"):
    if kwargs.get(field):
      kwargs[field] = fbank_subtitles.resolve(kwargs[field], manual_dir)
  config = builders_common.checked_config(VideoCorpusConfig, kwargs, "video_corpus",
                                          CorpusError)
  builder = VideoCorpus(data_dir=os.fspath(data_dir), config=config, num_workers=num_workers,
                        file_format="array_record")
  return builders_common.open_or_build(
      builder, manual_dir, build=build, progress=progress, num_shards=num_shards,
      how="the extraction (build_video_corpus with build=True)", check_raw=_check_folder)
