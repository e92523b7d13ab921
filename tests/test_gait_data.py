"""Emotion-Gait data: the `emotion_gait` builder, synthetic gaits and the gait pipeline."""
import hashlib
import os

import h5py
import ml_collections
import numpy as np
import pytest

from data_pipelines.builders import emotion_gait as eg
from data_pipelines.synthetic import common
from data_pipelines.synthetic import gait
from jaxaffect.data import families
from jaxaffect.methods.bpmgcn import data as gp


def _write(path, arrays):
  with h5py.File(path, "w") as f:
    for k, v in arrays.items():
      f.create_dataset(k, data=v)


def _walk(n, offset):
  """T x 48 with frame t = offset + t everywhere (so subsampling is visible)."""
  return np.repeat((offset + np.arange(n, dtype=np.float64))[:, None], 48, axis=1) + 0.5


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  """Release layout: 30 captured + 12 ELMD gaits, plus one of each kind of trouble."""
  root = tmp_path_factory.mktemp("egait")
  feats, labels = {}, {}
  for i in range(30):
    feats[f"{i:03d}"] = _walk(27 + 2 * i, 1000 * i)  # T 27..85: padded, exact, cut.
    labels[f"{i:03d}"] = np.int64(i % 4)
  trailing = _walk(40, 0)
  trailing[30:] = 0.0
  feats["trailing"], labels["trailing"] = trailing, np.int64(1)
  feats["badshape"], labels["badshape"] = np.ones((50, 47)), np.int64(0)
  nan = _walk(50, 0)
  nan[3, 4] = np.nan
  feats["nan"], labels["nan"] = nan, np.int64(0)
  feats["badlabel"], labels["badlabel"] = _walk(50, 0), np.int64(7)
  feats["nolabel"] = _walk(50, 0)
  labels["nofeatures"] = np.int64(2)
  _write(root / "features.h5", feats)
  _write(root / "labels.h5", labels)
  elmd = {f"{i:06d}_x": _walk(240, 10 * i) for i in range(12)}
  _write(root / "features_ELMD.h5", elmd)
  _write(root / "labels_ELMD.h5", {k: np.float64(j % 4) for j, k in enumerate(elmd)})
  (root / "features_CVAEGCN_1_2000.h5").write_bytes(b"not an h5 file")  # corrupt file
  return root


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory):
  cfg = dict(parts=("captured", "elmd", "cvae"))
  return eg.build_emotion_gait(raw, tmp_path_factory.mktemp("tfds"), cfg, progress=False)


def _records(builder, split):
  src = builder.as_data_source(split)
  return {r["key"].decode(): r for r in (src[i] for i in range(len(src)))}


def test_builder_preprocessing_and_manifest(built):
  m = eg.load_manifest(built)
  recs = {**_records(built, "train"), **_records(built, "test")}
  assert len(recs) == 30 + 1 + 12
  assert m["splits"]["train"]["num_examples"] + m["splits"]["test"]["num_examples"] == 43
  reasons = {s["key"]: s["reason"] for s in m["skipped"]}
  assert set(reasons) == {"captured/badshape", "captured/nan", "captured/badlabel",
                          "captured/nolabel", "captured/nofeatures"}
  assert "47" in reasons["captured/badshape"] and "NaN" in reasons["captured/nan"]
  assert any("features_CVAEGCN_1_2000.h5" in n and "cannot be read" in n for n in m["notes"])
  total = {c: sum(m["splits"][s]["per_class"][c] for s in ("train", "test"))
           for c in eg.LABEL_MAPPINGS["bpmgcn"]}
  assert total == {"Happy": 11, "Sad": 12, "Angry": 10, "Neutral": 10}
  # Captured: first 48 frames, zero padding, num_frames = real frames.
  r = recs["captured/000"]  # T = 27
  assert r["skeleton"].shape == (48, 16, 3) and r["skeleton"].dtype == np.float32
  assert r["num_frames"] == 27 and r["source"] == b"captured" and r["label"] == 0
  assert np.all(r["skeleton"][27:] == 0) and r["skeleton"][26, 5, 2] == 26.5
  r = recs["captured/020"]  # T = 67 -> cut to the first 48
  assert r["num_frames"] == 48 and r["skeleton"][47, 0, 0] == 20047.5
  assert recs["captured/trailing"]["num_frames"] == 30  # trailing zero frames are padding
  # ELMD: every 5th frame of 240 -> 48.
  r = recs["elmd/000003_x"]
  assert r["num_frames"] == 48 and r["label"] == 3
  np.testing.assert_array_equal(r["skeleton"][:, 7, 1], 30 + 5 * np.arange(48) + 0.5)


def test_builder_is_idempotent_and_rejects_unknown_keys(built, raw):
  again = eg.build_emotion_gait(raw, os.path.dirname(os.path.dirname(os.path.dirname(
      built.data_dir))), dict(parts=("captured", "elmd", "cvae")), build=False)
  assert again.data_dir == built.data_dir
  with pytest.raises(eg.GaitConfigError, match="stride"):
    eg.build_emotion_gait(raw, "/nonexistent", dict(stride=3))
  with pytest.raises(eg.GaitConfigError, match="label_mapping"):
    eg.EmotionGaitConfig(label_mapping="paper")
  assert eg.EmotionGaitConfig(label_mapping="step").class_names[0] == "Angry"


def test_split_is_seeded_9_to_1_and_folds_partition():
  keys = [f"elmd/{i:06d}" for i in range(1000)]
  cfg = eg.EmotionGaitConfig()
  a = eg.assign_splits(keys, cfg)
  assert a == eg.assign_splits(list(reversed(keys)), cfg)  # order of listing does not matter
  assert sum(v == "test" for v in a.values()) == 100
  assert a != eg.assign_splits(keys, eg.EmotionGaitConfig(split_seed=1))
  tests = [{k for k, v in eg.assign_splits(keys, eg.EmotionGaitConfig(test_fraction=0.2, fold=f))
            .items() if v == "test"} for f in range(5)]
  assert set.union(*tests) == set(keys) and sum(map(len, tests)) == 1000
  b = eg.assign_splits(keys, eg.EmotionGaitConfig(val_fraction=0.1))
  assert sum(v == "validation" for v in b.values()) == 100
  assert {k for k, v in b.items() if v == "test"} == {k for k, v in a.items() if v == "test"}
  with pytest.raises(eg.GaitConfigError, match="fold"):
    eg.EmotionGaitConfig(fold=10)


def _digest(d):
  return {n: hashlib.sha256(open(os.path.join(d, n), "rb").read()).hexdigest()
          for n in sorted(os.listdir(d)) if n.endswith(".h5")}


def test_synthetic_gait_is_deterministic_and_in_release_layout(tmp_path):
  a = gait.generate_emotion_gait_style(tmp_path / "a", seed=3, num_per_class=6, verbose=False)
  b = gait.generate_emotion_gait_style(tmp_path / "b", seed=3, num_per_class=6, verbose=False)
  c = gait.generate_emotion_gait_style(tmp_path / "c", seed=4, num_per_class=6, verbose=False)
  assert _digest(a) == _digest(b) != _digest(c)
  assert set(_digest(a)) == {"features.h5", "labels.h5", "features_ELMD.h5", "labels_ELMD.h5"}
  assert os.path.exists(os.path.join(a, common.DONE_FILE))
  gait.generate_emotion_gait_style(a, seed=3, num_per_class=6, verbose=False)  # no-op
  with pytest.raises(FileExistsError):
    gait.generate_emotion_gait_style(a, seed=5, num_per_class=6, verbose=False)
  n = 0
  for suffix in ("", "_ELMD"):
    with h5py.File(os.path.join(a, f"features{suffix}.h5")) as ff, \
         h5py.File(os.path.join(a, f"labels{suffix}.h5")) as fl:
      assert sorted(ff.keys()) == sorted(fl.keys())
      for k in ff.keys():
        x = ff[k][()]
        assert x.ndim == 2 and x.shape[1] == 48 and np.all(np.isfinite(x))
        assert (x.shape[0] == 240) if suffix else (27 <= x.shape[0] <= 75)
        assert 0 <= fl[k][()] < 4
        n += 1
  assert n == 24


def test_synthetic_classes_differ_in_posture_and_movement():
  """Posture (head drop) and movement (hand excursion, cadence) separate classes on average."""
  feats = np.zeros((4, 3))
  for label in range(4):
    rows = []
    for i in range(40):
      x = gait.render_gait(label, 48, 24.0, common.rng_for(0, "sep", label, i))
      y = x[..., 1]
      torso = (y[:, 2] - y[:, 0]).mean()
      spec = np.abs(np.fft.rfft(y[:, 0] - y[:, 0].mean()))
      rows.append([(y[:, 3] - y[:, 2]).mean() / torso,  # head above neck (lower: head down)
                   (y[:, 6].std() + y[:, 9].std()) / torso,  # hand vertical excursion
                   np.argmax(spec[1:]) + 1])  # bob frequency bin (2 bobs per cycle)
    feats[label] = np.mean(rows, axis=0)
  happy, sad, angry, neutral = feats
  assert sad[0] < min(happy[0], angry[0], neutral[0]) - 0.03
  assert sad[1] < neutral[1] < happy[1] < angry[1]
  assert sad[2] < neutral[2] <= happy[2] <= angry[2]


def test_synthetic_yaw_nuisance_keeps_vertical_axis():
  x = gait.render_gait(0, 30, 24.0, common.rng_for(0, "yaw"), noise=0.0)
  lengths = np.linalg.norm(x[:, 2] - x[:, 1], axis=-1)
  np.testing.assert_allclose(lengths, lengths[0], rtol=1e-5)  # rigid segments
  assert np.all(x[:, 3, 1] > x[:, 0, 1]) and np.all(x[:, 0, 1] > x[:, 12, 1])  # y is up


# ------------------------------------------------------------------------------ pipeline


def _toy_source(n=10, t=48):
  rng = np.random.default_rng(0)
  out = []
  for i in range(n):
    k = 10 + 4 * i
    s = np.zeros((t, 16, 3), np.float32)
    s[:min(k, t)] = rng.normal(size=(min(k, t), 16, 3))
    out.append(dict(skeleton=s, num_frames=np.int32(min(k, t)), label=np.int64(i % 4),
                    key=f"captured/{i:03d}".encode(), source=b"captured"))
  return out


def test_train_batches_shapes_masks_and_topology_independence():
  src = _toy_source()
  one = next(iter(gp.train_dataset(src, seed=1, global_batch_size=4, process_index=0,
                                   process_count=1)))
  assert one["skeleton"].shape == (4, 48, 16, 3) and one["skeleton"].dtype == np.float32
  assert one["label"].dtype == np.int32 and one["mask"].shape == (4, 48)
  assert one["mask"].dtype == np.float32
  by_key = {int(r["num_frames"]): r for r in src}
  for row in range(4):
    n = int(one["mask"][row].sum())
    np.testing.assert_array_equal(one["skeleton"][row], by_key[n]["skeleton"])
  halves = [next(iter(gp.train_dataset(src, seed=1, global_batch_size=4, process_index=p,
                                       process_count=2))) for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([h["skeleton"] for h in halves]),
                                one["skeleton"])


def test_augmentation_rotates_about_vertical_and_keeps_padding_zero():
  src = _toy_source(4)
  aug = dict(rotate_deg=30.0, scale_jitter=0.0)
  b = next(iter(gp.train_dataset(src, seed=0, global_batch_size=4, process_index=0,
                                 process_count=1, augment=aug)))
  for row in range(4):
    n = int(b["mask"][row].sum())
    ref = next(r for r in src if int(r["num_frames"]) == n)["skeleton"]
    np.testing.assert_allclose(b["skeleton"][row][..., 1], ref[..., 1], atol=1e-6)  # y kept
    np.testing.assert_allclose(np.linalg.norm(b["skeleton"][row][..., [0, 2]], axis=-1),
                               np.linalg.norm(ref[..., [0, 2]], axis=-1), rtol=1e-5, atol=1e-6)
    assert not np.allclose(b["skeleton"][row][:n], ref[:n])
    assert np.all(b["skeleton"][row][n:] == 0)
  with pytest.raises(Exception, match="unknown"):
    gp.GaitAugmentConfig.create(dict(rotate=1.0))


def test_eval_covers_each_example_once_with_padding_mask():
  src = _toy_source(10)
  keys = []
  for p in (0, 1):
    for b in gp.eval_batches(src, global_batch_size=4, process_index=p, process_count=2):
      assert b["skeleton"].shape == (2, 48, 16, 3) and b["_mask"].dtype == np.bool_
      keys += [k for k, m in zip(b["key"], b["_mask"]) if m]
  assert sorted(keys) == sorted(r["key"].decode() for r in src)


def test_sources_generate_build_and_open_synthetic(tmp_path):
  ds = ml_collections.ConfigDict(dict(
      name="synthetic_gait", data_dir=str(tmp_path), manual_dir="", auto_prepare=True,
      synthetic=dict(seed=0, num_per_class=10), extraction=dict(split_seed=0, test_fraction=0.1)))
  families.prepare(gp.FAMILY, ds)
  train, test = (families.open_source(gp.FAMILY, ds, s) for s in ("train", "test"))
  assert (len(train), len(test)) == (36, 4)
  b = next(gp.eval_batches(test, global_batch_size=8, process_index=0, process_count=1))
  assert b["_mask"].sum() == 4 and np.all(np.isfinite(b["skeleton"]))
  assert np.all((b["mask"].sum(1) >= 27) & (b["mask"].sum(1) <= 48))
  families.prepare(gp.FAMILY, ds)  # idempotent


def test_centring_modes_are_exact_and_keep_padding_zero():
  src = _toy_source(3)
  rec = src[1]
  n, skel = int(rec["num_frames"]), rec["skeleton"]
  mask = (np.arange(48) < n).astype(np.float32)
  assert gp.center_skeleton(skel, mask, "none") is skel
  root = gp.center_skeleton(skel, mask, "root")
  assert np.all(root[:n, 0] == 0) and np.all(root[n:] == 0)
  np.testing.assert_allclose(root[:n], skel[:n] - skel[:n, :1], atol=1e-6)
  seq = gp.center_skeleton(skel, mask, "sequence")
  np.testing.assert_allclose(seq[:n, 0].mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.diff(seq[:n], axis=0), np.diff(skel[:n], axis=0), atol=1e-5)
  assert np.all(seq[n:] == 0)
  with pytest.raises(Exception, match="dataset.center"):
    gp.center_skeleton(skel, mask, "pelvis")
  # Train and eval batches apply the same centring.
  b = next(iter(gp.train_dataset(src, seed=0, global_batch_size=3, process_index=0,
                                 process_count=1, center="root")))
  e = next(gp.eval_batches(src, global_batch_size=3, process_index=0, process_count=1,
                           center="root"))
  for batch in (b, e):
    for row in range(3):
      k = int(batch["mask"][row].sum())
      ref = next(r for r in src if int(r["num_frames"]) == k)["skeleton"]
      np.testing.assert_allclose(batch["skeleton"][row][:k], ref[:k] - ref[:k, :1], atol=1e-6)
      assert np.all(batch["skeleton"][row][k:] == 0)
