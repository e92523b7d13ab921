"""Entry point: python -m jaxaffect.main --config configs/<x>.py[:arg] --workdir DIR [--config.a.b=v]

Modes: train (default; resumes from DIR), eval, summary, benchmark.
"""
from __future__ import annotations

from absl import logging
import os
import logging as std_logging
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory (checkpoints, metrics).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "summary", "benchmark"],
                          "What to do.")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "yes", "no"],
                                 "Initialise jax.distributed (auto: when the environment is a "
                                 "multi-process launch).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_BENCH_STEPS = flags.DEFINE_integer("benchmark_steps", 10, "Timed steps for --mode benchmark.")


def _run(argv) -> int:
  del argv
  from jaxaffect import distributed
  distributed.maybe_initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                               _PROCESS_ID.value)
  import jax
  from jaxaffect import trainer
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config configs/demo.py")
  # Libraries (orbax, grain, tfds) log through absl at INFO; keep the console for our own
  # messages (stdlib logging) unless the user asked for --verbosity.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
    std_logging.getLogger("jaxaffect").setLevel(
        std_logging.INFO if jax.process_index() == 0 else std_logging.WARNING)
  mode = _MODE.value
  if mode == "summary":
    from jaxaffect import summary
    summary.run(config)
    return 0
  if mode == "benchmark":
    from jaxaffect import benchmark
    benchmark.run(config, num_steps=_BENCH_STEPS.value)
    return 0
  workdir = _WORKDIR.value
  if not workdir:
    raise app.UsageError("--workdir is required for --mode train/eval")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if mode == "eval":
    trainer.evaluate_only(config, workdir)
  else:
    trainer.train_and_evaluate(config, workdir)
  return 0


def main(argv) -> None:
  from jaxaffect.errors import UserError
  from jaxaffect.trainer import NonFiniteLossError
  try:
    sys.exit(_run(argv))
  except (UserError, NonFiniteLossError) as e:
    if os.environ.get("JAXAFFECT_DEBUG"):
      raise
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
