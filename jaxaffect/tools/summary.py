"""--mode summary: parameter counts and forward FLOPs per example, without data or training.

What is counted and the output: README.md, section "Running a config" (Modes).
"""
from __future__ import annotations

import jax
import numpy as np

from jaxaffect import flops
from jaxaffect import sharding as shd
from jaxaffect import trainer


def param_counts(s) -> tuple[int, int]:
  params = s.abstract_state["params"]
  sizes = jax.tree.map(lambda x: int(np.prod(x.shape)), params)
  total = sum(jax.tree.leaves(sizes))
  trainable = sum(n for n, m in zip(jax.tree.leaves(sizes), jax.tree.leaves(s.trainable_mask))
                  if m)
  return total, trainable


def forward_flops(s, batch_size: int | None = None) -> float:
  """Matmul + convolution FLOPs of one eval forward, per example (from the jaxpr)."""
  b = batch_size or shd.batch_divisor(s.mesh)
  example = s.method.example_batch(b)
  example["_mask"] = np.ones((b,), bool)
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s.batch_sharding)
                    for k, v in example.items()}
  with s.context():
    return flops.count_flops(s.eval_step, s.abstract_state, abstract_batch) / b


def run(config) -> dict:
  s = trainer.setup(config, prepare_data=False)
  total, trainable = param_counts(s)
  flops = forward_flops(s)
  if jax.process_index() == 0:
    print(f"method={config.method} mesh: {shd.describe(s.mesh)}")
    print(f"total params:     {total:,} ({total / 1e6:.2f}M)")
    print(f"trainable params: {trainable:,} ({trainable / 1e6:.2f}M)")
    print(f"forward FLOPs per example: {flops:.4g}")
    print(f"total_params={total} trainable_params={trainable} flops_per_example={flops:.6g}",
          flush=True)
  return {"total_params": total, "trainable_params": trainable, "flops_per_example": flops}
