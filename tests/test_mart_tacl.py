"""MART's TACL block (methods/mart/tacl.py) against the PyTorch twin of the released forward
(methods/mart/torch_reference.py: TACLRef, after MART.py's TemporalAffectiveComplementaryLearning,
MultiHeadAttentionOp, CPC, timm Mlp), with our parameters copied in: every output without
padding, the legacy flag with padding, the masked outputs against the release run on each clip
unpadded, padding invariance, DropPath per clip and without a residual, comp_loss against NumPy,
shapes under jit."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxaffect.methods.mart import tacl

torch = pytest.importorskip("torch")
from jaxaffect.methods.mart.torch_reference import TACLRef  # noqa: E402  (needs torch)

E, HEADS, L, NV, NA, B, NS, C = 16, 2, 5, 6, 4, 2, 3, 3
TOL = 1e-5


def _load(model, params):
  """Our (unboxed) params -> the torch module's state dict (every tensor assigned)."""
  p = jax.tree_util.tree_map(np.asarray, params)
  sd = {}
  for ours, theirs in (("ln_text", "l_norm"), ("ln_video", "v_norm"), ("ln_audio", "a_norm")):
    sd[f"{theirs}.weight"], sd[f"{theirs}.bias"] = p[ours]["scale"], p[ours]["bias"]
  for ours, theirs in (("cross_video", "v2l_attn"), ("cross_audio", "a2l_attn")):
    for a, b in (("query", "q"), ("key", "k"), ("value", "v")):
      sd[f"{theirs}.linear_{b}.weight"] = p[ours][a]["kernel"].reshape(E, E).T
      sd[f"{theirs}.linear_{b}.bias"] = p[ours][a]["bias"].reshape(E)
    sd[f"{theirs}.linear_o.weight"] = p[ours]["out"]["kernel"].reshape(E, E).T
    sd[f"{theirs}.linear_o.bias"] = p[ours]["out"]["bias"]
  for ours, theirs in (("proj_video", "v_proj"), ("proj_audio", "a_proj"),
                       ("cls_video", "v_fc"), ("cls_audio", "a_fc")):
    for a, b in (("mlp_in", "fc1"), ("mlp_out", "fc2")):
      sd[f"{theirs}.{b}.weight"] = p[ours][a]["kernel"].T
      sd[f"{theirs}.{b}.bias"] = p[ours][a]["bias"]
  for ours, theirs in (("cpc_video", "v2a_contrast"), ("cpc_audio", "a2v_contrast")):
    for i in range(4):
      conv = p[ours][f"conv_{i}"]
      sd[f"{theirs}.net.{2 * i}.weight"] = conv["kernel"].transpose(2, 1, 0)
      sd[f"{theirs}.net.{2 * i}.bias"] = conv["bias"]
  assert set(sd) == set(model.state_dict())
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})
  return model.eval()


# --- fixtures ----------------------------------------------------------------------------------

def _inputs(seed=0, length=L):
  r = np.random.default_rng(seed)
  f = lambda *s: r.standard_normal(s).astype(np.float32)
  return f(B * NS, length, E), f(B * NS, NV, E), f(B * NS, NA, E)


LENGTHS = np.array([5, 3, 1, 4, 2, 5])   # real words per clip (B * NS clips)


def _mask(length=L):
  return np.arange(length)[None] < LENGTHS[:, None]


@pytest.fixture(scope="module")
def setup():
  words, video, audio = _inputs()
  model = tacl.TACL(num_classes=C, hidden_size=E, num_heads=HEADS)
  params = nn.unbox(model.init(jax.random.key(0), words, _mask(), video, audio,
                               num_segments=NS)["params"])
  # Move every parameter off its init (zero biases, unit LayerNorms), so mix-ups cannot pass.
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree_util.tree_unflatten(
      tree, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  return model, params, _load(TACLRef(E, C, HEADS), params)


def _run(model, params, words, mask, video, audio, **kw):
  return jax.jit(lambda p, *a: model.apply({"params": p}, *a, num_segments=NS, **kw))(
      params, words, mask, video, audio)


def _t(x):
  return torch.from_numpy(np.asarray(x))


def _close(ours, ref, tol=TOL):
  np.testing.assert_allclose(np.asarray(ours), ref.detach().numpy() if hasattr(ref, "detach")
                             else ref, rtol=tol, atol=tol)


def _per_video_comp(ref_model, video, audio, words):
  """The release's CPC score of each video alone (its batch is one video), averaged."""
  with torch.no_grad():
    comps = [ref_model(*(_t(x[v * NS:(v + 1) * NS]) for x in (video, audio, words)), NS)["comp"]
             for v in range(B)]
  return torch.stack(comps).mean()


OUTPUTS = ("v2l", "a2l", "v2l_hat", "a2l_hat", "logits_v", "logits_a", "inter_attention")


# --- tests -------------------------------------------------------------------------------------

def test_every_output_matches_the_release_without_padding(setup):
  model, params, ref_model = setup
  words, video, audio = _inputs(1)
  mask = np.ones((B * NS, L), bool)
  out = _run(model, params, words, mask, video, audio)
  with torch.no_grad():
    ref = ref_model(_t(video), _t(audio), _t(words), NS)
  for k in OUTPUTS:
    _close(out[k], ref[k])
  assert out["logits_v"].shape == (B, C) and out["inter_attention"].shape == (B * NS, NV)
  # the released CPC score (sign +1 = released), one video at a time (the release's batch 1)
  comp = _per_video_comp(ref_model, video, audio, words)
  _close(tacl.comp_loss(out, mask, 1.0, NS), comp)
  _close(tacl.comp_loss(out, mask, -1.0, NS), -comp)


def test_legacy_flag_reproduces_the_release_over_padding(setup):
  _, params, ref_model = setup
  words, video, audio = _inputs(2)
  legacy = tacl.TACL(num_classes=C, hidden_size=E, num_heads=HEADS,
                     legacy_unmasked_pooling=True)
  out = _run(legacy, params, words, _mask(), video, audio)
  with torch.no_grad():
    ref = ref_model(_t(video), _t(audio), _t(words), NS)
  for k in OUTPUTS:
    _close(out[k], ref[k])
  _close(tacl.comp_loss(out, np.ones((B * NS, L), bool), 1.0, NS),
         _per_video_comp(ref_model, video, audio, words))
  # and the default really differs there (pads enter the release's means)
  masked = _run(setup[0], params, words, _mask(), video, audio)
  assert np.max(np.abs(np.asarray(masked["logits_v"] - out["logits_v"]))) > 1e-3


def test_masked_outputs_equal_the_release_on_each_clip_unpadded(setup):
  model, params, ref_model = setup
  words, video, audio = _inputs(3)
  out = _run(model, params, words, _mask(), video, audio)
  pooled_v, pooled_a = [], []
  with torch.no_grad():
    for i, n in enumerate(LENGTHS):
      one = lambda x: _t(x[i:i + 1])
      ref = ref_model.streams(one(video), one(audio), _t(words[i:i + 1, :n]))
      for k in ("v2l", "a2l", "v2l_hat", "a2l_hat"):
        _close(out[k][i, :n], ref[k][0])
      _close(out["inter_attention"][i], ref["vatt"][0].mean(0))
      pooled_v.append(ref["v2l"][0].mean(0))
      pooled_a.append(ref["a2l"][0].mean(0))
    video_mean = lambda rows: torch.stack(rows).reshape(B, NS, E).mean(1)
    _close(out["logits_v"], ref_model.v_fc(video_mean(pooled_v)))
    _close(out["logits_a"], ref_model.a_fc(video_mean(pooled_a)))


def test_padding_changes_nothing_for_real_words(setup):
  model, params, _ = setup
  words, video, audio = _inputs(4)
  mask = _mask()
  out = _run(model, params, words, mask, video, audio)
  # other pad contents, and three more pad columns
  longer = np.random.default_rng(5).standard_normal((B * NS, L + 3, E)).astype(np.float32) * 3
  longer[:, :L][mask] = words[mask]
  mask2 = _mask(L + 3)
  out2 = _run(model, params, longer, mask2, video, audio)
  for k in ("v2l", "a2l", "v2l_hat", "a2l_hat"):
    np.testing.assert_allclose(np.asarray(out2[k])[:, :L][mask], np.asarray(out[k])[mask],
                               rtol=1e-6, atol=1e-6)
  for k in ("logits_v", "logits_a", "inter_attention"):
    np.testing.assert_allclose(out2[k], out[k], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(tacl.comp_loss(out2, mask2, 1.0, NS),
                             tacl.comp_loss(out, mask, 1.0, NS),
                             rtol=1e-6, atol=1e-6)


def _np_cpc(x, x_hat):
  x = x / np.linalg.norm(x, axis=-1, keepdims=True)
  x_hat = x_hat / np.linalg.norm(x_hat, axis=-1, keepdims=True)
  s = x.astype(np.float64) @ x_hat.T.astype(np.float64)
  neg = np.log(np.sum(np.exp(s), axis=-1))
  return np.mean(np.diag(s) - neg)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_comp_loss_against_numpy(sign):
  r = np.random.default_rng(6)
  out = {k: r.standard_normal((B * NS, L, E)).astype(np.float32)
         for k in ("v2l", "a2l", "v2l_hat", "a2l_hat")}
  mask = _mask()
  want = 0.0
  for v in range(B):  # per video: its valid (segment, word) rows, flattened clip-major
    clips = slice(v * NS, (v + 1) * NS)
    rows = lambda k: out[k][clips][mask[clips]]
    want += sign * (_np_cpc(rows("v2l"), rows("v2l_hat")) + _np_cpc(rows("a2l"), rows("a2l_hat")))
  want /= B
  got = tacl.comp_loss({k: jnp.asarray(v) for k, v in out.items()}, jnp.asarray(mask), sign, NS)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # loss.cpc_negatives="batch": every video's valid rows in one set (MMIM's batch negatives).
  rows = lambda k: out[k][mask]
  want = sign * (_np_cpc(rows("v2l"), rows("v2l_hat")) + _np_cpc(rows("a2l"), rows("a2l_hat")))
  got = tacl.comp_loss({k: jnp.asarray(v) for k, v in out.items()}, jnp.asarray(mask), sign, NS,
                       negatives="batch")
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_drop_path_per_clip_before_the_projection_without_residual(setup):
  _, params, ref_model = setup
  words, video, audio = _inputs(7)
  mask = np.ones((B * NS, L), bool)
  rate = 0.5
  model = tacl.TACL(num_classes=C, hidden_size=E, num_heads=HEADS, drop_path_rate=rate)
  run = lambda seed: _run(model, params, words, mask, video, audio, train=True,
                          rngs={"dropout": jax.random.key(seed)})
  out = run(0)
  np.testing.assert_array_equal(out["v2l"], run(0)["v2l"])  # deterministic per rng
  with torch.no_grad():
    kept = ref_model.streams(_t(video), _t(audio), _t(words), 1 / (1 - rate), 1 / (1 - rate))
    dropped = ref_model.streams(_t(video), _t(audio), _t(words), 0.0, 0.0)
  seen = set()
  for k in ("v2l", "a2l"):
    for i in range(B * NS):
      ours = np.asarray(out[k][i])
      hit = [np.allclose(ours, ref[k][i].numpy(), rtol=TOL, atol=TOL) for ref in (kept, dropped)]
      assert sum(hit) == 1, (k, i)
      seen.add(hit[0])
  assert seen == {True, False}  # both cases occur for this seed
  # eval (and train with rate 0) is deterministic and equals the release's eval forward
  zero = tacl.TACL(num_classes=C, hidden_size=E, num_heads=HEADS, drop_path_rate=0.0)
  a = _run(zero, params, words, mask, video, audio, train=True)
  b = _run(model, params, words, mask, video, audio, train=False)
  for k in OUTPUTS:
    np.testing.assert_array_equal(a[k], b[k])


def test_drop_path_statistics():
  x = jnp.ones((4000, 2, 3))
  y = np.asarray(tacl.drop_path(x, 0.25, jax.random.key(0)))
  per_sample = y.reshape(4000, -1)
  assert np.all((per_sample == 0).all(1) | np.isclose(per_sample, 1 / 0.75).all(1))
  assert abs((per_sample[:, 0] == 0).mean() - 0.25) < 0.03


def test_shapes_under_jit_and_logical_axes_on_every_kernel():
  words, video, audio = _inputs(8)
  model = tacl.TACL(num_classes=C, hidden_size=E, num_heads=HEADS, dtype=jnp.bfloat16)
  variables = jax.jit(lambda k: model.init(k, words, _mask(), video, audio,
                                           num_segments=NS))(jax.random.key(0))
  flat = jax.tree_util.tree_flatten_with_path(
      variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  kernels = [(p, x) for p, x in flat if p[-1].key == "kernel"]
  assert len(kernels) == 2 * (4 + 2 + 4 + 2)
  for path, x in kernels:
    assert isinstance(x, nn.Partitioned) and len(x.names) == x.value.ndim, path
    assert x.value.dtype == jnp.float32
  out = _run(model, nn.unbox(variables["params"]), words, _mask(), video, audio, train=True,
             rngs={"dropout": jax.random.key(1)})
  for k in ("v2l", "a2l", "v2l_hat", "a2l_hat"):
    assert out[k].shape == (B * NS, L, E) and out[k].dtype == jnp.bfloat16, k
  for k, shape in (("logits_v", (B, C)), ("logits_a", (B, C)), ("inter_attention", (B * NS, NV))):
    assert out[k].shape == shape and out[k].dtype == jnp.float32, k
  np.testing.assert_allclose(np.asarray(out["inter_attention"]).sum(-1), 1.0, rtol=1e-2)
  with pytest.raises(ValueError, match="num_segments=4"):
    model.init(jax.random.key(0), words, _mask(), video, audio, num_segments=4)
