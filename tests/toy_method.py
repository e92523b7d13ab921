"""A tiny method (MLP classifier on an in-memory dataset) to test the platform on its own."""
from __future__ import annotations

import os
import time

import flax.linen as nn
import grain
import jax
import ml_collections
import numpy as np
import optax

from jaxaffect import config_lib
from jaxaffect import method as base
from jaxaffect.nn.transformer import TransformerStack


class ToyModel(nn.Module):
  hidden: int = 32
  classes: int = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    init = nn.initializers.lecun_normal()
    x = nn.Dense(self.hidden, kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x)
    return nn.Dense(self.classes,
                    kernel_init=nn.with_logical_partitioning(init, ("mlp", "classes")))(x)


class _Source:

  def __init__(self, n, seed):
    rng = np.random.default_rng(seed)
    self.x = rng.standard_normal((n, 16)).astype(np.float32)
    self.y = (self.x[:, :4].argmax(-1)).astype(np.int32)

  def __len__(self):
    return len(self.y)

  def __getitem__(self, i):
    return {"x": self.x[i], "label": self.y[i]}


class _Delay:
  """Sleeps per batch: keeps a test run alive long enough to meet a second run."""

  def __init__(self, seconds):
    self.seconds = seconds

  def __call__(self, batch):
    time.sleep(self.seconds)
    return batch


class _HoldUntil:
  """From the third batch on, waits until a file exists: a test run stays alive (after its
  first records) for exactly as long as the test needs, however slow the machine."""

  def __init__(self, path):
    self.path = path

  def __call__(self, index, batch):
    while index >= 2 and not os.path.exists(self.path):
      time.sleep(0.05)
    return batch


class ToyMethod(base.Method):
  state_collections = ("batch_stats",)

  def build_model(self):
    return ToyModel(hidden=int(self.config.model.get("hidden", 32)))

  def example_batch(self, b):
    return {"x": np.zeros((b, 16), np.float32), "label": np.zeros((b,), np.int32)}

  def model_inputs(self, batch):
    return {"x": batch["x"]}

  def loss(self, params, model_state, batch, rng, step=None):
    logits, st = self.model.apply({"params": params, **model_state}, batch["x"], train=True,
                                  mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, ({}, dict(st))

  def predict(self, params, model_state, batch):
    return {"logits": self.model.apply({"params": params, **model_state}, batch["x"])}

  def train_iterator(self, *, seed, global_batch_size, process_index, process_count):
    ds = (grain.MapDataset.source(_Source(256, 0)).seed(seed).shuffle().repeat(None)
          .batch(global_batch_size // process_count, drop_remainder=True)
          [process_index::process_count])
    delay = float(self.config.dataset.get("delay_s", 0.0))
    if delay:
      ds = ds.map(_Delay(delay))
    hold = str(self.config.dataset.get("hold_until_file", ""))
    if hold:
      ds = ds.map_with_index(_HoldUntil(hold))
    return iter(ds.to_iter_dataset())

  def eval_batches(self, *, global_batch_size, process_index, process_count):
    src = _Source(40, 1)
    per = global_batch_size // process_count
    for start in range(0, len(src), global_batch_size):
      idx = np.arange(start, start + global_batch_size)
      mask = idx < len(src)
      idx = np.where(mask, idx, 0)[process_index * per:(process_index + 1) * per]
      yield {"x": src.x[idx], "label": src.y[idx],
             "_mask": mask[process_index * per:(process_index + 1) * per]}


def toy_config(**mesh) -> ml_collections.ConfigDict:
  c = config_lib.base_config()
  c.method = "toy"
  c.total_steps = 5
  c.batch_size = 16
  c.eval_batch_size = 16
  c.mesh.update(mesh or dict(data=-1, fsdp=1, tensor=1))
  c.optimizer.learning_rate = 1e-2
  c.model.hidden = 32
  c.dataset.delay_s = 0.0
  c.dataset.hold_until_file = ""
  c.dataset.num_classes = 4  # the classification evaluator reads it
  return c


class _SeqSource:

  def __init__(self, n, seed, width=64):
    rng = np.random.default_rng(seed)
    self.x = rng.standard_normal((n, 8, width)).astype(np.float32)
    self.y = (self.x[:, :, :4].sum(1).argmax(-1)).astype(np.int32)

  def __len__(self):
    return len(self.y)

  def __getitem__(self, i):
    return {"x": self.x[i], "label": self.y[i]}


class TinyTransformer(nn.Module):
  """A jaxaffect.nn.transformer.TransformerStack over [B, 8, width] inputs + a linear head on
  the mean token; `stack` holds the stack's fields (layers, scan, remat policy, GQA, ...)."""
  stack: tuple = ()

  @nn.compact
  def __call__(self, x, train: bool = False):
    kw = dict(num_layers=2, num_heads=8, head_dim=16, mlp_dim=256, mlp="gelu_tanh", scan=False)
    kw.update(dict(self.stack))
    x = TransformerStack(**kw, name="stack")(x, train=train)
    return nn.Dense(4, kernel_init=nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("embed", "classes")))(x.mean(1))


class TransformerMethod(ToyMethod):
  """config.model.stack: TransformerStack fields (default: 2 unscanned layers, 8 heads of 16);
  config.model.width: the token width (64)."""
  state_collections = ()

  def build_model(self):
    return TinyTransformer(stack=tuple(sorted(dict(self.config.model.get("stack", {})).items())))

  def _width(self):
    return int(self.config.model.get("width", 64))

  def example_batch(self, b):
    return {"x": np.zeros((b, 8, self._width()), np.float32), "label": np.zeros((b,), np.int32)}

  def loss(self, params, model_state, batch, rng, step=None):
    logits = self.model.apply({"params": params}, batch["x"], train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean(), ({}, {})

  def train_iterator(self, *, seed, global_batch_size, process_index, process_count):
    ds = (grain.MapDataset.source(_SeqSource(256, 0, self._width())).seed(seed).shuffle()
          .repeat(None).batch(global_batch_size // process_count, drop_remainder=True)
          [process_index::process_count])
    return iter(ds.to_iter_dataset())


def train_losses(method, config, devices, n: int = 5, start=None):
  """Runs n train steps of `method` on a mesh of `devices`; returns (losses, final state,
  host copy of the initial state). `start` (such a host copy) is placed on this mesh instead
  of initialising: a sharded run then starts from the single-device run's exact state, and
  the comparison skips a second init compile (the sharded init has tests of its own)."""
  from jaxaffect import sharding as shd
  from jaxaffect import steps
  s = steps.build(config, method, shd.make_mesh(config.mesh, devices))
  it = method.train_iterator(seed=0, global_batch_size=config.batch_size, process_index=0,
                             process_count=1)
  losses = []
  with s.context():
    if start is None:
      state = s.init_fn(jax.random.key(0))
    else:
      state = jax.device_put(start, s.state_sharding)
    initial = jax.device_get(state)
    for _ in range(n):
      state, m = s.train_step(state, steps.make_global_batch(next(it), s.batch_sharding),
                              jax.random.key(0))
      losses.append(float(m["loss"]))
  return np.array(losses), state, initial


# ---- python -m jaxaffect.tools.versus (tests/test_versus.py) ------------------------------------

def versus_batch(config, example, rng):
  del config
  return {"x": rng.standard_normal(example["x"].shape).astype(np.float32),
          "label": rng.integers(0, 4, example["label"].shape).astype(np.int32)}


def versus_reference(config, method, batch, ctx):
  """ToyModel's PyTorch twin with cross-entropy and the config's optimizer."""
  del method
  import torch  # the test extra; the other toy tests run without it
  h = int(config.model.get("hidden", 32))
  net = torch.nn.Sequential(torch.nn.Linear(16, h), torch.nn.BatchNorm1d(h), torch.nn.ReLU(),
                            torch.nn.Linear(h, 4)).to(ctx.device)
  x, y = ctx.tensor(batch["x"]), ctx.tensor(batch["label"]).long()
  opt = ctx.optimizer(net.named_parameters())

  def train():
    net.train()
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    ctx.update(opt, net.parameters())

  def evaluate():
    net.eval()
    with torch.inference_mode():
      return net(x)

  return {"train": train, "eval": evaluate, "recipe": f"toy MLP, {ctx.describe_optimizer(opt)}",
          "module": net}
