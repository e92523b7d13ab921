"""TSL-300 data: synthetic untrimmed features, the `tsl300` builder and the bucketed pipeline."""
import csv
import hashlib
import json
import os

import ml_collections
import numpy as np
import pytest

from data_pipelines.builders import tsl300
from data_pipelines.synthetic import __main__ as cli
from data_pipelines.synthetic import common
from data_pipelines.synthetic import untrimmed
from jaxaffect.data import families
from jaxaffect.methods.tsl import data as tp
from jaxaffect.errors import UserError

TINY = dict(num_train=6, num_test=3, min_snippets=30, max_snippets=90, max_segment_snippets=14,
            verbose=False)


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, fs in os.walk(root) for f in fs)


def _digest(root):
  return {n: hashlib.sha256(open(os.path.join(root, n), "rb").read()).hexdigest()
          for n in _files(root)}


def _json(path):
  with open(path) as f:
    return json.load(f)


def _point_rows(root, a):
  with open(os.path.join(root, "point_gaussian", "train", f"point_anno_{a}.txt")) as f:
    return list(csv.reader(f))


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
  return untrimmed.generate_tsl_style(tmp_path_factory.mktemp("tsl") / "VideoSenti", seed=3,
                                      **TINY)


@pytest.fixture(scope="module")
def built(syn, tmp_path_factory):
  return tsl300.build_tsl300(syn, tmp_path_factory.mktemp("tfds"), progress=False)


# ------------------------------------------------------------------------------ synthetic


def test_synthetic_is_deterministic_and_in_release_layout(syn, tmp_path):
  again = untrimmed.generate_tsl_style(tmp_path / "b", seed=3, **TINY)
  other = untrimmed.generate_tsl_style(tmp_path / "c", seed=4, **TINY)
  assert _digest(syn) == _digest(again) != _digest(other)
  untrimmed.generate_tsl_style(syn, seed=3, **TINY)  # no-op
  with pytest.raises(FileExistsError):
    untrimmed.generate_tsl_style(syn, seed=5, **TINY)
  train = open(os.path.join(syn, "split_train.txt")).read().split()
  test = open(os.path.join(syn, "split_test.txt")).read().split()
  assert (len(train), len(test)) == (6, 3) and not set(train) & set(test)
  assert all(v.split("_")[1] == "Synthetic" and int(v.split("_")[0]) >= 1 for v in train + test)
  expected = {common.DONE_FILE, "split_train.txt", "split_test.txt", "gt.json",
              "videosenti_gt.json", "fps_dict.json", "len_duration_dict.json", "time.json"}
  expected |= {f"point_gaussian/train/point_anno_{a}.txt" for a in range(3)}
  for split, vids in (("train", train), ("test", test)):
    expected |= {f"features/{split}/{m}/{v}.npy" for v in vids for m in ("rgb", "logmfcc")}
  assert set(_files(syn)) == expected

  full = _json(os.path.join(syn, "videosenti_gt.json"))["database"]
  gt = _json(os.path.join(syn, "gt.json"))["database"]
  fps = _json(os.path.join(syn, "fps_dict.json"))
  dur = _json(os.path.join(syn, "len_duration_dict.json"))
  assert set(full) == set(gt) == set(fps) == set(dur) == set(train) | set(test)
  assert set(_json(os.path.join(syn, "time.json"))) == set(test)
  for v in train:
    assert gt[v] == dict(subset="train", annotations=[]) and full[v]["annotations"]
  for v in test:
    assert gt[v] == full[v] and full[v]["subset"] == "test"
  for v in train + test:
    assert fps[v] in untrimmed.FPS_CHOICES
    split = "train" if v in train else "test"
    rgb = np.load(os.path.join(syn, "features", split, "rgb", v + ".npy"))
    mel = np.load(os.path.join(syn, "features", split, "logmfcc", v + ".npy"))
    frames = round(dur[v] * fps[v])
    assert rgb.dtype == mel.dtype == np.float32 and rgb.shape == (-(-frames // 16), 1024)
    assert mel.shape == (untrimmed.num_mel_frames(frames, fps[v]), 60)
    assert -80.0 <= mel.min() and mel.max() <= 0.0 and mel.max() - mel.min() > 20
    t = min(len(rgb), len(mel) // 32)
    assert 30 <= t <= 90 and abs(len(mel) - 32 * len(rgb)) < 40
    for a in full[v]["annotations"]:
      s, e = a["segment"]
      assert isinstance(s, str) and 0 <= float(s) < float(e) <= t * 16 / fps[v]
      assert a["label"] in ("n", "p")

  segs = {v: [(float(a["segment"][0]) * fps[v], float(a["segment"][1]) * fps[v], a["label"])
              for a in full[v]["annotations"]] for v in train}
  per_annotator = []
  for a in range(3):
    rows = _point_rows(syn, a)
    assert rows[0] == list(untrimmed.POINT_HEADER)
    marked = set()
    for cls, idx, start, stop, vid, point in rows[1:]:
      assert vid in train and int(idx) == "np".index(cls)
      assert int(start) <= int(point) <= int(stop)
      hit = [j for j, (s, e, c) in enumerate(segs[vid]) if s - 1 <= int(point) <= e and c == cls]
      assert len(hit) == 1  # Inside exactly one segment of the same class.
      marked.add((vid, hit[0]))
    assert {v for v, _ in marked} == set(train)  # Every annotator marks every video ...
    per_annotator.append(len(marked))
  assert min(per_annotator) < sum(len(s) for s in segs.values())  # ... but misses segments.


def test_synthetic_cues_carry_the_class():
  """rgb: segments project on their class direction; audio: the class band energy rises."""
  world = untrimmed.world_directions(0)
  spec = untrimmed.TSLSpec()
  proj = {0: [], 1: [], "bg": []}
  band = {0: [], 1: []}
  for i in range(12):
    rng = common.rng_for(0, "tsl", i)
    v = untrimmed._plan_video(i, "train", spec, rng)  # pylint: disable=protected-access
    t_rgb = -(-v.num_frames // 16)
    rgb = untrimmed._render_rgb(v, t_rgb, [], spec, world, rng)  # pylint: disable=protected-access
    mel = untrimmed._render_audio(  # pylint: disable=protected-access
        v, untrimmed.num_mel_frames(v.num_frames, v.fps), [], spec, rng)
    inside = np.zeros(t_rgb, bool)
    for s, e, _ in v.segments:
      inside[s // 16:e // 16 + 1] = True
    ref = rgb[~inside].mean(0)
    mel_ref = mel[:, 6:18].mean() - mel[:, 38:52].mean()
    for s, e, c in v.segments:
      core = slice(s // 16 + 2, e // 16 - 1)
      if core.stop - core.start < 2:
        continue
      d = rgb[core] - ref
      proj[c].append(float((d @ world["n"] - d @ world["p"]).mean()))
      m = mel[32 * core.start:32 * core.stop]
      band[c].append(float(m[:, 6:18].mean() - m[:, 38:52].mean() - mel_ref))
    d = rgb[~inside] - ref
    proj["bg"].append(float(np.abs(d @ world["n"] - d @ world["p"]).mean()))
  assert np.mean(proj[0]) > 1.5 and np.mean(proj[1]) < -1.5 and np.mean(proj["bg"]) < 1.0
  assert np.mean(band[0]) > 0.5 and np.mean(band[1]) < -0.5


def test_cli_tsl(tmp_path, capsys):
  out = str(tmp_path / "cli")
  args = ["--tsl", "--out", out, "--num-train", "2", "--num-test", "1", "--min-snippets", "20",
          "--max-snippets", "30"]
  assert cli.main(args) == 0
  assert len(open(os.path.join(out, "split_train.txt")).read().split()) == 2
  assert cli.main(args + ["--seed", "1"]) == 2
  assert out in capsys.readouterr().err
  assert cli.main(args + ["--gait"]) == 2


# ------------------------------------------------------------------------------ builder


def _records(builder, split):
  src = builder.as_data_source(split)
  return {r["video_id"].decode(): r for r in (src[i] for i in range(len(src)))}


def test_builder_reads_back_the_synthetic_release(syn, built):
  m = tsl300.load_manifest(built)
  assert m["skipped"] == [] and m["splits"]["train"]["num_examples"] == 6
  assert m["splits"]["test"]["num_examples"] == 3 and m["contract"]["rgb_dim"] == 1024
  full = _json(os.path.join(syn, "videosenti_gt.json"))["database"]
  fps = _json(os.path.join(syn, "fps_dict.json"))
  dur = _json(os.path.join(syn, "len_duration_dict.json"))
  rows = {a: _point_rows(syn, a)[1:] for a in range(3)}
  for split in ("train", "test"):
    recs = _records(built, split)
    assert sorted(recs) == sorted(open(os.path.join(syn, f"split_{split}.txt")).read().split())
    for vid, r in recs.items():
      rgb = np.load(os.path.join(syn, "features", split, "rgb", vid + ".npy"))
      mel = np.load(os.path.join(syn, "features", split, "logmfcc", vid + ".npy"))
      t = min(len(rgb), len(mel) // 32)
      assert r["num_snippets"] == t and r["rgb"].shape == (t, 1024)
      np.testing.assert_array_equal(r["rgb"], rgb[:t])
      np.testing.assert_array_equal(r["logmel"], mel[:32 * t].reshape(t, 32, 60))  # raw dB
      assert r["fps"] == np.float32(fps[vid]) and r["duration"] == np.float32(dur[vid])
      want = [(a, int(row[5]), int(row[1])) for a in range(3) for row in rows[a] if row[4] == vid]
      assert r["points"].dtype == np.int32 and r["points"].shape == (len(want), 3)
      assert [tuple(p) for p in r["points"].tolist()] == want
      assert (len(want) > 0) == (split == "train")
      anns = full[vid]["annotations"]
      np.testing.assert_allclose(r["segments"], [[float(x) for x in a["segment"]] for a in anns],
                                 rtol=1e-6)
      assert r["segment_labels"].tolist() == ["np".index(a["label"]) for a in anns]
  assert tsl300.build_tsl300(syn, os.path.dirname(os.path.dirname(os.path.dirname(
      built.data_dir))), build=False).data_dir == built.data_dir
  with pytest.raises(tsl300.TSLConfigError, match="num_mel"):
    tsl300.build_tsl300(syn, "/nonexistent", dict(num_mel=64))


def _write_release(root, *, gt_text=None):
  """A hand-written 4-video release (2 train, 2 test) inside root/dataset/VideoSenti."""
  vs = root / "dataset" / "VideoSenti"
  for sub in ("features/train/rgb", "features/train/logmfcc", "features/test/rgb",
              "features/test/logmfcc", "point_gaussian/train"):
    (vs / sub).mkdir(parents=True, exist_ok=True)
  (vs / "split_train.txt").write_text("1_A_x\n2_B_y\n")
  (vs / "split_test.txt").write_text("3_C_z\n4_D_w\n")
  db = {"1_A_x": ("train", [["0.5", "2.25", "p"], ["3", "4.0", "n"]]),
        "2_B_y": ("train", [["1.0", "1.5", "n"]]),
        "3_C_z": ("test", [["0.2", "1.8", "p"]]), "4_D_w": ("test", [])}
  full = {"database": {v: {"subset": s, "annotations": [{"segment": [a, b], "label": c}
                                                        for a, b, c in anns]}
                       for v, (s, anns) in db.items()}}
  gt = json.loads(json.dumps(full))
  for v, (s, _) in db.items():
    if s == "train":
      gt["database"][v]["annotations"] = []
  (vs / "videosenti_gt.json").write_text(json.dumps(full))
  (vs / "gt.json").write_text(gt_text if gt_text is not None else json.dumps(gt))
  (vs / "fps_dict.json").write_text(json.dumps({"1_A_x": 25.0, "2_B_y": 30.0, "3_C_z": 24.0,
                                                "4_D_w": 30.0}))
  (vs / "len_duration_dict.json").write_text(json.dumps({"1_A_x": 20.0, "2_B_y": 3.0,
                                                         "3_C_z": 2.0, "4_D_w": 2.0}))
  header = "class,class_index,start_frame,stop_frame,video_id,point\n"
  (vs / "point_gaussian/train/point_anno_0.txt").write_text(
      header + "p,1,20,30,1_A_x,25\nn,0,80,90,1_A_x,85\nn,0,30,40,2_B_y,35\n")
  (vs / "point_gaussian/train/point_anno_1.txt").write_text(
      header + "p,1,40,50,1_A_x,45\np,0,1,2,1_A_x,2\n")  # second row malformed (p with 0)
  (vs / "point_gaussian/train/point_anno_2.txt").write_text(header + "n,0,70,99,1_A_x,400\n")
  rgb1 = np.arange(8 * 1024, dtype=np.float32).reshape(8, 1024)  # T_rgb 8 ...
  mel1 = np.linspace(-80, 0, 7 * 32 * 60 + 5 * 60, dtype=np.float32).reshape(-1, 60)  # ... 7
  np.save(vs / "features/train/rgb/1_A_x.npy", rgb1)
  np.save(vs / "features/train/logmfcc/1_A_x.npy", mel1)
  np.save(vs / "features/train/rgb/2_B_y.npy", np.ones((5, 1024), np.float64))  # no logmfcc
  np.save(vs / "features/test/rgb/3_C_z.npy", np.ones((3, 1024), np.float32))  # T_rgb 3 ...
  np.save(vs / "features/test/logmfcc/3_C_z.npy", -np.ones((4 * 32, 60), np.float32))  # ... 4
  (vs / "features/test/rgb/4_D_w.npy").write_bytes(b"\x93NUMPY garbage")  # corrupt
  np.save(vs / "features/test/logmfcc/4_D_w.npy", -np.ones((4 * 32, 60), np.float32))
  return vs


def test_builder_on_a_hand_written_release(tmp_path):
  vs = _write_release(tmp_path / "raw")
  b = tsl300.build_tsl300(tmp_path / "raw", tmp_path / "tfds", progress=False)
  m = tsl300.load_manifest(b)
  assert [(s["split"], s["video_id"]) for s in m["skipped"]] == [("train", "2_B_y"),
                                                                  ("test", "4_D_w")]
  assert "logmfcc" in m["skipped"][0]["reason"] and "2_B_y.npy" in m["skipped"][0]["reason"]
  assert "rgb/4_D_w.npy: unreadable" in m["skipped"][1]["reason"]
  assert any("point_anno_1.txt:3" in n for n in m["notes"])
  assert any(str(vs) in n for n in m["notes"])  # the release root found under dataset/
  assert m["splits"]["train"]["points_beyond_features"] == 1
  train, test = _records(b, "train"), _records(b, "test")
  assert set(train) == {"1_A_x"} and set(test) == {"3_C_z"}
  r = train["1_A_x"]
  assert r["num_snippets"] == 7 and r["rgb"].shape == (7, 1024)
  assert r["logmel"].shape == (7, 32, 60)
  np.testing.assert_array_equal(r["rgb"], np.arange(7 * 1024, dtype=np.float32).reshape(7, 1024))
  assert r["logmel"][0, 0, 0] == -80.0
  assert r["points"].tolist() == [[0, 25, 1], [0, 85, 0], [1, 45, 1], [2, 400, 0]]
  np.testing.assert_allclose(r["segments"], [[0.5, 2.25], [3.0, 4.0]])
  assert r["segment_labels"].tolist() == [1, 0] and r["fps"] == 25.0
  r = test["3_C_z"]
  assert r["num_snippets"] == 3 and r["points"].shape == (0, 3)
  assert r["segment_labels"].tolist() == [1]


def test_builder_errors_name_the_file(tmp_path):
  _write_release(tmp_path / "a", gt_text='{"database": {"1_A_x": {"subset": "train"')
  with pytest.raises(tsl300.RawLayoutError, match=r"gt\.json: not valid JSON"):
    tsl300.build_tsl300(tmp_path / "a", tmp_path / "tfds_a", progress=False)
  _write_release(tmp_path / "b", gt_text=json.dumps({"database": {"1_A_x": {
      "subset": "train", "annotations": [{"segment": ["1", "x"], "label": "p"}]}}}))
  with pytest.raises(tsl300.RawLayoutError, match=r"gt\.json: database\['1_A_x'\]"):
    tsl300.build_tsl300(tmp_path / "b", tmp_path / "tfds_b", progress=False)
  vs = _write_release(tmp_path / "c")
  os.remove(vs / "fps_dict.json")
  with pytest.raises(tsl300.RawLayoutError, match=r"fps_dict\.json: missing"):
    tsl300.build_tsl300(tmp_path / "c", tmp_path / "tfds_c", progress=False)
  with pytest.raises(tsl300.RawLayoutError, match="split_train.txt: missing"):
    tsl300.build_tsl300(tmp_path, tmp_path / "tfds_d", progress=False)


# ------------------------------------------------------------------------------ pipeline


def _toy_source(lengths=(10, 70, 33, 64, 5, 130, 20, 96, 65), seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for i, t in enumerate(lengths):
    pts = [(a, int(rng.integers(0, 16 * t)), int(rng.integers(2))) for a in range(3)
           for _ in range(int(rng.integers(0, 3)))]
    out.append(dict(
        video_id=f"{i}_Toy_{i:03d}".encode(), rgb=rng.normal(size=(t, 1024)).astype(np.float32),
        logmel=rng.uniform(-80, 0, size=(t, 32, 60)).astype(np.float32), num_snippets=t,
        fps=25.0, duration=t * 16 / 25.0, points=np.asarray(pts, np.int32).reshape(-1, 3),
        segments=np.asarray([[0.5, 1.0]], np.float32), segment_labels=np.asarray([i % 2],
                                                                                np.int32)))
  return out


BUCKETS = (16, 32, 64, 96, 128, 192)


def test_train_batches_are_bucketed_padded_and_topology_independent():
  src = _toy_source()
  it = iter(tp.train_dataset(src, seed=1, global_batch_size=4, process_index=0,
                             process_count=1, buckets=BUCKETS))
  for _ in range(6):
    b = next(it)
    lengths = b["length"]
    want = min(x for x in BUCKETS if x >= lengths.max())
    assert b["rgb"].shape == (4, want, 1024) and b["audio"].shape == (4, want, 32, 60)
    assert b["mask"].shape == b["point_label"].shape == (4, want)
    assert b["rgb"].dtype == b["audio"].dtype == b["mask"].dtype == np.float32
    assert b["point_label"].dtype == b["length"].dtype == b["index"].dtype == np.int32
    assert b["point_count"].shape == (4, 2) and b["point_count"].dtype == np.float32
    for row in range(4):
      r, t = src[int(b["index"][row])], int(lengths[row])
      assert t == r["num_snippets"]
      np.testing.assert_array_equal(b["mask"][row], np.arange(want) < t)
      np.testing.assert_array_equal(b["rgb"][row, :t], r["rgb"])
      np.testing.assert_allclose(b["audio"][row, :t], (r["logmel"] + 50) / 80, rtol=1e-6)
      assert not b["rgb"][row, t:].any() and not b["audio"][row, t:].any()
      assert np.all(b["point_label"][row, t:] == -1)
  one = next(iter(tp.train_dataset(src, seed=1, global_batch_size=4, process_index=0,
                                   process_count=1, buckets=BUCKETS)))
  halves = [next(iter(tp.train_dataset(src, seed=1, global_batch_size=4, process_index=p,
                                       process_count=2, buckets=BUCKETS))) for p in (0, 1)]
  for k in one:
    np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), one[k])


def test_point_labels_snippets_drop_counts_and_annotator_choice():
  pts = np.array([[0, 0, 1], [0, 15, 0], [0, 16, 1], [0, 31, 0], [0, 79, 1], [0, 80, 1],
                  [1, 40, 1], [2, 5, 0]])
  label, count = tp.point_labels(pts, 5, 0)
  assert label.tolist() == [0, 0, -1, -1, 1]  # frames 0,15 -> t 0 (later row wins); 80 dropped
  assert count.tolist() == [2.0, 3.0]
  label, count = tp.point_labels(pts, 5, 1)
  assert label.tolist() == [-1, -1, 1, -1, -1] and count.tolist() == [0.0, 1.0]
  assert tp.point_labels(pts, 5, None)[0].tolist() == [-1] * 5
  # "random": seeded by (seed, video id), only versions with points, all of them reachable.
  only12 = pts[pts[:, 0] > 0]
  picks = {tp.choose_annotator(only12, f"v{i}", 7) for i in range(40)}
  assert picks == {1, 2}
  assert tp.choose_annotator(pts, "v1", 7) == tp.choose_annotator(pts, "v1", 7)
  assert len({tp.choose_annotator(pts, "v1", s) for s in range(30)}) == 3
  assert tp.choose_annotator(np.zeros((0, 3)), "v", 0) is None
  assert tp.choose_annotator(only12, "v", 0, annotator=0) == 0
  with pytest.raises(UserError, match="dataset.annotator"):
    tp.check_annotator(3)
  with pytest.raises(UserError, match="dataset.annotator"):
    tp.check_annotator("first")
  # In the pipeline: a fixed annotator gives exactly its points.
  src = _toy_source()
  b = next(iter(tp.train_dataset(src, seed=0, global_batch_size=9, process_index=0,
                                 process_count=1, buckets=BUCKETS, annotator=2)))
  for row in range(9):
    r = src[int(b["index"][row])]
    want, cnt = tp.point_labels(r["points"], r["num_snippets"], 2)
    np.testing.assert_array_equal(b["point_label"][row, :len(want)], want)
    np.testing.assert_array_equal(b["point_count"][row], cnt)


def test_train_iterator_is_deterministic_and_resumes():
  src = _toy_source()
  kw = dict(seed=5, global_batch_size=2, process_index=0, process_count=1, buckets=BUCKETS)
  a = iter(tp.train_dataset(src, **kw))
  first = [next(a) for _ in range(3)]
  state = a.get_state()
  rest = [next(a) for _ in range(4)]
  b = iter(tp.train_dataset(src, **kw))
  for x, y in zip(first, [next(b) for _ in range(3)]):
    np.testing.assert_array_equal(x["index"], y["index"])
  c = iter(tp.train_dataset(src, **kw))
  c.set_state(state)
  for x, y in zip(rest, [next(c) for _ in range(4)]):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  other = iter(tp.train_dataset(src, **{**kw, "seed": 6}))
  assert any(not np.array_equal(x["index"], next(other)["index"]) for x in first + rest)


def test_epoch_shapes_are_buckets_and_bounded():
  src = _toy_source(lengths=tuple(range(5, 190, 7)))
  it = iter(tp.train_dataset(src, seed=0, global_batch_size=3, process_index=0,
                             process_count=1, buckets=BUCKETS))
  shapes = {next(it)["rgb"].shape[1] for _ in range(len(src) // 3)}
  assert shapes <= set(BUCKETS) and 2 <= len(shapes) <= len(BUCKETS)
  with pytest.raises(UserError, match=r"3_Toy_003 has 300 snippets.*dataset\.buckets"):
    tp.train_dataset(_toy_source(lengths=(5, 6, 7, 300)), seed=0, global_batch_size=2,
                     process_index=0, process_count=1, buckets=BUCKETS)
  with pytest.raises(UserError, match="dataset.buckets"):
    tp.check_buckets([])


def test_length_grouping_covers_each_epoch_pads_less_and_resumes():
  lengths = tuple(int(x) for x in np.random.default_rng(3).integers(5, 190, 30))
  src = _toy_source(lengths=lengths)
  kw = dict(seed=2, global_batch_size=4, process_index=0, process_count=1, buckets=BUCKETS,
            lengths=lengths)
  per_epoch = 30 // 4  # 7 full batches; 2 left-over videos differ from epoch to epoch
  grouped = iter(tp.train_dataset(src, group_by_length=3, **kw))
  plain = iter(tp.train_dataset(src, **kw))
  seen, pad_grouped, pad_plain = [], 0, 0
  for _ in range(2 * per_epoch):
    g, p = next(grouped), next(plain)
    seen.append(g["index"])
    pad_grouped += g["rgb"].shape[1] * 4 - int(g["length"].sum())
    pad_plain += p["rgb"].shape[1] * 4 - int(p["length"].sum())
  for e in range(2):
    idx = np.concatenate(seen[e * per_epoch:(e + 1) * per_epoch])
    assert len(set(idx.tolist())) == len(idx) == 28  # no video twice within an epoch
  assert set(np.concatenate(seen[:per_epoch]).tolist()) != set(
      np.concatenate(seen[per_epoch:]).tolist())  # the left-overs are random, not fixed
  assert pad_grouped < 0.7 * pad_plain, (pad_grouped, pad_plain)
  # Deterministic, resumable and topology independent like the plain shuffle.
  a = iter(tp.train_dataset(src, group_by_length=3, **kw))
  [next(a) for _ in range(5)]
  state = a.get_state()
  want = [next(a)["index"] for _ in range(4)]
  b = iter(tp.train_dataset(src, group_by_length=3, **kw))
  b.set_state(state)
  for x in want:
    np.testing.assert_array_equal(next(b)["index"], x)
  halves = [iter(tp.train_dataset(src, group_by_length=3, **{**kw, "process_index": q,
                                                             "process_count": 2}))
            for q in (0, 1)]
  for x in seen[:3]:
    np.testing.assert_array_equal(np.concatenate([next(h)["index"] for h in halves]), x)


@pytest.mark.parametrize("sort_by_length", [False, True])
def test_eval_covers_each_video_once_with_padding_mask(sort_by_length):
  src = _toy_source()
  seen, shapes = [], set()
  for p in (0, 1):
    n_batches = 0
    for b in tp.eval_batches(src, global_batch_size=4, process_index=p, process_count=2,
                             buckets=BUCKETS, sort_by_length=sort_by_length):
      n_batches += 1
      assert b["_mask"].dtype == np.bool_ and b["rgb"].shape[0] == 2
      assert b["rgb"].shape[1] in BUCKETS and b["rgb"].shape[1] >= b["length"].max()
      shapes.add(b["rgb"].shape[1])
      for i, vid, real in zip(b["index"], b["video_id"], b["_mask"]):
        assert vid == src[int(i)]["video_id"].decode()
        if real:
          seen.append(int(i))
    assert n_batches == 3
  assert sorted(seen) == list(range(len(src)))
  info = tp.video_info(src, 3)
  assert info["video_id"] == "3_Toy_003" and info["num_snippets"] == 64
  assert info["segments"].shape == (1, 2) and info["segment_labels"].tolist() == [1]


def _prepare_and_open(ds):
  families.prepare(tp.FAMILY, ds)
  return {s: families.open_source(tp.FAMILY, ds, s) for s in ("train", "test")}


def test_family_generates_builds_and_opens_synthetic(tmp_path):
  ds = ml_collections.ConfigDict(dict(
      name="synthetic_tsl", data_dir=str(tmp_path), manual_dir="", auto_prepare=True,
      synthetic=dict(seed=0, num_train=4, num_test=2, min_snippets=20, max_snippets=40)))
  sources = _prepare_and_open(ds)
  assert (len(sources["train"]), len(sources["test"])) == (4, 2)
  b = next(tp.eval_batches(sources["test"], global_batch_size=2, process_index=0,
                           process_count=1, buckets=(32, 64)))
  assert b["_mask"].all() and b["rgb"].shape[1] in (32, 64)
  info = tp.video_info(sources["test"], int(b["index"][0]))
  assert info["video_id"] == b["video_id"][0]
  assert np.isclose(info["fps"], untrimmed.FPS_CHOICES, rtol=1e-6).any()
  assert info["segments"].shape[0] == len(info["segment_labels"]) >= 1
  t = next(iter(tp.train_dataset(sources["train"], seed=0, global_batch_size=2,
                                 process_index=0, process_count=1, buckets=(32, 64))))
  assert (t["point_count"].sum(1) >= 1).all()  # every synthetic train video has points
  assert _prepare_and_open(ds)["train"] is not None  # idempotent
  with pytest.raises(UserError, match="unknown TSL dataset"):
    _prepare_and_open(ml_collections.ConfigDict(dict(name="tsl", data_dir=str(tmp_path))))
