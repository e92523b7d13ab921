"""--mode memory: per-device state and temporaries of the train step from an ahead-of-time
compile on emulated devices (nothing runs). FSDP must divide the state over the devices."""
import json
import os
import subprocess
import sys

import jax
import ml_collections
import pytest

import toy_method
from jaxaffect.tools import memory
from cpu_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _transformer_config(fsdp: int, data: int):
  c = toy_method.toy_config(data=data, fsdp=fsdp, tensor=1)
  c.method = "toy_method:TransformerMethod"
  c.batch_size = 16
  c.model.width = 256
  c.model.stack = ml_collections.ConfigDict(dict(num_layers=4, scan=True, num_heads=4,
                                                 head_dim=64, mlp_dim=1024))
  return c


def test_fsdp_divides_the_state_and_not_the_temporaries_grow():
  one = memory.run(_transformer_config(fsdp=1, data=8))
  eight = memory.run(_transformer_config(fsdp=8, data=1))
  assert one["devices"] == eight["devices"] == 8
  # Adam: params + two moments; almost every byte is in the stack's kernels, split 8 ways.
  assert one["opt_state_bytes_per_device"] > 1.9 * one["params_bytes_per_device"]
  ratio = one["state_bytes_per_device"] / eight["state_bytes_per_device"]
  assert 7.0 < ratio <= 8.0, ratio
  assert eight["temp_bytes_per_device"] <= one["temp_bytes_per_device"]


def test_frozen_parameters_keep_the_optimizer_state_sharded():
  """optax.multi_transform puts MaskedNode where a group has no slot; the moments of the
  trained parameters must still follow their parameters' shardings (they were replicated)."""
  c = _transformer_config(fsdp=8, data=1)
  c.frozen_params = ("Dense_0/.*",)
  frozen = memory.run(c)
  free = memory.run(_transformer_config(fsdp=8, data=1))
  assert frozen["opt_state_bytes_per_device"] <= free["opt_state_bytes_per_device"]
  assert frozen["opt_state_bytes_per_device"] < 1.1 * 2 * frozen["params_bytes_per_device"]


def test_memory_mode_cli_last_line():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(4))
  r = subprocess.run([sys.executable, "-m", "jaxaffect.main", "--config", "tests/configs/toy.py",
                      "--mode", "memory", "--config.mesh.fsdp=4", "--config.mesh.data=1"],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  last = r.stdout.strip().splitlines()[-1]
  fields = dict(kv.split("=") for kv in last.split())
  assert set(fields) == {"devices", "state_bytes_per_device", "temp_bytes_per_device"}, last
  assert fields["devices"] == "4" and int(fields["state_bytes_per_device"]) > 0
  assert "fsdp=4" in r.stdout
