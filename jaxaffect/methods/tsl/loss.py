"""TSL-Net losses exactly as the released `train.py` codes them.

All functions take one batch of padded videos: P = cas_sigmoid_fuse [B, L, 3] (n, p, background),
`valid` [B, L] (real snippets), point rows y [B, L, 3] (0.9 / 0.1 label smoothing, background 0).
Every term is computed per video and averaged over the batch, which equals the original's
accumulation of single-video losses (it trains with batch 1 and averages 16 of them).

The seed search (LACP-style background seeds and pseudo-action growth, `utils.select_seed_act_
score` in the original, a Python loop on the CPU) is vectorised here with segment reductions and
prefix counts; tests/test_tsl_loss.py checks it against `select_seeds_loop`, a transcription of
the original's loop, on random inputs.
Where the original divides by zero (a video without points or without background seeds) the
term is 0 here instead of NaN.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
BKG_THRESHOLD = 0.95


def point_rows(point_label: Array, num_classes: int = 2, smooth: float = 0.1) -> Array:
  """[B, L] int (-1 = none, else class) -> [B, L, C + 1] rows: 1 - smooth on the class, smooth on
  the other classes, 0 on background (the original's temp_anno, 0.9 / 0.1)."""
  has = point_label >= 0
  onehot = jax.nn.one_hot(jnp.maximum(point_label, 0), num_classes)
  rows = jnp.where(has[..., None], jnp.where(onehot > 0, 1.0 - smooth, smooth), 0.0)
  return jnp.concatenate([rows, jnp.zeros_like(rows[..., :1])], axis=-1)


def bce(p: Array, y: Array) -> Array:
  """torch.nn.BCELoss(reduction='none'): logs clamped at -100."""
  return -(y * jnp.maximum(jnp.log(p), -100.0) + (1.0 - y) * jnp.maximum(jnp.log1p(-p), -100.0))


def _select_seeds_one(p: Array, y: Array, valid: Array, thresh: float) -> tuple[Array, Array]:
  """One video: p [L, 3], y [L, 3], valid [L] -> (act_seed [L, 3], bkg_seed [L])."""
  n = p.shape[0]
  t = jnp.arange(n)
  bg = p[:, -1]
  is_pt = (jnp.max(y, -1) > 0) & valid
  num_pts = jnp.sum(is_pt)
  region = jnp.cumsum(is_pt)                      # 0 before the first point, m after the last
  in_reg = valid & ~is_pt
  seg = jnp.where(in_reg, region, n + 1)          # n + 1 collects padding and point frames
  nseg = n + 2
  passing = in_reg & (bg >= thresh)
  rmax = jax.ops.segment_max(jnp.where(in_reg, bg, -jnp.inf), seg, nseg)
  npass = jax.ops.segment_sum(passing.astype(jnp.int32), seg, nseg)
  first = jax.ops.segment_min(jnp.where(passing, t, n), seg, nseg)
  last = jax.ops.segment_max(jnp.where(passing, t, -1), seg, nseg)
  at_max = in_reg & (bg == rmax[seg])
  argmax = jax.ops.segment_min(jnp.where(at_max, t, n), seg, nseg)  # first maximum, as torch
  m_t, np_t, f_t, l_t, a_t = rmax[seg], npass[seg], first[seg], last[seg], argmax[seg]
  any_pass = np_t >= 1
  left = in_reg & (region == 0)
  right = in_reg & (region == num_pts)
  between = in_reg & (region > 0) & (region < num_pts)
  seed_left = left & (t <= jnp.where(any_pass, l_t, a_t))
  seed_right = right & (t >= jnp.where(any_pass, f_t, a_t))
  # Between points the code needs the *sum* of seeded values (each = region max) to reach 2.
  span = np_t.astype(jnp.float32) * m_t >= 2.0
  seed_between = between & jnp.where(span, (t >= f_t) & (t <= l_t), passing | (t == a_t))
  is_seed = (seed_left | seed_right | seed_between) & (num_pts > 0)
  bkg_seed = jnp.where(is_seed, m_t, 0.0)

  # Growth from every point outwards while bg <= max class score and the seed value < 1.
  cond = in_reg & (bg <= jnp.max(p[:, :-1], -1)) & (bkg_seed < 1.0)
  breaks = jnp.cumsum(~cond)                      # # non-growable frames in [0, t]
  prev_pt = jax.lax.cummax(jnp.where(is_pt, t, -1))
  next_pt = jax.lax.cummin(jnp.where(is_pt, t, n), reverse=True)
  safe = lambda i: breaks[jnp.clip(i, 0, n - 1)]
  fwd = cond & (prev_pt >= 0) & (breaks - safe(prev_pt) == 0)
  before_t = breaks - (~cond).astype(breaks.dtype)
  bwd = cond & (next_pt < n) & (safe(next_pt - 1) - before_t == 0)
  grown = fwd | bwd
  act_seed = jnp.where(grown[:, None], p, y)
  return act_seed, bkg_seed


def select_seeds(p: Array, y: Array, valid: Array, thresh: float = BKG_THRESHOLD):
  """Batched seed search on detached scores: (act_seed [B, L, 3], bkg_seed [B, L])."""
  p = jax.lax.stop_gradient(p)
  return jax.vmap(lambda a, b, c: _select_seeds_one(a, b, c, thresh))(p, y, valid)


def select_seeds_loop(p: np.ndarray, y: np.ndarray, thresh: float = BKG_THRESHOLD):
  """The seed search as the original runs it: a Python loop on the host, one video (all frames
  real, at least one point). The PyTorch step of `jaxaffect.tools.versus` uses it, and
  tests/test_tsl_loss.py checks `select_seeds` against it.

  p: [T, 3] float32 detached scores, y: [T, 3] point rows -> (act_seed [T, 3], bkg_seed [T]),
  float32 like the torch tensors."""
  p = p.astype(np.float32)
  agn = y.max(1)
  bkg = np.zeros(len(p), np.float32)
  act = y.copy()
  bg = p[:, -1]
  pts = np.nonzero(agn)[0]
  T = len(p)

  def grow(j):
    if bg[j] <= p[j, :-1].max() and bkg[j] < 1:
      act[j] = p[j]
      return True
    return False

  if pts[0] > 0:
    reg = bg[:pts[0]]
    view = bkg[:pts[0]]
    view[reg >= thresh] = reg.max()
    if view.sum(dtype=np.float32) >= 1:
      view[:np.nonzero(view)[0][-1]] = reg.max()
    else:
      view[:reg.argmax() + 1] = reg.max()
    for j in range(pts[0] - 1, -1, -1):
      if not grow(j):
        break
  if pts[-1] < T - 1:
    reg = bg[pts[-1] + 1:]
    view = bkg[pts[-1] + 1:]
    view[reg >= thresh] = reg.max()
    if view.sum(dtype=np.float32) >= 1:
      view[np.nonzero(view)[0][0]:] = reg.max()
    else:
      view[reg.argmax():] = reg.max()
    for j in range(pts[-1] + 1, T):
      if not grow(j):
        break
  for i in range(len(pts) - 1):
    if pts[i + 1] - pts[i] <= 1:
      continue
    reg = bg[pts[i] + 1:pts[i + 1]]
    view = bkg[pts[i] + 1:pts[i + 1]]
    view[reg >= thresh] = reg.max()
    if view.sum(dtype=np.float32) >= 2:
      nz = np.nonzero(view)[0]
      view[nz[0] + 1:nz[-1]] = reg.max()
    else:
      view[reg.argmax()] = reg.max()
    for j in range(pts[i] + 1, pts[i + 1]):
      if not grow(j):
        break
    for j in range(pts[i + 1] - 1, pts[i], -1):
      if not grow(j):
        break
  return act, bkg


def _safe_div(num: Array, den: Array) -> Array:
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def frame_loss(p: Array, y: Array) -> Array:
  """Focal BCE on the labelled points, normalised by sum_t max_c y_t. -> [B]."""
  focal = jnp.square((1.0 - p) * y + p * (1.0 - y))
  w = jnp.max(y, -1, keepdims=True)
  return _safe_div(jnp.sum(focal * bce(p, y) * w, (1, 2)), jnp.sum(w, (1, 2)))


def pseudo_action_loss(p: Array, act_seed: Array) -> Array:
  """0.5 x focal BCE towards the grown soft rows, weighted by them (hard focal masks). -> [B]."""
  s = jax.lax.stop_gradient(act_seed)
  focal = jnp.square((1.0 - p) * (s > 0.5) + p * (s < 0.5))
  return 0.5 * _safe_div(jnp.sum(focal * bce(p, s) * s, (1, 2)), jnp.sum(jnp.max(s, -1), 1))


def background_loss(p: Array, bkg_seed: Array) -> Array:
  """Focal BCE towards (0, 0, 1) on seed frames weighted by the soft seed value. -> [B]."""
  w = jax.lax.stop_gradient(bkg_seed)[..., None]
  y = jnp.zeros_like(p).at[..., -1].set(1.0)
  focal = jnp.square((1.0 - p) * y + p * (1.0 - y))
  return _safe_div(jnp.sum(focal * bce(p, y) * w, (1, 2)), jnp.sum(w, (1, 2)))


def video_loss(video_distribution: Array, point_count: Array) -> Array:
  """torch KLDivLoss(log q, d) with 'mean' reduction, d = point counts / #points. -> [B].

  Per video: sum_c d_c (ln d_c - ln q_c) / C; 0 ln 0 = 0 as torch's xlogy."""
  d = _safe_div(point_count, jnp.sum(point_count, -1, keepdims=True))
  q = jnp.maximum(video_distribution, jnp.finfo(jnp.float32).tiny)
  kl = jax.scipy.special.xlogy(d, d) - d * jnp.log(q)
  return jnp.mean(kl, -1)
