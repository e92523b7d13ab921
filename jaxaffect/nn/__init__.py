"""Shared Linen layers every method builds on (no trainer, data or checkpointing imports)."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax


def count_params(tree: Any) -> int:
  """Number of scalars in a params tree, or in variables['params'] when given variables
  (batch_stats and other collections are not counted). Works on arrays, ShapeDtypeStructs
  and Partitioned-boxed leaves."""
  if isinstance(tree, dict) and "params" in tree:
    tree = tree["params"]
  tree = nn.meta.unbox(tree)
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))
