"""Converter parity in train mode: batch-statistics BatchNorm and the backward pass. For the same
weights (jaxaffect/convert/torch_reference.py, jaxaffect/methods/vaanet/torch_reference.py),
the converted Hara 3D ResNet and VAANet give PyTorch's train-mode outputs, updated BN running
statistics and parameter gradients. Torch's gradients go through the converter itself, which
lays them out as the Flax tree (grad_parity.py).

Two passes per model. float32, the dtype that trains: outputs within 1e-4 and statistics within
2e-5 of each leaf's largest magnitude (measured <= 6.5e-6 and <= 2.6e-6: ~10x left for other
CPUs and library versions, while an eps of 1e-3 instead of 1e-5, or a biased running variance,
n/(n-1) = 14% with layer4's 8 values per channel, fails them by far). float64, both frameworks:
gradients, and outputs and statistics again. Gradients are not compared in float32: rounding
(~3e-5 of a unit by layer4) flips a ReLU or a max-pool choice whose inputs lie that close, and
one flipped unit of a late layer with few positions per channel moves its channel's gradient
by percents. Measured at these sizes: ResNet-10 with 2 of 8 seeds off by 3e-3 and 0.14 (the
others within 2.1e-5), VAANet's audio ResNet-18 on 256x32 chunks off by 20%, while torch
float32 matched torch float64 there to 7e-5 and JAX in float64 matched it to 1e-6: no layer
is wrong, the float32 gradient of a ReLU network is not a smooth function of rounding. In
float64 no kink is that close; what is left is the converter's float32 storage (6e-8) and, in
VAANet, float32 parts of the model (see its test). Gradient leaves are compared at no finer
than 1e-3 of the tree's largest gradient: a bias in front of a batch-statistics BatchNorm or an
unused head has a true gradient of 0 and holds rounding noise on both sides.
"""
import copy
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxaffect import method as methods  # noqa: E402
from jaxaffect.convert import __main__ as cli  # noqa: E402
from jaxaffect.convert import converters  # noqa: E402
from jaxaffect.methods.vaanet import converters as vaanet_converters  # noqa: E402
from jaxaffect.nn.resnet3d import ResNet3D  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from grad_parity import (assert_close as _assert_close,  # noqa: E402
                         assert_outputs as _assert_outputs, grad_state_dict,
                         numpy_state_dict as _numpy_sd, to_float64)
from jaxaffect.convert.torch_reference import HaraResNet3D, randomize_  # noqa: E402
from jaxaffect.methods.vaanet.torch_reference import VAANetRef  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_TOL, STAT_TOL, GRAD_FLOOR = 1e-4, 2e-5, 1e-3
# Tiny shapes: LLVM at -O1 compiles these graphs in ~60% of the time and runs them as fast.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 1})


# ---- Hara 3D ResNet-10: conv3d stem and blocks, BN3d, max pool, shortcut B ----------------------
# 2x8x48x48 clips leave layer4 a 1x2x2 map (8 values per BN channel).

@pytest.fixture(scope="module")
def hara():
  torch.manual_seed(5)
  ref = randomize_(HaraResNet3D(10, 400), seed=5)
  conv = converters.hara3d(_numpy_sd(ref), depth=10)
  rs = np.random.RandomState(6)
  clip = rs.randn(2, 8, 48, 48, 3)
  w = rs.randn(2, 1, 2, 2, 512)
  return ref, {c: t["visual_backbone"] for c, t in conv.variables.items()}, clip, w


def _hara_stats(ref):
  return converters.hara3d(_numpy_sd(ref), depth=10).variables["batch_stats"]["visual_backbone"]


def _to_torch(clip):
  return torch.from_numpy(clip).permute(0, 4, 1, 2, 3)


def _from_torch(y):
  return y.permute(0, 2, 3, 4, 1).detach().numpy()


def test_hara3d_float32_train_forward_and_statistics(hara):
  """With the native conv3d (GPU's path; the CPU's "taps" is in the float64 test)."""
  ref, variables, clip, _ = hara
  ref = copy.deepcopy(ref).train()
  with torch.no_grad():
    feat = _from_torch(ref.features(_to_torch(clip.astype(np.float32))))
  model = ResNet3D(10, 64, conv_impl="native")
  y, state = jit(lambda v, x: model.apply(v, x, use_running_average=False,
                                          mutable=["batch_stats"]))(
      variables, clip.astype(np.float32))
  _assert_outputs({"layer4": y}, {"layer4": feat}, OUT_TOL, "float32 outputs")
  _assert_close(state["batch_stats"], _hara_stats(ref), STAT_TOL, what="float32 statistics")


def test_hara3d_float64_train_gradients(hara):
  """Through the CPU conv3d ("taps": 2D convs per temporal tap), which CPU training uses.
  Bounds 1e-6 against the converter's float32 storage of torch's values (measured 5e-8)."""
  ref, variables, clip, w = hara
  ref = copy.deepcopy(ref).double().train()
  feat = ref.features(_to_torch(clip))
  (feat.permute(0, 2, 3, 4, 1) * torch.from_numpy(w)).sum().backward()
  t_vars = converters.hara3d(grad_state_dict(ref), depth=10).variables
  model = ResNet3D(10, 64, conv_impl="taps")

  def loss_fn(params, stats):
    y, state = model.apply({"params": params, "batch_stats": stats}, clip,
                           use_running_average=False, mutable=["batch_stats"])
    return jnp.sum(y * w), (y, state["batch_stats"])

  with jax.enable_x64(True):
    (_, (y, stats)), grads = jit(jax.value_and_grad(loss_fn, has_aux=True))(
        to_float64(variables["params"]), to_float64(variables["batch_stats"]))
  assert grads["conv1"]["kernel"].dtype == np.float64
  _assert_outputs({"layer4": y}, {"layer4": _from_torch(feat)}, 1e-9, "float64 outputs")
  _assert_close(stats, t_vars["batch_stats"]["visual_backbone"], 1e-6, what="float64 statistics")
  _assert_close(grads, t_vars["params"]["visual_backbone"], 1e-6, GRAD_FLOOR, "float64 gradients")


# ---- VAANet ----------------------------------------------------------------------------------
# A ResNet-10 visual backbone in batch-statistics mode and frozen (requires_grad=False in
# torch; the model's stop_gradient is test_models.py's), the audio ResNet-18, conv0 + BN, the
# spatial, channel, temporal and audio attention subnets (BN1d over different axes), a_fc + BN,
# av_fc.
# B=2, S=2, A=2; 8x48x48 snippets leave 1x2x2 backbone positions.

B, S, A, T, CROP, M = 2, 2, 2, 8, 48, 4
SHAPES = dict(logits=(B, 8), alpha=(B, S, M), beta=(B, S, 512), gamma=(B, S), audio_gamma=(B, A))


@pytest.fixture(scope="module")
def vaanet():
  config = cli.load_config(os.path.join(ROOT, "configs", "vaanet_ve8.py"), [
      "--config.model.visual_depth=10", "--config.model.conv_impl=native",
      f"--config.dataset.num_segments={S}", f"--config.dataset.audio_segments={A}",
      f"--config.dataset.snippet_len={T}", f"--config.dataset.crop_size={CROP}"])
  torch.manual_seed(7)
  ref = randomize_(VAANetRef(visual_depth=10, seq_len=S, audio_n_segments=A, n_classes=8, m=M),
                   seed=7)
  with torch.no_grad():  # as VAANet's temporal fc: ReLU attention that starts alive
    ref.ta_net["fc"].bias.fill_(1.0)
    ref.aa_net["fc"].bias.fill_(1.0)
  for p in ref.resnet.parameters():
    p.requires_grad_(False)
  convert = lambda sd: vaanet_converters.vaanet({"state_dict": sd}, config).variables
  rs = np.random.RandomState(8)
  video = rs.randint(0, 256, (B, S, T, CROP, CROP, 3)).astype(np.uint8)
  return (methods.get_method(config).model, ref, convert, convert(_numpy_sd(ref)), video,
          torch.from_numpy(video).permute(0, 1, 5, 2, 3, 4))


def test_vaanet_float32_train_forward_and_statistics(vaanet):
  """The released sizes of the audio path: 256x32 MFCC chunks, AvgPool2d((8, 2))."""
  model, ref, convert, variables, video, t_video = vaanet
  audio = (np.random.RandomState(9).randn(B, A, 256, 32) * 10).astype(np.float32)
  ref = copy.deepcopy(ref).train()
  with torch.no_grad():
    out_t = ref(t_video.float(), torch.from_numpy(audio).reshape(B, -1, 32))
  out, state = jit(lambda v, x, y: model.apply(v, x, y, train=True, mutable=["batch_stats"]))(
      variables, video, audio)
  _assert_outputs(out, {k: out_t[k].numpy() for k in SHAPES}, OUT_TOL, "float32 outputs")
  # Every BN's statistics moved, the frozen backbone's included (backbone_bn="batch_stats").
  _assert_close(state["batch_stats"], convert(_numpy_sd(ref))["batch_stats"], STAT_TOL,
                what="float32 statistics")
  assert not np.allclose(state["batch_stats"]["visual_backbone"]["layer4_0"]["bn2"]["mean"],
                         variables["batch_stats"]["visual_backbone"]["layer4_0"]["bn2"]["mean"])


def test_vaanet_float64_train_gradients(vaanet):
  """Everything after the frozen backbone, fed with PyTorch's layer4 features of the same
  clips (the feature-cache input; the backbone's float64 train pass is the Hara test's).
  Audio chunks of 64x8 (float64 convolutions are slow on CPU) leave a 2x1 layer4 map, which
  the model pools globally when AvgPool2d((8, 2)) does not fit; so does the reference here
  (AdaptiveAvgPool2d(1)). The bound is 5e-5: the attention softmaxes, pooled features and
  logits stay float32 in a float64 VAANet, and the temporal attention's BN(1) normalises over
  B*S = 4 values, which amplifies their rounding (measured 4e-6)."""
  model, ref, convert, variables, _, t_video = vaanet
  audio = np.random.RandomState(10).randn(B, A, 64, 8) * 10
  w = {k: np.random.RandomState(11).randn(*shape) for k, shape in SHAPES.items()}
  ref = copy.deepcopy(ref).double().train()
  ref.a_resnet[-1] = torch.nn.AdaptiveAvgPool2d(1)
  feats = []
  ref.resnet.register_forward_hook(lambda mod, inp, out: feats.append(out.detach()))
  out_t = ref(t_video.double(), torch.from_numpy(audio).reshape(B, -1, 8))
  sum((out_t[k] * torch.from_numpy(v)).sum() for k, v in w.items()).backward()
  t_vars = convert(grad_state_dict(ref))
  for tree in t_vars.values():
    del tree["visual_backbone"]  # not run here
  # [S*B, C, T', H', W'] (segment-major) -> [B, S, T', H', W', C]
  video_features = feats[0].reshape(S, B, *feats[0].shape[1:]).permute(1, 0, 3, 4, 5, 2)
  model = model.clone(dtype=jnp.float64)

  def loss_fn(params, stats):
    out, state = model.apply({"params": params, "batch_stats": stats}, audio=audio, train=True,
                             video_features=video_features.numpy(), mutable=["batch_stats"])
    return sum(jnp.sum(out[k] * v) for k, v in w.items()), (out, state["batch_stats"])

  with jax.enable_x64(True):
    (_, (out, stats)), grads = jit(jax.value_and_grad(loss_fn, has_aux=True))(
        *(to_float64({k: v for k, v in variables[c].items() if k != "visual_backbone"})
          for c in ("params", "batch_stats")))
  assert grads["av_fc"]["kernel"].dtype == np.float64
  _assert_outputs(out, {k: out_t[k].detach().numpy() for k in SHAPES}, 1e-5, "float64 outputs")
  _assert_close(stats, t_vars["batch_stats"], 1e-5, what="float64 statistics")
  assert np.any(np.asarray(grads["audio_backbone"]["conv1"]["kernel"]))
  _assert_close(grads, t_vars["params"], 5e-5, GRAD_FLOOR, "float64 gradients")
