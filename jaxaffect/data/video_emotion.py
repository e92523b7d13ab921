"""The video-emotion dataset family (data_pipelines/builders/video_emotion.py), shared by the
methods that train on VideoEmotion-8, Ekman-6 or CAER clips; prepared and opened by families.py.

  "synthetic_ve8"  generated on first use (data_pipelines/synthetic/affect_world.py), VE-8 layout.
  "ve8"     VideoEmotion-8 as downloaded: <Class>/<name>.<ext> plus split lists or the split
            workbook; `dataset.split` picks one of the 10 official splits.
  "ekman6"  Ekman-6: <class>/<id>.<ext> plus CTEN's ID lists (else the alternating rule);
            one split.
  "caer"    CAER: {train,validation,test}/<Class>/<name>.avi (the official split; keys
            "train/Anger/0001"), or <Class>/<name>.avi split 7:1:2 per class; builds train,
            validation and test, so `dataset.eval_split` may be "validation" or "test".
VE-8 and Ekman-6 builds have train and test only.
`dataset.split_file` (optional) names the lists' folder or the .xlsx, relative to the raw folder;
so do relative `dataset.extraction.subtitles_vocab` and `.lexicon` (MART's inputs).
"""
from __future__ import annotations

from jaxaffect.data import families
from jaxaffect.errors import UserError

SYNTHETIC = ("synthetic_ve8",)
REAL = ("ve8", "ekman6", "caer")
_LAYOUT = {"synthetic_ve8": "ve8", "ve8": "ve8", "ekman6": "ekman6", "caer": "caer"}


def extraction_kwargs(ds) -> dict:
  """The builder's settings: `dataset.extraction` plus the split, layout and split file."""
  kw = dict(ds.extraction.to_dict())
  kw["split"] = int(ds.get("split", 1))
  if not kw.get("fps"):
    kw["fps"] = None  # 0 in the config = native frame rate
  families.check_name(FAMILY, ds)
  kw["layout"] = _LAYOUT[ds.name]
  if ds.get("split_file", ""):
    kw["split_file"] = str(ds.split_file)
  return kw


# affect_world.POOL_COUPLING (not imported here: the generator needs the media stack).
POOL_COUPLING = 0.0


def _text_knobs(ds) -> dict:
  """`dataset.synthetic.subtitles` (MART: .srt, vocab.txt, lexicon.tsv and an unlabelled pool
  of `dataset.synthetic.unlabelled` clips, -1 = 5x the train split, whose sound follows the
  picture with probability `dataset.synthetic.pool_coupling`); absent or off = none. The
  coupling is always a knob, so the folder of a pool of another coupling is never reused."""
  syn = ds.synthetic
  if not syn.get("subtitles", False):
    return {}
  n = int(syn.get("unlabelled", -1))
  return dict(with_subtitles=True, num_unlabelled=None if n < 0 else n,
              pool_coupling=float(syn.get("pool_coupling", POOL_COUPLING)))


def _world_knobs(ds) -> dict:
  """`dataset.synthetic.keyframes` (CTEN: the cue during one emotional segment per clip, the
  segments in keyframes.json) on top of the text knobs."""
  return {**_text_knobs(ds), **({"keyframes": True} if ds.synthetic.get("keyframes", False)
                                else {})}


def _synthetic_folder(ds) -> tuple[str, dict | None]:
  syn = ds.synthetic
  return (f"seed{syn.seed}_n{syn.num_train_per_class}x{syn.num_test_per_class}",
          _world_knobs(ds) or None)


def _generator_kwargs(ds) -> dict:
  syn = ds.synthetic
  return dict(seed=int(syn.seed), num_train_per_class=int(syn.num_train_per_class),
              num_test_per_class=int(syn.num_test_per_class), **_world_knobs(ds))


FAMILY = families.DatasetFamily(
    synthetic=SYNTHETIC, real=REAL, noun="dataset",
    builder="data_pipelines.builders.video_emotion:build_video_emotion",
    builder_errors=("RawLayoutError", "ExtractionConfigError"),
    builder_options=extraction_kwargs,
    generator="data_pipelines.synthetic.affect_world:generate_ve8_style",
    generator_kwargs=_generator_kwargs, synthetic_folder=_synthetic_folder,
    raw_hint="download the dataset there", how="run the extraction",
    progress=True)  # Real video sets take minutes to extract.


def decode_video(ds, path: str) -> dict:
  """One video file -> the record the builder would store for it (`dataset.extraction`'s
  settings: frames, MFCC, and MART's / CTEN's filter bank when `fbank_bins` is set), for
  single-video prediction; decoded by the builder's own functions. A silent video gets zero
  audio features whatever the no_audio_policy; an unreadable one is a one-line UserError."""
  import dataclasses
  import os

  from data_pipelines import media  # deferred: the media stack
  from data_pipelines.builders import video_emotion as builder
  if not os.path.isfile(path):
    raise UserError(f"{path}: no such video file")
  kw = extraction_kwargs(ds)
  kw["split_index"] = kw.pop("split", 1)
  kw["no_audio_policy"] = "zeros"
  known = {f.name for f in dataclasses.fields(builder.VideoEmotionConfig)}
  cfg = builder.VideoEmotionConfig(**{k: v for k, v in kw.items() if k in known})
  key = os.path.basename(path)
  try:
    record, _ = builder.extract_example(path, key, 0, cfg)
    if cfg.extras.enabled:
      record.update(builder.extract_extras(path, key, cfg)[0])
  except media.MediaError as e:
    raise UserError(f"{path}: {e}") from None
  return record
