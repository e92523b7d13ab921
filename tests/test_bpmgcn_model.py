"""BPM-GCN: exact parameter counts, graph, the 31 affective features and motion channels against
independent NumPy code, fusion variants, and converter parity with a PyTorch reference in the
released state_dict layout (jaxaffect/methods/bpmgcn/torch_reference.py)."""
import copy
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxaffect.nn import count_params
from jaxaffect.methods.bpmgcn import gait_features as gf
from jaxaffect.methods.bpmgcn.model import BPMGCN, egait_adjacency

T_SMALL = 8


# ---- parameter counts (the released model) ------------------------------------------------

@pytest.mark.parametrize("fusion,expected", [("code", 7_287_192), ("paper", 7_287_192),
                                             ("none", 7_272_024)])
def test_param_counts_match_the_released_model(fusion, expected):
  model = BPMGCN(fusion=fusion)
  x = jax.ShapeDtypeStruct((2, 48, 16, 3), jnp.float32)
  v = jax.eval_shape(lambda s: model.init(jax.random.key(0), s), x)
  assert count_params(v) == expected
  specs = nn.get_partition_spec(v["params"])
  assert tuple(specs["fc1_classifier_p"]["kernel"]) == ("embed", "classes")
  assert tuple(specs["fc2_aff"]["kernel"]) == ("embed", "mlp")
  assert tuple(specs["l5_p"]["tcn1"]["conv"]["kernel"])[2:] == ("conv_in", "conv_out")
  assert v["params"]["l1_p"]["gcn1"]["PA"].shape == (3, 16, 16)
  assert "residual" not in v["params"]["l1_m"] and "residual" in v["params"]["l8_m"]


def test_adjacency_columns_normalised():
  a = egait_adjacency()
  np.testing.assert_array_equal(a[0], np.eye(16))
  for k in (1, 2):
    s = a[k].sum(0)
    assert np.all((np.abs(s - 1) < 1e-6) | (s == 0))
  assert a[1][8, 9] == 1.0          # L-hand (9) reads its parent L-elbow (8) inward
  assert a[2][9, 8] == 1.0          # ... and the elbow reads the hand outward
  assert a[1][:, 0].sum() == 0      # the root has no parent
  np.testing.assert_allclose(a[2][[1, 10, 13], 0], 1 / 3)  # root's three children


# ---- affective features: an independent float64 NumPy version of Table I -----------------------

def _np_features(g):
  """g [T, 16, 3] float64 -> [T, 31]: arccos angles, Heron areas, as STEP defines them."""
  def ang(u, v):
    c = np.sum(u * v, -1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
    return np.arccos(np.clip(c, -1, 1))

  def heron(p, q, r):
    a, b, c = (np.linalg.norm(p - q, axis=-1), np.linalg.norm(q - r, axis=-1),
               np.linalg.norm(r - p, axis=-1))
    s = (a + b + c) / 2
    return np.sqrt(np.maximum(s * (s - a) * (s - b) * (s - c), 0))

  J = {n: g[:, i] for i, n in enumerate(
      "root spine neck head rsh rel rha lsh lel lha rhi rkn rft lhi lkn lft".split())}
  at = lambda a, v, b: ang(J[a] - J[v], J[b] - J[v])  # noqa: E731
  dist = lambda a, b: np.linalg.norm(J[a] - J[b], axis=-1)  # noqa: E731
  up = np.broadcast_to([0.0, 1.0, 0.0], J["head"].shape)
  cols = [at("lsh", "neck", "rsh"), at("neck", "rsh", "lsh"), at("rsh", "lsh", "neck"),
          at("neck", "rsh", "rel"), at("neck", "lsh", "lel"), at("rsh", "rel", "rha"),
          at("lsh", "lel", "lha"), at("neck", "spine", "root"), at("head", "neck", "spine"),
          at("root", "rhi", "rkn"), at("root", "lhi", "lkn"), at("rhi", "rkn", "rft"),
          at("lhi", "lkn", "lft"), ang(J["head"] - J["root"], up),
          dist("rha", "root"), dist("lha", "root"), dist("rha", "rsh"), dist("lha", "lsh"),
          dist("rel", "root"), dist("lel", "root"), dist("rft", "root"), dist("lft", "root"),
          dist("rft", "lft"),
          heron(J["lha"], J["neck"], J["rha"]), heron(J["lsh"], J["neck"], J["rsh"]),
          heron(J["lha"], J["root"], J["rha"]), heron(J["lel"], J["neck"], J["rel"]),
          heron(J["lft"], J["neck"], J["rft"]), heron(J["lhi"], J["neck"], J["rhi"]),
          heron(J["lft"], J["root"], J["rft"]), heron(J["lkn"], J["neck"], J["rkn"])]
  return np.stack(cols, -1)


def _fixture_skeleton(t=6, pad=2, seed=0):
  """A rough standing pose (y up) plus per-frame jitter, then `pad` zero frames."""
  base = np.array([[0, 1.0, 0], [0, 1.3, 0], [0, 1.6, 0], [0, 1.8, 0.05], [-0.2, 1.55, 0],
                   [-0.3, 1.3, 0.05], [-0.35, 1.05, 0.1], [0.2, 1.55, 0], [0.3, 1.3, -0.05],
                   [0.35, 1.05, -0.1], [-0.1, 0.95, 0], [-0.12, 0.5, 0.05], [-0.12, 0.05, 0],
                   [0.1, 0.95, 0], [0.12, 0.5, -0.05], [0.12, 0.05, 0.1]])
  rs = np.random.RandomState(seed)
  g = base[None] + 0.03 * rs.randn(t, 16, 3) + np.array([0.5, 0, 2.0])
  return np.concatenate([g, np.zeros((pad, 16, 3))]).astype(np.float32)


def test_affective_features_match_numpy_definitions():
  g = _fixture_skeleton()
  got = np.asarray(gf.affective_features(jnp.asarray(g[None])))[0]
  assert got.shape == (8, gf.NUM_AFFECTIVE) == (8, 31)
  want = _np_features(g[:6].astype(np.float64))
  np.testing.assert_allclose(got[:6], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(got[6:], 0.0)  # zero-padded frames: zeros, not NaN


def test_affective_features_hand_built_values():
  g = np.zeros((1, 16, 3), np.float32)
  g[0, 2] = [0, 1, 0]      # neck
  g[0, 4] = [-1, 1, 0]     # R-shoulder
  g[0, 7] = [0, 1, 1]      # L-shoulder: angle at the neck is pi/2
  g[0, 3] = [0, 2, 0]      # head straight up from the root: "up" angle 0
  f = np.asarray(gf.affective_features(jnp.asarray(g), mask=np.ones(1, bool)))[0]
  assert abs(f[0] - np.pi / 2) < 1e-6
  assert abs(f[13]) < 1e-6
  assert abs(f[23 + 1] - 0.5) < 1e-6  # area (L-sh, neck, R-sh) = 1*1/2
  assert abs(f[22]) < 1e-6            # R-foot and L-foot coincide


# ---- motion channels ---------------------------------------------------------------------------

def _np_motion(p):
  """p [T, J, 3] -> [T, J, 8]: backward differences with v_0 = a_0 = 0."""
  v = np.zeros_like(p)
  v[1:] = p[1:] - p[:-1]
  a = np.zeros_like(p)
  a[1:] = v[1:] - v[:-1]
  n = lambda x: np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  return np.concatenate([v, n(v), a, n(a)], -1)


def test_motion_channels():
  g = _fixture_skeleton(t=6, pad=2).astype(np.float64)
  plain = np.asarray(gf.motion_channels(jnp.asarray(g)))
  np.testing.assert_allclose(plain, _np_motion(g), rtol=1e-5, atol=1e-5)
  assert np.abs(plain[6, :, :3]).max() > 1.0          # the spike at the pad boundary
  masked = np.asarray(gf.motion_channels(jnp.asarray(g), gf.frame_mask(jnp.asarray(g))))
  np.testing.assert_allclose(masked[:6], _np_motion(g[:6]), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(masked[6:], 0.0)
  const = np.asarray(gf.motion_channels(jnp.ones((5, 16, 3))))
  np.testing.assert_array_equal(const, 0.0)


def test_motion_channels_equal_float64_preprocessing_to_float32_noise():
  """The original computes the movement input offline on the host; ours runs in float32 on the
  device. Against a float64 computation cast once to float32: velocities are identical (the
  difference of two float32 numbers rounds once either way); accelerations and norms differ by
  at most 2 ulp of the skeleton's velocity scale."""
  rng = np.random.default_rng(0)
  walk = np.cumsum(rng.normal(0, 0.05, (48, 16, 3)), axis=0) + rng.normal(0, 3, (1, 16, 3))
  g = walk.astype(np.float32)
  ours = np.asarray(gf.motion_channels(jnp.asarray(g)))
  ref = _np_motion(g.astype(np.float64)).astype(np.float32)
  np.testing.assert_array_equal(ours[..., :3], ref[..., :3])
  ulp = np.spacing(np.float32(np.abs(ref[..., :3]).max()))
  assert np.abs(ours - ref).max() <= 2 * ulp


# ---- model behaviour ---------------------------------------------------------------------------

# ---- converter parity --------------------------------------------------------------------------

torch = pytest.importorskip("torch")
from jaxaffect.methods.bpmgcn.torch_reference import BPMGCNRef  # noqa: E402
from jaxaffect.convert.torch_reference import randomize_  # noqa: E402

from jaxaffect.convert import __main__ as cli  # noqa: E402
from jaxaffect import converted_checkpoint as store
from jaxaffect.methods.bpmgcn import converters as converters_bpmgcn  # noqa: E402
from jaxaffect.convert.keymap import ConversionError  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from grad_parity import assert_close, grad_state_dict, to_float64  # noqa: E402

torch.set_num_threads(2)


def _ref(fusion, seed=0):
  torch.manual_seed(seed)
  m = randomize_(BPMGCNRef(t=T_SMALL, fusion=fusion), seed=seed)
  with torch.no_grad():
    for name, p in m.named_parameters():
      if name.endswith(".PA"):
        p.copy_(0.1 * torch.randn(p.shape))
  return m


def _torch_forward(ref, g):
  xp = torch.from_numpy(g).permute(0, 3, 1, 2)[..., None]                 # N C T V M
  xm = torch.from_numpy(np.stack([_np_motion(s) for s in g]).astype(np.float32))
  xm = xm.permute(0, 3, 1, 2)[..., None]
  # oneDNN's per-shape primitive set-up costs seconds on tiny tensors; the plain kernels do not.
  was = torch.backends.mkldnn.enabled
  torch.backends.mkldnn.enabled = False
  try:
    with torch.no_grad():
      lp, aff, lm = ref(xp, xm)
  finally:
    torch.backends.mkldnn.enabled = was
  return lp.numpy(), aff.numpy(), lm.numpy()


def _check(variables, fusion, ref, g):
  out = jax.jit(BPMGCN(fusion=fusion).apply)(variables, jnp.asarray(g))
  out = jax.tree.map(np.asarray, out)
  lp, aff, lm = _torch_forward(ref, g)
  tol = dict(rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["logits_posture"], lp, **tol)
  np.testing.assert_allclose(out["logits_movement"], lm, **tol)
  np.testing.assert_allclose(out["logits"], (lp + lm) / 2, **tol)
  np.testing.assert_allclose(out["affective"].reshape(len(g), -1), aff, **tol)
  return out


def test_converter_parity_cli_code_fusion(tmp_path):
  ref = _ref("code")
  path = tmp_path / "bpmgcn.pth"
  torch.save(ref.state_dict(), path)  # what 2s-AGCN's main loop saves: a bare state_dict
  out_dir = str(tmp_path / "out")
  assert cli.main(["bpmgcn", str(path), out_dir]) == 0
  meta = store.read_meta(out_dir)
  assert meta["info"]["fusion"] == "code" and meta["info"]["num_frames"] == T_SMALL
  assert all(k.endswith("num_batches_tracked") for k in meta["dropped"])
  abstract = converters_bpmgcn.bpmgcn_abstract(num_frames=T_SMALL)
  fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  params, state = store.restore_converted(out_dir, fresh["params"],
                                          {"batch_stats": fresh["batch_stats"]})
  g = (np.random.RandomState(1).randn(2, T_SMALL, 16, 3)).astype(np.float32)
  _check({"params": params, **state}, "code", ref, g)


def test_pm_fusion_variants_match_reference():
  """Both fusion forwards ("code" cascaded, "paper" product) against the reference Fusion."""
  from jaxaffect.methods.bpmgcn.torch_reference import Fusion
  from jaxaffect.methods.bpmgcn.model import PMFusion
  rs = np.random.RandomState(5)
  xp, xm = (rs.randn(2, 4, 16, 8).astype(np.float32) for _ in range(2))   # [B, T, V, C]
  torch.manual_seed(5)
  ref = Fusion(4, 16)
  params = {name: {f"fc{i}": {"kernel": getattr(getattr(ref, name), f"fc{i}").weight.detach()
                               .numpy().transpose(2, 3, 1, 0)} for i in (1, 2)}
            for name in ("att_T_p", "att_N_p", "att_T_m", "att_N_m")}
  outs = {}
  for mode in ("code", "paper"):
    ref.mode = mode
    with torch.no_grad():
      rp, rm = ref(*(torch.from_numpy(x).permute(0, 3, 1, 2) for x in (xp, xm)))
    jp, jm = PMFusion(mode).apply({"params": params}, jnp.asarray(xp), jnp.asarray(xm))
    np.testing.assert_allclose(jp, rp.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jm, rm.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    outs[mode] = np.asarray(jm)
  assert np.abs(outs["code"] - outs["paper"]).max() > 1e-3


def test_converter_parity_no_fusion_and_strict_keys():
  ref = _ref("none", seed=1)
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  conv = converters_bpmgcn.bpmgcn(sd)
  assert conv.info["fusion"] == "none"
  g = (np.random.RandomState(2).randn(2, T_SMALL, 16, 3)).astype(np.float32)
  _check(conv.variables, "none", ref, g)

  bad = dict(sd)
  del bad["l3_m.gcn1.conv_b.1.weight"], bad["l7_p.gcn1.PA"]
  bad["l3_m.gcn1.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(ConversionError, match=r"l3_m\.gcn1\.conv_b\.1\.weight") as e:
    converters_bpmgcn.bpmgcn(bad)
  assert "l3_m.gcn1.extra.weight" in str(e.value)
  bad = dict(sd)
  del bad["l7_p.gcn1.PA"]
  with pytest.raises(ConversionError, match=r"l7_p\.gcn1\.PA"):
    converters_bpmgcn.bpmgcn(bad)
  with pytest.raises(ConversionError, match="fusion1"):  # fusion asked for, none saved
    converters_bpmgcn.bpmgcn(sd, fusion="code")

  # Train mode on the converted variables: shapes, averaged logits, BN statistics move.
  model = BPMGCN(fusion="none", pooling="max")
  out, state = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      conv.variables, jnp.asarray(g))
  assert out["logits"].shape == (2, 4) and out["affective"].shape == (2, T_SMALL, 31)
  assert out["frame_mask"].shape == (2, T_SMALL) and bool(out["frame_mask"].all())
  np.testing.assert_allclose(out["logits"], (out["logits_posture"] + out["logits_movement"]) / 2,
                             rtol=1e-6)
  for name in ("data_bn_p", "data_bn_m"):
    assert not np.allclose(state["batch_stats"][name]["mean"],
                           conv.variables["batch_stats"][name]["mean"])


def test_converter_parity_train_mode_forward_and_gradients():
  """Batch-statistics BatchNorm and the backward pass: the converted model's train-mode outputs,
  updated BN statistics and parameter gradients equal PyTorch's for the same weights. Torch's
  gradients go through the converter itself, which maps their layouts onto the Flax tree.

  Outputs, loss and statistics are compared in float32, the dtype that trains. Gradients are
  compared in float64 on both sides (as tests/test_convert_train_parity.py does, and for the
  same reason): in float32 one ReLU input lying within rounding of 0 decides a unit's gradient.
  Measured on a 2-core AVX2 machine: one of 32,768 pre-activations of block 9 (posture) was
  -3.1e-6 in float64 and +2.0e-6 in our float32, which moved block 8's gradients by 3% of their
  scale, while torch float32 happened to land on float64's side (on an earlier machine the same
  float32 comparison had passed at 1.3e-4). In float64 JAX matches torch to 3.7e-6 (the
  converter's float32 storage of the weights); the bound is 1e-5, and a 0.1% error in the
  BatchNorm backward's sum(dy * x_hat) term fails it (3.7e-3)."""
  ref = _ref("code", seed=3).train()
  sd = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
  conv = converters_bpmgcn.bpmgcn(sd)
  rs = np.random.RandomState(4)
  g = (rs.randn(4, T_SMALL, 16, 3) * 0.5 + 2.0).astype(np.float32)
  w = {k: rs.randn(*shape).astype(np.float32) for k, shape in
       (("p", (4, 4)), ("m", (4, 4)), ("a", (4, T_SMALL * 31)))}
  xm_np = np.stack([_np_motion(s) for s in g])

  def torch_pass(dtype):
    r = copy.deepcopy(ref).to(dtype)
    xp = torch.from_numpy(g).permute(0, 3, 1, 2)[..., None].to(dtype)
    xm = torch.from_numpy(xm_np).permute(0, 3, 1, 2)[..., None].to(dtype)
    torch.backends.mkldnn.enabled = False
    try:
      lp, aff, lm = r(xp, xm)
      loss = sum((o * torch.from_numpy(w[k]).to(dtype)).sum()
                 for k, o in (("p", lp), ("m", lm), ("a", aff)))
      loss.backward()
    finally:
      torch.backends.mkldnn.enabled = True
    return lp, lm, loss, converters_bpmgcn.bpmgcn(grad_state_dict(r)).variables

  model = BPMGCN(fusion="code")

  def loss_fn(params, x):
    out, state = model.apply({"params": params, "batch_stats": conv.variables["batch_stats"]},
                             x, train=True, mutable=["batch_stats"])
    value = (jnp.sum(out["logits_posture"] * w["p"]) + jnp.sum(out["logits_movement"] * w["m"])
             + jnp.sum(out["affective"].reshape(4, -1) * w["a"]))
    return value, (out, state)

  # float32: outputs, loss, statistics.
  lp, lm, t_loss, t_vars = torch_pass(torch.float32)
  jitted = jax.jit(loss_fn)  # also the far-offset forward below: one compile for both
  j_loss, (out, state) = jitted(conv.variables["params"], jnp.asarray(g))
  tol = dict(rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out["logits_posture"], lp.detach().numpy(), **tol)
  np.testing.assert_allclose(out["logits_movement"], lm.detach().numpy(), **tol)
  np.testing.assert_allclose(float(j_loss), float(t_loss.detach()), rtol=1e-4)
  for name in ("data_bn_p", "data_bn_m"):
    for stat in ("mean", "var"):
      np.testing.assert_allclose(state["batch_stats"][name][stat],
                                 t_vars["batch_stats"][name][stat], rtol=1e-4, atol=1e-5)

  # float64, both sides: gradients. Conv biases in front of a batch-statistics BatchNorm have a
  # true gradient of 0 and hold rounding noise on both sides, so each leaf is compared at no
  # finer than 1e-3 of the model's largest gradient.
  *_, t64 = torch_pass(torch.float64)
  with jax.enable_x64(True):
    j_grads, _ = jax.jit(jax.grad(loss_fn, has_aux=True))(
        to_float64(conv.variables["params"]), np.asarray(g, np.float64))
  assert j_grads["l1_p"]["tcn1"]["conv"]["kernel"].dtype == np.float64
  assert_close(j_grads, t64["params"], 1e-5, 1e-3, "float64 gradients")

  # Raw coordinates far from the origin (|mean| = 80 std): a one-pass E[x^2] - E[x]^2 batch
  # variance loses its digits in float32 here (it failed this forward); gradients are not
  # compared at this offset, where both frameworks' first-layer gradients are rounding noise.
  far = g + np.float32(38.0)
  _, (out, _) = jitted(conv.variables["params"], jnp.asarray(far))
  xp = torch.from_numpy(far).permute(0, 3, 1, 2)[..., None]
  xm = torch.from_numpy(np.stack([_np_motion(s) for s in far]).astype(np.float32))
  with torch.no_grad():
    ref_far = _ref("code", seed=3).train()
    lp, _, lm = ref_far(xp, xm.permute(0, 3, 1, 2)[..., None])
  np.testing.assert_allclose(out["logits_posture"], lp.numpy(), **tol)
  np.testing.assert_allclose(out["logits_movement"], lm.numpy(), **tol)  # relative to each gradient's scale
