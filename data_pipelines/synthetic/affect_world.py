"""The synthetic affect world: short clips whose emotion class needs both vision and sound.

Class c = 2 * visual_group + audio_cue (c indexes VE8_CLASSES):

  visual group (a moving object; hue family, shape and motion all agree):
    0 red disc moving left-right      1 green square moving up-down
    2 cyan diamond circling           3 purple cross pulsing in size in place
  audio cue (a tone):
    0 low (150-350 Hz) steady tone with harmonics
    1 high (1.2-2.4 kHz) tone pulsed on/off at 3-6 Hz

Nuisances are drawn per clip independently of the class: background tint, gradient and noise,
object position, size, speed, phase, hue jitter, brightness, loudness, audio noise, onset
delay and duration. A vision-only model can reach about 50% (group known, cue guessed), an
audio-only model about 25%, a constant one 12.5%.

The unlabelled pool (MART's pretraining corpus) can stand for unlabelled footage, where the
sound follows the picture: with probability `pool_coupling` (default POOL_COUPLING = 0, off) a
pool clip's audio cue is its visual group's own (cue = group % 2: red and cyan objects hum
low, green and purple ones beep high), else its class is drawn uniformly as for a labelled
clip. In a pool
with independent factors video and audio share no information, so a cross-modal objective
(MART's TACL CPC, the only stage-1 term that trains the audio stream) has nothing to learn
(docs/results.md, sessions 13 and 14). The labelled train and test clips keep the two factors
independent (classes uniform), so the labelled task still needs both modalities; they are the
same bytes whatever `pool_coupling`. `pool_coupling=0` gives the independent pool of earlier
versions, byte for byte. It stays the default: on MART's synthetic recipe the coupled pool did
not make pretraining beat random initialisation, nor beat the independent pool (results.md,
session 14); the knob is there for that study.

`render_clip` is the building block later generators (untrimmed clips with emotional segments)
can reuse; `generate_ve8_style` writes a VE-8-style dataset, optionally with subtitles
(synthetic/subtitles.py) and an unlabelled pool of clips (MART's pretraining corpus).
"""
from __future__ import annotations

import colorsys
import concurrent.futures as cf
import dataclasses
import json
import multiprocessing
import os
import time
from typing import Sequence

import numpy as np

from data_pipelines.synthetic import common
from data_pipelines.synthetic import subtitles

NUM_GROUPS = 4
NUM_CUES = 2
GROUP_HUES = (0.0, 0.33, 0.5, 0.78)  # red, green, cyan, purple
GROUP_SHAPES = ("disc", "square", "diamond", "cross")
GROUP_MOTIONS = ("horizontal", "vertical", "circle", "pulse")
GENERATOR_VERSION = 1
UNLABELLED_DIR = "unlabelled"
UNLABELLED_FACTOR = 5  # The default pool: 5x the labelled train split (issue #12).
KEYFRAMES_FILE = "keyframes.json"  # The emotional segments of a `keyframes` world.
KEYFRAME_LABEL = "keyframe"
POOL_COUPLING = 0.0  # P(a pool clip's cue is its group's own); jaxaffect/data/video_emotion.py


def class_index(group: int, cue: int) -> int:
  return NUM_CUES * group + cue


def class_factors(label: int) -> tuple[int, int]:
  """(visual group, audio cue) of a 0-based class index."""
  return divmod(int(label), NUM_CUES)


def pool_class(seed: int, index: int, coupling: float = POOL_COUPLING) -> int:
  """The class of unlabelled pool clip `index`: uniform over the classes (the draw of earlier
  versions, its own stream), then with probability `coupling` (another stream) the cue is
  replaced by the group's own, group % NUM_CUES, so the clip's sound follows its picture."""
  label = int(common.rng_for(seed, "ve8_unlabelled_class", index).integers(len(common.VE8_CLASSES)))
  if coupling > 0 and common.rng_for(seed, "ve8_pool_coupling", index).uniform() < coupling:
    group, _ = class_factors(label)
    label = class_index(group, group % NUM_CUES)
  return label


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """Format of generated clips (not nuisances)."""
  size: int = 64
  fps: int = 10
  sr: int = 16000
  min_duration: float = 2.0
  max_duration: float = 3.0


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
  if shape == "disc":
    return dx * dx + dy * dy <= r * r
  if shape == "square":
    return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
  if shape == "diamond":
    return np.abs(dx) + np.abs(dy) <= 1.2 * r
  if shape == "cross":
    ax, ay = np.abs(dx), np.abs(dy)
    arm = 0.35 * r
    return ((ax <= arm) & (ay <= r)) | ((ay <= arm) & (ax <= r))
  raise ValueError(f"unknown shape {shape!r}")


def render_frames(
    group: int, n_frames: int, spec: ClipSpec, rng: np.random.Generator,
    visible: np.ndarray | None = None,
) -> np.ndarray:
  """uint8 [n_frames, size, size, 3]: one object of the group's family over a nuisance scene;
  `visible` (bool [n_frames]) hides the object in the other frames (same random draws)."""
  s = spec.size
  t = np.arange(n_frames, dtype=np.float32) / spec.fps
  # Scene nuisances: a low-saturation background with a gradient, noise and global brightness.
  base = rng.uniform(40, 190) + rng.uniform(-18, 18, size=3)
  yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
  angle = rng.uniform(0, 2 * np.pi)
  ramp = ((xx - s / 2) * np.cos(angle) + (yy - s / 2) * np.sin(angle)) / s
  bg = base[None, None, :] + rng.uniform(0, 50) * ramp[..., None]
  noise_sigma = rng.uniform(0, 10)
  brightness = rng.uniform(0.6, 1.0)
  # Object nuisances.
  hue = (GROUP_HUES[group] + rng.uniform(-0.04, 0.04)) % 1.0
  color = 255 * np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.75, 1.0)))
  radius = rng.uniform(0.10, 0.18) * s
  amp = rng.uniform(0.15, 0.28) * s
  cx, cy = rng.uniform(0.38, 0.62, size=2) * s
  freq = rng.uniform(0.35, 0.9)  # Hz
  phase = rng.uniform(0, 2 * np.pi)
  direction = rng.choice([-1.0, 1.0])
  w = 2 * np.pi * freq * t * direction + phase
  r_t = np.full_like(t, radius)
  motion = GROUP_MOTIONS[group]
  if motion == "horizontal":
    px, py = cx + amp * np.sin(w), np.full_like(t, cy)
  elif motion == "vertical":
    px, py = np.full_like(t, cx), cy + amp * np.sin(w)
  elif motion == "circle":
    px, py = cx + amp * np.cos(w), cy + amp * np.sin(w)
  else:  # pulse: stays put (with a slow drift) and grows / shrinks.
    drift = rng.uniform(-0.05, 0.05, size=2) * s
    px, py = cx + drift[0] * t, cy + drift[1] * t
    r_t = radius * (1.0 + 0.45 * np.sin(w)) + 0.15 * radius
  dx = xx[None] - px[:, None, None]
  dy = yy[None] - py[:, None, None]
  mask = _shape_mask(GROUP_SHAPES[group], dx, dy, r_t[:, None, None])
  if visible is not None:
    mask = mask & np.asarray(visible, bool)[:, None, None]
  frames = np.where(mask[..., None], color[None, None, None, :], bg[None])
  frames = frames + rng.normal(0, noise_sigma, size=frames.shape)
  return np.clip(frames * brightness, 0, 255).round().astype(np.uint8)


def render_audio(cue: int, n_samples: int, spec: ClipSpec, rng: np.random.Generator,
                 active: tuple[float, float] | None = None) -> np.ndarray:
  """float32 [n_samples] mono waveform in [-1, 1] carrying the audio cue plus nuisances;
  `active` (start, end) seconds keeps the tone there only, with 20 ms ramps (same draws)."""
  sr = spec.sr
  t = np.arange(n_samples, dtype=np.float64) / sr
  if cue == 0:
    f0 = rng.uniform(150, 350)
    tone = (np.sin(2 * np.pi * f0 * t) + 0.5 * np.sin(4 * np.pi * f0 * t + rng.uniform(0, 6.3))
            + 0.25 * np.sin(6 * np.pi * f0 * t + rng.uniform(0, 6.3)))
    env = 1.0 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * t + rng.uniform(0, 6.3))
  else:
    f0 = rng.uniform(1200, 2400)
    tone = np.sin(2 * np.pi * f0 * t) + 0.3 * np.sin(4 * np.pi * f0 * t + rng.uniform(0, 6.3))
    rate, duty = rng.uniform(3, 6), rng.uniform(0.35, 0.6)
    gate = ((t * rate + rng.uniform(0, 1)) % 1.0) < duty
    ramp = max(1, int(0.005 * sr))  # 5 ms ramps avoid clicks that smear the spectrum.
    env = np.convolve(gate.astype(np.float64), np.ones(ramp) / ramp, mode="same")
  onset = int(rng.uniform(0, 0.25) * sr)
  env[:onset] = 0.0
  fade = max(1, int(0.02 * sr))
  env[onset:onset + fade] *= np.linspace(0, 1, min(fade, max(0, n_samples - onset)))
  if active is not None:
    ramp = max(1, int(0.02 * sr))
    window = ((t >= active[0]) & (t < active[1])).astype(np.float64)
    env = env * np.convolve(window, np.ones(ramp) / ramp, mode="same")
  wave = tone * env / 1.75
  gain = rng.uniform(0.15, 0.6)
  noise = rng.normal(0, rng.uniform(0.02, 0.25), size=n_samples)
  return np.clip(gain * (wave + noise), -1, 1).astype(np.float32)


def render_clip(
    label: int, spec: ClipSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """(frames uint8 [N, S, S, 3], audio float32 [N / fps * sr]) for one clip of class `label`."""
  group, cue = class_factors(label)
  duration = rng.uniform(spec.min_duration, spec.max_duration)
  n_frames = max(1, int(round(duration * spec.fps)))
  frames = render_frames(group, n_frames, spec, rng)
  audio = render_audio(cue, int(round(n_frames / spec.fps * spec.sr)), spec, rng)
  return frames, audio


def render_keyframe_clip(
    label: int, spec: ClipSpec, rng: np.random.Generator, span_rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
  """(frames, audio, (start, end) s): a clip whose class cue (object and tone together) is on
  only during one emotional segment of 30-50% of the clip, at a random place; the rest is the
  scene and the audio noise. The segment comes from `span_rng`, the clip from `rng` (as
  render_clip), so the ground truth is independent of the nuisances."""
  group, cue = class_factors(label)
  duration = rng.uniform(spec.min_duration, spec.max_duration)
  n_frames = max(1, int(round(duration * spec.fps)))
  length = span_rng.uniform(0.3, 0.5) * n_frames / spec.fps
  start = span_rng.uniform(0.0, n_frames / spec.fps - length)
  t = np.arange(n_frames) / spec.fps
  frames = render_frames(group, n_frames, spec, rng, visible=(t >= start) & (t < start + length))
  audio = render_audio(cue, int(round(n_frames / spec.fps * spec.sr)), spec, rng,
                       active=(start, start + length))
  return frames, audio, (float(start), float(start + length))


def _make_one(job: tuple) -> tuple[str, float, tuple[float, float] | None]:
  """(path, duration s, emotional segment or None) of one written clip."""
  path, seed, split, label, index, spec, with_subtitles, keyframes = job
  rng = common.rng_for(seed, "ve8", split, label, index)
  span = None
  if keyframes:
    frames, audio, span = render_keyframe_clip(
        label, spec, rng, common.rng_for(seed, "ve8_keyframes", split, label, index))
  else:
    frames, audio = render_clip(label, spec, rng)
  common.write_mp4(path, frames, spec.fps, audio, spec.sr)
  if with_subtitles:  # Own random stream: the clip above is the same with or without.
    subtitles.write_clip_subtitles(
        os.path.splitext(path)[0] + ".srt", label, len(audio) / spec.sr,
        common.rng_for(seed, "ve8_srt", split, label, index))
  return path, len(frames) / spec.fps, span


def _run_jobs(jobs: Sequence[tuple], num_workers: int) -> list:
  if num_workers <= 1 or len(jobs) < 8:
    return [_make_one(job) for job in jobs]
  # spawn: safe whatever the parent imported (JAX, threads); each worker only needs av+numpy.
  ctx = multiprocessing.get_context("spawn")
  with cf.ProcessPoolExecutor(num_workers, mp_context=ctx) as pool:
    return list(pool.map(_make_one, jobs, chunksize=4))


def generate_ve8_style(
    out_dir,
    *,
    seed: int = 0,
    num_train_per_class: int = 40,
    num_test_per_class: int = 10,
    size: int = 64,
    fps: int = 10,
    sr: int = 16000,
    min_duration: float | None = None,
    max_duration: float | None = None,
    num_workers: int | None = None,
    verbose: bool = True,
    with_subtitles: bool = False,
    num_unlabelled: int | None = None,
    keyframes: bool = False,
    pool_coupling: float = POOL_COUPLING,
) -> str:
  """Writes a VE-8-style dataset (mp4 + classInd.txt + splits/*01.txt) into `out_dir`.

  `with_subtitles` also writes "<split>_<i>.srt" beside each mp4 and `vocab.txt` and
  `lexicon.tsv` at the top (MART's text inputs, synthetic/subtitles.py); the mp4s and split
  lists are the same bytes either way. Off by default, so existing datasets keep their
  parameters (the DONE marker names `with_subtitles` only when it is on).

  `num_unlabelled` clips (default: 5x the train split with subtitles, else none) go to
  `unlabelled/clip_<i>.mp4` (with their .srt when `with_subtitles`), outside the class
  folders and split lists: an unlabelled pretraining pool from the same world, each clip of a
  class drawn from its own random stream by `pool_class`: its audio cue follows its visual
  group with probability `pool_coupling` (the module docstring says why), else uniform (the
  DONE marker names the pool's size when > 0, and `pool_coupling` when > 0 too, so a pool of
  another coupling is never reused; 0 = the independent pool of earlier versions). The
  labelled clips do not depend on `pool_coupling`.

  `keyframes` renders every labelled clip with its cue on during one emotional segment only
  (render_keyframe_clip; clips 4-6 s unless the durations are given) and writes the segments
  as `keyframes.json` (ActivityNet format: database/<key>/{subset, duration, annotations:
  [{segment: [s, e], label: "keyframe"}]}): CTEN's weakly supervised detection targets.

  Deterministic in `seed` (byte-identical mp4s). Idempotent: a `DONE` marker with the
  parameters makes a repeated call a no-op; other parameters into a used directory raise.
  Files are named "<split>_<i>.mp4" in every class folder, so basenames repeat across classes
  (as in real VE-8) and keys must include the class. `num_workers` (default: usable CPUs, at
  most 8) > 1 renders in spawned processes, so call it from a `__main__`-guarded script.
  Returns `out_dir`.
  """
  if min_duration is None:
    min_duration = 4.0 if keyframes else 2.0
  if max_duration is None:
    max_duration = 6.0 if keyframes else 3.0
  spec = ClipSpec(size=size, fps=fps, sr=sr, min_duration=min_duration, max_duration=max_duration)
  if size % 2:
    raise ValueError(f"size must be even (yuv420p), got {size}")
  if not 0 < min_duration <= max_duration:
    raise ValueError(f"need 0 < min_duration <= max_duration, got {min_duration}, {max_duration}")
  params = dict(
      generator="ve8_style", version=GENERATOR_VERSION, seed=int(seed),
      num_train_per_class=int(num_train_per_class), num_test_per_class=int(num_test_per_class),
      **dataclasses.asdict(spec),
  )
  if with_subtitles:
    params["with_subtitles"] = True
  if keyframes:
    params["keyframes"] = True
  if num_unlabelled is None:
    num_unlabelled = UNLABELLED_FACTOR * len(common.VE8_CLASSES) * num_train_per_class \
        if with_subtitles else 0
  if num_unlabelled < 0:
    raise ValueError(f"num_unlabelled must be >= 0, got {num_unlabelled}")
  if not 0.0 <= pool_coupling <= 1.0:
    raise ValueError(f"pool_coupling must be in [0, 1], got {pool_coupling}")
  if num_unlabelled:
    params["num_unlabelled"] = int(num_unlabelled)
    if pool_coupling > 0:
      params["pool_coupling"] = float(pool_coupling)
  out_dir = os.fspath(out_dir)
  if common.begin_output(out_dir, params):
    if verbose:
      print(f"{out_dir}: already generated with these parameters; nothing to do.")
    return out_dir
  start = time.time()
  jobs, train, test, job_keys = [], [], [], []
  for label, name in enumerate(common.VE8_CLASSES):
    os.makedirs(os.path.join(out_dir, name), exist_ok=True)
    for split, count, listing in (("train", num_train_per_class, train),
                                  ("test", num_test_per_class, test)):
      for i in range(count):
        key = f"{name}/{split}_{i:04d}"
        listing.append((key, label))
        job_keys.append((key, split))
        jobs.append((os.path.join(out_dir, key + ".mp4"), int(seed), split, label, i, spec,
                     bool(with_subtitles), bool(keyframes)))
  if num_unlabelled:
    os.makedirs(os.path.join(out_dir, UNLABELLED_DIR), exist_ok=True)
  for i in range(num_unlabelled):
    label = pool_class(seed, i, pool_coupling)
    jobs.append((os.path.join(out_dir, UNLABELLED_DIR, f"clip_{i:05d}.mp4"), int(seed),
                 UNLABELLED_DIR, label, i, spec, bool(with_subtitles), False))
  if num_workers is None:
    num_workers = min(len(os.sched_getaffinity(0)), 8)
  made = _run_jobs(jobs, num_workers)
  if keyframes:
    database = {k: {"subset": sp, "duration": round(dur, 6),
                    "annotations": [{"segment": [round(span[0], 6), round(span[1], 6)],
                                     "label": KEYFRAME_LABEL}]}
                for (k, sp), (_, dur, span) in zip(job_keys, made)}  # labelled jobs come first
    with open(os.path.join(out_dir, KEYFRAMES_FILE), "w") as f:
      json.dump({"database": database}, f, indent=1, sort_keys=True)
  common.write_ve8_annotations(out_dir, common.VE8_CLASSES, train, test, split=1)
  if with_subtitles:
    subtitles.write_vocab(out_dir)
    subtitles.write_lexicon(out_dir)
  common.finish_output(out_dir, params)
  if verbose:
    print(f"{out_dir}: wrote {len(jobs)} clips ({len(train)} train, {len(test)} test, "
          f"{num_unlabelled} unlabelled) in {time.time() - start:.1f} s")
  return out_dir
