"""VAANet's per-video training augmentation: rotation, brightness, flip with p=0.3."""
import collections

import ml_collections
import numpy as np
import pytest

from jaxaffect.data import video_transforms as vt

CFG = vt.TransformConfig(num_segments=2, snippet_len=3, crop_size=8, audio_segments=1,
                         audio_frames_per_segment=2, augment="vaanet")


def _record(video):
  return {"video": video, "audio": np.ones((3, 2), np.float32), "label": 0, "key": "C/x"}


def test_brightness_known_values_and_pil():
  v = np.array([0, 1, 10, 100, 200, 255], np.uint8)
  # PIL blends with black in float32 and truncates: 10 * 0.7 -> 7 and 100 * 0.7 -> 70, where
  # float64 arithmetic would truncate 6.99999... to 6 and 69.99999... to 69.
  np.testing.assert_array_equal(vt.adjust_brightness(v, 0.7), [0, 0, 7, 70, 140, 178])
  np.testing.assert_array_equal(vt.adjust_brightness(v, 0.5), [0, 0, 5, 50, 100, 127])
  np.testing.assert_array_equal(vt.adjust_brightness(v, 1.0), v)
  pil = pytest.importorskip("PIL.Image")
  enhance = pytest.importorskip("PIL.ImageEnhance")
  img = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)
  for f in np.random.default_rng(0).uniform(0.5, 1.0, 20):
    ref = np.asarray(enhance.Brightness(pil.fromarray(img)).enhance(f))
    np.testing.assert_array_equal(vt.adjust_brightness(img, f), ref)


def test_rotation_known_values():
  img = np.random.default_rng(0).integers(1, 256, (2, 6, 6, 3), dtype=np.uint8)
  np.testing.assert_array_equal(vt.rotate_frames(img, 0.0), img)
  np.testing.assert_array_equal(vt.rotate_frames(img, 90.0), np.rot90(img, axes=(1, 2)))
  np.testing.assert_array_equal(vt.rotate_frames(img, 180.0), img[:, ::-1, ::-1])
  flat = vt.rotate_frames(np.full((1, 8, 8, 3), 200, np.uint8), 45.0)[0, :, :, 0]
  # Corners rotate out of the image and are black; the rest keeps its value exactly.
  assert flat[0, 0] == flat[0, 1] == flat[1, 0] == flat[7, 7] == 0
  assert (flat[2:6] == 200).all() and (flat[:, 2:6] == 200).all()
  # Positive angles turn counter-clockwise: the top-right corner ends up top-left.
  dot = np.zeros((1, 4, 4, 3), np.uint8)
  dot[0, 0, 3] = 255
  np.testing.assert_array_equal(vt.rotate_frames(dot, 90.0)[0, :, :, 0] == 255,
                                np.eye(4, dtype=bool)[0][:, None] & np.eye(4, dtype=bool)[0])


def test_rotation_matches_pil():
  pil = pytest.importorskip("PIL.Image")
  rng = np.random.default_rng(1)
  for h, w in ((12, 12), (9, 14), (15, 8)):
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for angle in rng.uniform(-20, 20, 4):
      ref = np.asarray(pil.fromarray(img).rotate(angle, pil.BILINEAR))
      np.testing.assert_array_equal(vt.rotate_frames(img[None], angle)[0], ref)


def test_vaanet_draws_probability_and_ranges():
  kinds = collections.Counter()
  for seed in range(3000):
    rng = np.random.default_rng(seed)
    aug = vt.draw_augment(CFG, rng)
    if aug.flip:
      kinds["flip"] += 1
    elif aug.angle:
      assert -20 <= aug.angle <= 20
      kinds["rotate"] += 1
    elif aug.brightness != 1.0:
      assert 0.5 <= aug.brightness <= 1.0
      kinds["brightness"] += 1
    else:
      kinds["none"] += 1
  assert abs(kinds["none"] / 3000 - 0.7) < 0.03
  for k in ("flip", "rotate", "brightness"):
    assert abs(kinds[k] / 3000 - 0.1) < 0.02, kinds


def test_draws_consume_a_fixed_stream():
  for seed in range(50):
    rng = np.random.default_rng(seed)
    vt.draw_augment(CFG, rng)
    ref = np.random.default_rng(seed)
    ref.random(), ref.integers(3), ref.uniform(-1, 1), ref.uniform(0, 1)
    assert rng.random() == ref.random()
  none = vt.dataclasses.replace(CFG, augment="none")
  assert vt.draw_augment(none, np.random.default_rng(0)) == vt.VideoAugment()


def test_transform_applies_one_augmentation_to_every_frame():
  cfg = vt.dataclasses.replace(CFG, augment_prob=1.0)
  n, h, w = 10, 8, 12
  video = np.random.default_rng(0).integers(1, 256, (n, h, w, 3), dtype=np.uint8)
  const = np.full((n, h, w, 3), 200, np.uint8)
  tf = vt.VideoAudioTransform(cfg, train=True)
  seen = set()
  for seed in range(30):
    out = tf.random_map(_record(video), np.random.default_rng(seed))["video"]
    rng = np.random.default_rng(seed)  # the transform's draw order: TSN, crop, augment
    idx = vt.tsn_indices(n, 2, 3, rng=rng, off_by_one=True)
    pos = int(rng.integers(len(vt.CROP_POSITIONS)))
    aug = vt.draw_augment(cfg, rng)
    expected = vt.apply_augment(vt.crop_resize(video[idx.ravel()], pos, 8, aug.flip), aug)
    np.testing.assert_array_equal(out.reshape(-1, 8, 8, 3), expected)
    frames = out.reshape(-1, 8, 8, 3)
    if aug.angle:
      seen.add("rotate")
      black = (frames == 0).all(axis=-1)
      assert (black == black[:1]).all()  # the same rotation (black corners) on every frame
    elif aug.brightness != 1.0:
      seen.add("brightness")
      b = tf.random_map(_record(const), np.random.default_rng(seed))["video"]
      assert (b == int(np.float32(aug.brightness) * np.float32(200))).all()
    else:
      seen.add("flip")
  assert seen == {"rotate", "brightness", "flip"}


def test_eval_never_augments():
  cfg = vt.dataclasses.replace(CFG, augment_prob=1.0, legacy_random_eval=True)
  plain = vt.dataclasses.replace(cfg, augment="none")
  video = np.random.default_rng(0).integers(0, 256, (9, 8, 12, 3), dtype=np.uint8)
  for seed in range(10):
    a = vt.VideoAudioTransform(cfg, train=False).random_map(_record(video),
                                                            np.random.default_rng(seed))
    b = vt.VideoAudioTransform(plain, train=False).random_map(_record(video),
                                                              np.random.default_rng(seed))
    np.testing.assert_array_equal(a["video"], b["video"])


def test_config_keys_and_validation():
  cfg = vt.TransformConfig.create(ml_collections.ConfigDict(dict(
      augment="vaanet", augment_prob=0.3, rotation_degrees=20.0, brightness_min=0.5)))
  assert cfg.augment == "vaanet" and cfg.augment_prob == 0.3
  assert vt.TransformConfig().augment == "flip"  # the demo's flip stays the default
  for bad in (dict(augment="mixup"), dict(augment_prob=1.5), dict(brightness_min=-0.1),
              dict(rotation_degrees=-1.0)):
    with pytest.raises(ValueError, match=next(iter(bad))):
      vt.TransformConfig(**bad)


def test_audio_tiling_matches_the_original():
  # VAANet: tile the [T, 32] MFCC 4096 // T + 1 times, keep the first 4096 frames, 16 x 256.
  for t in (1, 100, 4095, 4096, 5000):
    mfcc = np.random.default_rng(t).standard_normal((t, 32)).astype(np.float32)
    original = np.tile(mfcc, (4096 // t + 1, 1))[:4096]
    np.testing.assert_array_equal(vt.tile_audio(mfcc, 16, 256), original.reshape(16, 256, 32))
