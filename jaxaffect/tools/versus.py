"""Our train step (and eval step) against the PyTorch original's, side by side on this machine.

  python -m jaxaffect.tools.versus --config configs/<x>.py[:arg] [--config.k=v ...]
      [--steps 10] [--warmup 2] [--eval_steps N] [--torch_compile] [--seed 0] [--in_process]

Each side runs in its own spawned process (its own host RSS, thread pools and CUDA stack; the
parent steps them in turn over pipes and times nothing itself; `--in_process` runs both in this
process). Both train on one batch of the config's shape (the method's
`torch_reference.versus_batch`, drawn from --seed by the PyTorch side and sent to ours), each
resident on its device: ours is the jitted train step exactly as `--mode benchmark` builds it
(trainer.setup, make_global_batch), on JAX's default backend; the PyTorch side is the
original's step (forward, the original's loss, backward, the original's optimizer as the config
sets it) built by the method's `jaxaffect/methods/<name>/torch_reference.py`
(`versus_reference`), on cuda when available, else on the CPU with
torch.set_num_threads(CPUs available to this process); XLA:CPU uses all of them by default.
Steps alternate (ours, torch, ours, torch, ...) so drift in the machine's load hits both sides. `--warmup` steps per side come first (the first is ours' compile, torch's first
step); then `--steps` timed train steps per side, then `--eval_steps` (default `--steps`; 0:
none) eval steps. Reported per side and step: median, mean, min/max and quartiles; compile time
(ours: first call minus the median call; torch: its first step, and the same difference); the
host RSS while each side steps (peak, and the transient on top of the RSS before its step,
sampled every 5 ms), its process's peak RSS and the RSS its set-up added; device peaks where
the backends report them (JAX's peak_bytes_in_use, torch.cuda.max_memory_allocated); MFU of
each side where the device's peak is known (jaxaffect.flops: our step's model FLOPs).
The last line is `ours_s=A torch_s=B ratio=A/B` (train-step medians, seconds); the line before
it is every figure as one JSON object.

A method's reference module (found through the registry) defines
  versus_batch(config, example, rng) -> the batch both sides train on (the port's layout), and
  versus_reference(config, method, batch, ctx) -> {"train": fn, "eval": fn, "recipe": str,
      "module": the torch module}: one original train step / eval forward each call, built with
      `ctx` (TorchContext: device, tensors, the config's optimizer in torch, autocast, compile).
Its modules are the ones the converter parity tests check against our converted models
(outputs, BN statistics and gradients in train mode); its docstring says how its loss and
optimizer follow the original's training loop. With model.dtype=bfloat16 the PyTorch forward
and loss run under torch.autocast(bfloat16). torch is the test extra: only the PyTorch side's
builder imports it (`run` checks it is installed), never the library.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import os
import re
import statistics
import sys
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

from jaxaffect import config_lib
from jaxaffect.errors import UserError, one_line


# ---- measurement helpers -------------------------------------------------------------------------

def _rss_bytes() -> int:
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except OSError:  # not Linux: the lifetime peak is the best available figure
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _RssPeak:
  """Peak resident memory while a block runs (a thread polls it; polling costs ~10 us/5 ms)."""

  def __init__(self, interval_s: float = 0.005):
    self.interval_s = interval_s
    self.start = self.peak = 0
    self._stop = threading.Event()

  def __enter__(self):
    self.start = self.peak = _rss_bytes()
    self._stop.clear()
    self._thread = threading.Thread(target=self._poll, daemon=True)
    self._thread.start()
    return self

  def _poll(self):
    while not self._stop.wait(self.interval_s):
      self.peak = max(self.peak, _rss_bytes())

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, _rss_bytes())


class _Side:
  """One side's step functions, timings and memory, in the process that runs them."""

  def __init__(self, name: str, train: Callable[[], Any], evaluate: Callable[[], Any],
               info: dict, setup_rss: int, device_peak: Callable[[], int | None]):
    self.name, self.fns, self.info = name, {"train": train, "eval": evaluate}, info
    self.setup_rss, self.device_peak = setup_rss, device_peak
    self.first: dict[str, float] = {}
    self.times: dict[str, list[float]] = {"train": [], "eval": []}
    self.first_rss = {"peak": 0, "transient": 0}
    self.rss = {"peak": 0, "transient": 0}

  def step(self, kind: str, timed: bool) -> None:
    with _RssPeak() as mem:
      t = time.perf_counter()
      self.fns[kind]()
      dt = time.perf_counter() - t
    first = kind not in self.first
    rss = self.first_rss if first else self.rss
    rss["peak"] = max(rss["peak"], mem.peak)
    rss["transient"] = max(rss["transient"], mem.peak - mem.start)
    if first:
      self.first[kind] = dt
    elif timed:
      self.times[kind].append(dt)

  def report(self) -> dict:
    import resource
    r: dict[str, Any] = {k: spread(v) for k, v in self.times.items() if v}
    for kind in list(r):
      r[f"first_{kind}_s"] = self.first[kind]
      # ours: the compile; torch: its first step's extra (allocator, oneDNN primitives)
      r[f"{kind}_compile_s"] = self.first[kind] - r[kind]["median_s"]
    r["host_rss_setup_bytes"] = self.setup_rss
    r["host_rss_first_step_peak_bytes"] = self.first_rss["peak"]
    r["host_rss_step_peak_bytes"] = self.rss["peak"]
    r["host_rss_step_transient_bytes"] = self.rss["transient"]
    r["host_rss_process_peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = self.device_peak()
    if peak is not None:
      r["device_peak_bytes"] = int(peak)
    return r


class _Remote:
  """A side in its own process (spawned: neither framework is forked), stepped over a pipe."""

  def __init__(self, mp, name: str, config, opts: dict):
    self.name = name
    self.conn, child = mp.Pipe()
    self.proc = mp.Process(target=_worker, args=(name, config, opts, child), daemon=True)
    self.proc.start()
    child.close()
    self.info: dict = {}

  def _call(self, *msg):
    if msg:
      self.conn.send(msg)
    try:
      kind, payload = self.conn.recv()
    except (EOFError, ConnectionError):
      self.proc.join(5)
      raise UserError(f"versus: the {self.name} process died (exit code "
                      f"{self.proc.exitcode})") from None
    if kind == "error":
      raise UserError(payload)
    return payload

  def ready(self) -> dict | None:
    """Waits for the side's set-up; returns the batch it drew (the PyTorch side's) or None."""
    self.info, batch = self._call()
    return batch

  def step(self, kind: str, timed: bool) -> None:
    self._call("step", kind, timed)

  def report(self) -> dict:
    return self._call("report")

  def close(self, kill: bool = False) -> None:
    if self.proc.is_alive() and not kill:
      try:
        self.conn.send(("quit",))
      except (BrokenPipeError, OSError):
        pass
      self.proc.join(30)
    if self.proc.is_alive():
      self.proc.terminate()
      self.proc.join(5)


def _worker(name: str, config, opts: dict, conn) -> None:
  try:
    if name == "torch":  # jax only prepares the reference's inputs there, on the CPU
      os.environ["JAX_PLATFORMS"] = "cpu"
    side = _BUILDERS[name](config, **opts)
    conn.send(("ready", (side.info, getattr(side, "batch", None))))
    while True:
      msg = conn.recv()
      if msg[0] == "step":
        side.step(msg[1], msg[2])
        conn.send(("ok", None))
      elif msg[0] == "report":
        conn.send(("report", side.report()))
      else:
        return
  except Exception as e:  # pylint: disable=broad-except
    if not isinstance(e, UserError):
      import traceback
      traceback.print_exc()
      e = UserError(f"versus ({name} side): {type(e).__name__}: {one_line(e)}")
    conn.send(("error", one_line(e)))


def spread(times: Sequence[float]) -> dict[str, float]:
  """Median, mean, min, max and quartiles (inclusive method; one sample gives it everywhere)."""
  if not times:
    return {}
  q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
  return {"n": len(times), "median_s": statistics.median(times), "mean_s": statistics.fmean(times),
          "min_s": min(times), "max_s": max(times), "q1_s": q[0], "q3_s": q[2]}


# ---- the PyTorch side ----------------------------------------------------------------------------

class TorchContext:
  """What a method's `versus_reference(config, method, batch, ctx)` builds its step with: the
  device, tensors on it, the config's optimizer as torch's, autocast and torch.compile as asked.
  Reference modules use it by duck typing (methods never import tools)."""

  def __init__(self, torch, config, device, compile_model: bool = False):
    self.torch, self.config, self.device = torch, config, device
    self.compile_model = compile_model
    dtype = str(config.model.get("dtype", "float32"))
    self.amp = torch.bfloat16 if dtype in ("bfloat16", "bf16") else None

  def tensor(self, x: np.ndarray):
    return self.torch.from_numpy(np.array(x, order="C")).to(self.device)  # a writable copy

  def compile(self, module):
    return self.torch.compile(module) if self.compile_model else module

  def autocast(self):
    return self.torch.autocast(self.device.type, dtype=self.amp or self.torch.bfloat16,
                               enabled=self.amp is not None)

  def optimizer(self, named_parameters):
    """config.optimizer in torch: adam (L2 added to the gradient, as torch.optim.Adam), adamw,
    sgd (momentum, nesterov); lr_multipliers match the '/'-joined torch parameter names, as
    jaxaffect.optim matches the Flax paths. Parameters without requires_grad are left out (a
    frozen backbone). The schedule's value does not change a step's cost: the base lr is used."""
    torch, opt = self.torch, self.config.optimizer
    lr, wd = float(opt.learning_rate), float(opt.get("weight_decay", 0.0))
    mults = [(re.compile(p), float(f)) for p, f in (opt.get("lr_multipliers") or [])]
    groups: dict[float, list] = {}
    for name, p in named_parameters:
      if p.requires_grad:
        path = name.replace(".", "/")
        factor = next((f for r, f in mults if r.fullmatch(path)), 1.0)
        groups.setdefault(factor, []).append(p)
    params = [{"params": ps, "lr": lr * f} for f, ps in sorted(groups.items())]
    name = str(opt.get("name", "adam"))
    betas = (float(opt.get("b1", 0.9)), float(opt.get("b2", 0.999)))
    if name == "adam":
      return torch.optim.Adam(params, lr=lr, betas=betas, eps=float(opt.get("eps", 1e-8)),
                              weight_decay=wd)
    if name == "adamw":
      return torch.optim.AdamW(params, lr=lr, betas=betas, eps=float(opt.get("eps", 1e-8)),
                               weight_decay=wd)
    if name == "sgd":
      return torch.optim.SGD(params, lr=lr, momentum=float(opt.get("momentum", 0.0)),
                             nesterov=bool(opt.get("nesterov", False)), weight_decay=wd)
    raise UserError(f"versus: optimizer.name={name!r} has no PyTorch counterpart here")

  def update(self, optimizer, parameters) -> None:
    clip = float(self.config.optimizer.get("grad_clip_norm", 0.0) or 0.0)
    if clip > 0:
      self.torch.nn.utils.clip_grad_norm_(list(parameters), clip)
    optimizer.step()

  def describe_optimizer(self, optimizer) -> str:
    d = optimizer.defaults
    keys = [k for k in ("betas", "eps", "momentum", "nesterov", "weight_decay") if k in d]
    lrs = "/".join(f"{g['lr']:g}" for g in optimizer.param_groups)
    n = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    return (f"{type(optimizer).__name__}(lr {lrs}, " + ", ".join(f"{k} {d[k]}" for k in keys)
            + f") over {n:,} trainable parameters")

  def sync(self) -> None:
    if self.device.type == "cuda":
      self.torch.cuda.synchronize(self.device)


def reference_module(method_name: str, *, load: bool = True):
  """jaxaffect.methods.<name>.torch_reference through the registry (UserError if none; with
  load=False only checked, so that torch is not imported); a method named "module:Class"
  (defined outside the package) keeps its hooks in that module."""
  from jaxaffect import method as method_lib
  if ":" in method_name:
    module = importlib.import_module(method_name.partition(":")[0])
    if not hasattr(module, "versus_reference"):
      raise UserError(f"versus: {module.__name__} defines no versus_reference")
    return module
  method_lib.method_package(method_name)  # names the known methods if this one is not
  if importlib.util.find_spec(f"jaxaffect.methods.{method_name}.torch_reference") is None:
    raise UserError(f"versus: method {method_name!r} has no PyTorch reference "
                    f"(jaxaffect/methods/{method_name}/torch_reference.py)")
  if not load:
    return None
  module = method_lib.method_package(method_name, "torch_reference")
  if not hasattr(module, "versus_reference"):  # a twin for parity tests only (MART so far)
    raise UserError(f"versus: {module.__name__} has no train-step reference (versus_reference)")
  return module


# ---- the two sides -------------------------------------------------------------------------------

def _build_ours(config, *, seed: int, local: dict) -> _Side:
  """The jitted train/eval steps as `--mode benchmark` builds them, on a device-resident copy
  of `local`, the PyTorch side's batch (the reference module that draws it imports torch)."""
  import jax  # deferred (with the modules below): config errors come before jax loads
  from jaxaffect import flops
  from jaxaffect import sharding as shd
  from jaxaffect import steps as steps_lib
  from jaxaffect import trainer
  if jax.process_count() > 1:
    raise UserError("versus runs in one process per side (both sides on this machine)")
  rss0 = _rss_bytes()
  s = trainer.setup(config, prepare_data=False)
  keys = s.predict_keys if s.predict_keys is not None else tuple(local)
  with s.context():
    batch = steps_lib.make_global_batch(local, s.batch_sharding)
    eval_batch = {k: batch[k] for k in keys if k in batch}
    holder = {"state": s.init_fn(jax.random.key(seed))}
    jax.block_until_ready(holder["state"])
    rng = jax.random.key(seed)
    # The model FLOPs of one step (the same model as the reference's: MFU for both sides).
    step_flops = {"train": flops.count_flops(s.train_step, holder["state"], batch, rng),
                  "eval": flops.count_flops(s.eval_step, holder["state"], eval_batch)}

  def train():
    with s.context():
      holder["state"], m = s.train_step(holder["state"], batch, rng)
    jax.block_until_ready(m)

  def evaluate():
    with s.context():
      jax.block_until_ready(s.eval_step(holder["state"], eval_batch))

  def device_peak():
    return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")

  info = {"jax_version": jax.__version__, "backend": jax.default_backend(),
          "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
          "mesh": shd.describe(s.mesh), "batch": {k: list(v.shape) for k, v in local.items()},
          "flops_per_step": {k: float(v) for k, v in step_flops.items()},
          "peak_flops_per_device": flops.peak_flops(config)}
  return _Side("ours", train, evaluate, info, _rss_bytes() - rss0, device_peak)


def _build_torch(config, *, seed: int, cpus: int, torch_compile: bool = False) -> _Side:
  """The method's PyTorch reference step (torch_reference.versus_reference)."""
  import torch  # deferred: the test extra, needed only here
  from jaxaffect import method as method_lib
  torch.set_num_threads(cpus)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  ctx = TorchContext(torch, config, device, torch_compile)
  rss0 = _rss_bytes()
  method = method_lib.get_method(config)
  ref_mod = reference_module(config.method)
  # The batch both sides train on, in the port's layout.
  local = ref_mod.versus_batch(config, method.example_batch(int(config.batch_size)),
                               np.random.default_rng(seed))
  torch.manual_seed(seed)
  ref = ref_mod.versus_reference(config, method, local, ctx)
  ctx.sync()

  def synced(fn):
    def call():
      fn()
      ctx.sync()
    return call

  def device_peak():
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

  if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(device)
  info = {"torch_version": torch.__version__, "device": str(device),
          "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                          else "cpu"),
          "threads": torch.get_num_threads(), "compile": torch_compile,
          "autocast": "bfloat16" if ctx.amp is not None else None, "recipe": ref["recipe"]}
  side = _Side("torch", synced(ref["train"]), synced(ref["eval"]), info, _rss_bytes() - rss0,
               device_peak)
  side.batch = local
  return side


_BUILDERS = {"ours": _build_ours, "torch": _build_torch}


# ---- the run -------------------------------------------------------------------------------------

def run(config, *, steps: int = 10, warmup: int = 2, eval_steps: int | None = None,
        torch_compile: bool = False, seed: int = 0, in_process: bool = False,
        log: Callable[[str], None] = functools.partial(print, flush=True)) -> dict:
  """Times both sides; returns every figure (the JSON line) and prints the report via `log`.

  Each side runs in its own process (spawned), so each has its own host RSS and thread pools
  and the two CUDA stacks never share a process; `in_process` runs both here (faster to start;
  the RSS figures then include the other side's memory)."""
  if importlib.util.find_spec("torch") is None:
    raise UserError("versus needs PyTorch: pip install torch (the test extra)")
  if steps < 1 or warmup < 1:
    raise UserError(f"versus: --steps ({steps}) and --warmup ({warmup}) must be >= 1")
  if int(config.get("grad_accum_steps", 1) or 1) != 1:
    raise UserError("versus: grad_accum_steps must be 1 (the references take whole batches)")
  reference_module(config.method, load=False)  # fails before any start-up
  eval_steps = steps if eval_steps is None else eval_steps
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  # On a GPU both frameworks share the device: JAX must not take 75% of it up front.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  torch_opts = {"seed": seed, "cpus": cpus, "torch_compile": torch_compile}
  remotes: list[_Remote] = []
  failed = True
  try:
    # The reference first: a setting it lacks fails before anything compiles, and its module
    # draws the batch both sides train on.
    if in_process:
      theirs = _build_torch(config, **torch_opts)
      ours = _build_ours(config, seed=seed, local=theirs.batch)
    else:
      import multiprocessing
      mp = multiprocessing.get_context("spawn")
      theirs = _Remote(mp, "torch", config, torch_opts)
      remotes.append(theirs)
      batch = theirs.ready()
      ours = _Remote(mp, "ours", config, {"seed": seed, "local": batch})
      remotes.append(ours)
      ours.ready()
    log(_header(config, ours.info, theirs.info, cpus, in_process))
    sides = (ours, theirs)
    for _ in range(warmup):
      for side in sides:
        side.step("train", False)
    for _ in range(steps):
      for side in sides:
        side.step("train", True)
    for _ in range(1 + eval_steps if eval_steps else 0):  # ours' first eval call compiles
      for side in sides:
        side.step("eval", True)
    reports = {"ours": ours.report(), "torch": theirs.report()}
    failed = False
  finally:
    for r in remotes:
      r.close(kill=failed)

  res: dict[str, Any] = {
      "method": config.method, "global_batch": int(config.batch_size), "cpus": cpus,
      "in_process": in_process, "steps": steps, "warmup": warmup, "eval_steps": eval_steps,
      "ours_info": ours.info, "torch_info": theirs.info, **reports}
  for kind in ("train", "eval"):
    if kind in reports["ours"] and kind in reports["torch"]:
      res[f"ratio_{kind}"] = (reports["ours"][kind]["median_s"]
                              / reports["torch"][kind]["median_s"])
  peak = ours.info.get("peak_flops_per_device")
  for name in ("ours", "torch"):
    for kind in ("train", "eval"):
      if peak and kind in reports[name]:
        reports[name][f"{kind}_mfu"] = (ours.info["flops_per_step"][kind]
                                        / reports[name][kind]["median_s"]
                                        / (peak * ours.info["num_devices"]))
  log(_table(res))
  log(json.dumps(res))
  a, b = res["ours"]["train"]["median_s"], res["torch"]["train"]["median_s"]
  log(f"ours_s={a:.6g} torch_s={b:.6g} ratio={a / b:.4g}")
  return res


def _header(config, ours: dict, theirs: dict, cpus: int, in_process: bool) -> str:
  shapes = ", ".join(f"{k} {v}" for k, v in ours["batch"].items())
  if theirs["device"] == "cpu":
    torch_where = f"cpu with {theirs['threads']} threads (torch.set_num_threads)"
  else:
    torch_where = f"{theirs['device']} ({theirs['device_name']})"
  xla = (f", XLA:CPU on all {cpus} available cores (its default)"
         if ours["backend"] == "cpu" else "")
  return "\n".join([
      f"versus: method {config.method}, global batch {config.batch_size}: {shapes}",
      f"ours: jax {ours['jax_version']} on {ours['backend']} ({ours['device']} "
      f"x{ours['num_devices']}, mesh {ours['mesh']}){xla}",
      f"torch: {theirs['torch_version']} on {torch_where}"
      + (", torch.compile" if theirs["compile"] else "")
      + (f", autocast {theirs['autocast']}" if theirs["autocast"] else ""),
      f"CPUs available to this process: {cpus}; "
      + ("both sides in this process" if in_process else "one process per side"),
      f"torch step: {theirs['recipe']}",
      "one step of each in turn (ours, torch, ...); warm-up first (ours' first call compiles)"])


def _table(res: dict) -> str:
  mib = lambda b: f"{b / 2**20:,.0f} MiB"  # noqa: E731
  rows = ["side   step   median_s    mean_s     min_s     max_s      q1_s      q3_s  first_s"]
  for name in ("ours", "torch"):
    r = res[name]
    for kind in ("train", "eval"):
      if kind in r:
        t = r[kind]
        rows.append(f"{name:6s} {kind:5s} " + " ".join(
            f"{t[k]:9.4g}" for k in ("median_s", "mean_s", "min_s", "max_s", "q1_s", "q3_s"))
            + f" {r[f'first_{kind}_s']:8.4g}")
  for name in ("ours", "torch"):
    r = res[name]
    what = "compile" if name == "ours" else "first-step overhead"
    line = (f"{name}: {what} {r['train_compile_s']:.3g} s (train)"
            + (f", {r['eval_compile_s']:.3g} s (eval)" if "eval_compile_s" in r else "")
            + f"; host RSS while stepping: peak {mib(r['host_rss_step_peak_bytes'])}, "
            f"transient {mib(r['host_rss_step_transient_bytes'])}; process peak "
            f"{mib(r['host_rss_process_peak_bytes'])}; set-up added "
            f"{mib(r['host_rss_setup_bytes'])}")
    if "device_peak_bytes" in r:
      line += f"; device peak {mib(r['device_peak_bytes'])}"
    mfu = [f"{k} {r[f'{k}_mfu']:.3g}" for k in ("train", "eval") if f"{k}_mfu" in r]
    if mfu:
      line += "; MFU " + ", ".join(mfu)
    rows.append(line)
  rows.append("ratio ours/torch (medians): " + ", ".join(
      f"{k} {res[f'ratio_{k}']:.3g}" for k in ("train", "eval") if f"ratio_{k}" in res))
  return "\n".join(rows)


# ---- CLI -----------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m jaxaffect.tools.versus", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="config file path[:arg]; --config.k=v overrides")
  p.add_argument("--steps", type=int, default=10, help="timed train steps per side")
  p.add_argument("--warmup", type=int, default=2, help="untimed train steps per side first")
  p.add_argument("--eval_steps", type=int, default=None,
                 help="timed eval steps per side (default --steps; 0: no eval)")
  p.add_argument("--torch_compile", action="store_true", help="torch.compile the reference")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--in_process", action="store_true",
                 help="both sides in this process (no worker start-up; RSS figures then mix)")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    args, config = config_lib.tool_args(_parser(), argv)
    from jaxaffect import optim  # deferred: config errors come before jax loads
    optim.check_config(config)
    run(config, steps=args.steps, warmup=args.warmup, eval_steps=args.eval_steps,
        torch_compile=args.torch_compile, seed=args.seed, in_process=args.in_process)
  except UserError as e:
    print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
    return 1
  sys.stdout.flush()
  return 0


if __name__ == "__main__":
  sys.exit(main())
