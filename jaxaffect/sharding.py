"""Device mesh, logical-axis rules and shardings derived from abstract shapes.

The mesh always has the three named axes ("data", "fsdp", "tensor"), built with Auto axis types
so that Linen's logical constraints work. Model code only names logical axes; the config maps
them to mesh axes. Shardings are computed from `jax.eval_shape` output, never from concrete
arrays, so nothing is materialised on one device first.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
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


def _strip_axis(spec: P, axis: str) -> P:
  out = []
  for axes in spec:
    names = axes if isinstance(axes, tuple) else (axes,)
    kept = tuple(n for n in names if n is not None and n != axis)
    out.append(kept if len(kept) > 1 else (kept[0] if kept else None))
  return P(*out)


def gathered(sharding_tree, axis: str = "fsdp"):
  """The same shardings with `axis` removed: FSDP weights as used in compute.

  The step constrains parameters to these right before the forward, which makes XLA all-gather
  each FSDP shard for compute and reduce-scatter its gradient (the FSDP schedule). Leaving the
  choice to the partitioner is also correct in principle, but XLA:CPU (jax 0.10.2 and 0.12.0.1)
  computes wrong values for some plans on meshes where data, fsdp and tensor are all > 1.
  """
  return jax.tree.map(lambda s: NamedSharding(s.mesh, _strip_axis(s.spec, axis)), sharding_tree)


# The logical axis nn.scan adds to the parameters of a stack of identical layers. Such a
# parameter is gathered by the layer that uses it (gather_for_compute, one layer's slice per
# loop iteration), so the step's whole-tree gather must leave it alone: gathering it there
# would hold every layer's weights at once, which is what FSDP is meant to avoid.
LAYERS_AXIS = "layers"


def gathered_per_layer(abstract_boxed_params) -> Any:
  """A tree of bools like the (unboxed) params: True where the leaf has the "layers" logical
  axis, i.e. its scanned body gathers it per layer and the step must not gather it whole."""
  def visit(x):
    return isinstance(x, nn.Partitioned) and LAYERS_AXIS in tuple(x.names)
  return jax.tree.map(visit, abstract_boxed_params,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def gather_for_compute(x: jax.Array, logical_axes: Sequence[str | None], dtype=None,
                       axis: str = "fsdp") -> jax.Array:
  """`x` cast to `dtype` and constrained to its stored sharding without `axis`: a weight
  all-gathered over FSDP right where it is used, its gradient reduce-scattered back to the
  stored sharding (a custom VJP puts that constraint on the cotangent, in x's own dtype, so
  the reduction is not done in bfloat16). Inside a scanned layer this gathers one layer's
  weights per loop iteration. It is also the XLA:CPU exactness workaround (see `gathered`).
  A no-op cast outside a mesh or without logical rules (plain init/apply)."""
  dtype = x.dtype if dtype is None else jnp.dtype(dtype)
  mesh = jax.sharding.get_abstract_mesh()
  rules = nn.get_logical_axis_rules()
  if mesh.empty or not rules:
    return x.astype(dtype)
  # The same spec steps.build gives the stored parameter (logical rules, then _fit_spec).
  stored = _fit_spec(tuple(x.shape), nn.logical_to_mesh_axes(tuple(logical_axes), rules), mesh)
  return _gather_fn(x.dtype.name, dtype.name, stored, _strip_axis(stored, axis))(x)


def never_save_gathered(policy=None):
  """A jax.checkpoint policy: `policy` (None: save everything) except that a weight gathered by
  gather_for_compute is never saved for the backward pass, which re-gathers it from its shard.
  Without this, differentiating a scanned stack keeps every layer's gathered weights as
  residuals, as much memory as no FSDP at all. (Our gathers are the custom-VJP calls whose
  primal only casts and reshards; named exclusions cannot do it: the value feeding a name
  would be saved instead.)"""
  def wrapped(prim, *args, **params):
    if prim.name == "custom_vjp_call":
      jaxpr = getattr(params.get("call_jaxpr"), "jaxpr", None)
      if jaxpr is not None and all(e.primitive.name in _RESHARD_PRIMITIVES for e in jaxpr.eqns):
        return False
    return True if policy is None else policy(prim, *args, **params)
  return wrapped


_RESHARD_PRIMITIVES = ("convert_element_type", "sharding_constraint")


@functools.lru_cache(maxsize=None)
def _gather_fn(x_dtype: str, dtype: str, stored: P, used: P):
  @jax.custom_vjp
  def gather(x):
    return jax.lax.with_sharding_constraint(x.astype(dtype), used)

  def fwd(x):
    return gather(x), None

  def bwd(_, g):
    return (jax.lax.with_sharding_constraint(g.astype(x_dtype), stored),)

  gather.defvjp(fwd, bwd)
  return gather


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def describe(mesh: Mesh) -> str:
  return " ".join(f"{k}={v}" for k, v in mesh.shape.items())
