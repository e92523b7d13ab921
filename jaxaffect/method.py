"""What a method plugs into the one train loop (model + loss + predictions + data spec), and
the registry that finds it. Metrics come from the evaluators named in `config.evals`
(jaxaffect/evaluators.py).

The trainer knows no method by name; `get_method(config)` resolves `config.method` to the
package `jaxaffect.methods.<name>`, which exports `Method`. This registry is the only module
that imports method packages. The model, loss and predict hooks are pure (jit-able); the data
and metric hooks run on the host.
"""
from __future__ import annotations

import abc
import importlib
import importlib.util
import pkgutil
from typing import Any, Iterable, Mapping

import flax.linen as nn
import jax
import numpy as np

from jaxaffect import methods as methods_namespace  # the packages' folder: no code runs
from jaxaffect.errors import UserError

Batch = Mapping[str, Any]


class Method(abc.ABC):
  """Base class; subclasses are constructed with the full config."""

  # Variable collections besides "params" that the model keeps (e.g. BatchNorm statistics).
  state_collections: tuple[str, ...] = ()

  def __init__(self, config, *, workdir: str | None = None):
    self.config = config
    # The run's workdir (None outside a run): methods may write evaluation artifacts (e.g.
    # prediction files) below it.
    self.workdir = workdir
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
  def loss(self, params, model_state, batch: Batch, rng: jax.Array, step: jax.Array | None = None
           ) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]]:
    """Training loss. Returns (loss, (scalar metrics, new model_state)). `step` is the train
    step (int32 scalar, traced; None outside a train step) for losses with a schedule or
    stages (MART); the metrics must have the same keys at every step."""

  @abc.abstractmethod
  def predict(self, params, model_state, batch: Batch) -> dict[str, jax.Array]:
    """Eval forward; per-example outputs with the batch axis first."""

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

  # ---- single videos (python -m jaxaffect.predict) -------------------------------------------
  def example_from_video(self, path: str) -> dict[str, np.ndarray]:
    """One video file -> the eval example the model reads (no batch axis): decoded by the
    builder's code and transformed by the eval pipeline's."""
    raise UserError(f"config.method={self.config.method!r} has no single-video prediction")

  def prediction_figure(self, example: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
                        path: str, title: str) -> None:
    """Writes a figure of one prediction (`outputs`: predict's, batch axis removed)."""
    raise UserError(f"config.method={self.config.method!r} draws no prediction figure")

  # Top-level parameter subtrees a converted `init_from` checkpoint must not fill (e.g. a
  # backbone the method does not build in this mode).
  init_from_ignore: tuple[str, ...] = ()

  # Keys of the eval batch the evaluators read (labels, indices): taken from the host copy of
  # each batch, never sent through the devices for that purpose (see jaxaffect/evaluators.py).
  eval_label_keys: tuple[str, ...] = ("label",)

  # Steps before whose update the train step re-initialises the optimizer state (inside the
  # jitted step, so a resumed run does the same; MART's pretrain.reset_optimizer).
  optimizer_reset_steps: tuple[int, ...] = ()


# ---- registry ----------------------------------------------------------------------------------

_REGISTERED: dict[str, type] = {}


def known() -> tuple[str, ...]:
  """Method names: the packages under jaxaffect/methods/, then the registered ones."""
  names = [m.name for m in pkgutil.iter_modules(methods_namespace.__path__) if m.ispkg]
  return tuple(sorted(names)) + tuple(_REGISTERED)


def register(name: str, cls) -> None:
  _REGISTERED[name] = cls


def method_class(name: str) -> type:
  if name in _REGISTERED:
    return _REGISTERED[name]
  if ":" in name:  # "some.module:ClassName" for methods that live outside the package
    module_name, _, cls = name.partition(":")
    return getattr(importlib.import_module(module_name), cls)
  package = method_package(name)
  if not hasattr(package, "Method"):  # a paper being ported: its pieces exist, no Method yet
    raise UserError(f"config.method: {name!r} cannot train yet ({package.__name__} defines no "
                    f"Method; see its docstring)")
  return package.Method


def method_package(name: str, submodule: str = ""):
  """jaxaffect.methods.<name>[.<submodule>]; a UserError naming the known methods."""
  try:
    return importlib.import_module(f"jaxaffect.methods.{name}" +
                                   (f".{submodule}" if submodule else ""))
  except ModuleNotFoundError as e:
    if e.name == f"jaxaffect.methods.{name}":
      raise UserError(f"config.method: unknown method {name!r}; known: "
                      f"{', '.join(known())}") from e
    raise


def plugin_modules(submodule: str) -> list:
  """`jaxaffect.methods.<m>.<submodule>` of every method package that has one (e.g. the
  converters of a paper's released checkpoints, for `python -m jaxaffect.convert`)."""
  out = []
  for name in known():
    if name in _REGISTERED:
      continue
    if importlib.util.find_spec(f"jaxaffect.methods.{name}.{submodule}") is not None:
      out.append(method_package(name, submodule))
  return out


def get_method(config, **kwargs) -> Method:
  return method_class(config.method)(config, **kwargs)
