"""Model tests: conv implementations agree, ResNet/VAANet shapes and exact param counts, VAANet
forward semantics (attention normalisation, frozen backbone, BN policies, ablations)."""
import math
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import pytest

from jaxaffect.nn import count_params
from jaxaffect.nn import layers
from jaxaffect.nn.layers import BatchNorm, Conv3D, conv, conv3d, resolve_conv_impl
from jaxaffect.nn.resnet2d import ResNet2D
from jaxaffect.nn.resnet3d import ResNet3D
from jaxaffect.nn.transformer import TransformerBlock
from jaxaffect.methods.vaanet.model import VAANet, normalize_video

# RngBitGenerator keys compile ~3x faster than threefry for the many param inits of a jitted
# model.init on XLA:CPU (test speed only; values don't matter here).
KEY = jax.random.key(0, impl="rbg")

# (input [B,T,H,W,C], kernel [kt,kh,kw], out, strides, padding)
CONV_CASES = [
    ((2, 5, 9, 9, 3), (3, 3, 3), 4, (1, 1, 1), (1, 1, 1)),
    ((2, 6, 10, 10, 4), (3, 3, 3), 5, (2, 2, 2), (1, 1, 1)),   # stride 2 everywhere
    ((1, 4, 12, 12, 3), (7, 7, 7), 4, (1, 2, 2), (3, 3, 3)),   # stem; most taps see padding
    ((2, 1, 6, 6, 4), (3, 3, 3), 3, (1, 1, 1), (1, 1, 1)),     # T=1: only the centre tap
    ((2, 5, 8, 8, 4), (1, 1, 1), 6, (2, 2, 2), (0, 0, 0)),     # shortcut-B downsample
    ((1, 7, 7, 9, 2), (2, 3, 1), 3, (3, 1, 2), (1, 0, 1)),     # uneven kernel/stride/pad
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv3d_impls_match_native_values_and_grads(case):
  xs, ks, out, strides, pad = case
  kx, kk, kc = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, xs)
  k = jax.random.normal(kk, (*ks, xs[-1], out)) * 0.2
  impls = ("native", "taps", "taps_fold")

  @jax.jit
  def run(x, k, cot):  # value and (dx, dk) per impl, one compile
    res = {}
    for impl in impls:
      y, vjp = jax.vjp(lambda x, k, i=impl: conv3d(x, k, strides, pad, i), x, k)
      res[impl] = (y, *vjp(cot))
    return res

  ref_shape = jax.eval_shape(lambda x, k: conv3d(x, k, strides, pad, "native"), x, k).shape
  res = run(x, k, jax.random.normal(kc, ref_shape))
  for impl in impls[1:]:
    for got, ref in zip(res[impl], res["native"]):
      assert got.shape == ref.shape
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-5, err_msg=impl)


# (input shape, kernel size, out channels, strides, padding) for nn.layers.conv
CONV_MATMUL_CASES = [
    ((2, 11, 5, 4), (9, 1), 6, (1, 1), (4, 0)),   # BPM-GCN tcn: (9, 1) over [B, T, V, C]
    ((2, 12, 5, 4), (9, 1), 6, (2, 1), (4, 0)),   # strided block (polyphase)
    ((2, 13, 5, 4), (9, 1), 6, (2, 1), (4, 0)),   # odd T: the phase stack pads one frame
    ((2, 10, 3, 4), (4, 1), 5, (3, 1), (1, 0)),   # stride 3, an even kernel: zero taps
    ((2, 7, 3, 4), (1, 1), 5, (2, 1), (0, 0)),    # strided 1x1 residual
    ((3, 10, 4), (3,), 2, (1,), (1,)),            # TSL: Conv1d k3 over [B, T, C]
    ((2, 14, 12, 1), (7, 7), 3, (3, 2), (3, 3)),  # TSL audio stem
    ((2, 5, 4, 3), (3, 3), 4, (1, 1), (1, 1)),
    ((1, 5, 6, 7, 3), (3, 1, 2), 4, (2, 1, 1), (0, 1, 1)),  # 3-d, uneven
    # Folded kernel gradient with two wide dims and a strided size-1 dim.
    ((2, 6, 5, 7, 3), (3, 1, 2), 4, (1, 2, 2), (1, 0, 1)),
]


@pytest.mark.parametrize("t,k,s,p", [(48, 9, 2, 4), (13, 9, 2, 4), (9, 9, 3, 4), (16, 4, 2, 1),
                                     (17, 5, 2, 2), (10, 1, 2, 1), (7, 3, 2, 0)])
def test_polyphase_conv_is_the_strided_conv(t, k, s, p):
  """The strided 1-d convolution as an unstrided one over stacked phases: values and both
  gradients equal the native strided convolution's (a padding wider than the kernel, (10, 1,
  2, 1), falls back to it)."""
  kx, kk, kc = jax.random.split(jax.random.PRNGKey(2), 3)
  x = jax.random.normal(kx, (3, t, 5))
  w = jax.random.normal(kk, (k, 5, 4)) * 0.3
  ref_y, ref_vjp = jax.vjp(lambda x, w: layers._conv_native_1d(x, w, s, p), x, w)
  y, vjp = jax.vjp(lambda x, w: layers._conv_polyphase(x, w, s, p), x, w)
  assert y.shape == ref_y.shape == (3, (t + 2 * p - k) // s + 1, 4)
  cot = jax.random.normal(kc, y.shape)
  for got, ref in zip((y, *vjp(cot)), (ref_y, *ref_vjp(cot))):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("case", CONV_MATMUL_CASES)
def test_conv_unfold_and_hybrid_match_native_values_and_grads(case):
  xs, ks, out, strides, pad = case
  kx, kk, kc = jax.random.split(jax.random.PRNGKey(1), 3)
  x = jax.random.normal(kx, xs)
  k = jax.random.normal(kk, ks + (xs[-1], out)) * 0.3
  shape = jax.eval_shape(lambda x, k: conv(x, k, strides, pad, "native"), x, k).shape
  cot = jax.random.normal(kc, shape)
  res = {}
  for impl in ("native", "unfold", "hybrid"):
    y, vjp = jax.vjp(lambda x, k, i=impl: conv(x, k, strides, pad, i), x, k)
    res[impl] = (y, *vjp(cot))
  for impl in ("unfold", "hybrid"):
    for got, ref in zip(res[impl], res["native"]):
      assert got.shape == ref.shape
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-5, err_msg=impl)
  if layers._foldable(k.shape, strides, pad) and layers._one_wide_dim(k.shape, strides) is not None:
    # The native forward; gradients from the 1-d convolution with the size-1 dims in the
    # batch (close to native's, above).
    np.testing.assert_array_equal(res["hybrid"][0], res["native"][0])
  elif layers._foldable(k.shape, strides, pad):
    np.testing.assert_array_equal(res["hybrid"][0], res["native"][0])  # its forward is native
    # Size-1 kernel dims: the native input gradient and the folded kernel gradient (close to
    # native's above).
    np.testing.assert_array_equal(res["hybrid"][1], res["native"][1])
  else:
    np.testing.assert_array_equal(res["hybrid"][0], res["native"][0])  # its forward is native
    for got, ref in zip(res["hybrid"][1:], res["unfold"][1:]):
      np.testing.assert_array_equal(got, ref)  # its gradients are unfold's
  with pytest.raises(ValueError, match="conv impl"):
    conv(x, k, strides, pad, "taps")
  with pytest.raises(ValueError, match="needs x"):
    conv(x[..., None], k, strides, pad)


def test_materialized_is_exact_and_stops_recomputation_in_transposes():
  special = np.array([0.0, -0.0, 1.5, -2.25, np.inf, -np.inf, np.nan, 1e-45, -3e-39, 3e38],
                     np.float32)
  for a0 in (0.0, np.nan, np.inf, -np.inf, -7.0, 1e-45):
    x = jnp.asarray(np.concatenate([[a0], special]).astype(np.float32))
    got = np.asarray(jax.jit(layers.materialized)(x))
    # Bitwise x, except that XLA:CPU flushes subnormals to (signed) zero in every op (x * 1
    # here, as in the ReLU / BatchNorm that produce what the model materializes).
    want = np.asarray(jax.jit(jnp.multiply)(x, jnp.float32(1)))
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert want.view(np.uint32)[-2] == np.float32(-0.0).view(np.uint32)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 6))
  g = jax.grad(lambda x: jnp.sum(layers.materialized(x) * x))(x)
  np.testing.assert_array_equal(g, 2 * x)

  # The reason it exists: a BatchNorm-like chain feeding a (9, 1) convolution whose folded
  # kernel gradient transposes the input. Unmaterialized, XLA:CPU recomputes the chain (its
  # ReLU maximum) inside the transposing fusion; materialized, no fusion does both.
  def loss(a, r, s, k, mat):
    x = jax.nn.relu(a * s + r)
    x = layers.materialized(x) if mat else x
    return jnp.sum(layers._conv_hybrid(x, k, (1, 1), (4, 0)) ** 2)

  a, r = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 12, 5, 8))
  s, k = jnp.ones((8,)), jnp.ones((9, 1, 8, 8))

  def transposing_fusions_with_max(mat):
    grad = jax.jit(jax.grad(loss, argnums=(0, 3)), static_argnums=4)
    hlo = grad.lower(a, r, s, k, mat).compile().as_text()
    comps = re.split(r"\n(?=\S)", hlo)
    return [c.split(" ")[0] for c in comps
            if re.search(r"= \S+ transpose\(", c) and re.search(r"= \S+ maximum\(", c)]

  # If this fails, XLA:CPU stopped recomputing the chain: `materialized` may be unneeded.
  assert transposing_fusions_with_max(False)
  assert not transposing_fusions_with_max(True)


def test_conv_module_keeps_nn_conv_variables():
  x = jnp.ones((2, 6, 5, 3))
  ours = layers.Conv(4, (3, 1), (1, 1), (1, 0), impl="unfold")
  ref = nn.Conv(4, (3, 1), padding=((1, 1), (0, 0)),
                kernel_init=layers.kaiming_normal_fan_out)
  v_ours = ours.init(jax.random.key(3), x)
  v_ref = ref.init(jax.random.key(3), x)
  chex.assert_trees_all_equal(nn.unbox(v_ours), v_ref)  # same names, shapes and drawn values
  np.testing.assert_allclose(ours.apply(v_ours, x), ref.apply(v_ref, x), rtol=1e-6, atol=1e-6)


def test_conv3d_module_layout_and_auto_impl():
  cpu = jax.default_backend() == "cpu"
  assert resolve_conv_impl("auto") == ("taps" if cpu else "native")
  # On CPU a stem over RGB stacks its time taps as channels (kt x in = 21); wider ones do not.
  assert resolve_conv_impl("auto", (7, 7, 7, 3, 64)) == ("taps_fold" if cpu else "native")
  assert resolve_conv_impl("auto", (3, 3, 3, 64, 64)) == ("taps" if cpu else "native")
  assert resolve_conv_impl("taps", (7, 7, 7, 3, 64)) == "taps"
  with pytest.raises(ValueError, match="conv impl"):
    resolve_conv_impl("winograd")
  m = Conv3D(8, (3, 3, 3), strides=(1, 2, 2), padding=1)
  v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 8, 8, 3)))
  kernel = v["params"]["kernel"]
  assert isinstance(kernel, nn.Partitioned)
  assert kernel.names == (None, None, None, "conv_in", "conv_out")
  assert kernel.value.shape == (3, 3, 3, 3, 8)
  assert m.apply(v, jnp.zeros((1, 4, 8, 8, 3))).shape == (1, 4, 4, 4, 8)


def test_batchnorm_matches_pytorch_semantics():
  x = jax.random.normal(jax.random.PRNGKey(1), (6, 5, 3)) * 3.0 + 1.0
  bn = BatchNorm()
  v = bn.init(jax.random.PRNGKey(0), x, use_running_average=False)
  y, upd = bn.apply(v, x, use_running_average=False, mutable=["batch_stats"])
  xn = np.asarray(x).reshape(-1, 3)
  n = xn.shape[0]
  np.testing.assert_allclose(y.reshape(-1, 3), (xn - xn.mean(0)) / np.sqrt(xn.var(0) + 1e-5),
                             rtol=1e-4, atol=1e-4)
  # PyTorch: running = 0.9 * running + 0.1 * batch, running var from the unbiased variance.
  np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * xn.mean(0), rtol=1e-5)
  np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 + 0.1 * xn.var(0) * n / (n - 1),
                             rtol=1e-5)
  y_eval = bn.apply({**v, **upd}, x, use_running_average=True)
  rs = upd["batch_stats"]
  np.testing.assert_allclose(y_eval, (x - rs["mean"]) / jnp.sqrt(rs["var"] + 1e-5), rtol=1e-4)


def _eval_shape_init(model, *args, **kw):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kw))


def test_resnet3d_layer4_shapes_and_param_count():
  clip = jax.ShapeDtypeStruct((1, 16, 112, 112, 3), jnp.float32)
  for depth, ch in ((101, 2048), (18, 512)):
    m = ResNet3D(depth=depth, width=64)
    v = _eval_shape_init(m, jnp.zeros(clip.shape), use_running_average=True)
    out = jax.eval_shape(lambda v, x: m.apply(v, x, use_running_average=True), v, clip)
    assert out.shape == (1, 1, 4, 4, ch)
    if depth == 101:
      assert count_params(v) == 85_245_120  # Hara's R3D-101 body
  names = set(v["params"])
  assert {"conv1", "bn1", "layer1_0", "layer2_1", "layer4_1"} <= names
  assert "downsample_0" in v["params"]["layer2_0"] and "downsample_0" not in v["params"]["layer1_0"]


def test_resnet2d_audio_shapes_and_pool_fallback():
  m = ResNet2D()  # VAANet's audio ResNet-18
  mfcc = jax.ShapeDtypeStruct((2, 256, 32, 1), jnp.float32)
  v = _eval_shape_init(m, jnp.zeros(mfcc.shape), use_running_average=True)
  assert v["params"]["conv1"]["kernel"].value.shape == (7, 1, 1, 64)
  out = jax.eval_shape(lambda v, x: m.apply(v, x, use_running_average=True), v, mfcc)
  assert out.shape == (2, 512)
  # Window (8, 2) doesn't fit a small demo input: global mean instead.
  small = ResNet2D(width=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 16, 1))
  vs = jax.jit(lambda x: small.init(KEY, x, use_running_average=True))(x)
  assert small.apply(vs, x, use_running_average=True).shape == (2, 32)


def test_vaanet_paper_config_param_counts():
  model = VAANet(num_classes=8)  # paper defaults: R3D-101 w64, S=12, A=16
  video = jnp.zeros((1, 12, 16, 112, 112, 3), jnp.uint8)
  audio = jnp.zeros((1, 16, 256, 32), jnp.float32)
  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), video, audio))
  total = count_params(v)
  trainable = total - count_params(v["params"]["visual_backbone"])
  assert total == 97_869_012
  assert trainable == 12_623_892
  assert count_params(v["params"]["fc"]) == 4_104  # the unused visual fc
  assert count_params(v["params"]["ta_net"]) == 670


B, S, T, HW, A, F, M = 2, 3, 4, 64, 2, 32, 16
TINY = dict(num_segments=S, audio_segments=A, visual_depth=10, visual_width=4, audio_width=4)


@pytest.fixture(scope="module")
def tiny():
  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.integers(0, 256, (B, S, T, HW, HW, 3), dtype=np.uint8))
  audio = jnp.asarray(rng.normal(size=(B, A, F, M)).astype(np.float32))
  model = VAANet(**TINY)
  variables = nn.unbox(jax.jit(model.init)(KEY, video, audio))
  return model, variables, video, audio


def test_vaanet_forward_shapes_and_attention_normalisation(tiny):
  model, v, video, audio = tiny
  hw, c = 4, 512  # 4x64x64 -> layer4 1x2x2
  out_eval = jax.jit(lambda v: model.apply(v, video, audio, train=False))(v)
  out_train, upd = jax.jit(lambda v: model.apply(v, video, audio, train=True,
                                                 mutable=["batch_stats"]))(v)
  for out in (out_eval, out_train):
    assert out["logits"].shape == (B, 8) and out["logits"].dtype == jnp.float32
    assert out["alpha"].shape == (B, S, hw) and out["beta"].shape == (B, S, c)
    assert out["gamma"].shape == (B, S) and out["audio_gamma"].shape == (B, A)
    np.testing.assert_allclose(out["alpha"].sum(-1), hw, rtol=1e-5)
    np.testing.assert_allclose(out["beta"].sum(-1), c, rtol=1e-4)
    assert (out["gamma"] >= 0).all() and (out["audio_gamma"] >= 0).all()
    assert np.isfinite(out["logits"]).all()
  # "batch_stats" policy: training updates the frozen backbone's running stats too.
  old = v["batch_stats"]["visual_backbone"]["bn1"]["mean"]
  assert not np.allclose(upd["batch_stats"]["visual_backbone"]["bn1"]["mean"], old)
  # Temporal FC bias starts at 1.0 (the released code); the audio one keeps PyTorch's default.
  np.testing.assert_array_equal(v["params"]["ta_net"]["fc"]["bias"], np.ones(S))
  assert np.abs(v["params"]["aa_net"]["fc"]["bias"]).max() <= 1 / np.sqrt(A)


def test_vaanet_running_policy_freezes_backbone_stats(tiny):
  _, v, video, audio = tiny
  model = VAANet(**TINY, backbone_bn="running")
  _, upd = jax.jit(lambda v: model.apply(v, video, audio, train=True,
                                         mutable=["batch_stats"]))(v)
  jax.tree_util.tree_map(np.testing.assert_array_equal, upd["batch_stats"]["visual_backbone"],
                         v["batch_stats"]["visual_backbone"])
  assert not np.allclose(upd["batch_stats"]["conv0_1"]["mean"], v["batch_stats"]["conv0_1"]["mean"])


def test_vaanet_gradient_skips_visual_backbone(tiny):
  model, v, video, audio = tiny
  # With A=2 and PyTorch's default bias init the audio attention ReLU can start dead (all
  # zeros), which blocks the audio gradient; open it so the test sees every branch.
  params = {**v["params"], "aa_net": {**v["params"]["aa_net"], "fc": {
      **v["params"]["aa_net"]["fc"], "bias": jnp.ones((A,))}}}

  def loss(p):
    out, _ = model.apply({"params": p, "batch_stats": v["batch_stats"]}, video, audio,
                         train=True, mutable=["batch_stats"])
    return jnp.sum(out["logits"] ** 2)

  g = jax.jit(jax.grad(loss))(params)
  assert all(float(jnp.abs(x).max()) == 0.0
             for x in jax.tree_util.tree_leaves(g["visual_backbone"]))
  for name in ("conv0_0", "sa_net", "cwa_net", "ta_net", "audio_backbone", "a_fc_0", "av_fc"):
    assert max(float(jnp.abs(x).max()) for x in jax.tree_util.tree_leaves(g[name])) > 0, name
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree_util.tree_leaves(g["fc"]))


def test_vaanet_ablation_flags_change_param_tree(tiny):
  _, _, video, audio = tiny

  def names(**kw):
    m = VAANet(**{**TINY, **kw})
    v = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), video, audio))
    return set(v["params"]), v["params"]

  full, _ = names()
  assert full == {"visual_backbone", "conv0_0", "conv0_1", "sa_net", "cwa_net", "ta_net", "fc",
                  "audio_backbone", "a_fc_0", "a_fc_1", "aa_net", "av_fc"}
  assert names(use_spatial_attention=False)[0] == full - {"sa_net"}
  assert names(use_channel_attention=False)[0] == full - {"cwa_net"}
  assert names(use_temporal_attention=False)[0] == full - {"ta_net"}
  assert names(use_audio_attention=False)[0] == full - {"aa_net"}
  assert names(keep_unused_fc=False)[0] == full - {"fc"}
  no_audio, p = names(use_audio=False)
  assert no_audio == full - {"audio_backbone", "a_fc_0", "a_fc_1", "aa_net"}
  assert p["av_fc"]["kernel"].value.shape == (512, 8)


def test_vaanet_ablation_outputs_and_bf16(tiny):
  _, _, video, audio = tiny
  m = VAANet(**TINY, use_spatial_attention=False, use_channel_attention=False,
             use_temporal_attention=False, use_audio=False, dtype=jnp.bfloat16)
  v = jax.jit(m.init)(KEY, video)  # no audio needed without the audio stream
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(nn.unbox(v)))
  out = jax.jit(lambda v, x: m.apply(v, x, None))(v, video)
  assert out["logits"].dtype == jnp.float32 and out["logits"].shape == (B, 8)
  for k in ("alpha", "beta", "gamma", "audio_gamma"):
    np.testing.assert_array_equal(out[k], 1.0)
  with pytest.raises(ValueError, match="segments"):
    m.apply(v, video[:, :2], None)


def test_normalize_video_modes():
  x = jnp.asarray([[0, 100, 255]], jnp.uint8)[..., None].repeat(3, -1)  # [1, 3, 3]
  np.testing.assert_allclose(normalize_video(x, "vaanet_legacy")[0, :, 0],
                             [-100 / 255, 0.0, 155 / 255], atol=1e-6)
  np.testing.assert_allclose(normalize_video(x, "hara_2018")[0, 1], 100 - np.array(
      [114.7748, 107.7354, 99.4750]), rtol=1e-5)
  np.testing.assert_allclose(normalize_video(x, "hara_2020")[0, 2], (1 - np.array(
      [0.4345, 0.4051, 0.3775])) / np.array([0.2768, 0.2713, 0.2737]), rtol=1e-5)
  with pytest.raises(ValueError, match="normalization"):
    normalize_video(x, "imagenet")


def test_transformer_block_logical_axes():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 32))
  blk = TransformerBlock(num_heads=4, head_dim=8, mlp_dim=64)
  v = blk.init(jax.random.PRNGKey(1), x)
  specs = nn.get_partition_spec(v)["params"]
  assert tuple(specs["query"]["kernel"]) == ("embed", "heads", "kv")
  assert tuple(specs["out"]["kernel"]) == ("heads", "kv", "embed")
  assert tuple(specs["mlp_in"]["kernel"]) == ("embed", "mlp")
  assert tuple(specs["mlp_out"]["kernel"]) == ("mlp", "embed")
  mask = jnp.array([[True] * 5, [True] * 3 + [False] * 2])
  y = blk.apply(v, x, mask)
  assert y.shape == x.shape
  # Masked keys don't influence the kept positions.
  y2 = blk.apply(v, x.at[1, 3:].set(100.0), mask)
  np.testing.assert_allclose(y[1, :3], y2[1, :3], rtol=1e-5, atol=1e-5)
  assert count_params(v) == sum(math.prod(a.shape) for a in
                                jax.tree_util.tree_leaves(nn.unbox(v)["params"]))


@pytest.mark.parametrize("shape,window", [((3, 8, 12, 5), (4, 4)), ((2, 9, 7, 3), (2, 2)),
                                          ((2, 8, 6, 4), (2, 3))])
def test_max_pool_tiles_equals_torch_max_pool_ties_included(shape, window):
  """nn.pooling.max_pool_tiles: PyTorch's MaxPool2d(k, k) in values and gradient, the gradient
  of tied maxima (ReLU zeros, halves) going to the first in row-major order, as PyTorch's;
  rows past the last whole window (9 and 7 here) get none."""
  torch = pytest.importorskip("torch")
  from jaxaffect.nn.pooling import max_pool_tiles
  rng = np.random.default_rng(0)
  x = np.round(np.maximum(rng.standard_normal(shape), 0) * 2).astype(np.float32) / 2
  out = [shape[0], *(s // k for s, k in zip(shape[1:3], window)), shape[3]]
  g = rng.standard_normal(out).astype(np.float32)
  y, vjp = jax.vjp(lambda a: max_pool_tiles(a, window), jnp.asarray(x))
  xt = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
  yt = torch.nn.functional.max_pool2d(xt, window, window)
  yt.backward(torch.tensor(g).permute(0, 3, 1, 2))
  np.testing.assert_array_equal(y, yt.detach().permute(0, 2, 3, 1).numpy())
  np.testing.assert_array_equal(vjp(jnp.asarray(g))[0], xt.grad.permute(0, 2, 3, 1).numpy())
  assert (x == 0).mean() > 0.3  # ties are common, as after ReLU
  with pytest.raises(ValueError, match="window"):
    max_pool_tiles(jnp.asarray(x), (4,))
