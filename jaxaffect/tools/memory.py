"""--mode memory: what one device holds for the configured mesh, from an ahead-of-time compile
of the train step (nothing runs, no data is read; emulate a pod's devices on a CPU with
XLA_FLAGS=--xla_force_host_platform_device_count=N).

State bytes come from the shardings (params, optimizer state, model state, EMA: each leaf's
shard on one device); temporaries are XLA's figure for the compiled step. Output and fields:
README.md, "Running a config" (Modes).
"""
from __future__ import annotations

import math

import jax
import numpy as np

from jaxaffect import sharding as shd
from jaxaffect import trainer


def _shard_bytes(leaf) -> int:
  return math.prod(leaf.sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize


def state_bytes_per_device(abstract_state) -> dict[str, int]:
  """Bytes of each part of the train state that one device holds (the largest shard)."""
  return {part: sum(_shard_bytes(x) for x in jax.tree.leaves(tree))
          for part, tree in abstract_state.items()}


def run(config) -> dict:
  s = trainer.setup(config, prepare_data=False)
  gb = int(config.batch_size)
  small = s.method.example_batch(shd.batch_divisor(s.mesh))  # its shapes, at the global batch
  batch = {k: jax.ShapeDtypeStruct((gb,) + v.shape[1:], v.dtype, sharding=s.batch_sharding)
           for k, v in small.items()}
  with s.context():
    compiled = s.train_step.lower(s.abstract_state, batch, jax.random.key(0)).compile()
  mem = compiled.memory_analysis()
  parts = state_bytes_per_device(s.abstract_state)
  state = sum(parts.values())
  batch_bytes = sum(_shard_bytes(x) for x in batch.values())
  temp = int(getattr(mem, "temp_size_in_bytes", 0)) if mem is not None else -1
  res = {"devices": jax.device_count(), "mesh": shd.describe(s.mesh), "global_batch": gb,
         "state_bytes_per_device": state, "batch_bytes_per_device": batch_bytes,
         "temp_bytes_per_device": temp, **{f"{k}_bytes_per_device": v for k, v in parts.items()
                                           if k != "step"}}
  res["total_bytes_per_device"] = state + batch_bytes + max(temp, 0)
  if jax.process_index() == 0:
    gib = lambda b: f"{b / 2**30:.3f} GiB"  # noqa: E731
    print(f"method={config.method} mesh: {res['mesh']} ({res['devices']} devices), "
          f"global batch {gb}")
    for k in ("params", "opt_state", "model_state", "ema_params"):
      if f"{k}_bytes_per_device" in res:
        print(f"  {k:12s} {gib(res[f'{k}_bytes_per_device'])} per device")
    print(f"  state        {gib(state)} per device (the above together)")
    print(f"  batch        {gib(batch_bytes)} per device")
    print(f"  temporaries  {gib(temp)} per device (XLA, the compiled train step)")
    print(f"  total        {gib(res['total_bytes_per_device'])} per device")
    print(f"devices={res['devices']} state_bytes_per_device={state} "
          f"temp_bytes_per_device={temp}", flush=True)
  return res
