"""Online input pipeline: transforms, topology independence, resume, eval coverage."""
import collections

import jax
import ml_collections
import numpy as np
import pytest

from jaxaffect.data import pipeline
from jaxaffect.data import throughput
from jaxaffect.data import video_transforms as vt

POLARITY = (0, 1, 0, 0, 1, 0, 1, 1)
CFG = vt.TransformConfig(num_segments=2, snippet_len=3, crop_size=6, audio_segments=2,
                         audio_frames_per_segment=4, flip_prob=0.5, polarity=POLARITY)


def _coded_video(n, h, w):
  """Pixel (f, y, x) = (f, y, x) in channels 0..2: any output pixel says where it came from."""
  f, y, x = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
  return np.stack([f, y, x], axis=-1).astype(np.uint8)


def _record(i, n=7, h=8, w=10, fa=5, m=3):
  rng = np.random.default_rng(i)
  return {"video": rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8),
          "audio": rng.standard_normal((fa, m)).astype(np.float32),
          "has_audio": True, "label": i % 8, "key": f"C/{i:03d}"}


SOURCE = [_record(i) for i in range(13)]


@pytest.fixture(autouse=True)
def _restore_blas_threads():
  """train_dataset limits this process's BLAS threads; give other test files theirs back."""
  try:
    import threadpoolctl  # pylint: disable=g-import-not-at-top
  except ImportError:
    yield
    return
  with threadpoolctl.threadpool_limits(limits=None):
    yield


def _take(it, k):
  return [next(it) for _ in range(k)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _train_iter(seed=0, gbs=4, p=0, pc=1, workers=0, cfg=CFG):
  return iter(pipeline.train_dataset(SOURCE, transform_cfg=cfg, seed=seed,
                                     global_batch_size=gbs, process_index=p,
                                     process_count=pc, worker_count=workers))


# ----------------------------------------------------------------------------- transforms


def test_train_batch_shapes_dtypes_and_polarity():
  b = next(_train_iter())
  assert b["video"].shape == (4, 2, 3, 6, 6, 3) and b["video"].dtype == np.uint8
  assert b["audio"].shape == (4, 2, 4, 3) and b["audio"].dtype == np.float32
  assert b["label"].dtype == np.int32 and b["polarity"].dtype == np.int32
  np.testing.assert_array_equal(b["polarity"], np.asarray(POLARITY)[b["label"]])
  assert set(b) == {"video", "audio", "label", "polarity"}


def test_config_from_configdict_and_unknown_key():
  cd = ml_collections.ConfigDict(dict(num_segments=2, snippet_len=3, crop_size=6,
                                      audio_segments=2, audio_frames_per_segment=4,
                                      flip_prob=0.0, polarity=list(POLARITY),
                                      legacy_random_eval=True))
  cfg = vt.TransformConfig.create(cd)
  assert cfg.polarity == POLARITY and cfg.legacy_random_eval
  with pytest.raises(ValueError, match="bogus"):
    vt.TransformConfig.create({"bogus": 1})


def test_bad_record_error_names_key():
  rec = dict(_record(0), video=np.zeros((0, 8, 10, 3), np.uint8))
  with pytest.raises(ValueError, match="C/000"):
    vt.VideoAudioTransform(CFG, train=True).random_map(rec, np.random.default_rng(0))


def test_tsn_eval_centre_and_train_range():
  np.testing.assert_array_equal(
      vt.tsn_indices(40, 4, 4, rng=None),
      [[3, 4, 5, 6], [13, 14, 15, 16], [23, 24, 25, 26], [33, 34, 35, 36]])
  for off_by_one, top in ((True, 5), (False, 6)):
    starts = np.concatenate([vt.tsn_indices(40, 4, 4, rng=np.random.default_rng(s),
                                            off_by_one=off_by_one)[:, 0] % 10
                             for s in range(200)])
    assert starts.min() == 0 and starts.max() == top  # seg_len 10: [0, 10-4-off_by_one]


def test_loop_padding_short_video():
  # N=5 < S*T=8: list 0..4 looped to 8, two segments of 4, eval centre start 0.
  np.testing.assert_array_equal(vt.tsn_indices(5, 2, 4, rng=None), [[0, 1, 2, 3], [4, 0, 1, 2]])
  cfg = vt.TransformConfig(num_segments=2, snippet_len=4, crop_size=6, audio_segments=1,
                           audio_frames_per_segment=2)
  rec = dict(_record(0), video=_coded_video(5, 6, 9))
  out = vt.VideoAudioTransform(cfg, train=True).random_map(rec, np.random.default_rng(3))
  # seg_len == T, so training also starts at 0: the frame channel is fully known.
  np.testing.assert_array_equal(out["video"][:, :, 0, 0, 0], [[0, 1, 2, 3], [4, 0, 1, 2]])


def test_crop_positions_and_flip_exact():
  video = _coded_video(2, 6, 9)  # side 6 == crop 6: no resampling, pixels are exact
  expected = {"c": (0, 1), "tl": (0, 0), "tr": (0, 3), "bl": (0, 0), "br": (0, 3)}
  for pos, name in enumerate(vt.CROP_POSITIONS):
    top, left = expected[name]
    out = vt.crop_resize(video, pos, 6, flip=False)
    np.testing.assert_array_equal(out, video[:, top:top + 6, left:left + 6])
    flipped = vt.crop_resize(video, pos, 6, flip=True)
    np.testing.assert_array_equal(flipped, out[:, :, ::-1])
  tall = _coded_video(1, 9, 6)  # portrait: corners move vertically
  np.testing.assert_array_equal(vt.crop_resize(tall, 4, 6, False), tall[:, 3:9, 0:6])


def test_train_crop_and_flip_drawn_once_per_video():
  cfg = vt.TransformConfig(num_segments=2, snippet_len=3, crop_size=6, audio_segments=1,
                           audio_frames_per_segment=2, flip_prob=0.5)
  rec = dict(_record(0), video=_coded_video(12, 6, 9))
  tf = vt.VideoAudioTransform(cfg, train=True)
  seen = collections.Counter()
  for seed in range(60):
    v = tf.random_map(rec, np.random.default_rng(seed))["video"].reshape(-1, 6, 6, 3)
    left = int(v[0, 0, :, 2].min())
    flip = bool(v[0, 0, 0, 2] > v[0, 0, -1, 2])
    for frame in v:  # the same crop and flip on every frame of every segment
      cols = frame[:, :, 2]
      np.testing.assert_array_equal(cols, cols[:1].repeat(6, 0))
      assert int(cols.min()) == left and bool(cols[0, 0] > cols[0, -1]) == flip
    seen[(left, flip)] += 1
  assert set(seen) == {(l, f) for l in (0, 1, 3) for f in (False, True)}
  ev = vt.VideoAudioTransform(cfg, train=False).random_map(rec, np.random.default_rng(0))
  np.testing.assert_array_equal(ev["video"][..., 0, :, 2].reshape(-1, 6), [[1, 2, 3, 4, 5, 6]] * 6)


def test_resize_gradient_corner_and_flip():
  # Horizontal ramp, 16 x 24, crop side 16 -> 8: the "tr" crop holds columns 8..23.
  ramp = np.broadcast_to((np.arange(24) * 10).astype(np.uint8)[None, None, :, None],
                         (1, 16, 24, 3))
  out = vt.crop_resize(ramp, vt.CROP_POSITIONS.index("tr"), 8, flip=False)[0, :, :, 0]
  # Box-like antialiased average of pairs (2c+8, 2c+9) -> 10*(2c+8.5), interior exact.
  np.testing.assert_array_equal(out[:, 1:-1], np.broadcast_to(
      np.rint(10 * (2 * np.arange(1, 7) + 8.5)).astype(np.uint8), (8, 6)))
  flipped = vt.crop_resize(ramp, vt.CROP_POSITIONS.index("tr"), 8, flip=True)[0, :, :, 0]
  np.testing.assert_array_equal(flipped, out[:, ::-1])


def test_resize_matches_pil_and_is_exact():
  pil = pytest.importorskip("PIL.Image")
  img = np.random.default_rng(0).integers(0, 256, (20, 27, 3), dtype=np.uint8)
  for size in (7, 13, 30):
    ours = vt.crop_resize(img[None], 0, size, flip=False)[0]
    ref = np.asarray(pil.fromarray(img[:, 3:23]).resize((size, size), pil.BILINEAR))
    assert np.abs(ours.astype(int) - ref).max() <= 1
    # Fixed-point weights make the float32 GEMMs exact: equal to a float64 dense reference.
    w = vt._resize_weights(20, size).astype(np.float64)
    x = img[:, 3:23].astype(np.float64)
    y = np.rint(np.einsum("oh,hwc->owc", w, x) * 16) / 16
    y = np.einsum("pw,owc->opc", w, y)
    np.testing.assert_array_equal(ours, np.floor(y + 0.5).astype(np.uint8))


def test_audio_tiling_and_cutting():
  short = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
  out = vt.tile_audio(short, 3, 4)
  assert out.shape == (3, 4, 2) and out.dtype == np.float32
  flat = out.reshape(-1, 2)
  np.testing.assert_array_equal(flat, short[np.arange(12) % 5])
  np.testing.assert_array_equal(out[1, 1], short[0])  # frame 5 loops back to frame 0
  long = np.arange(40 * 2, dtype=np.float32).reshape(40, 2)
  np.testing.assert_array_equal(vt.tile_audio(long, 3, 4).reshape(-1, 2), long[:12])


# ----------------------------------------------------------------------------- pipeline


def test_determinism_by_seed():
  a, b, c = (_take(_train_iter(seed=s), 3) for s in (7, 7, 8))
  _assert_batches_equal(a, b)
  assert any(not np.array_equal(x["video"], y["video"]) for x, y in zip(a, c))


def test_topology_independent_global_batches():
  ref = _take(_train_iter(gbs=8), 4)  # 4 steps of 8 over 13 examples: crosses epochs
  for pc in (2, 4):
    per_proc = [_take(_train_iter(gbs=8, p=p, pc=pc), 4) for p in range(pc)]
    for step in range(4):
      glob = {k: np.concatenate([per_proc[p][step][k] for p in range(pc)])
              for k in ref[step]}
      _assert_batches_equal([glob], [ref[step]])


@pytest.mark.parametrize("workers", [0, 2])
def test_iterator_state_resume_exact(workers):
  it = _train_iter(workers=workers)
  _take(it, 2)
  state = it.get_state()
  expected = _take(it, 3)
  it2 = _train_iter(workers=workers)
  it2.set_state(state)
  got = _take(it2, 3)
  for i in (it, it2):
    i.close()
  _assert_batches_equal(got, expected)
  if workers:  # worker count changes nothing: same batches as in-process
    ref = _train_iter()
    _take(ref, 2)
    _assert_batches_equal(expected, _take(ref, 3))


def test_eval_deterministic_and_centre():
  kw = dict(transform_cfg=CFG, global_batch_size=4, process_index=0, process_count=1)
  a, b = list(pipeline.eval_batches(SOURCE, **kw)), list(pipeline.eval_batches(SOURCE, **kw))
  _assert_batches_equal(a, b)
  ex = vt.VideoAudioTransform(CFG, train=False).random_map(SOURCE[5], None)
  np.testing.assert_array_equal(a[1]["video"][1], ex["video"])
  legacy = dict(kw, transform_cfg=vt.dataclasses.replace(CFG, legacy_random_eval=True))
  c, d = (list(pipeline.eval_batches(SOURCE, **legacy)) for _ in range(2))
  _assert_batches_equal(c, d)  # stochastic by index, still deterministic
  assert any(not np.array_equal(x["video"], y["video"]) for x, y in zip(a, c))


@pytest.mark.parametrize("pc", [1, 2, 3])
def test_eval_covers_each_example_once(pc):
  per_proc = [list(pipeline.eval_batches(SOURCE, transform_cfg=CFG, global_batch_size=6,
                                         process_index=p, process_count=pc))
              for p in range(pc)]
  assert {len(b) for b in per_proc} == {pipeline.num_eval_batches(13, 6)} == {3}
  seen = collections.Counter()
  for batches in per_proc:
    for b in batches:
      assert b["_mask"].dtype == np.bool_ and b["_mask"].shape == (6 // pc,)
      for key, label, m in zip(b["key"], b["label"], b["_mask"]):
        if m:
          seen[(str(key), int(label))] += 1
        else:
          assert str(key) == SOURCE[0]["key"]  # padding copies example 0
  assert seen == collections.Counter((r["key"], r["label"]) for r in SOURCE)
  # Contiguous slices: process p's first batch holds global positions [p*b, (p+1)*b).
  b = 6 // pc
  for p in range(pc):
    assert [str(k) for k in per_proc[p][0]["key"]] == [r["key"] for r in SOURCE[p * b:(p + 1) * b]]


def test_to_global_batch_on_mesh():
  mesh = jax.make_mesh((4, 2, 1), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  local = next(pipeline.eval_batches(SOURCE, transform_cfg=CFG, global_batch_size=8,
                                     process_index=0, process_count=1))
  glob = pipeline.to_global_batch(local, mesh)
  assert "key" not in glob and set(glob) == {"video", "audio", "label", "polarity", "_mask"}
  for k, v in glob.items():
    assert v.shape == local[k].shape
    assert v.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(v), local[k])


def test_in_process_pipeline_uses_one_blas_thread():
  threadpoolctl = pytest.importorskip("threadpoolctl")
  with threadpoolctl.threadpool_limits(2, user_api="blas"):
    _train_iter()
    assert {i["num_threads"] for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas"} == {1}


def test_measure_examples_per_sec_counts_batches():
  pulled = []
  it = iter(range(100))
  rate = throughput.measure_examples_per_sec(
      (pulled.append(x) or x for x in it), num_batches=5, batch_size=3, warmup_batches=2)
  assert len(pulled) == 7 and rate > 0
