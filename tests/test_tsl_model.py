"""TSL-Net model: parameter counts of the released architecture, padding invariance, and
converter parity against a PyTorch forward of the same weights (original key layout)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
import flax.linen as nn

from jaxaffect.convert import keymap, torch_pickle
from jaxaffect.methods.tsl import converters as converters_tsl
from jaxaffect.methods.tsl import model as tsl_model

NARROW = dict(audio_channels=(8, 16, 32), align_features=24, neck_features=40)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract_params(model, length=16):
  v = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, length, 1024)), jnp.zeros((1, length, 32, 60)),
      jnp.ones((1, length)), jnp.array([length]), train=False))
  return nn.meta.unbox(v)["params"]


def test_param_counts_match_released_model():
  params = _abstract_params(tsl_model.TSLNet())
  flat = traverse_util.flatten_dict(params, sep="/")
  assert _count(params) == 91_342_592
  assert sum(int(np.prod(x.shape)) for k, x in flat.items() if "/rev_" not in k) == 9_540_352
  a = sum(int(np.prod(x.shape)) for k, x in flat.items() if "/a_extractor/" in k)
  assert a == 1_661_184
  # Ablations drop what they should.
  assert "rev_fa" not in _abstract_params(tsl_model.TSLNet(reverse_mapping=False))["cls_module"]
  vis = _abstract_params(tsl_model.TSLNet(modalities="visual"))["cls_module"]
  assert "a_extractor" not in vis and "rev_fa" not in vis and vis["neck_0"]["kernel"].shape == (
      3, 512, 2048)


def test_neighbour_indices_wrap_inside_chunks():
  prev, nxt = tsl_model.neighbour_indices(jnp.array([5, 3]), 6, chunk=4)
  np.testing.assert_array_equal(prev, [[3, 0, 1, 2, 4, 5], [2, 0, 1, 3, 4, 5]])
  np.testing.assert_array_equal(nxt, [[1, 2, 3, 0, 4, 5], [1, 2, 0, 3, 4, 5]])


def test_padding_does_not_change_real_outputs():
  model = tsl_model.TSLNet(**NARROW)
  rng = np.random.default_rng(0)
  t, l = 21, 32
  rgb = rng.normal(size=(1, t, 1024)).astype(np.float32)
  aud = rng.uniform(0, 1, (1, t, 32, 60)).astype(np.float32)
  variables = model.init(jax.random.key(1), rgb, aud, np.ones((1, t)), np.array([t]))
  short = model.apply(variables, rgb, aud, np.ones((1, t)), np.array([t]))
  pad = lambda x: np.pad(x, [(0, 0), (0, l - t)] + [(0, 0)] * (x.ndim - 2),
                         constant_values=7.0)  # garbage in the padding must not leak
  mask = (np.arange(l) < t)[None].astype(np.float32)
  long = model.apply(variables, pad(rgb), pad(aud), mask, np.array([t]))
  np.testing.assert_allclose(long["cas_sigmoid_fuse"][:, :t], short["cas_sigmoid_fuse"],
                             atol=1e-5)
  np.testing.assert_allclose(long["video_score"], short["video_score"], atol=1e-6)


torch = pytest.importorskip("torch")
from jaxaffect.convert.torch_reference import randomize_  # noqa: E402
from jaxaffect.methods.tsl.torch_reference import Model as TorchTSL  # noqa: E402


def _torch_model(seed=0):
  torch.manual_seed(seed)
  m = TorchTSL(channels=NARROW["audio_channels"], align=NARROW["align_features"],
               neck=NARROW["neck_features"], dropout=0.0)
  return randomize_(m, seed)


def _convert(tmp_path, tm):
  path = os.path.join(tmp_path, "model_seed_123.pkl")
  torch.save(tm.state_dict(), path)
  conv = converters_tsl.tsl(torch_pickle.load(path), source=path)
  assert conv.info["audio_channels"] == list(NARROW["audio_channels"])
  model = tsl_model.TSLNet(audio_channels=tuple(conv.info["audio_channels"]),
                           align_features=conv.info["align_features"],
                           neck_features=conv.info["neck_features"], dropout=0.0)
  return model, conv.variables


def test_converter_parity_eval_with_padding_and_600_chunks(tmp_path):
  tm = _torch_model(0)
  model, variables = _convert(tmp_path, tm)
  rng = np.random.default_rng(0)
  t, l = 610, 640  # crosses the original's 600-snippet audio chunk
  rgb = rng.normal(size=(1, t, 1024)).astype(np.float32)
  aud = ((rng.uniform(-80, 0, (1, t, 32, 60)) + 50) / 80).astype(np.float32)
  with torch.no_grad():
    ref = tm(torch.from_numpy(rgb), torch.from_numpy(aud), train=False)
  mask = (np.arange(l) < t)[None].astype(np.float32)
  pad = lambda x: np.pad(x, [(0, 0), (0, l - t)] + [(0, 0)] * (x.ndim - 2))
  out = jax.jit(lambda v, *a: model.apply(v, *a))(variables, pad(rgb), pad(aud), mask,
                                                  np.array([t]))
  for k in ("cas", "cas_sigmoid_fuse", "video_score", "video_distribution"):
    got = np.asarray(out[k])[:, :t] if out[k].ndim == 3 else np.asarray(out[k])
    np.testing.assert_allclose(got, ref[k].numpy(), atol=1e-4, err_msg=k)


def test_converter_parity_train_mode_cpc(tmp_path):
  tm = _torch_model(1)
  model, variables = _convert(tmp_path, tm)
  rng = np.random.default_rng(1)
  t = 40
  rgb = rng.normal(size=(1, t, 1024)).astype(np.float32)
  aud = rng.uniform(-0.4, 0.6, (1, t, 32, 60)).astype(np.float32)
  tm.train()
  with torch.no_grad():
    ref = tm(torch.from_numpy(rgb), torch.from_numpy(aud), train=True)
  out, _ = model.apply(variables, rgb, aud, np.ones((1, t), np.float32), np.array([t]),
                       train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])
  np.testing.assert_allclose(out["cas"], ref["cas"].numpy(), atol=1e-4)
  mask = jnp.ones((1, t), bool)
  cpc = (tsl_model.cpc_score(out["audio"], out["audio_pred"], mask)
         + tsl_model.cpc_score(out["visual"], out["visual_pred"], mask))
  np.testing.assert_allclose(float(cpc[0]), float(ref["cpc"]), atol=1e-4)


def test_converter_names_unknown_and_missing_keys(tmp_path):
  sd = {k: v.numpy() for k, v in _torch_model(0).state_dict().items()}
  sd["cls_module.extra_head.weight"] = np.zeros((3,), np.float32)
  del sd["cls_module.neck.0.bias"]
  with pytest.raises(keymap.ConversionError) as e:
    converters_tsl.tsl(sd)
  assert "cls_module.extra_head.weight" in str(e.value)
  assert "cls_module.neck.0.bias" in str(e.value)
  with pytest.raises(keymap.ConversionError, match="not a TSL-Net"):
    converters_tsl.tsl({"fc.weight": np.zeros((2, 2), np.float32)})


def test_positional_encoding_equals_the_originals_table():
  """The original builds positionalencoding1d(60, 4000) in torch float32; ours matches it to
  1 ulp of sin/cos (the frequencies exactly), at every step up to 4000."""
  from jaxaffect.methods.tsl.torch_reference import step_encoding
  ref = step_encoding(60, tsl_model.PE_LENGTH).numpy()
  got = tsl_model.positional_encoding(60, tsl_model.PE_LENGTH)
  assert got.dtype == np.float32 and got.shape == ref.shape
  assert np.max(np.abs(got - ref)) <= 1.2e-7
