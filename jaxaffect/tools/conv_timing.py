"""Times the convolutions that XLA:CPU runs itself (Eigen), one by one, for profile_step.

Such a convolution's thunk hands the work to Eigen's thread pool and returns, so a trace of
the step times only its launch (a few ms of a step whose time is mostly theirs, in VAANet's
case). Here each one is rebuilt from its HLO instruction (operand shapes, window, dimension
labels, group counts) as `lax.conv_general_dilated`, compiled with the step's CPU options
and timed alone on random inputs. A convolution timed alone has the whole thread pool, as it
has inside the step when nothing else runs beside it.
"""
from __future__ import annotations

import dataclasses
import re
import time

import numpy as np

from jaxaffect.tools import hlo_text

_DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "f64": "float64"}
_CONV_LINE = re.compile(
    r"^\s*(?:ROOT )?%?(?P<name>[\w.\-]+) = (?P<dt>\w+)\[(?P<shape>[\d,]*)\]\S* "
    r"convolution\((?:\S+ )?%?(?P<lhs>[\w.\-]+), (?:\S+ )?%?(?P<rhs>[\w.\-]+)\), (?P<rest>.*)$",
    re.M)


@dataclasses.dataclass(frozen=True)
class Conv:
  """One HLO convolution, as `lax.conv_general_dilated` takes it."""
  dtype: str
  lhs_shape: tuple[int, ...]
  rhs_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  dimension_numbers: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
  strides: tuple[int, ...]
  padding: tuple[tuple[int, int], ...]
  lhs_dilation: tuple[int, ...]
  rhs_dilation: tuple[int, ...]
  rhs_reversal: tuple[int, ...]  # spatial dims of the kernel read reversed
  feature_group_count: int = 1
  batch_group_count: int = 1

  def apply(self, lhs, rhs):
    from jax import lax
    if self.rhs_reversal:
      spatial = self.dimension_numbers[1][2:]
      rhs = lax.rev(rhs, [spatial[d] for d in self.rhs_reversal])
    return lax.conv_general_dilated(
        lhs, rhs, self.strides, self.padding, self.lhs_dilation, self.rhs_dilation,
        lax.ConvDimensionNumbers(*self.dimension_numbers), self.feature_group_count,
        self.batch_group_count)


def _window_field(window: str, key: str, n: int, default: int) -> tuple[int, ...]:
  m = re.search(rf"\b{key}=([\dx]+)", window)
  return tuple(int(v) for v in m.group(1).split("x")) if m else (default,) * n


def _unfused(hlo: str) -> str:
  """The module's computations without the fused ones (a YNNPACK convolution sits in one)."""
  fused = hlo_text.fused_computations(hlo)
  return "\n".join(body for name, body in hlo_text.computations(hlo).items()
                   if name not in fused)


def parse_convolutions(hlo: str) -> dict[str, Conv]:
  """Instruction name -> Conv for every top-level `convolution` instruction of an HLO module's
  text (those inside fusions, YNNPACK's, have events of their own and are not listed)."""
  shapes = hlo_text.instruction_shapes(hlo)
  out = {}
  for m in _CONV_LINE.finditer(_unfused(hlo)):
    rest = m.group("rest")
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", rest)
    if m.group("dt") not in _DTYPES or not labels or m.group("lhs") not in shapes:
      continue
    lhs_l, rhs_l, out_l = labels.groups()
    n = len(lhs_l) - 2
    w = re.search(r"window=\{([^}]*)\}", rest)
    window = w.group(1) if w else ""
    pads = re.search(r"\bpad=([\d_x\-]+)", window)
    padding = (tuple(tuple(int(v) for v in p.split("_")) for p in pads.group(1).split("x"))
               if pads else ((0, 0),) * n)
    groups = {k: int(v) for k, v in re.findall(r"\b(feature_group_count|batch_group_count)="
                                                  r"(\d+)", rest)}
    spec = lambda lab, a, b: (lab.index(a), lab.index(b),  # noqa: E731
                              *(lab.index(str(i)) for i in range(n)))
    reversal = _window_field(window, "rhs_reversal", n, 0)
    out[m.group("name")] = Conv(
        dtype=_DTYPES[m.group("dt")], lhs_shape=shapes[m.group("lhs")],
        rhs_shape=shapes.get(m.group("rhs"), ()), out_shape=hlo_text.ints(m.group("shape")),
        dimension_numbers=(spec(lhs_l, "b", "f"), spec(rhs_l, "o", "i"), spec(out_l, "b", "f")),
        strides=_window_field(window, "stride", n, 1), padding=padding,
        lhs_dilation=_window_field(window, "lhs_dilate", n, 1),
        rhs_dilation=_window_field(window, "rhs_dilate", n, 1),
        rhs_reversal=tuple(i for i, r in enumerate(reversal) if r),
        feature_group_count=groups.get("feature_group_count", 1),
        batch_group_count=groups.get("batch_group_count", 1))
  return out


def time_alone(conv: Conv, *, compiler_options: dict | None = None, repeats: int = 3) -> float:
  """Median seconds of `conv` compiled alone (with `compiler_options`) on random inputs."""
  import jax
  import jax.numpy as jnp
  rng = np.random.default_rng(0)
  lhs = jnp.asarray(rng.standard_normal(conv.lhs_shape, np.float32), conv.dtype)
  rhs = jnp.asarray(rng.standard_normal(conv.rhs_shape, np.float32), conv.dtype)
  fn = jax.jit(conv.apply, compiler_options=compiler_options).lower(lhs, rhs).compile()
  if tuple(fn.out_info.shape) != conv.out_shape:
    raise ValueError(f"rebuilt convolution gives {fn.out_info.shape}, HLO says {conv.out_shape}")
  jax.block_until_ready(fn(lhs, rhs))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(lhs, rhs))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))
