"""CTEN's released-checkpoint converter (methods/cten/converters.py) against the PyTorch twin of
VAANetErase and VisualErase (methods/cten/torch_reference.py): DataParallel checkpoints convert
through the CLI, and the JAX model with legacy_code reproduces the released forward stage by
stage in eval and in train mode (batch statistics); missing, extra and misshapen keys are
named."""
import os

import jax
import numpy as np
import pytest

from jaxaffect import converted_checkpoint as store
from jaxaffect import method as methods
from jaxaffect.convert import __main__ as cli
from jaxaffect.convert.keymap import ConversionError
from jaxaffect.methods.cten import converters

torch = pytest.importorskip("torch")
from jaxaffect.methods.cten import torch_reference as tr  # noqa: E402  (needs torch)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "cten_ve8.py")
# The released sizes but a ResNet-10 backbone (512-wide features, audio width 512 to match) and
# 32 px snippets; dropout off so train mode is deterministic on both sides.
SMALL = ["--config.model.visual_depth=10", "--config.model.audio_dim=512",
         "--config.model.dropout_rate=0.0"]
B, S = 2, 16


def _randomize(module, seed):
  """Weights ~ N(0, 1/fan_in), every other parameter and the BatchNorm running statistics off
  their init (alpha too), so a swapped or misplaced tensor shows."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for mod in module.modules():
      for name, p in mod.named_parameters(recurse=False):
        r = torch.randn(p.shape, generator=g, dtype=p.dtype)
        p.copy_(r / p[0].numel() ** 0.5 if (name == "weight" and p.ndim >= 2) else 0.3 * r)
      if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
        mod.running_mean.copy_(0.1 * torch.randn(mod.running_mean.shape, generator=g))
        mod.running_var.copy_(1 + 0.5 * torch.rand(mod.running_var.shape, generator=g))
  return module


def _inputs(seed=3):
  rng = np.random.default_rng(seed)
  video = rng.integers(0, 256, (B, S, 16, 32, 32, 3), dtype=np.uint8)
  audio = rng.standard_normal((B, S, 100, 128)).astype(np.float32)
  return video, audio


def _convert(tmp_path, ref, arg):
  path = tmp_path / "save_12_0.5000.pth"
  sd = {"module." + k: v for k, v in ref.state_dict().items()}  # nn.DataParallel's keys
  torch.save({"epoch": 12, "state_dict": sd, "optimizer": {}}, path)
  out = str(tmp_path / "converted")
  assert cli.main(["cten", "--config", f"{CONFIG}:{arg}", *SMALL, str(path), out]) == 0
  config = cli.load_config(f"{CONFIG}:{arg}", SMALL)
  abstract = converters.cten_abstract(config)
  zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
  params, state = store.restore_converted(out, zeros["params"],
                                          {"batch_stats": zeros["batch_stats"]})
  return methods.get_method(config).model, {"params": params, **state}, out


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


@pytest.mark.parametrize("arg", ["legacy", "legacy_visual"])
def test_released_forward_parity_eval_and_train(tmp_path, arg):
  torch.manual_seed(0)
  kwargs = dict(num_classes=8, seq_len=S, depth=10, snippet_duration=16, sample_size=32)
  if arg == "legacy":
    ref = tr.VAANetEraseRef(audio_segments=S, audio_embed=512, **kwargs)
  else:
    ref = tr.VisualEraseRef(**kwargs)
  ref = _randomize(ref, 1)
  ref.drop.p = 0.0  # as SMALL's dropout_rate: train mode is compared without it
  model, variables, _ = _convert(tmp_path, ref, arg)
  video, audio = _inputs()
  tv = torch.from_numpy(video).permute(0, 1, 5, 2, 3, 4).float()
  ta = torch.from_numpy(audio)
  call = (lambda: ref(tv.clone(), ta, return_features=True)) if arg == "legacy" else (
      lambda: ref(tv.clone(), return_features=True))
  audio_in = audio if arg == "legacy" else None

  ref.eval()
  with torch.no_grad():
    want = call()
  got = jax.jit(lambda v, x, a: model.apply(v, x, a, train=False))(variables, video, audio_in)
  assert _rel(got["v"], want["v_backbone"]) < 1e-4
  if arg == "legacy":
    assert _rel(got["a"], want["a_fc"]) < 1e-4
  for k in ("gamma", "logits"):
    assert _rel(got[k], want[k]) < 1e-4, k

  if arg == "legacy_visual":
    return  # train mode below on the audio-visual model, which holds every visual piece too
  # Train mode: every BatchNorm (the frozen backbone's too, as released) on batch statistics.
  ref.train()
  with torch.no_grad():
    want = call()
  got, new_state = jax.jit(lambda v, x, a: model.apply(
      v, x, a, train=True, mutable=["batch_stats"]))(variables, video, audio_in)
  for k in ("gamma", "logits"):
    assert _rel(got[k], want[k]) < 1e-4, k
  # ... and the running statistics move as PyTorch's (momentum 0.1, unbiased variance).
  np.testing.assert_allclose(
      new_state["batch_stats"]["nl_0"]["bn"]["var"], ref.nl[0].bn.running_var.numpy(),
      rtol=1e-4, atol=1e-6)


def test_missing_extra_and_wrong_variant_are_named():
  with torch.device("meta"):
    visual = tr.VisualEraseRef(num_classes=8, seq_len=S)
  sd = {k: np.zeros(tuple(v.shape), np.float32) for k, v in visual.state_dict().items()}
  cfg = cli.load_config(f"{CONFIG}:legacy_visual", [])
  conv = converters.cten({"state_dict": sd}, cfg)
  n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(conv.variables["params"]))
  assert n == 87_367_899
  broken = dict(sd)
  del broken["nl.0.alpha"]
  broken["extra.weight"] = np.zeros((2,), np.float32)
  with pytest.raises(ConversionError, match=r"(?s)nl\.0\.alpha.*extra\.weight"):
    converters.cten({"state_dict": broken}, cfg)
  # A VisualErase checkpoint given the audio-visual config: the audio keys are named missing,
  # with the hint to use :legacy_visual.
  with pytest.raises(ConversionError, match=r"(?s)a_resnet\.0\.weight.*:legacy_visual"):
    converters.cten({"state_dict": sd}, cli.load_config(f"{CONFIG}:legacy", []))
  # The wrong number of segments: the temporal fc's shape is named.
  with pytest.raises(ConversionError, match=r"ta_net\.fc\.weight: checkpoint shape \(16, 16\)"):
    converters.cten({"state_dict": sd}, cli.load_config(
        f"{CONFIG}:legacy_visual", ["--config.dataset.num_segments=10"]))
