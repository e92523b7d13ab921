"""Device mesh, logical-axis rules and shardings derived from abstract shapes.

The mesh always has the three named axes ("data", "fsdp", "tensor"), built with Auto axis types
so that Linen's logical constraints work. Model code only names logical axes; the config maps
them to mesh axes. Shardings are computed from `jax.eval_shape` output, never from concrete
arrays, so nothing is materialised on one device first.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxaffect import config_lib

MESH_AXES = ("data", "fsdp", "tensor")
# Mesh axes over which the batch dimension is split.
BATCH_AXES = ("data", "fsdp")

# The rules live with the config keys every config has (config_lib.base_config).
DEFAULT_RULES = config_lib.DEFAULT_SHARDING_RULES


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  """Resolves the (data, fsdp, tensor) sizes; at most one may be -1 (fill)."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  fill = [i for i, s in enumerate(sizes) if s == -1]
  if len(fill) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh: axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
  if fill:
    if num_devices % known:
      raise ValueError(f"mesh: {num_devices} devices cannot be split into "
                       f"{dict(zip(MESH_AXES, sizes))}")
    sizes[fill[0]] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f"mesh: {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"but {num_devices} are available")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices: Sequence[Any] | None = None) -> Mesh:
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def rules_from_config(config) -> tuple:
  rules = config.get("sharding_rules", None)
  if rules is None:
    return DEFAULT_RULES
  return tuple((str(k), tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in rules)


def _fit_spec(shape: tuple[int, ...], spec: P, mesh: Mesh) -> P:
  """Drops mesh axes from dims they do not divide (tiny models on big meshes stay valid)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      out.append(None)
      continue
    names = axes if isinstance(axes, tuple) else (axes,)
    kept = []
    size = 1
    for name in names:
      if dim % (size * mesh.shape[name]) == 0:
        kept.append(name)
        size *= mesh.shape[name]
    out.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
  return P(*out)


def state_shardings(abstract_boxed_state, mesh: Mesh, rules) -> Any:
  """NamedShardings for an abstract (boxed) state from its logical partition specs."""
  logical_specs = nn.get_partition_spec(abstract_boxed_state)
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  unboxed = unbox_abstract(abstract_boxed_state)

  def leaf_sharding(x, spec):
    spec = spec if isinstance(spec, P) else P()
    return NamedSharding(mesh, _fit_spec(tuple(x.shape), spec, mesh))

  return jax.tree.map(leaf_sharding, unboxed, mesh_specs,
                      is_leaf=lambda x: isinstance(x, P) or x is None)


def unbox_abstract(tree):
  """Unboxes Partitioned leaves without applying sharding constraints (safe eagerly)."""
  return jax.tree.map(
      lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.Partitioned) else x,
      tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def gathered(sharding_tree, axis: str = "fsdp"):
  """The same shardings with `axis` removed: FSDP weights as used in compute.

  The step constrains parameters to these right before the forward, which makes XLA all-gather
  each FSDP shard for compute and reduce-scatter its gradient (the FSDP schedule). Leaving the
  choice to the partitioner is also correct in principle, but XLA:CPU (jax 0.10.2 and 0.12.0.1)
  computes wrong values for some plans on meshes where data, fsdp and tensor are all > 1.
  """
  def strip(s):
    spec = []
    for axes in s.spec:
      names = axes if isinstance(axes, tuple) else (axes,)
      kept = tuple(n for n in names if n is not None and n != axis)
      spec.append(kept if len(kept) > 1 else (kept[0] if kept else None))
    return NamedSharding(s.mesh, P(*spec))
  return jax.tree.map(strip, sharding_tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def describe(mesh: Mesh) -> str:
  return " ".join(f"{k}={v}" for k, v in mesh.shape.items())
