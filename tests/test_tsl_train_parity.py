"""TSL-Net converter parity in train mode: for the same weights
(jaxaffect/methods/tsl/torch_reference.py, narrow widths, dropout 0), the converted model gives PyTorch's train-mode outputs (CAS, fused
scores, top-k video scores, CPC), updated audio-CNN BatchNorm statistics and parameter
gradients of a loss over all of them. Torch's gradients go through the converter itself.

As in test_convert_train_parity.py (which says why at length): outputs and statistics in float32
within 1e-4 and 2e-5 of each leaf's largest magnitude (measured: 2.5e-6 and 9e-8), gradients in
float64, where float32 rounding cannot flip a ReLU or max-pool choice and move a channel's
gradient. There they agree within 5e-6 of each leaf's scale (measured: 3.6e-7; what remains is
the model's float32 outputs and CPC score and the converter's float32 storage), leaves compared
at no finer than 1e-3 of the largest gradient. Float32 gradients agreed to 4e-6 at these sizes.

The float64 pass runs the padded path: 24 real snippets in a 32-step bucket with garbage in the
padding, against PyTorch on the 24 snippets alone; masked BN statistics, zero-padded temporal
convs, the neighbour wrap at the real end, top-k over real steps and the masked CPC all have
to hold for the gradients to agree.
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

from jaxaffect.methods.tsl import converters as converters_tsl  # noqa: E402
from jaxaffect.methods.tsl import model as tsl_model  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from grad_parity import (assert_close as _assert_close,  # noqa: E402
                         assert_outputs as _assert_outputs, grad_state_dict,
                         numpy_state_dict as _numpy_sd, to_float64)
from jaxaffect.convert.torch_reference import randomize_  # noqa: E402
from jaxaffect.methods.tsl.torch_reference import Model as TorchTSL  # noqa: E402

# Tiny shapes: LLVM at -O1 compiles these graphs in ~60% of the time and runs them as fast.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 1})
NARROW = dict(audio_channels=(8, 16, 32), align_features=24, neck_features=40)
T, L = 24, 32  # real snippets (top-k k = 3), padded bucket
OUTPUTS = ("cas", "cas_sigmoid_fuse", "video_score", "video_distribution", "cpc")


@pytest.fixture(scope="module")
def tsl():
  torch.manual_seed(1)
  ref = randomize_(TorchTSL(channels=NARROW["audio_channels"], align=NARROW["align_features"],
                            neck=NARROW["neck_features"], dropout=0.0), 1)
  conv = converters_tsl.tsl(_numpy_sd(ref))
  model = tsl_model.TSLNet(audio_channels=tuple(conv.info["audio_channels"]),
                           align_features=conv.info["align_features"],
                           neck_features=conv.info["neck_features"], dropout=0.0)
  rng = np.random.default_rng(2)
  rgb = rng.normal(size=(1, T, 1024))
  aud = rng.uniform(-0.4, 0.6, (1, T, 32, 60))
  return ref, model, conv.variables, rgb, aud


def _outputs(out, t):
  """The model's outputs as the reference returns them (CPC summed over both streams)."""
  mask = jnp.arange(out["cas"].shape[1])[None] < t
  cpc = (tsl_model.cpc_score(out["audio"], out["audio_pred"], mask)
         + tsl_model.cpc_score(out["visual"], out["visual_pred"], mask))
  return dict(cas=out["cas"][:, :t], cas_sigmoid_fuse=out["cas_sigmoid_fuse"][:, :t],
              video_score=out["video_score"], video_distribution=out["video_distribution"],
              cpc=cpc[0])


def test_tsl_float32_train_forward_and_statistics(tsl):
  ref, model, variables, rgb, aud = tsl
  rgb, aud = rgb.astype(np.float32), aud.astype(np.float32)
  ref = copy.deepcopy(ref).train()
  with torch.no_grad():
    out_t = ref(torch.from_numpy(rgb), torch.from_numpy(aud), train=True)
  out, state = jit(lambda v, *a: model.apply(v, *a, train=True, mutable=["batch_stats"]))(
      variables, rgb, aud, np.ones((1, T), np.float32), np.array([T]))
  out = _outputs(out, T)
  _assert_outputs(out, {k: out_t[k].numpy() for k in OUTPUTS}, 1e-4, "float32 outputs")
  _assert_close(state["batch_stats"], converters_tsl.tsl(_numpy_sd(ref)).variables["batch_stats"],
                2e-5, what="float32 statistics")


def test_tsl_float64_train_gradients_padded(tsl):
  ref, model, variables, rgb, aud = tsl
  rng = np.random.default_rng(3)
  w = dict(cas=rng.normal(size=(1, T, 3)), video_score=rng.normal(size=(1, 2)),
           video_distribution=rng.normal(size=(1, 2)), cpc=1.0)
  ref = copy.deepcopy(ref).double().train()
  out_t = ref(torch.from_numpy(rgb), torch.from_numpy(aud), train=True)
  sum((out_t[k] * (torch.from_numpy(v) if k != "cpc" else v)).sum() for k, v in w.items()
      ).backward()
  t_vars = converters_tsl.tsl(grad_state_dict(ref)).variables
  pad = lambda x: np.pad(x, [(0, 0), (0, L - T)] + [(0, 0)] * (x.ndim - 2), constant_values=7.0)
  mask = (np.arange(L) < T)[None].astype(np.float32)

  def loss_fn(params, stats):
    out, state = model.apply({"params": params, "batch_stats": stats}, pad(rgb), pad(aud), mask,
                             np.array([T]), train=True, mutable=["batch_stats"])
    out = _outputs(out, T)
    return sum(jnp.sum(out[k] * v) for k, v in w.items()), (out, state["batch_stats"])

  with jax.enable_x64(True):
    (_, (out, stats)), grads = jit(jax.value_and_grad(loss_fn, has_aux=True))(
        to_float64(variables["params"]), to_float64(variables["batch_stats"]))
  assert grads["cls_module"]["neck_0"]["kernel"].dtype == np.float64
  _assert_outputs(out, {k: out_t[k].detach().numpy() for k in OUTPUTS}, 1e-5, "float64 outputs")
  _assert_close(stats, t_vars["batch_stats"], 1e-5, what="float64 statistics")
  _assert_close(grads, t_vars["params"], 5e-6, 1e-3, "float64 gradients")
