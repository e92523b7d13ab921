"""metrics.jsonl + TensorBoard writer (process 0 only).

metrics.jsonl holds one JSON object per log event: {"step": N, "train/loss": ..., ...}. On resume
from step k, events after k (written by the interrupted run past its last checkpoint) are dropped
so the file reads as one uninterrupted run.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any

import jax
import numpy as np

from jaxaffect.errors import writing


def _to_py(v: Any) -> Any:
  if isinstance(v, (np.generic, np.ndarray)) and np.ndim(v) == 0:
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  return v



def read_records(path: str):
  """Yields the JSON records of a metrics.jsonl file, skipping blank lines and a line cut by a
  kill."""
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        yield json.loads(line)
      except json.JSONDecodeError:
        continue


def _summary_writer_class():
  """tensorboardX's SummaryWriter (a pure-Python event writer, no TensorFlow) without its
  optional `import torch`, which costs every launch 2 s where torch is installed; we log
  Python floats and numpy arrays only. A torch already imported is left as it is."""
  block = "torch" not in sys.modules
  if block:
    sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
  try:
    from tensorboardX import SummaryWriter
  finally:
    if block:
      del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        self._tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"), flush_secs=30)

  def start_fresh(self) -> None:
    """A run starting at step 0 keeps records it finds (a run killed before its first
    checkpoint, or one whose checkpoints were moved away) under another name."""
    if not self.enabled or not os.path.exists(self.path) or not os.path.getsize(self.path):
      return
    aside = f"{self.path}.before-{time.strftime('%Y%m%dT%H%M%S')}"
    with writing(aside):
      os.replace(self.path, aside)
    logging.getLogger(__name__).warning("kept the earlier %s as %s", self.path, aside)

  def truncate_after(self, step: int) -> None:
    """Drops events logged after `step`, the restored checkpoint of this run: the run that
    wrote them was killed before checkpointing them (the workdir lock rules out another
    writer)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    kept = [json.dumps(rec) for rec in read_records(self.path)
            if int(rec.get("step", 0)) <= step]
    tmp = self.path + ".tmp"
    with writing(tmp):
      with open(tmp, "w") as f:
        f.write("".join(k + "\n" for k in kept))
      os.replace(tmp, self.path)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled or not metrics:
      return
    rec = {"step": int(step)}
    rec.update({k: _to_py(v) for k, v in metrics.items()})
    with writing(self.path), open(self.path, "a") as f:
      f.write(json.dumps(rec) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        v = _to_py(v)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(k, v, int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]
