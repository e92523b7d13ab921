"""Patch and tubelet embeddings and fixed position tables for vision/audio transformers.

A non-overlapping patch embedding (kernel = stride) is a reshape and one matmul: exact, and
faster than a convolution on every backend. The kernel keeps nn.Conv's layout
([*patch, in, out]) so that PyTorch Conv2d/Conv3d weights convert by a transpose.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def patchify(x: Array, patch: Sequence[int]) -> Array:
  """[B, *S, C] -> [B, prod(S // patch), prod(patch) * C]: tokens in raster order of the patch
  grid (as PyTorch's conv output flattened over its spatial dims), each token's values ordered
  (*patch, C)."""
  b, *spatial, c = x.shape
  patch = tuple(patch)
  if len(patch) != len(spatial) or any(s % p for s, p in zip(spatial, patch)):
    raise ValueError(f"patchify: input {tuple(spatial)} is not divisible by patch {patch}")
  grid = [s // p for s, p in zip(spatial, patch)]
  nd = len(patch)
  x = x.reshape(b, *[v for g, p in zip(grid, patch) for v in (g, p)], c)
  # [B, g0, p0, g1, p1, ..., C] -> [B, g0, g1, ..., p0, p1, ..., C]
  perm = (0, *range(1, 2 * nd, 2), *range(2, 2 * nd + 1, 2), 2 * nd + 1)
  return x.transpose(perm).reshape(b, math.prod(grid), math.prod(patch) * c)


class PatchEmbed(nn.Module):
  """Non-overlapping patches (2D) or tubelets (3D) -> tokens [B, N, features].

  Equal to nn.Conv(features, kernel_size=patch, strides=patch, padding="VALID") flattened over
  the grid, with the same variables (kernel [*patch, in, features], bias)."""
  features: int
  patch: Sequence[int]
  dtype: Any = None
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    patch = tuple(self.patch)
    axes = (None,) * (len(patch) + 1) + ("embed",)
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, axes),
                        patch + (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                           ("embed",)),
                      (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    tokens = patchify(x, patch) @ kernel.reshape(-1, self.features) + bias
    return nn.with_logical_constraint(tokens, ("act_batch", "act_len", "act_emb"))


def sincos_table(num_positions: int, dim: int) -> np.ndarray:
  """The fixed sinusoid table of "Attention is all you need" as VideoMAE lays it out:
  column j has angle pos / 10000^(2 * (j // 2) / dim), sin on even and cos on odd columns.
  Computed in float64 and cast once (float32 arithmetic drifts by ~1e-4 at large positions)."""
  pos = np.arange(num_positions, dtype=np.float64)[:, None]
  j = np.arange(dim)
  angle = pos / np.power(10000.0, 2 * (j // 2) / dim)
  table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
  return table.astype(np.float32)


def crop_position_grid(table: np.ndarray, grid: tuple[int, int], new_grid: tuple[int, int]
                       ) -> np.ndarray:
  """Centre-crops (or keeps) a learned 2D position table [g0 * g1, D] to [n0 * n1, D], as AST
  adapts its AudioSet 12 x 101 grid to shorter inputs: the window along each axis starts at
  g // 2 - n // 2. Larger grids are refused (AST interpolates there; not needed by MART)."""
  (g0, g1), (n0, n1) = grid, new_grid
  if table.shape[0] != g0 * g1:
    raise ValueError(f"position table has {table.shape[0]} rows, grid {grid} needs {g0 * g1}")
  if n0 > g0 or n1 > g1:
    raise ValueError(f"cannot crop a {grid} position grid to a larger {new_grid}")
  t = table.reshape(g0, g1, -1)
  s0, s1 = g0 // 2 - n0 // 2, g1 // 2 - n1 // 2
  return t[s0:s0 + n0, s1:s1 + n1].reshape(n0 * n1, -1)
