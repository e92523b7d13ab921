"""TSL-Net losses: the vectorised seed search equals a loop transcription of the released
`utils.select_seed_act_score` (tsl_loss.select_seeds_loop, which the versus tool's PyTorch step
runs); loss terms against direct NumPy formulas; torch parity of the
frame/background/video terms when torch is installed."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from jaxaffect.methods.tsl import loss as tsl_loss


def _random_video(rng, T, num_points, bg_high):
  logits = rng.normal(0, 2.5, (T, 3)).astype(np.float32)
  # Runs of confident background so that thresholds are crossed in every pattern.
  for _ in range(rng.integers(0, 4)):
    s = rng.integers(0, T)
    logits[s:s + rng.integers(1, 8), 2] = bg_high + rng.normal(0, 1)
  sig = 1 / (1 + np.exp(-logits))
  p = np.concatenate([sig[:, :2] * (1 - sig[:, 2:]), sig[:, 2:]], 1).astype(np.float32)
  label = np.full(T, -1)
  pts = rng.choice(T, size=num_points, replace=False)
  label[pts] = rng.integers(0, 2, num_points)
  return p, label


@pytest.mark.parametrize("seed", range(6))
def test_seed_search_matches_loop(seed):
  rng = np.random.default_rng(seed)
  B, L = 8, 48
  ps, labels, lengths = [], [], []
  for b in range(B):
    T = int(rng.integers(12, L + 1))
    p, lab = _random_video(rng, T, int(rng.integers(1, 6)), bg_high=float(rng.choice([2., 4., 6.])))
    ps.append(np.pad(p, ((0, L - T), (0, 0))))
    labels.append(np.pad(lab, (0, L - T), constant_values=-1))
    lengths.append(T)
  p = np.stack(ps)
  point_label = np.stack(labels)
  valid = np.arange(L)[None] < np.array(lengths)[:, None]
  y = np.asarray(tsl_loss.point_rows(jnp.asarray(point_label)))
  act, bkg = jax.jit(tsl_loss.select_seeds)(jnp.asarray(p), jnp.asarray(y), jnp.asarray(valid))
  act, bkg = np.asarray(act), np.asarray(bkg)
  for b in range(B):
    T = lengths[b]
    ref_act, ref_bkg = tsl_loss.select_seeds_loop(p[b, :T], y[b, :T])
    np.testing.assert_array_equal(bkg[b, :T], ref_bkg, err_msg=f"video {b} background seeds")
    np.testing.assert_array_equal(act[b, :T], ref_act, err_msg=f"video {b} act seeds")
    assert not bkg[b, T:].any() and not act[b, T:].any()


def test_seed_search_hand_case():
  # 10 snippets, points at 3 (p) and 7 (n). Background high at 0-1 and at 5 only.
  bg = np.array([.97, .96, .2, 0, .1, .98, .1, 0, .3, .99], np.float32)
  cls = np.array([.01, .02, .6, 0, .5, .01, .7, 0, .2, .0], np.float32)
  p = np.stack([cls * 0, cls, bg], 1)
  label = np.full(10, -1)
  label[3], label[7] = 1, 0
  y = np.asarray(tsl_loss.point_rows(jnp.asarray(label[None])))[0]
  act, bkg = tsl_loss.select_seeds(jnp.asarray(p[None]), jnp.asarray(y[None]),
                                   jnp.ones((1, 10), bool))
  act, bkg = np.asarray(act[0]), np.asarray(bkg[0])
  # Left of the first point: two frames pass -> [0, 1] get the region max 0.97.
  # Between (4..6): one frame passes (5) -> only it, 0.98. Right (8, 9): 9 passes -> [9].
  np.testing.assert_array_equal(bkg, np.float32([.97, .97, 0, 0, 0, .98, 0, 0, 0, .99]))
  # Growth: left from 3: frame 2 (bg .2 <= .6) grows, frame 1 stops (bg .96 > .02).
  # Between forward from 3: frame 4 grows (.1 <= .5), frame 5 stops; backward from 7: frame 6.
  # Right from 7: frame 8 (.3 > .2) stops immediately.
  grown = [2, 4, 6]
  for t in range(10):
    if t in grown:
      np.testing.assert_array_equal(act[t], p[t])
    else:
      np.testing.assert_array_equal(act[t], y[t])


def test_point_rows():
  rows = np.asarray(tsl_loss.point_rows(jnp.asarray([[-1, 0, 1]])))[0]
  np.testing.assert_allclose(rows, [[0, 0, 0], [.9, .1, 0], [.1, .9, 0]], rtol=1e-6)


def test_loss_terms_against_numpy():
  rng = np.random.default_rng(0)
  p = rng.uniform(0.01, 0.99, (1, 6, 3)).astype(np.float32)
  label = np.array([[-1, 1, -1, -1, 0, -1]])
  y = np.asarray(tsl_loss.point_rows(jnp.asarray(label)))
  got = float(tsl_loss.frame_loss(jnp.asarray(p), jnp.asarray(y))[0])
  b = -(y * np.log(p) + (1 - y) * np.log(1 - p))
  f = ((1 - p) * y + p * (1 - y)) ** 2
  w = y.max(-1, keepdims=True)
  np.testing.assert_allclose(got, (f * b * w).sum() / w.sum(), rtol=1e-5)

  seed = np.array([[.97, .97, 0, 0, 0, .5]], np.float32)
  got = float(tsl_loss.background_loss(jnp.asarray(p), jnp.asarray(seed))[0])
  yb = np.zeros_like(p)
  yb[..., 2] = 1
  bb = -(yb * np.log(p) + (1 - yb) * np.log(1 - p))
  fb = ((1 - p) * yb + p * (1 - yb)) ** 2
  np.testing.assert_allclose(got, (fb * bb * seed[..., None]).sum() / seed.sum(), rtol=1e-5)

  q = np.array([[0.3, 0.7]], np.float32)
  d = np.array([[1.0, 3.0]], np.float32)
  got = float(tsl_loss.video_loss(jnp.asarray(q), jnp.asarray(d))[0])
  dn = d / d.sum()
  np.testing.assert_allclose(got, (dn * (np.log(dn) - np.log(q))).sum() / 2, rtol=1e-4)
  # A class without points: 0 ln 0 = 0.
  got = float(tsl_loss.video_loss(jnp.asarray(q), jnp.asarray([[0.0, 2.0]]))[0])
  np.testing.assert_allclose(got, -np.log(0.7) / 2, rtol=1e-6)


def test_empty_terms_are_zero_not_nan():
  p = jnp.full((1, 4, 3), 0.5)
  y = jnp.zeros((1, 4, 3))
  assert float(tsl_loss.frame_loss(p, y)[0]) == 0.0
  assert float(tsl_loss.background_loss(p, jnp.zeros((1, 4)))[0]) == 0.0
  assert float(tsl_loss.pseudo_action_loss(p, y)[0]) == 0.0
