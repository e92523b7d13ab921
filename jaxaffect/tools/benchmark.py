"""--mode benchmark: compile time, step time, examples/s, memory, FLOPs/MFU, input pipeline.

What is timed, the output and how MFU is computed: README.md, section "Running a config"
(Modes); measured figures: docs/results.md.
"""
from __future__ import annotations

import json
import resource
import statistics
import time

import jax
import numpy as np

from jaxaffect import flops
from jaxaffect import sharding as shd
from jaxaffect import steps as steps_lib
from jaxaffect import trainer
from jaxaffect.data import throughput
from jaxaffect.errors import UserError

def _random_batch(example: dict, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  out = {}
  for k, v in example.items():
    if v.dtype == np.uint8:
      out[k] = rng.integers(0, 256, v.shape, dtype=np.uint8)
    elif np.issubdtype(v.dtype, np.integer):
      out[k] = rng.integers(0, 2, v.shape).astype(v.dtype)
    else:
      out[k] = rng.standard_normal(v.shape).astype(v.dtype)
  return out


def _cost_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def run(config, num_steps: int = 10, input_batches: int = 10) -> dict:
  s = trainer.setup(config, prepare_data=False)
  gb = int(config.batch_size)
  local = _random_batch(s.method.example_batch(gb // jax.process_count()))
  res: dict = {"device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
               "mesh": shd.describe(s.mesh), "global_batch": gb}
  with s.context():
    batch = steps_lib.make_global_batch(local, s.batch_sharding)
    state = s.init_fn(jax.random.key(0))
    rng = jax.random.key(0)
    t0 = time.perf_counter()
    compiled = s.train_step.lower(state, batch, rng).compile()
    res["compile_s"] = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    if mem is not None:
      res["compiled_temp_bytes"] = int(getattr(mem, "temp_size_in_bytes", 0))
      res["compiled_argument_bytes"] = int(getattr(mem, "argument_size_in_bytes", 0))
    res["flops_per_step"] = float(flops.count_flops(s.train_step, state, batch, rng))
    res["xla_cost_analysis_flops_per_step"] = _cost_flops(compiled)
    state, m = compiled(state, batch, rng)  # warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(num_steps):
      t = time.perf_counter()
      state, m = compiled(state, batch, rng)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t)
  res["step_time_s_median"] = statistics.median(times)
  res["step_time_s_min"] = min(times)
  res["examples_per_s"] = gb / res["step_time_s_median"]
  peak = flops.peak_flops(config)
  if peak and np.isfinite(res["flops_per_step"]):
    res["mfu"] = res["flops_per_step"] / res["step_time_s_median"] / (peak * jax.device_count())
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    res["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  res["host_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  try:
    if jax.process_index() == 0:
      s.method.prepare_data()
    it = s.method.train_iterator(seed=0, global_batch_size=gb,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())
    # The first batch (workers, file opening) is not throughput.
    res["input_examples_per_s"] = throughput.measure_examples_per_sec(
        it, input_batches, gb // jax.process_count())
    # How many train steps' worth of examples the pipeline delivers per step (per process):
    # below 1 the input pipeline is the bottleneck.
    res["input_over_step_examples"] = res["input_examples_per_s"] / (
        res["examples_per_s"] / jax.process_count())
  except (UserError, FileNotFoundError, ImportError) as e:
    res["input_examples_per_s"] = f"skipped: {e}"
  if jax.process_index() == 0:
    for k, v in res.items():
      print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    print(json.dumps(res), flush=True)
  return res
