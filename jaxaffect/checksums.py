"""Sharding-independent checksums of arrays, computed on the devices.

Each array is read as 32-bit words (its bits, not its values) and reduced to two uint32 sums: the
plain sum and a position-weighted one (odd weights, so any single flipped bit changes both; the
weights catch swapped elements). Integer sums wrap exactly in any order, so the result is the
same for any mesh, any number of processes and any reduction tree: a checkpoint written on one
mesh is verified after restoring onto another. Only two scalars per array leave the devices.
"""
from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_K = np.uint32(0x9E3779B1)  # golden-ratio multiplier: spreads neighbouring positions


def _words(x: jax.Array) -> jax.Array:
  """The array's bits as uint32 words, same shape (plus a trailing 2 for 64-bit dtypes)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = jnp.dtype(x.dtype).itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size in (1, 2):
    unsigned = jnp.uint8 if size == 1 else jnp.uint16
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  if size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # [..., 2]
  raise TypeError(f"no checksum for dtype {x.dtype}")


def _sums(x: jax.Array) -> jax.Array:
  w = _words(x)
  # Flat position without reshaping (a reshape of a sharded array could move data).
  pos = jnp.zeros(w.shape, jnp.uint32)
  stride = np.uint32(1)
  for d in reversed(range(w.ndim)):
    pos = pos + jax.lax.broadcasted_iota(jnp.uint32, w.shape, d) * stride
    stride = np.uint32((int(stride) * w.shape[d]) % 2**32)
  weight = pos * _K * np.uint32(2) + np.uint32(1)
  return jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * weight, dtype=jnp.uint32)])


@functools.cache
def _jitted():
  return jax.jit(lambda tree: jax.tree.map(_sums, tree))


def of_arrays(tree: Any) -> dict[str, dict]:
  """{"['params']['w']": {"shape": [...], "dtype": "float32", "sum": [s, ws]}} per leaf."""
  sums = jax.device_get(_jitted()(tree))
  out = {}
  for (path, x), (_, s) in zip(jax.tree_util.tree_leaves_with_path(tree),
                               jax.tree_util.tree_leaves_with_path(sums)):
    out[jax.tree_util.keystr(path)] = {"shape": list(x.shape), "dtype": str(x.dtype),
                                       "sum": [int(v) for v in np.asarray(s)]}
  return out


def of_named(arrays: dict[str, Any]) -> dict[str, list[int]]:
  """{name: [sum, weighted sum]} for a flat {name: array} mapping."""
  return {name: rec["sum"] for name, rec in zip(arrays, of_arrays(list(arrays.values())).values())}


def structure(tree: Any) -> dict[str, dict]:
  """Shapes and dtypes only (abstract trees too), keyed like `of_arrays`."""
  return {jax.tree_util.keystr(p): {"shape": list(x.shape), "dtype": str(x.dtype)}
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def of_json(obj: Any) -> str:
  """SHA-256 of a JSON value in canonical form (key order and whitespace do not matter)."""
  return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
                        ).hexdigest()


def shape_differences(saved: dict[str, dict], current: dict[str, dict], limit: int = 3
                      ) -> list[str]:
  """Human-readable differences of two `structure` records (missing, extra, reshaped leaves)."""
  out = []
  # Parameters first: they name the layer; optimizer moments repeat them.
  order = lambda k: (not k.startswith("['params']"), k.startswith("['opt_state']"), k)
  for k in sorted(set(saved) | set(current), key=order):
    a, b = saved.get(k), current.get(k)
    if a is None:
      out.append(f"{k} is new")
    elif b is None:
      out.append(f"{k} is gone")
    elif (a["shape"], a["dtype"]) != (b["shape"], b["dtype"]):
      out.append(f"{k} was {tuple(a['shape'])} {a['dtype']}, now {tuple(b['shape'])} "
                 f"{b['dtype']}")
  if len(out) > limit:
    out = out[:limit] + [f"{len(out) - limit} more"]
  return out
