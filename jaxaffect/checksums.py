"""Sharding-independent checksums of arrays, computed where the arrays live.

Each array is read as 32-bit words (its bits, not its values; 8-bit and 16-bit types widen to
one word, 64-bit types split into two) and reduced to two uint32 sums: the plain sum and a
position-weighted one (odd weights, so any single flipped bit changes both; the weights catch
swapped elements). Integer sums wrap exactly in any order, so each process sums the shards it
holds (one replica of each), the processes add their partial sums, and the result is the same
for any mesh and any number of processes: a checkpoint written on one mesh verifies after
restoring onto another. Nothing is compiled (a jitted version cost ~17 s of CPU compile for
BPM-GCN's 1,254 state leaves), and only two integers per array cross between processes.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

_K = 0x9E3779B1          # golden-ratio multiplier: spreads neighbouring positions
_MASK = (1 << 32) - 1
_CHUNK = 1 << 22         # words per block: bounds the uint64 temporaries


def _words(a: np.ndarray) -> np.ndarray:
  """The array's bits as uint32 words: same shape, plus a trailing 2 for 64-bit dtypes."""
  a = np.ascontiguousarray(a)
  if a.dtype == np.bool_:
    return a.astype(np.uint32)
  size = a.dtype.itemsize
  if size == 4:
    return a.view(np.uint32)
  if size in (1, 2):
    return a.view(np.uint8 if size == 1 else np.uint16).astype(np.uint32)
  if size == 8:
    return a.view(np.uint32).reshape(a.shape + (2,))
  raise TypeError(f"no checksum for dtype {a.dtype}")


def _partial(block: np.ndarray, start: tuple[int, ...], global_shape: tuple[int, ...]
             ) -> tuple[int, int]:
  """(plain, weighted) sums mod 2^64 of one block whose first element sits at `start` of an
  array of `global_shape` (both in elements)."""
  w = _words(block)
  wide = w.ndim > len(global_shape)
  shape = tuple(global_shape) + ((2,) if wide else ())
  origin = tuple(start) + ((0,) if wide else ())
  strides = [1] * len(shape)
  for d in range(len(shape) - 2, -1, -1):
    strides[d] = strides[d + 1] * shape[d + 1]
  plain = weighted = 0
  rows = max(1, _CHUNK // max(1, w[0].size if w.ndim else 1)) if w.ndim else 1
  for r0 in range(0, w.shape[0] if w.ndim else 1, rows):
    chunk = w[r0:r0 + rows] if w.ndim else w.reshape(())
    pos = np.zeros(chunk.shape, np.uint64)
    for d in range(chunk.ndim):
      first = origin[d] + (r0 if d == 0 else 0)
      idx = (np.arange(chunk.shape[d], dtype=np.uint64) + np.uint64(first)) * np.uint64(
          strides[d])
      pos += idx.reshape((-1,) + (1,) * (chunk.ndim - d - 1))
    weight = (pos * np.uint64(_K) * np.uint64(2) + np.uint64(1)) & np.uint64(_MASK)
    c = chunk.astype(np.uint64)
    plain += int(np.sum(c, dtype=np.uint64))
    weighted += int(np.sum(c * weight, dtype=np.uint64))
  return plain & _MASK, weighted & _MASK


def _local_sums(x: Any) -> tuple[int, int]:
  """This process's share: one replica of each shard it holds (all of a host array)."""
  if not isinstance(x, jax.Array):
    a = np.asarray(x)
    return _partial(a, (0,) * a.ndim, a.shape)
  plain = weighted = 0
  for shard in x.addressable_shards:
    if shard.replica_id != 0:
      continue
    start = tuple(s.start or 0 for s in shard.index) if x.ndim else ()
    p, w = _partial(np.asarray(shard.data), start, x.shape)
    plain, weighted = plain + p, weighted + w
  return plain & _MASK, weighted & _MASK


def of_arrays(tree: Any) -> dict[str, dict]:
  """{"['params']['w']": {"shape": [...], "dtype": "float32", "sum": [s, ws]}} per leaf.
  Collective when the tree holds jax.Arrays and several processes run: all must call it."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  sums = np.array([_local_sums(x) for _, x in leaves], np.uint64).reshape(-1, 2)
  distributed = jax.process_count() > 1 and any(isinstance(x, jax.Array) for _, x in leaves)
  if distributed:
    every = np.asarray(multihost_utils.process_allgather(sums))  # [P, n, 2]
    host = np.array([not isinstance(x, jax.Array) for _, x in leaves])
    sums = np.where(host[:, None], sums, np.sum(every, axis=0, dtype=np.uint64))
  sums = sums & np.uint64(_MASK)
  return {jax.tree_util.keystr(path): {"shape": list(np.shape(x)), "dtype": str(x.dtype),
                                       "sum": [int(v) for v in s]}
          for (path, x), s in zip(leaves, sums)}


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
