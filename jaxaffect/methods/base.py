"""What a method plugs into the one train loop: model + loss + metrics + data spec.

The trainer knows no method by name; `jaxaffect.methods.get_method(config)` resolves
`config.method` to the module `jaxaffect.methods.<name>`, which exports `Method`.
All functions here are pure (jit-able) except the data and metric hooks, which run on the host.
"""
from __future__ import annotations

import abc
from typing import Any, Iterable, Mapping

import flax.linen as nn
import jax
import numpy as np

Batch = Mapping[str, Any]


class Method(abc.ABC):
  """Base class; subclasses are constructed with the full config."""

  # Variable collections besides "params" that the model keeps (e.g. BatchNorm statistics).
  state_collections: tuple[str, ...] = ()

  def __init__(self, config):
    self.config = config
    self.model: nn.Module = self.build_model()

  # ---- model ---------------------------------------------------------------------------------
  @abc.abstractmethod
  def build_model(self) -> nn.Module:
    ...

  @abc.abstractmethod
  def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    """A zero batch with the training input shapes/dtypes (used for init and tracing)."""

  def init_variables(self, rng: jax.Array, batch: Batch) -> dict[str, Any]:
    return self.model.init({"params": rng, "dropout": rng}, **self.model_inputs(batch),
                           train=False)

  @abc.abstractmethod
  def model_inputs(self, batch: Batch) -> dict[str, Any]:
    """The keyword arguments of the model's __call__ taken from a batch."""

  # ---- loss and predictions -----------------------------------------------------------------
  @abc.abstractmethod
  def loss(self, params, model_state, batch: Batch, rng: jax.Array
           ) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]]:
    """Training loss. Returns (loss, (scalar metrics, new model_state))."""

  @abc.abstractmethod
  def predict(self, params, model_state, batch: Batch) -> dict[str, jax.Array]:
    """Eval forward; per-example outputs with the batch axis first."""

  @abc.abstractmethod
  def eval_metrics(self, outputs: dict[str, np.ndarray], batches: dict[str, np.ndarray]
                   ) -> dict[str, float]:
    """Metrics from all eval examples (padding already removed). An output whose per-example
    shape varies between batches (variable-length inputs) is a list of per-example arrays."""

  # ---- data --------------------------------------------------------------------------------
  @abc.abstractmethod
  def train_iterator(self, *, seed: int, global_batch_size: int, process_index: int,
                     process_count: int):
    """A checkpointable grain iterator of per-process numpy batches."""

  @abc.abstractmethod
  def eval_batches(self, *, global_batch_size: int, process_index: int,
                   process_count: int) -> Iterable[dict[str, np.ndarray]]:
    """Per-process numpy batches covering the eval split once, with a boolean "_mask"."""

  def prepare_data(self) -> None:
    """Builds what the data needs (generation/extraction); runs on process 0 only."""

  # The run's workdir, set by the trainer before training/evaluation (None elsewhere): methods
  # may write evaluation artifacts (e.g. prediction files) below it.
  workdir: str | None = None

  # Keys of the eval batch kept on the host for metrics (e.g. labels).
  eval_label_keys: tuple[str, ...] = ("label",)
