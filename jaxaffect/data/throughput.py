"""Input-pipeline throughput, measured alone (no model), for the benchmark mode."""
from __future__ import annotations

import time
from typing import Any, Iterator


def measure_examples_per_sec(iterator: Iterator[Any], num_batches: int, batch_size: int, *,
                             warmup_batches: int = 1) -> float:
  """Examples per second over `num_batches` batches pulled from `iterator`.

  The first `warmup_batches` are pulled and not timed: they include worker start-up and
  first-touch costs that a long training run does not see. `batch_size` is the number of
  examples per pulled batch (the per-process batch for a per-process iterator).
  """
  if num_batches <= 0:
    raise ValueError(f"num_batches must be positive, got {num_batches}")
  for _ in range(warmup_batches):
    next(iterator)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(iterator)
  return num_batches * batch_size / (time.perf_counter() - start)
