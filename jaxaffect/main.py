"""Entry point: python -m jaxaffect.main --config configs/<x>.py[:arg] --workdir DIR [--config.a=v]

Modes: train (default; resumes from DIR), eval, summary, benchmark, memory. A mistake in the input (a
config key, a path, a file) ends with one `error:` line on stderr and exit status 1; `--debug`
shows the traceback instead.
"""
from __future__ import annotations

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging

from jaxaffect import config_lib
from jaxaffect.errors import UserError, one_line

_CONFIG = flags.DEFINE_string("config", None, "Config file (path[:arg]); override its keys with "
                              "--config.a.b=value.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory (checkpoints, metrics).")
_MODE = flags.DEFINE_enum("mode", "train",
                          ["train", "eval", "summary", "benchmark", "memory"], "What to do.")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "yes", "no"],
                                 "Initialise jax.distributed (auto: when the environment is a "
                                 "multi-process launch).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_BENCH_STEPS = flags.DEFINE_integer("benchmark_steps", 10, "Timed steps for --mode benchmark.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show tracebacks for input mistakes too.")

_OVERRIDES: list[str] = []


def _fail(msg: str, status: int = 1):
  print(f"error: {msg}", file=sys.stderr, flush=True)
  # os._exit: background threads (async checkpoint writers, grain workers) must not print
  # their own shutdown noise after the one line.
  sys.stderr.flush()
  sys.stdout.flush()
  os._exit(status)


class _DropLibraryErrors(std_logging.Filter):
  """Orbax's writer threads log each failure of a save (with a traceback) before the main thread
  sees it; the main thread's one `error:` line reports it once."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return not (record.levelno >= std_logging.ERROR and "/orbax/" in record.pathname)


def _quiet_background_failures() -> None:
  """A full disk or Ctrl-C makes background threads (orbax writers, tensorstore callbacks on a
  closed event loop) print hundreds of tracebacks; the main thread reports the cause once."""
  import threading
  threading.excepthook = lambda args: None
  sys.unraisablehook = lambda unraisable: None
  std_logging.getLogger("absl").addFilter(_DropLibraryErrors())
  for handler in std_logging.getLogger().handlers:
    handler.addFilter(_DropLibraryErrors())


def _run() -> int:
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config configs/demo.py")
  config = config_lib.load(_CONFIG.value, _OVERRIDES)
  config_lib.check_common(config)
  from jaxaffect import optim  # deferred: config errors come before jax loads
  optim.check_config(config)
  from jaxaffect import distributed  # deferred: config errors come before jax loads
  distributed.maybe_initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                               _PROCESS_ID.value)
  import jax
  # Libraries (orbax, grain, tfds) log through absl at INFO; keep the console for our own
  # messages (stdlib logging) unless the user asked for --verbosity.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
    std_logging.getLogger("jaxaffect").setLevel(
        std_logging.INFO if jax.process_index() == 0 else std_logging.WARNING)
  mode = _MODE.value
  if mode == "summary":
    from jaxaffect.tools import summary  # deferred: config errors come before jax loads
    summary.run(config)
    return 0
  if mode == "memory":
    from jaxaffect.tools import memory  # deferred: config errors come before jax loads
    memory.run(config)
    return 0
  if mode == "benchmark":
    from jaxaffect.tools import benchmark  # deferred: config errors come before jax loads
    benchmark.run(config, num_steps=_BENCH_STEPS.value)
    return 0
  workdir = _WORKDIR.value
  if not workdir:
    raise app.UsageError("--workdir is required for --mode train/eval")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  from jaxaffect import trainer  # deferred: config errors come before jax loads
  if mode == "eval":
    trainer.evaluate_only(config, workdir)
  else:
    trainer.train_and_evaluate(config, workdir)
  return 0


def main(argv) -> None:
  del argv
  if not (_DEBUG.value or os.environ.get("JAXAFFECT_DEBUG")):
    _quiet_background_failures()
  try:
    status = _run()
  except (UserError, KeyboardInterrupt, OSError) as e:
    if _DEBUG.value or os.environ.get("JAXAFFECT_DEBUG"):
      raise
    if isinstance(e, KeyboardInterrupt):
      _fail("interrupted (Ctrl-C); rerun the same command to resume from the last checkpoint",
            130)
    _fail(one_line(e))
  sys.stdout.flush()
  sys.exit(status)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.absl_flags_parser(_OVERRIDES))
