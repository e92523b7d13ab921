"""Readers of a compiled program's HLO text (`compiled.as_text()`), shared by profile_step
and conv_timing."""
from __future__ import annotations

import re

_SHAPE_LINE = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = \w+\[([\d,]*)\]", re.M)


def computations(hlo: str) -> dict[str, str]:
  """Computation name -> its body (the lines between its header and its closing brace). The
  entry computation is keyed "ENTRY"."""
  bodies, cur, buf = {}, None, []
  for line in hlo.splitlines():
    head = re.match(r"%?([\w.\-]+) .*\{$", line)
    if head and not line.startswith(" "):
      cur, buf = head.group(1), []
    elif line.startswith("}") and cur:
      bodies[cur] = "\n".join(buf)
      cur = None
    elif cur:
      buf.append(line)
  return bodies


def fused_computations(hlo: str) -> set[str]:
  """Names of the computations that fusion instructions call (their instructions run inside
  the fusion's thunk)."""
  return set(re.findall(r" fusion\(.*?calls=%?([\w.\-]+)", hlo))


def ints(s: str) -> tuple[int, ...]:
  """'2,3,4' -> (2, 3, 4); '' -> ()."""
  return tuple(int(v) for v in s.split(",") if v)


def instruction_shapes(hlo: str) -> dict[str, tuple[int, ...]]:
  """Instruction (and parameter) name -> array shape, for every array-valued line (names are
  unique in a module)."""
  return {name: ints(dims) for name, dims in _SHAPE_LINE.findall(hlo)}
