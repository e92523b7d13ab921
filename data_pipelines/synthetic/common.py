"""Shared pieces of the synthetic generators: class table, seeded RNGs, mp4 writing, markers.

Every generated item draws from its own RNG keyed by (seed, kind, split, class, index), so the
output does not depend on generation order or worker count, and later generators (untrimmed
clips, subtitles, gait) can reuse the same keys and helpers.
"""
from __future__ import annotations

import json
import os
import zlib
from typing import Any, Sequence

import av
import numpy as np

from jaxaffect.data import emotion_datasets

# The synthetic world is VE-8-style: its classes and polarity are VE-8's.
VE8_CLASSES = emotion_datasets.VE8.class_names
VE8_POLARITY = emotion_datasets.VE8.polarity

DONE_FILE = "DONE"
_PENDING_FILE = ".generating.json"


def _key_int(key: Any) -> int:
  if isinstance(key, (int, np.integer)):
    return int(key)
  return zlib.crc32(str(key).encode("utf-8"))


def rng_for(seed: int, *keys: Any) -> np.random.Generator:
  """An independent generator for one item, from the global seed and item keys (str or int)."""
  return np.random.Generator(
      np.random.PCG64(np.random.SeedSequence([int(seed)] + [_key_int(k) for k in keys]))
  )


def write_mp4(
    path,
    frames: np.ndarray,
    fps: int,
    audio: np.ndarray | None = None,
    sr: int = 16000,
    crf: int = 20,
) -> None:
  """Writes uint8 [N, H, W, 3] frames as H.264 (yuv420p) plus optional mono AAC audio.

  Single-threaded x264 without mbtree keeps the bytes a pure function of the inputs. The file
  appears atomically (written under a temporary name, then renamed).
  """
  path = os.fspath(path)
  frames = np.asarray(frames, np.uint8)
  n, h, w, _ = frames.shape
  if h % 2 or w % 2:
    raise ValueError(f"{path}: yuv420p needs even frame sizes, got {w}x{h}")
  tmp = path + ".tmp.mp4"
  with av.open(tmp, mode="w", format="mp4") as out:
    vs = out.add_stream("libx264", rate=int(fps))
    vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
    # mbtree=0: with x264's default macroblock-tree rate control the bitstream varied from run
    # to run (about 1 in 15 encodes, even single-threaded) on this x264 build; off, it does not.
    vs.options = {
        "crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"
    }
    vs.codec_context.thread_count = 1
    as_ = None
    if audio is not None:
      as_ = out.add_stream("aac", rate=int(sr), layout="mono")
    for i in range(n):
      vf = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
      vf.pts = i
      out.mux(vs.encode(vf))
    out.mux(vs.encode(None))
    if as_ is not None:
      wave = np.clip(np.asarray(audio, np.float32), -1.0, 1.0)
      step = as_.codec_context.frame_size or 1024
      for start in range(0, len(wave), step):
        chunk = wave[start:start + step][None, :]
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
        af.sample_rate = int(sr)
        af.pts = start
        out.mux(as_.encode(af))
      out.mux(as_.encode(None))
  os.replace(tmp, path)


def write_ve8_annotations(
    root,
    classes: Sequence[str],
    train: Sequence[tuple[str, int]],
    test: Sequence[tuple[str, int]],
    split: int = 1,
) -> None:
  """classInd.txt and splits/{train,test}list%02d.txt in the VE-8 release format.

  `train`/`test` hold ("Class/name", 0-based label); train lines carry the 1-based index.
  """
  root = os.fspath(root)
  os.makedirs(os.path.join(root, "splits"), exist_ok=True)
  with open(os.path.join(root, "classInd.txt"), "w") as f:
    f.writelines(f"{i + 1} {c}\n" for i, c in enumerate(classes))
  with open(os.path.join(root, "splits", f"trainlist{split:02d}.txt"), "w") as f:
    f.writelines(f"{key} {label + 1}\n" for key, label in train)
  with open(os.path.join(root, "splits", f"testlist{split:02d}.txt"), "w") as f:
    f.writelines(f"{key}\n" for key, _ in test)


def begin_output(out_dir, params: dict) -> bool:
  """Checks `out_dir` against the requested parameters; True means it is already complete.

  A directory holding a different complete generation, or unrelated files, is an error naming
  it. A directory left by an interrupted run with the same parameters is regenerated in place.
  """
  out_dir = os.fspath(out_dir)
  params = json.loads(json.dumps(params))  # Normalise (tuples -> lists) for comparison.
  done = os.path.join(out_dir, DONE_FILE)
  pending = os.path.join(out_dir, _PENDING_FILE)
  if os.path.exists(done):
    with open(done) as f:
      have = json.load(f)
    if have == params:
      return True
    raise FileExistsError(
        f"{out_dir}: already holds a generation with other parameters "
        f"({have}); requested {params}. Use another --out directory or delete it."
    )
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    same_pending = False
    if os.path.exists(pending):
      with open(pending) as f:
        same_pending = json.load(f) == params
    if not same_pending:
      raise FileExistsError(
          f"{out_dir}: is not empty and holds no generation with these parameters; "
          "use an empty or new directory."
      )
  os.makedirs(out_dir, exist_ok=True)
  with open(pending, "w") as f:
    json.dump(params, f, indent=1, sort_keys=True)
  return False


def finish_output(out_dir, params: dict) -> None:
  """Writes the DONE marker (the parameters as JSON) last, then drops the pending marker."""
  out_dir = os.fspath(out_dir)
  tmp = os.path.join(out_dir, DONE_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(json.loads(json.dumps(params)), f, indent=1, sort_keys=True)
  os.replace(tmp, os.path.join(out_dir, DONE_FILE))
  pending = os.path.join(out_dir, _PENDING_FILE)
  if os.path.exists(pending):
    os.remove(pending)
