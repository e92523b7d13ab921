"""One line for every user mistake in the data (issue #9, item 5), as a table.

Each row of CASES is one mistake: an empty raw folder, a damaged ArrayRecord shard, a non-UTF-8
or truncated file given to an evaluation command. The row checks the exception (its type, and
that the message names the file or folder) and, where a command line reads the input, that the
command exits != 0 with one `error:` line and no traceback. POINT_ROWS are TSL point labels that
are infinite, NaN, negative or after the video's end: skipped and listed, never a crash.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Any, Callable

import numpy as np
import pytest

from data_pipelines.builders import tsl300
from jaxaffect import config_lib
from jaxaffect.data import families
from jaxaffect.data import sources
from jaxaffect.data import video_emotion
from jaxaffect.methods.bpmgcn import data as gp
from jaxaffect.methods.tsl import data as tp
from jaxaffect.errors import UserError
from jaxaffect.evaluation import localization as L
from jaxaffect.tools import aggregate_splits, best_over_evals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_UTF8 = "Émotion".encode("latin-1")  # b"\xc9motion"
GAIT_SMOKE = "configs/bpmgcn_emogait.py:smoke"


@dataclasses.dataclass
class Case:
  call: Callable[[], Any]
  error: type
  names: list[str]              # what the message must name (file, folder)
  cli: list[str] | None = None  # `python -m <cli...>` reading the same input


def _config(spec: str, data_dir, manual_dir=None):
  over = [f"--config.dataset.data_dir={data_dir}"]
  if manual_dir is not None:
    over.append(f"--config.dataset.manual_dir={manual_dir}")
  return config_lib.load(spec, over).dataset


def _main_cli(spec, tmp_path, data_dir, manual_dir=None):
  args = ["jaxaffect.main", "--config", spec, "--workdir", str(tmp_path / "wd"),
          f"--config.dataset.data_dir={data_dir}"]
  return args + ([f"--config.dataset.manual_dir={manual_dir}"] if manual_dir else [])


# ------------------------------------------------------------------------------ empty raw folders


FAMILY = {"configs/vaanet_ve8.py": video_emotion.FAMILY,
          "configs/vaanet_ekman6.py": video_emotion.FAMILY,
          "configs/bpmgcn_emogait.py": gp.FAMILY,
          "configs/tsl_tsl300.py": tp.FAMILY}


def _raw_case(spec, tmp_path, *, dirs=(), files=None, names=(), cli=False):
  raw = tmp_path / "raw"
  raw.mkdir()
  for d in dirs:
    (raw / d).mkdir(parents=True)
  for f, text in (files or {}).items():
    (raw / f).parent.mkdir(parents=True, exist_ok=True)
    (raw / f).write_text(text)
  ds = _config(spec, tmp_path / "data", raw)
  return Case(lambda: families.prepare(FAMILY[spec], ds), UserError, [str(raw), *names],
              _main_cli(spec, tmp_path, tmp_path / "data", raw) if cli else None)


def _tsl_release(vs, extra_points: str = "", features: bool = True):
  """A 3-video TSL-300 release (2 train, 1 test; 6 snippets, 25 fps, 4 s = 100 frames)."""
  vids = {"1_A_x": "train", "2_B_y": "train", "3_C_z": "test"}
  for sub in ("features/train/rgb", "features/train/logmfcc", "features/test/rgb",
              "features/test/logmfcc", "point_gaussian/train"):
    (vs / sub).mkdir(parents=True, exist_ok=True)
  (vs / "split_train.txt").write_text("1_A_x\n2_B_y\n")
  (vs / "split_test.txt").write_text("3_C_z\n")
  full = {"database": {v: {"subset": s, "annotations": [
      {"segment": ["0.5", "2.0"], "label": "p"}]} for v, s in vids.items()}}
  gt = json.loads(json.dumps(full))
  for v, s in vids.items():
    if s == "train":
      gt["database"][v]["annotations"] = []
  (vs / "videosenti_gt.json").write_text(json.dumps(full))
  (vs / "gt.json").write_text(json.dumps(gt))
  (vs / "fps_dict.json").write_text(json.dumps({v: 25.0 for v in vids}))
  (vs / "len_duration_dict.json").write_text(json.dumps({v: 4.0 for v in vids}))
  (vs / "point_gaussian/train/point_anno_0.txt").write_text(
      "class,class_index,start_frame,stop_frame,video_id,point\n"
      "p,1,20,30,1_A_x,25\nn,0,30,40,2_B_y,35\n" + extra_points)
  if features:
    for v, s in vids.items():
      np.save(vs / f"features/{s}/rgb/{v}.npy", np.ones((6, 1024), np.float32))
      np.save(vs / f"features/{s}/logmfcc/{v}.npy", -np.ones((6 * 32, 60), np.float32))
  return vs


def _tsl_without_features(tmp_path, _):
  vs = _tsl_release(tmp_path / "raw", features=False)
  ds = _config("configs/tsl_tsl300.py", tmp_path / "data", vs)
  return Case(lambda: families.prepare(tp.FAMILY, ds), UserError,
              [str(vs / "features" / "train" / "rgb"), "no .npy"])


# ------------------------------------------------------------------------------ damaged shards


@pytest.fixture(scope="module")
def gait_build(tmp_path_factory):
  """The smoke config's synthetic gait set, generated and extracted once (1 s)."""
  data = tmp_path_factory.mktemp("gait_data")
  families.prepare(gp.FAMILY, _config(GAIT_SMOKE, data))
  return data


def _shard(data, split="train") -> str:
  (path,) = glob.glob(os.path.join(data, "tfds", "**", f"*-{split}.array_record-*"),
                      recursive=True)
  return path


def _shard_case(how, *, cli=False, when="open"):
  """A copy of the built gait set with its train shard damaged by `how(bytes) -> bytes`."""
  def make(tmp_path, gait_build):
    data = tmp_path / "data"
    shutil.copytree(gait_build, data)
    path = _shard(data)
    if how is None:
      os.remove(path)
    else:
      with open(path, "rb") as f:
        blob = f.read()
      with open(path, "wb") as f:
        f.write(how(blob))
    ds = _config(GAIT_SMOKE, data)

    def call():
      families.prepare(gp.FAMILY, ds)  # as the trainer does: a finished build is not rebuilt
      src = families.open_source(gp.FAMILY, ds, "train")
      assert when == "read", "the damage should have been found when the source was opened"
      return [src[i] for i in range(len(src))]
    return Case(call, sources.DamagedShard, [path, os.path.dirname(path), "delete"],
                _main_cli(GAIT_SMOKE, tmp_path, data) if cli else None)
  return make


def _dataset_info_truncated(tmp_path, gait_build):
  data = tmp_path / "data"
  shutil.copytree(gait_build, data)
  info = os.path.join(os.path.dirname(_shard(data)), "dataset_info.json")
  with open(info) as f:
    text = f.read()
  with open(info, "w") as f:
    f.write(text[:len(text) // 2])
  ds = _config(GAIT_SMOKE, data)
  return Case(lambda: families.prepare(gp.FAMILY, ds), sources.DamagedShard,
              [info, os.path.dirname(info)])


# ------------------------------------------------------------------------------ evaluator inputs


GT = {"database": {"a": {"subset": "test", "annotations": [{"segment": ["0", "2"],
                                                            "label": "p"}]}}}
PRED = {"results": {"a": [{"segment": [0.0, 2.0], "label": "p", "score": 0.9}]}}


def _localization(which, content):
  def make(tmp_path, _):
    gt, pred = tmp_path / "gt.json", tmp_path / "pred.json"
    gt.write_text(json.dumps(GT))
    pred.write_text(json.dumps(PRED))
    bad = gt if which == "gt" else pred
    bad.write_bytes(content(json.dumps(GT if which == "gt" else PRED)))
    return Case(lambda: L.evaluate_files(str(gt), str(pred), subset="test"),
                L.LocalizationInputError, [str(bad)],
                ["jaxaffect.evaluation.localization", "--ground-truth", str(gt), "--predictions",
                 str(pred), "--subset", "test"])
  return make


def _not_utf8(text: str) -> bytes:
  return text.replace('"p"', '"É"').encode("latin-1")


def _truncated(text: str) -> bytes:
  return text[:len(text) // 2].encode()


def _aggregate(name, content):
  def make(tmp_path, _):
    wd = tmp_path / "split1"
    wd.mkdir()
    (wd / "results.json").write_text(json.dumps({"step": 10, "eval/top1": 0.5}))
    (wd / "config.json").write_text(json.dumps({"total_steps": 10, "dataset": {"split": 1}}))
    (wd / name).write_bytes(content)
    return Case(lambda: aggregate_splits.load_runs([str(wd)], expect=0),
                aggregate_splits.AggregateError, [str(wd / name)],
                ["jaxaffect.tools.aggregate_splits", str(wd), "--expect", "0"])
  return make


def _best(name, content):
  def make(tmp_path, _):
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "metrics.jsonl").write_text('{"step": 10, "eval/top1": 0.5}\n')
    (wd / "results.json").write_text(json.dumps({"step": 10, "eval/top1": 0.5}))
    (wd / name).write_bytes(content)
    return Case(lambda: best_over_evals.best_over_evals(str(wd)), best_over_evals.HistoryError,
                [str(wd / name)], ["jaxaffect.tools.best_over_evals", str(wd)])
  return make


CLASS_DIRS_NO_VIDEO = dict(dirs=("Anger", "Joy", "splits"), files={
    "splits/trainlist01.txt": "Anger/a 1\n", "splits/testlist01.txt": "Joy/b\n",
    "Anger/a.txt": "not a video"})
CASES = {
    # An empty raw folder, or one without the files the dataset needs.
    "ve8_empty_folder": lambda t, _: _raw_case("configs/vaanet_ve8.py", t, cli=True,
                                               names=["empty", "Anger"]),
    "ve8_class_folders_without_videos": lambda t, _: _raw_case(
        "configs/vaanet_ve8.py", t, names=["no video file"], **CLASS_DIRS_NO_VIDEO),
    "ekman6_class_folders_without_videos": lambda t, _: _raw_case(
        "configs/vaanet_ekman6.py", t, dirs=("anger", "joy"), names=["no video file"]),
    "gait_empty_folder": lambda t, _: _raw_case("configs/bpmgcn_emogait.py", t, cli=True,
                                                names=["empty", "features.h5"]),
    "gait_folder_without_h5": lambda t, _: _raw_case(
        "configs/bpmgcn_emogait.py", t, files={"README.txt": "x"}, names=["features.h5"]),
    "tsl_empty_folder": lambda t, _: _raw_case("configs/tsl_tsl300.py", t, cli=True,
                                               names=["empty", "split_train.txt"]),
    "tsl_release_without_features": _tsl_without_features,
    # A damaged extraction: found when the split is opened, or when the record is read.
    "shard_truncated": _shard_case(lambda b: b[:len(b) // 2]),
    "shard_overwritten_with_garbage": _shard_case(
        lambda b: np.random.default_rng(0).bytes(len(b)), cli=True),
    "shard_empty": _shard_case(lambda b: b""),
    "shard_deleted": _shard_case(None),
    "shard_damaged_inside_a_record": _shard_case(
        lambda b: b[:1000] + np.random.default_rng(1).bytes(4000) + b[5000:], when="read"),
    "dataset_info_truncated": _dataset_info_truncated,
    # Files given to the evaluation commands.
    "localization_gt_not_utf8": _localization("gt", _not_utf8),
    "localization_gt_truncated": _localization("gt", _truncated),
    "localization_predictions_not_utf8": _localization("pred", _not_utf8),
    "localization_predictions_truncated": _localization("pred", _truncated),
    "aggregate_results_not_utf8": _aggregate("results.json", b'{"eval/top1": 0.5, "x": "\xc9"}'),
    "aggregate_config_truncated": _aggregate("config.json", b'{"total_steps": 10, "data'),
    "best_over_evals_metrics_not_utf8": _best("metrics.jsonl",
                                              b'{"step": 10, "eval/top1": 0.5, "n": "\xc9"}\n'),
    "best_over_evals_results_truncated": _best("results.json", b'{"step": 10, "eval/to'),
}


def _error_lines(stderr: str, main: bool) -> list[str]:
  lines = [l for l in stderr.splitlines() if l.strip()]
  if main:  # main may log (absl "I1127 12:00:00.0 ...") before it fails
    lines = [l for l in lines if not re.match(r"[IW]\d{4} ", l)]
  return lines


@pytest.mark.parametrize("name", list(CASES))
def test_one_line_naming_the_file(name, tmp_path, gait_build):
  case = CASES[name](tmp_path, gait_build)
  with pytest.raises(case.error) as e:
    case.call()
  msg = str(e.value)
  assert "\n" not in msg, msg
  for want in case.names:
    assert want in msg, (want, msg)
  if case.cli is None:
    return
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, "-m", *case.cli], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode != 0
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  lines = _error_lines(r.stderr, case.cli[0] == "jaxaffect.main")
  assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
  for want in case.names:
    assert want in lines[0], (want, lines[0])


def test_deleting_the_named_folder_rebuilds(tmp_path, gait_build):
  data = tmp_path / "data"
  shutil.copytree(gait_build, data)
  ds = _config(GAIT_SMOKE, data)
  n = len(families.open_source(gp.FAMILY, ds, "train"))
  with open(_shard(data), "r+b") as f:
    f.truncate(1000)
  with pytest.raises(sources.DamagedShard) as e:
    families.open_source(gp.FAMILY, ds, "train")
  folder = re.search(r"; delete (\S+) and rerun", str(e.value)).group(1)
  shutil.rmtree(folder)
  families.prepare(gp.FAMILY, ds)
  src = families.open_source(gp.FAMILY, ds, "train")
  assert len(src) == n and all(src[i]["num_frames"] > 0 for i in range(n))


def test_damage_found_in_a_grain_worker_is_the_same_one_line_error(tmp_path, gait_build):
  data = tmp_path / "data"
  shutil.copytree(gait_build, data)
  ds = _config(GAIT_SMOKE, data)
  src = families.open_source(gp.FAMILY, ds, "train")
  with open(_shard(data), "r+b") as f:
    f.seek(1000)
    f.write(np.random.default_rng(2).bytes(4000))
  it = iter(gp.train_dataset(src, seed=0, global_batch_size=4, process_index=0, process_count=1,
                             worker_count=1))
  with pytest.raises(sources.DamagedShard, match=re.escape(_shard(data))):
    for _ in range(len(src)):
      next(it)


# ------------------------------------------------------------------------------ TSL point rows


POINT_ROWS = {  # point value -> what the note says
    "inf": "not a frame index",
    "-inf": "not a frame index",
    "nan": "not a frame index",
    "-5": "not a frame index",
    "1e30": "not a frame index",
    "101": "after the end of video '1_A_x' (100 frames",
}


@pytest.mark.parametrize("point", list(POINT_ROWS))
def test_bad_tsl_point_is_skipped_and_listed(point, tmp_path):
  vs = _tsl_release(tmp_path / "VideoSenti", f"p,1,0,1,1_A_x,{point}\n")
  meta = tsl300.read_meta(str(vs))
  assert meta.points["1_A_x"] == [(0, 25, 1)] and meta.points_per_annotator[0] == 2
  notes = [n for n in meta.notes if "point_anno_0.txt:4: point row skipped" in n]
  assert len(notes) == 1 and POINT_ROWS[point] in notes[0], meta.notes


def test_bad_tsl_points_are_listed_in_the_manifest(tmp_path):
  rows = "".join(f"p,1,0,1,1_A_x,{p}\n" for p in POINT_ROWS) + "n,0,90,99,1_A_x,99\n"
  vs = _tsl_release(tmp_path / "VideoSenti", rows)
  b = tsl300.build_tsl300(vs, tmp_path / "tfds", progress=False)
  m = tsl300.load_manifest(b)
  skipped = [n for n in m["notes"] if "point row skipped" in n]
  assert [n.split(": point row")[0].rsplit(":", 1)[1] for n in skipped] == [
      str(4 + i) for i in range(len(POINT_ROWS))]
  src = b.as_data_source("train")
  points = {r["video_id"].decode(): r["points"].tolist() for r in (src[i] for i in range(2))}
  # Frame 99 is inside the 100-frame video but after the 6 snippets of features: kept, counted.
  assert points["1_A_x"] == [[0, 25, 1], [0, 99, 0]]
  assert m["splits"]["train"]["points_beyond_features"] == 1
