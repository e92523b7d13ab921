"""Helpers for train-mode converter parity tests: PyTorch gradients laid out by a converter, and
a per-leaf comparison of two gradient trees relative to each leaf's scale."""
from __future__ import annotations

import jax
import numpy as np

_TINY = float(np.finfo(np.float64).tiny)


def grad_state_dict(module) -> dict[str, np.ndarray]:
  """The module's state_dict with every parameter replaced by its .grad (zeros where a parameter
  got none, e.g. a frozen backbone or an unused head). Gradients have the parameters' shapes, so
  the project's converter maps them onto the Flax tree exactly as it maps weights; the buffers
  (BN statistics after the forward) are kept, so one conversion gives the gradients as "params"
  and the updated statistics as "batch_stats"."""
  sd = {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}
  for k, p in module.named_parameters():
    sd[k] = np.zeros_like(sd[k]) if p.grad is None else p.grad.detach().numpy().copy()
  return sd


def scaled_grad_diffs(ours, theirs, floor_frac: float) -> dict[str, float]:
  """max |ours - theirs| / max(max |theirs|, floor_frac * the largest |theirs| of the tree), per
  leaf path (0 where both are exactly 0). Both trees must have the same structure."""
  flat_o = {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(ours)}
  flat_t = {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(theirs)}
  assert flat_o.keys() == flat_t.keys(), sorted(set(flat_o) ^ set(flat_t))[:10]
  top = max(float(np.abs(v).max()) for v in flat_t.values())
  out = {}
  for k, gt in flat_t.items():
    assert flat_o[k].shape == gt.shape, (k, flat_o[k].shape, gt.shape)
    scale = max(float(np.abs(gt).max()), floor_frac * top, _TINY)
    out[k] = float(np.abs(flat_o[k] - gt).max()) / scale
  return out


def max_scaled_diff(a, b) -> float:
  """max |a - b| / max |b|, for outputs."""
  a, b = np.asarray(a), np.asarray(b)
  return float(np.abs(a - b).max()) / max(float(np.abs(b).max()), _TINY)


def to_float64(tree):
  """NumPy float64 copies of a tree's leaves (converters store float32)."""
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def numpy_state_dict(module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def assert_close(ours, theirs, tol, floor=0.0, what=""):
  """Every leaf within `tol` of its scale (scaled_grad_diffs); prints the worst margin."""
  diffs = scaled_grad_diffs(ours, theirs, floor)
  worst = max(diffs, key=diffs.get)
  print(f"{what}: worst {worst} {diffs[worst]:.2e}")  # pytest -s shows the measured margins
  assert diffs[worst] < tol, (what, worst, diffs[worst])


def assert_outputs(ours, theirs, tol, what):
  diffs = {k: max_scaled_diff(ours[k], theirs[k]) for k in theirs}
  worst = max(diffs, key=diffs.get)
  print(f"{what}: worst {worst} {diffs[worst]:.2e}")
  assert diffs[worst] < tol, (what, worst, diffs[worst])
