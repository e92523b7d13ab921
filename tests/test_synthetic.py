"""The synthetic affect world: determinism, idempotence, real-format files, cue structure."""
import colorsys
import filecmp
import json
import os
import re

import av
import numpy as np
import pytest

from data_pipelines import media
from data_pipelines.synthetic import __main__ as cli
from data_pipelines.synthetic import affect_world as aw
from data_pipelines.synthetic import common
from data_pipelines.synthetic import subtitles

TINY = dict(num_train_per_class=2, num_test_per_class=1, size=32, fps=8,
            min_duration=0.5, max_duration=0.9, num_workers=1, verbose=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  out = tmp_path_factory.mktemp("syn") / "a"
  aw.generate_ve8_style(out, seed=3, **TINY)
  return out


def _files(root):
  return sorted(
      os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_same_seed_same_bytes_other_seed_differs(tiny, tmp_path):
  again = tmp_path / "b"
  aw.generate_ve8_style(again, seed=3, **TINY)
  names = _files(tiny)
  assert names == _files(again)
  match, mismatch, errors = filecmp.cmpfiles(tiny, again, names, shallow=False)
  assert not mismatch and not errors and len(match) == len(names)
  other = tmp_path / "c"
  aw.generate_ve8_style(other, seed=4, **TINY)
  mp4s = [n for n in names if n.endswith(".mp4")]
  _, mismatch, _ = filecmp.cmpfiles(tiny, other, mp4s, shallow=False)
  assert len(mismatch) == len(mp4s)


def test_files_decode_with_both_streams(tiny):
  mp4s = [n for n in _files(tiny) if n.endswith(".mp4")]
  assert len(mp4s) == 8 * 3
  for name in mp4s:
    path = os.path.join(tiny, name)
    with av.open(path) as c:
      assert [s.type for s in c.streams] == ["video", "audio"]
      assert c.streams.video[0].codec_context.name == "h264"
      assert c.streams.audio[0].codec_context.name == "aac"
      assert c.streams.audio[0].rate == 16000
    frames, fps = media.read_video_frames(path, short_side=None)
    assert fps == 8 and frames.dtype == np.uint8
    assert frames.shape[1:] == (32, 32, 3) and 4 <= frames.shape[0] <= 8  # 0.5-0.9 s at 8 fps.
    wave = media.read_audio(path, 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert 0.4 * 16000 < wave.size < 1.2 * 16000 and 0 < np.abs(wave).max() <= 1


def test_split_lists_well_formed_and_balanced(tiny):
  with open(tiny / "classInd.txt") as f:
    assert f.read().splitlines() == [f"{i + 1} {c}" for i, c in enumerate(common.VE8_CLASSES)]
  index = {c: i + 1 for i, c in enumerate(common.VE8_CLASSES)}
  with open(tiny / "splits" / "trainlist01.txt") as f:
    train = f.read().splitlines()
  with open(tiny / "splits" / "testlist01.txt") as f:
    test = f.read().splitlines()
  for line in train:
    m = re.fullmatch(r"(\w+)/(\S+) (\d+)", line)
    assert m and index[m[1]] == int(m[3]), line
    assert (tiny / f"{m[1]}/{m[2]}.mp4").is_file()
  for line in test:
    m = re.fullmatch(r"(\w+)/(\S+)", line)
    assert m and m[1] in index and (tiny / f"{line}.mp4").is_file(), line
  train_keys = [line.split()[0] for line in train]
  assert not set(train_keys) & set(test)
  for c in common.VE8_CLASSES:
    assert sum(k.startswith(c + "/") for k in train_keys) == 2
    assert sum(k.startswith(c + "/") for k in test) == 1
  # Basenames repeat across class folders on purpose (keys must carry the class).
  assert len({k.split("/")[1] for k in train_keys}) == 2


def test_idempotent_and_refuses_other_params(tiny, tmp_path, capsys):
  done = tiny / common.DONE_FILE
  mtime = done.stat().st_mtime_ns
  aw.generate_ve8_style(tiny, seed=3, **{**TINY, "verbose": True})
  assert "nothing to do" in capsys.readouterr().out
  assert done.stat().st_mtime_ns == mtime
  with pytest.raises(FileExistsError, match=re.escape(str(tiny))):
    aw.generate_ve8_style(tiny, seed=5, **TINY)
  stranger = tmp_path / "used"
  stranger.mkdir()
  (stranger / "x.txt").write_text("not ours")
  with pytest.raises(FileExistsError, match="not empty"):
    aw.generate_ve8_style(stranger, seed=3, **TINY)


def test_cli_runs_and_reports_conflicts(tmp_path, capsys):
  out = str(tmp_path / "cli")
  args = ["--out", out, "--num-train-per-class", "1", "--num-test-per-class", "0", "--size", "16",
          "--fps", "4", "--min-duration", "0.5", "--max-duration", "0.5", "--num-workers", "1"]
  assert cli.main(args) == 0
  assert len([n for n in _files(out) if n.endswith(".mp4")]) == 8
  assert cli.main(args) == 0
  assert "nothing to do" in capsys.readouterr().out
  assert cli.main(args + ["--seed", "1"]) == 2
  assert out in capsys.readouterr().err


def test_cues_carry_the_class_factors():
  """Object hue names the visual group; the tone's spectral peak names the audio cue."""
  spec = aw.ClipSpec(size=48, fps=8, sr=16000, min_duration=1.0, max_duration=1.0)
  for label in range(8):
    group, cue = aw.class_factors(label)
    assert aw.class_index(group, cue) == label
    for trial in range(3):
      frames, wave = aw.render_clip(label, spec, common.rng_for(11, "cue", label, trial))
      rgb = frames.reshape(-1, 3).astype(np.float64)
      sat = rgb.max(1) - rgb.min(1)
      obj = rgb[sat > 0.5 * sat.max()]  # Background is low-saturation; the object is not.
      r, g, b = obj.mean(0) / 255
      hue = colorsys.rgb_to_hsv(r, g, b)[0]
      dist = [min(abs(hue - h), 1 - abs(hue - h)) for h in aw.GROUP_HUES]
      assert int(np.argmin(dist)) == group, (label, trial, hue)
      spectrum = np.abs(np.fft.rfft(wave))
      peak_hz = np.argmax(spectrum) * spec.sr / len(wave)
      assert (peak_hz < 400) if cue == 0 else (peak_hz > 1000), (label, trial, peak_hz)
  # Polarity table follows VAANet: Anticipation, Joy, Surprise, Trust are positive.
  assert [c for c, p in zip(common.VE8_CLASSES, common.VE8_POLARITY) if p] == [
      "Anticipation", "Joy", "Surprise", "Trust"]


def test_runs_preparing_one_data_dir_take_turns(tmp_path):
  """Two runs started together on a fresh data dir (a sweep, two terminals): the second waits
  on the data dir's prepare lock while the first generates and extracts, then finds it done;
  before the lock they wrote the same temporary files and one failed."""
  import threading
  import time

  from jaxaffect import config_lib
  from jaxaffect import method as methods
  from jaxaffect.data import families
  from jaxaffect.data import video_emotion

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  c = config_lib.sibling_config(os.path.join(root, "configs", "x.py"), "demo.py", "smoke")
  c.dataset.data_dir = str(tmp_path)
  raw = families.raw_dir(video_emotion.FAMILY, c.dataset)
  errors = []

  def prepare():
    try:
      methods.get_method(c).prepare_data()
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  with families.preparing(raw, str(tmp_path)):  # another process holds the lock
    waiting = threading.Thread(target=prepare)
    waiting.start()
    time.sleep(1.0)
    assert waiting.is_alive() and not os.path.exists(raw)
  both = [threading.Thread(target=prepare) for _ in range(2)]
  for t in both:
    t.start()
  for t in [waiting, *both]:
    t.join(timeout=300)
  assert not errors, errors
  assert os.path.exists(os.path.join(raw, common.DONE_FILE))
  train = families.open_source(video_emotion.FAMILY, c.dataset, "train")
  assert len(train) == 16  # 8 classes x 2 clips


def test_pool_sound_follows_picture_and_labelled_clips_do_not_change(tmp_path):
  """The unlabelled pool's audio cue is its visual group's own with probability pool_coupling
  (0: the independent draw of earlier versions); the labelled clips are the same bytes."""
  legacy = [int(common.rng_for(5, "ve8_unlabelled_class", i).integers(8)) for i in range(2000)]
  assert [aw.pool_class(5, i, 0.0) for i in range(2000)] == legacy
  coupled = [aw.class_factors(aw.pool_class(5, i, 1.0)) for i in range(2000)]
  assert all(cue == group % aw.NUM_CUES for group, cue in coupled)
  assert {group for group, _ in coupled} == set(range(aw.NUM_GROUPS))  # groups as before
  assert [g for g, _ in coupled] == [aw.class_factors(c)[0] for c in legacy]
  half = [aw.class_factors(aw.pool_class(5, i, 0.5)) for i in range(2000)]
  assert 0.70 < np.mean([cue == group % 2 for group, cue in half]) < 0.80  # 0.5 + 0.5 / 2
  with pytest.raises(ValueError, match="pool_coupling"):
    aw.generate_ve8_style(tmp_path / "bad", seed=5, **TINY, pool_coupling=1.5)

  kw = dict(TINY, num_train_per_class=1, num_test_per_class=0, size=16, fps=4,
            min_duration=0.5, max_duration=0.5, with_subtitles=True, num_unlabelled=6)
  outs = {p: tmp_path / f"p{p}" for p in (0.0, 1.0)}
  for p, out in outs.items():
    aw.generate_ve8_style(out, seed=5, **kw, pool_coupling=p)
  labelled = [n for n in _files(outs[0.0]) if not n.startswith(aw.UNLABELLED_DIR + os.sep)
              and n.endswith((".mp4", ".srt", ".txt", ".tsv"))]
  assert len([n for n in labelled if n.endswith(".mp4")]) == 8
  _, mismatch, errors = filecmp.cmpfiles(outs[0.0], outs[1.0], labelled, shallow=False)
  assert not mismatch and not errors
  done = {p: json.loads((out / common.DONE_FILE).read_text()) for p, out in outs.items()}
  assert "pool_coupling" not in done[0.0] and done[1.0]["pool_coupling"] == 1.0
  with pytest.raises(FileExistsError):  # an independent pool is never reused as a coupled one
    aw.generate_ve8_style(outs[0.0], seed=5, **kw, pool_coupling=1.0)
  moved = [i for i in range(6) if aw.pool_class(5, i, 1.0) != aw.pool_class(5, i, 0.0)]
  assert moved  # this seed moves some pool clips to their group's cue
  words = {w: c for c, (ws, _, _) in enumerate(subtitles.CLASS_WORDS) for w in ws}
  for i in range(6):
    name = os.path.join(aw.UNLABELLED_DIR, f"clip_{i:05d}")
    same = all(filecmp.cmp(outs[0.0] / (name + e), outs[1.0] / (name + e), shallow=False)
               for e in (".mp4", ".srt"))
    assert same == (i not in moved)
    label = aw.pool_class(5, i, 1.0)  # the subtitles name the (new) class's polarity
    said = [words[w] for w in (outs[1.0] / (name + ".srt")).read_text().split() if w in words]
    assert said and all(common.VE8_POLARITY[c] == common.VE8_POLARITY[label] for c in said)
