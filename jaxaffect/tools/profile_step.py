"""Where a config's jitted train (or eval) step spends its time: one step under jax.profiler,
each XLA thunk event mapped to its HLO instruction and summed by op kind and source op.

  python -m jaxaffect.tools.profile_step --config configs/<x>.py[:arg] [--config.k=v ...]
      [--eval] [--top 25] [--trace_dir DIR]

Usage and output: README, "Speed versus the originals".
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

from jaxaffect import config_lib
from jaxaffect.errors import UserError, one_line
from jaxaffect.tools import conv_timing, hlo_text


def _instructions(hlo: str) -> dict[str, tuple[str, str]]:
  """HLO instruction name -> (kind, source op name). kind is the op, or for a fusion the
  heaviest op it calls (convolution > dot > the fusion's own name)."""
  bodies = hlo_text.computations(hlo)
  out = {}
  for line in hlo.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (?:\([^=]*?\)|\S+) ([\w\-]+)\((.*)", line)
    if not m:
      continue
    name, op, rest = m.groups()
    calls = re.search(r"calls=%?([\w.\-]+)", rest)
    body = bodies.get(calls.group(1), "") if calls else ""
    kind = ("convolution" if "convolution(" in body else "dot" if " dot(" in body
            else op)
    meta = re.search(r'op_name="([^"]*)"', rest)
    out[name] = (kind, meta.group(1) if meta else "")
  return out


def ynn_fused_ops(hlo: str) -> collections.Counter:
  """How many of each op ("dot", "convolution", "reduce") sit inside the YNNPACK fusions of a
  compiled program's HLO text."""
  bodies = hlo_text.computations(hlo)
  ops = collections.Counter()
  for callee in re.findall(r"calls=%?([\w.\-]+).*__ynn_fusion", hlo):
    ops.update(re.findall(r"= \S+ (dot|convolution|reduce)\(", bodies.get(callee, "")))
  return ops


def _eigen_convolutions(hlo: str) -> int:
  """Convolutions XLA:CPU runs itself (Eigen), not in a YNNPACK fusion. Their thunks hand the
  work to Eigen's pool and return: the trace shows a launch of a few ms, not the work."""
  return hlo.count(" convolution(") - ynn_fused_ops(hlo)["convolution"]


# The kind of the rows of XLA:CPU's own convolutions, each compiled and timed on its own.
CONV_ALONE = "convolution (timed alone)"


def _source(op_name: str) -> str:
  """'jit(train_step)/.../l5_p/tcn1/conv/...c,cd->...d/dot_general' -> 'tcn1/conv ... dot_general'
  with the layer index dropped, so the same op of every block adds up."""
  parts = [p for p in op_name.split("/")[1:] if not re.fullmatch(r"(jvp|transpose)\(.*\)", p)]
  parts = [re.sub(r"_\d+$|\d+_[pm]$", "", p) for p in parts]
  return "/".join(parts[-3:])


def profile(config, *, eval_step: bool = False, trace_dir: str | None = None,
            time_convolutions: bool = True) -> dict:
  import jax
  from jax.profiler import ProfileData

  from jaxaffect import steps as steps_lib
  from jaxaffect import trainer
  from jaxaffect.tools.benchmark import _random_batch
  s = trainer.setup(config, prepare_data=False)
  platform = jax.devices()[0].platform
  gb = int(config.batch_size)
  local = _random_batch(s.method.example_batch(gb // jax.process_count()))
  with s.context():
    batch = steps_lib.make_global_batch(local, s.batch_sharding)
    state = s.init_fn(jax.random.key(0))
    rng = jax.random.key(0)
    t0 = time.perf_counter()
    if eval_step:
      compiled = s.eval_step.lower(state, batch).compile()
      run = lambda st: (st, compiled(st, batch))  # noqa: E731
    else:
      compiled = s.train_step.lower(state, batch, rng).compile()
      run = lambda st: compiled(st, batch, rng)  # noqa: E731
    compile_s = time.perf_counter() - t0
    state, out = run(state)  # warm-up
    jax.block_until_ready(out)
    trace_dir = trace_dir or tempfile.mkdtemp(prefix="jaxaffect-profile-")
    t0 = time.perf_counter()
    with jax.profiler.trace(trace_dir):
      state, out = run(state)
      jax.block_until_ready(out)
    step_s = time.perf_counter() - t0
  files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  if not files:
    raise UserError(f"jax.profiler wrote no trace under {trace_dir}")
  data = ProfileData.from_file(max(files, key=os.path.getmtime))
  hlo = compiled.as_text()
  instr = _instructions(hlo)
  # On an accelerator the kernels run on "/device:..." planes (the host planes only hold their
  # launches); a kernel event is named after the CUDA kernel (cuBLAS/cuDNN names, fusions) and
  # carries its HLO instruction in the "hlo_op" stat. On the CPU the thunks are host events.
  planes = [p for p in data.planes if p.name.startswith("/device:")] or list(data.planes)
  on_device = planes[0].name.startswith("/device:")
  # XLA:CPU's own convolutions: their events time a launch only, so they are timed alone.
  eigen = {} if on_device or not time_convolutions else conv_timing.parse_convolutions(hlo)
  runs = collections.Counter()
  by_kind, by_source, by_kernel, unmatched = (collections.Counter() for _ in range(4))
  total = 0

  def add(kind, src, kernel, ns):
    nonlocal total
    by_kind[kind] += ns
    by_source[f"{kind:12s} {_source(src)}"] += ns
    by_kernel[kernel[:60]] += ns
    total += ns

  for plane in planes:
    for line in plane.lines:
      for ev in line.events:
        op = dict(ev.stats).get("hlo_op", ev.name)
        if op not in instr:
          # Host: executor, thread-pool and Python events. Device: memcpys, and kernels that
          # ran inside a CUDA graph (XLA's command buffers) without their HLO annotation.
          if on_device:
            unmatched[ev.name[:80]] += ev.duration_ns
          continue
        if op in eigen:
          runs[op] += 1
          continue
        add(*instr[op], ev.name, ev.duration_ns)
  timed, untimed, alone_s = _time_convolutions(eigen, runs, instr, add, platform)
  return {"compile_s": compile_s, "profiled_step_s": step_s, "trace_dir": trace_dir,
          "op_time_s": total / 1e9, "by_kind": by_kind, "by_source": by_source,
          "by_kernel": by_kernel, "unmatched": unmatched,
          "unmatched_s": sum(unmatched.values()) / 1e9, "on_device": on_device,
          "planes": [p.name for p in planes],
          "eigen_convolutions": 0 if on_device else _eigen_convolutions(hlo),
          "convolutions_timed_alone": timed, "convolutions_not_timed": untimed,
          "convolution_timing_s": alone_s}


def _time_convolutions(eigen, runs, instr, add, platform) -> tuple[int, list[str], float]:
  """Adds each Eigen convolution that the traced step ran, timed alone, times its runs (a
  scanned body runs its convolutions once per layer; an untaken branch's not at all).
  Returns (how many were timed, the ones that could not be rebuilt, seconds spent timing)."""
  from jaxaffect import xla_options
  options = xla_options.for_step(platform)
  alone, untimed, t0 = {}, [], time.perf_counter()
  for name, conv in eigen.items():
    if not runs[name]:
      continue
    try:
      if conv not in alone:
        alone[conv] = conv_timing.time_alone(conv, compiler_options=options)
    except Exception as e:  # noqa: BLE001 - a shape we cannot rebuild is reported, not fatal
      untimed.append(f"{name}: {one_line(e)[:120]}")
      continue
    add(CONV_ALONE, instr[name][1], f"{name} (timed alone)", alone[conv] * runs[name] * 1e9)
  return sum(1 for n in eigen if runs[n]) - len(untimed), untimed, time.perf_counter() - t0


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m jaxaffect.tools.profile_step",
                              description="Per-op time of one jitted step (README).")
  p.add_argument("--config", required=True, help="config file path[:arg]; --config.k=v overrides")
  p.add_argument("--eval", action="store_true", help="profile the eval step instead")
  p.add_argument("--top", type=int, default=25, help="rows of the per-source table")
  p.add_argument("--trace_dir", default=None,
                 help="keep the trace here (TensorBoard/Perfetto); default: a temp dir")
  p.add_argument("--no_conv_timing", action="store_true",
                 help="on CPU, do not time XLA's own (Eigen) convolutions alone")
  p.add_argument("--json", default=None,
                 help="also write every row (by kind, source op and kernel name) to this file")
  return p


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    args, config = config_lib.tool_args(_parser(), argv)
    res = profile(config, eval_step=args.eval, trace_dir=args.trace_dir,
                  time_convolutions=not args.no_conv_timing)
  except UserError as e:
    print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
    return 1
  total = res["op_time_s"] or 1e-12
  print(f"compile {res['compile_s']:.1f} s; profiled step {res['profiled_step_s']:.3f} s; "
        f"op time summed over threads {res['op_time_s']:.3f} s; trace {res['trace_dir']}")
  if res["convolutions_timed_alone"]:
    print(f"note: {res['convolutions_timed_alone']} convolutions run on XLA:CPU's Eigen path, "
          "whose trace events time only their launch; each was compiled and timed alone "
          f"(rows '{CONV_ALONE}', {res['convolution_timing_s']:.1f} s of timing)")
  for line in res["convolutions_not_timed"]:
    print(f"note: convolution not timed: {line}")
  if res["eigen_convolutions"] and not res["convolutions_timed_alone"]:
    print(f"note: {res['eigen_convolutions']} convolutions run on XLA:CPU's Eigen path, whose "
          "trace events time only their launch: the step's time not listed below is mostly "
          "theirs")
  print("by op kind:")
  for k, v in res["by_kind"].most_common():
    print(f"  {v / 1e9:8.3f} s {100 * v / 1e9 / total:5.1f}%  {k}")
  print(f"by source op (top {args.top}; layer indices dropped):")
  for k, v in res["by_source"].most_common(args.top):
    print(f"  {v / 1e9:8.3f} s {100 * v / 1e9 / total:5.1f}%  {k}")
  if res["on_device"]:
    print(f"by kernel (top {args.top}):")
    for k, v in res["by_kernel"].most_common(args.top):
      print(f"  {v / 1e9:8.3f} s {100 * v / 1e9 / total:5.1f}%  {k}")
    if res["unmatched"]:
      # XLA_FLAGS=--xla_gpu_enable_command_buffer= makes every kernel its own annotated launch.
      print(f"device events with no HLO op: {res['unmatched_s']:.3f} s (command buffers: "
            "set XLA_FLAGS=--xla_gpu_enable_command_buffer= to see inside them); top:")
      for k, v in res["unmatched"].most_common(10):
        print(f"  {v / 1e9:8.3f} s  {k}")
  if args.json:
    import json
    with open(args.json, "w") as f:
      json.dump({k: (dict(v.most_common()) if isinstance(v, collections.Counter) else v)
                 for k, v in res.items()}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
