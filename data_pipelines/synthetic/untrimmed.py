"""Synthetic TSL-300: untrimmed videos with positive/negative sentiment segments, as features.

Writes the release layout of TSL-Net's TSL-300 directly under
`out_dir` (the `dataset/VideoSenti/` root), which the `tsl300` builder reads:

  split_train.txt, split_test.txt      one video id per line ("{i}_Synthetic_{11-char id}")
  gt.json                              ActivityNet style {"database": {vid: {"subset": ...,
                                       "annotations": [{"segment": ["s", "e"], "label": "n"}]}}}
                                       (label "n" or "p"), times in seconds as strings; train
                                       annotations emptied
  videosenti_gt.json                   the same with the full train and test annotations
  fps_dict.json, len_duration_dict.json, time.json (test videos only)
  point_gaussian/train/point_anno_{0,1,2}.txt
                                       CSV "class,class_index,start_frame,stop_frame,video_id,point"
                                       (n -> 0, p -> 1; point = native-fps frame index inside the
                                       segment; one file per annotator; each annotator misses some
                                       segments and sometimes clicks twice in a long one)
  features/{train,test}/rgb/<vid>.npy       float32 [T_rgb, 1024], one row per 16 frames
  features/{train,test}/logmfcc/<vid>.npy   float32 [N_mel, 60] log-mel in dB (-80..0)

Timing follows the real extraction: a video of n frames at fps (25, 29.97 or 30) has
T_rgb = ceil(n / 16) rows, and its audio, resampled to sr = int(fps / 19.9167 * 40812.26) Hz with
hop 1024, gives N_mel = 1 + floor(n * sr / fps / 1024) (about 2.001 frames per video frame, so
32 per snippet, drifting slowly as in the release). The loader's T = min(T_rgb, N_mel // 32)
lies in [min_snippets, max_snippets]; all segments and points lie inside the first T snippets.

The world (fixed per seed): four orthonormal directions in the 1024-d rgb space: u_n, u_p (the
classes), u_s (shared "something affective happens") and u_d (a distractor). Per video:
  rgb   = per-video mean (nuisance) + AR(1) noise (rho 0.6) + mean shifts at 0-3 scene cuts
          + on segments: envelope x (a_c u_c + a_s u_s), envelope with 2-snippet ramps
            at the edges, partial coverage at frame-level edges and a slow wobble
          + on background distractor events: envelope x (a_d u_d + 0.6 a_s u_s
            + 0.25 a_c u_other-or-same class)
  audio = per-video spectral profile + per-frame noise + background speech bursts everywhere
          + on ~70% of segments (onset lag -0.3..+0.6 s): a bursty class band boost
            (n: low bins 6..18, p: high bins 38..52) of `audio_db` dB
          + background music bursts boosting a random one of those bands (audio distractor).
So the rgb class directions are the strong cue, audio a weaker, partly different one, and
change/energy detectors are fooled by scene cuts and distractors. Measured with the defaults
(seed 0, 160/40 videos) by a rough proxy (logistic regression on the snippets at annotator 0's
points vs snippets > 25 away from any point, multi-threshold grouping, NMS 0.5): average
mAP(tIoU 0.1:0.3) 0.62 (rgb alone 0.61, audio alone 0.25); trained on the full segment labels
instead, about 0.9. With rgb_snr 4 the point-supervised proxy got 0.36, with 6 0.55.

Every video draws from rng_for(seed, "tsl", i) (points from (seed, "tsl-points", i, annotator)),
so the output is a pure function of the arguments (npy and json bytes are reproducible).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time

import numpy as np

from data_pipelines.synthetic import common

GENERATOR_VERSION = 1
CLASS_NAMES = ("n", "p")           # class_index 0 = negative, 1 = positive; neutral = background
FPS_CHOICES = (25.0, 30000.0 / 1001.0, 30.0)
SNIPPET_FRAMES = 16
MEL_PER_SNIPPET = 32
RGB_DIM = 1024
NUM_MELS = 60
FPS_MIN = 19.9167                  # scripts/2_mp3audio2mfcc.py: sr = int(fps / fps_min * 40812.26)
SR_BASE = 40812.26
HOP = 1024
NUM_ANNOTATORS = 3
POINT_KEEP = (0.95, 0.85, 0.7)     # Chance that annotator v marks a segment.
POINT_HEADER = ("class", "class_index", "start_frame", "stop_frame", "video_id", "point")
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_MIN_GAP = 3                       # Background snippets before, between and after segments.
_RHO = 0.6


@dataclasses.dataclass(frozen=True)
class TSLSpec:
  """Sizes and cue strengths (not nuisances)."""
  min_snippets: int = 48
  max_snippets: int = 256
  min_segments: int = 1
  max_segments: int = 4
  min_segment_snippets: int = 6
  max_segment_snippets: int = 40
  rgb_snr: float = 7.0         # Class-direction amplitude in units of the per-dim noise std.
  audio_db: float = 4.0        # Class band boost in dB (per-frame noise std is 4 dB).
  distractor_rate: float = 1.0  # Background distractor events per 100 snippets (rgb and audio).

  def validate(self) -> None:
    if not 1 <= self.min_segments <= self.max_segments:
      raise ValueError(f"need 1 <= min_segments <= max_segments, got {self.min_segments}, "
                       f"{self.max_segments}")
    if not 2 <= self.min_segment_snippets <= self.max_segment_snippets:
      raise ValueError(f"need 2 <= min_segment_snippets <= max_segment_snippets, got "
                       f"{self.min_segment_snippets}, {self.max_segment_snippets}")
    need = self.min_segment_snippets + 2 * _MIN_GAP
    if not need <= self.min_snippets <= self.max_snippets:
      raise ValueError(f"need {need} <= min_snippets <= max_snippets (room for one segment of "
                       f"min_segment_snippets plus {_MIN_GAP} background snippets on each "
                       f"side), got {self.min_snippets}, {self.max_snippets}")
    if self.rgb_snr < 0 or self.audio_db < 0 or self.distractor_rate < 0:
      raise ValueError("rgb_snr, audio_db and distractor_rate must be >= 0")


@dataclasses.dataclass
class Video:
  index: int
  video_id: str
  subset: str
  fps: float
  num_frames: int
  num_snippets: int                     # T of the loader rule
  segments: list[tuple[int, int, int]]  # (start_frame, end_frame exclusive, class_index)


def mel_rate(fps: float) -> float:
  """Mel frames per video frame of the release's audio extraction (about 2.001)."""
  return int(fps / FPS_MIN * SR_BASE) / fps / HOP


def num_mel_frames(num_frames: int, fps: float) -> int:
  """librosa (center=True) frame count for the audio of `num_frames` video frames."""
  return 1 + int(np.floor(num_frames * mel_rate(fps) + 1e-9))


def loader_snippets(num_frames: int, fps: float) -> int:
  """TSL-Net's T = min(T_rgb, N_mel // 32) for a video of `num_frames` frames."""
  t_rgb = -(-num_frames // SNIPPET_FRAMES)
  return min(t_rgb, num_mel_frames(num_frames, fps) // MEL_PER_SNIPPET)


def world_directions(seed: int) -> dict[str, np.ndarray]:
  """The four orthonormal rgb directions of the world (u_n, u_p, u_s, u_d), float64 [1024]."""
  rng = common.rng_for(seed, "tsl", "world")
  q, _ = np.linalg.qr(rng.standard_normal((RGB_DIM, 4)))
  return dict(n=q[:, 0], p=q[:, 1], s=q[:, 2], d=q[:, 3])


def _plan_video(index: int, subset: str, spec: TSLSpec, rng: np.random.Generator) -> Video:
  name = "".join(rng.choice(list(_ID_ALPHABET), size=11))
  fps = float(FPS_CHOICES[int(rng.integers(len(FPS_CHOICES)))])
  t = int(rng.integers(spec.min_snippets, spec.max_snippets + 1))
  rest = int(rng.integers(0, SNIPPET_FRAMES)) if t < spec.max_snippets else 0
  n_frames = SNIPPET_FRAMES * t + rest
  t_eff = loader_snippets(n_frames, fps)  # t or t + 1
  if t_eff > spec.max_snippets:
    n_frames, t_eff = SNIPPET_FRAMES * t, loader_snippets(SNIPPET_FRAMES * t, fps)
  k = int(rng.integers(spec.min_segments, spec.max_segments + 1))
  lens = rng.integers(spec.min_segment_snippets, spec.max_segment_snippets + 1, size=k)
  while lens.sum() + (len(lens) + 1) * _MIN_GAP > t_eff:
    if len(lens) > 1:
      lens = lens[:-1]
    else:
      lens = np.array([max(spec.min_segment_snippets, t_eff - 2 * _MIN_GAP)])
      break
  k = len(lens)
  free = t_eff - int(lens.sum()) - (k + 1) * _MIN_GAP
  share = np.floor(rng.dirichlet(np.ones(k + 1)) * free).astype(int)
  gaps = _MIN_GAP + share
  pure = rng.uniform() < 0.5  # Half the videos hold one class only (as many real ones do).
  video_cls = int(rng.uniform() < 0.55)
  segments, pos = [], 0
  for j in range(k):
    pos += int(gaps[j])
    cls = video_cls if pure else int(rng.uniform() < 0.55)
    start = SNIPPET_FRAMES * pos + int(rng.integers(0, SNIPPET_FRAMES // 2))
    end = SNIPPET_FRAMES * (pos + int(lens[j])) + int(rng.integers(-SNIPPET_FRAMES // 2,
                                                                   SNIPPET_FRAMES))
    segments.append((start, end, cls))
    pos += int(lens[j])
  return Video(index, f"{index}_Synthetic_{name}", subset, fps, n_frames, t_eff, segments)


def _snippet_envelope(t_len: int, start: int, end: int) -> np.ndarray:
  """Per-snippet strength of a segment [start, end) frames: coverage x 2-snippet edge ramps."""
  lo = np.arange(t_len) * SNIPPET_FRAMES
  cover = np.clip(np.minimum(lo + SNIPPET_FRAMES, end) - np.maximum(lo, start), 0, None)
  cover = cover / SNIPPET_FRAMES
  s0, s1 = start / SNIPPET_FRAMES, end / SNIPPET_FRAMES
  centre = np.arange(t_len) + 0.5
  edge = np.minimum(centre - s0, s1 - centre)  # Distance (snippets) to the nearer edge.
  ramp = np.clip(0.25 + edge / 2.0, 0.25, 1.0)
  return cover * ramp


def _render_rgb(v: Video, t_rgb: int, distractors, spec: TSLSpec, world,
                rng: np.random.Generator) -> np.ndarray:
  sigma = 0.35
  mean = 0.45 + 0.12 * rng.standard_normal(RGB_DIM)
  noise = rng.standard_normal((t_rgb, RGB_DIM))
  for t in range(1, t_rgb):  # AR(1) with unit marginal variance.
    noise[t] = _RHO * noise[t - 1] + np.sqrt(1 - _RHO ** 2) * noise[t]
  x = mean + sigma * noise
  for cut in sorted(rng.integers(1, t_rgb, size=int(rng.integers(0, 4)))):
    shift = rng.standard_normal(RGB_DIM)
    x[cut:] += sigma * spec.rgb_snr * 0.8 * shift / np.linalg.norm(shift)
  a_c, a_s = spec.rgb_snr, 0.5 * spec.rgb_snr
  wobble = 1.0 + 0.15 * np.sin(2 * np.pi * np.arange(t_rgb) / rng.uniform(8, 24)
                               + rng.uniform(0, 2 * np.pi))
  for start, end, cls in v.segments:
    env = _snippet_envelope(t_rgb, start, end) * wobble * rng.uniform(0.75, 1.25)
    x += sigma * env[:, None] * (a_c * world[CLASS_NAMES[cls]] + a_s * world["s"])[None]
  for start, end, cls in distractors:
    env = _snippet_envelope(t_rgb, start, end) * rng.uniform(0.75, 1.25)
    d = spec.rgb_snr * world["d"] + 0.6 * a_s * world["s"] + 0.25 * a_c * world[CLASS_NAMES[cls]]
    x += sigma * env[:, None] * d[None]
  return x.astype(np.float32)


def _band(lo: int, hi: int) -> np.ndarray:
  m = np.arange(NUM_MELS)
  return np.clip(np.minimum(m - lo + 1, hi - m + 1) / 2.0, 0.0, 1.0)


def _bursts(n: int, p_on: float, mean_len: float, rng: np.random.Generator) -> np.ndarray:
  """0/1 Markov on/off gating over n frames with stationary on-probability p_on."""
  mean_off = mean_len * (1 - p_on) / p_on
  # Alternating on/off runs with geometric lengths (enough of them to cover n frames).
  k = 2 * (int(n / (mean_len + mean_off)) + 8)
  on = rng.geometric(1.0 / mean_len, size=k)
  off = rng.geometric(min(1.0, 1.0 / mean_off), size=k)
  first_on = rng.uniform() < p_on
  runs = np.stack([on, off] if first_on else [off, on], axis=1).reshape(-1)
  while runs.sum() < n:  # Rare: extend with more runs.
    runs = np.concatenate([runs, runs])
  state = np.arange(len(runs)) % 2 == (0 if first_on else 1)
  return np.repeat(state, runs)[:n].astype(np.float64)


def _render_audio(v: Video, n_mel: int, distractors, spec: TSLSpec,
                  rng: np.random.Generator) -> np.ndarray:
  m = np.arange(NUM_MELS)
  profile = np.cumsum(rng.normal(0, 1.2, NUM_MELS))
  profile -= np.linspace(profile[0], profile[-1], NUM_MELS)
  base = -30.0 - 22.0 * m / (NUM_MELS - 1) + profile + rng.normal(0, 4.0)
  mel = base[None] + rng.normal(0, 4.0, (n_mel, NUM_MELS))
  formants = sum(np.exp(-0.5 * ((m - c) / w) ** 2)
                 for c, w in ((rng.uniform(6, 12), 3.0), (rng.uniform(18, 28), 4.0),
                              (rng.uniform(32, 40), 4.0)))
  speech = _bursts(n_mel, rng.uniform(0.2, 0.5), rng.uniform(6, 20), rng)
  mel += 8.0 * speech[:, None] * formants[None]
  frame = np.arange(n_mel) / mel_rate(v.fps)  # Video frame index of each mel frame.
  ramp = 0.5 * v.fps  # Half a second.
  bands = (_band(6, 18), _band(38, 52))
  for start, end, cls in v.segments:
    if rng.uniform() >= 0.7:
      continue  # No audible cue on this segment.
    lag = rng.uniform(-0.3, 0.6) * v.fps
    env = np.clip(np.minimum(frame - start - lag, end + lag - frame) / ramp, 0.0, 1.0)
    gate = _bursts(n_mel, 0.7, 8.0, rng)
    mel += spec.audio_db * rng.uniform(0.7, 1.3) * (env * gate)[:, None] * bands[cls][None]
  for start, end, _ in distractors:  # Background music in a random class band.
    env = ((frame >= start) & (frame < end)).astype(np.float64)
    mel += 0.8 * spec.audio_db * env[:, None] * bands[int(rng.integers(2))][None]
  n_music = rng.poisson(spec.distractor_rate * n_mel / (100 * MEL_PER_SNIPPET))
  for _ in range(int(n_music)):
    a = int(rng.integers(0, n_mel))
    b = min(n_mel, a + int(rng.integers(10, 60)))
    mel[a:b] += 0.8 * spec.audio_db * bands[int(rng.integers(2))][None]
  mel = np.minimum(mel, 0.0)
  return np.maximum(mel, mel.max() - 80.0).astype(np.float32)  # power_to_db's top_db = 80


def _plan_distractors(v: Video, spec: TSLSpec, rng: np.random.Generator):
  """Background events (start_frame, end_frame, class leak) inside the gaps, 1 snippet apart."""
  edges = [0] + [x for s, e, _ in v.segments for x in (s, e)] + [SNIPPET_FRAMES * v.num_snippets]
  gaps = [(edges[i], edges[i + 1]) for i in range(0, len(edges), 2)]
  out = []
  n = rng.poisson(spec.distractor_rate * v.num_snippets / 100.0)
  for _ in range(int(n)):
    lo, hi = gaps[int(rng.integers(len(gaps)))]
    lo, hi = lo + SNIPPET_FRAMES, hi - SNIPPET_FRAMES
    length = SNIPPET_FRAMES * int(rng.integers(3, 16))
    if hi - lo < SNIPPET_FRAMES * 3:
      continue
    length = min(length, hi - lo)
    start = int(rng.integers(lo, hi - length + 1))
    out.append((start, start + length, int(rng.integers(2))))
  return out


def _points(v: Video, annotator: int, seed: int) -> list[tuple]:
  """Rows of one annotator's file for one video: (class, class_index, start, stop, vid, point)."""
  rng = common.rng_for(seed, "tsl-points", v.index, annotator)
  rows = []

  def click(start, end, cls):
    length = end - start
    point = start + int(np.clip(rng.normal(0.5, 0.18), 0.02, 0.98) * length)
    point = int(np.clip(point, start, end - 1))
    lo = max(start, point - int(rng.integers(0, 12)))
    hi = min(end - 1, point + int(rng.integers(0, 12)))
    rows.append((CLASS_NAMES[cls], cls, lo, hi, v.video_id, point))

  for start, end, cls in v.segments:
    if rng.uniform() < POINT_KEEP[annotator]:
      click(start, end, cls)
      if end - start >= 20 * SNIPPET_FRAMES and rng.uniform() < 0.3:
        click(start, end, cls)
  if not rows:  # Every annotator marked at least one segment of every video (as in the release).
    click(*v.segments[int(rng.integers(len(v.segments)))])
  rows.sort(key=lambda r: r[5])
  return rows


def _seconds(frame: int, fps: float) -> str:
  return str(round(frame / fps, 3))


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f)
  os.replace(tmp, path)


def _write_npy(path: str, arr: np.ndarray) -> None:
  tmp = path + ".tmp.npy"
  np.save(tmp, arr)
  os.replace(tmp, path)


def generate_tsl_style(out_dir, *, num_train: int = 160, num_test: int = 40, seed: int = 0,
                       min_snippets: int = 48, max_snippets: int = 256, min_segments: int = 1,
                       max_segments: int = 4, min_segment_snippets: int = 6,
                       max_segment_snippets: int = 40, rgb_snr: float = 7.0,
                       audio_db: float = 4.0, distractor_rate: float = 1.0,
                       verbose: bool = True) -> str:
  """Writes a TSL-300-style release (module docstring) with num_train + num_test videos.

  Deterministic in its arguments; idempotent through the DONE marker (other parameters into a
  used directory raise FileExistsError). Video i (1-based) goes to the test split if it is among
  `num_test` indices drawn with the seed; split lists are in ascending i. Returns `out_dir`.
  """
  spec = TSLSpec(min_snippets=int(min_snippets), max_snippets=int(max_snippets),
                 min_segments=int(min_segments), max_segments=int(max_segments),
                 min_segment_snippets=int(min_segment_snippets),
                 max_segment_snippets=int(max_segment_snippets), rgb_snr=float(rgb_snr),
                 audio_db=float(audio_db), distractor_rate=float(distractor_rate))
  spec.validate()
  if num_train < 1 or num_test < 1:
    raise ValueError(f"need num_train >= 1 and num_test >= 1, got {num_train}, {num_test}")
  params = dict(generator="tsl_style", version=GENERATOR_VERSION, seed=int(seed),
                num_train=int(num_train), num_test=int(num_test), **dataclasses.asdict(spec))
  out_dir = os.fspath(out_dir)
  if common.begin_output(out_dir, params):
    if verbose:
      print(f"{out_dir}: already generated with these parameters; nothing to do.")
    return out_dir
  start_time = time.time()
  world = world_directions(seed)
  n = int(num_train) + int(num_test)
  test_idx = set((common.rng_for(seed, "tsl", "split").permutation(n)[:int(num_test)] + 1)
                 .tolist())
  videos = []
  for subset in ("train", "test"):
    for sub in ("rgb", "logmfcc"):
      os.makedirs(os.path.join(out_dir, "features", subset, sub), exist_ok=True)
  for i in range(1, n + 1):
    subset = "test" if i in test_idx else "train"
    rng = common.rng_for(seed, "tsl", i)
    v = _plan_video(i, subset, spec, rng)
    distractors = _plan_distractors(v, spec, rng)
    t_rgb = -(-v.num_frames // SNIPPET_FRAMES)
    rgb = _render_rgb(v, t_rgb, distractors, spec, world, rng)
    mel = _render_audio(v, num_mel_frames(v.num_frames, v.fps), distractors, spec, rng)
    feat = os.path.join(out_dir, "features", subset)
    _write_npy(os.path.join(feat, "rgb", v.video_id + ".npy"), rgb)
    _write_npy(os.path.join(feat, "logmfcc", v.video_id + ".npy"), mel)
    videos.append(v)

  def annotations(v: Video):
    return [dict(segment=[_seconds(s, v.fps), _seconds(e, v.fps)], label=CLASS_NAMES[c])
            for s, e, c in v.segments]

  for subset in ("train", "test"):
    with open(os.path.join(out_dir, f"split_{subset}.txt"), "w") as f:
      f.writelines(v.video_id + "\n" for v in videos if v.subset == subset)
  _write_json(os.path.join(out_dir, "videosenti_gt.json"), {"database": {
      v.video_id: dict(subset=v.subset, annotations=annotations(v)) for v in videos}})
  _write_json(os.path.join(out_dir, "gt.json"), {"database": {
      v.video_id: dict(subset=v.subset,
                       annotations=annotations(v) if v.subset == "test" else [])
      for v in videos}})
  _write_json(os.path.join(out_dir, "fps_dict.json"), {v.video_id: v.fps for v in videos})
  _write_json(os.path.join(out_dir, "len_duration_dict.json"),
              {v.video_id: v.num_frames / v.fps for v in videos})
  _write_json(os.path.join(out_dir, "time.json"),
              {v.video_id: v.num_frames / v.fps for v in videos if v.subset == "test"})
  point_dir = os.path.join(out_dir, "point_gaussian", "train")
  os.makedirs(point_dir, exist_ok=True)
  for a in range(NUM_ANNOTATORS):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(POINT_HEADER)
    for v in videos:
      if v.subset == "train":
        w.writerows(_points(v, a, seed))
    with open(os.path.join(point_dir, f"point_anno_{a}.txt"), "w") as f:
      f.write(buf.getvalue())
  common.finish_output(out_dir, params)
  if verbose:
    print(f"{out_dir}: wrote {num_train} train + {num_test} test TSL-style videos in "
          f"{time.time() - start_time:.1f} s")
  return out_dir
