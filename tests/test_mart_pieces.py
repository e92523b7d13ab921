"""MART's first pieces on their own: patch/tubelet embeddings and position tables (jaxaffect/nn/
patches.py) and the AttMask-Hint masking with its ratio schedule (methods/mart/masking.py)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxaffect.methods.mart import masking
from jaxaffect.nn import patches


@pytest.mark.parametrize("patch,shape", [((2, 16, 16), (2, 4, 32, 48, 3)),
                                         ((16, 16), (2, 32, 48, 1))])
def test_patch_embed_equals_a_valid_strided_conv(patch, shape):
  x = jnp.asarray(np.random.default_rng(0).standard_normal(shape, np.float32))
  emb = patches.PatchEmbed(8, patch)
  variables = emb.init(jax.random.key(0), x)
  ours = emb.apply(variables, x)
  conv = nn.Conv(8, patch, strides=patch, padding="VALID")
  ref = conv.apply({"params": nn.unbox(variables["params"])}, x)  # the same variable names
  grid = [s // p for s, p in zip(shape[1:-1], patch)]
  assert ours.shape == (shape[0], int(np.prod(grid)), 8)
  np.testing.assert_allclose(ours, ref.reshape(ours.shape), rtol=1e-5, atol=1e-5)


def test_patchify_refuses_a_shape_the_patch_does_not_divide():
  with pytest.raises(ValueError, match="not divisible"):
    patches.patchify(jnp.zeros((1, 5, 16, 3)), (2, 16))


def test_sincos_table_by_hand():
  t = patches.sincos_table(400, 768)
  assert t.shape == (400, 768) and t.dtype == np.float32
  np.testing.assert_array_equal(t[0, 0::2], 0.0)
  np.testing.assert_array_equal(t[0, 1::2], 1.0)
  assert t[391, 0] == np.float32(np.sin(391.0)) and t[391, 1] == np.float32(np.cos(391.0))
  # column pair (2, 3) has angle pos / 10000^(2/768)
  assert t[5, 3] == np.float32(np.cos(5.0 / 10000.0 ** (2 / 768)))


def test_crop_position_grid_takes_ast_centre_window():
  table = np.arange(12 * 101, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
  out = patches.crop_position_grid(table, (12, 101), (12, 9))
  grid = out[:, 0].reshape(12, 9)
  # AST keeps time columns 50 - 9 // 2 = 46 ... 54 of each of the 12 frequency rows.
  np.testing.assert_array_equal(grid, np.arange(12)[:, None] * 101 + np.arange(46, 55)[None])
  with pytest.raises(ValueError, match="larger"):
    patches.crop_position_grid(table, (12, 101), (12, 102))


def test_ratio_schedule_values():
  r = [float(masking.ratio_schedule(e)) for e in (0, 1, 25, 50, 80, 100)]
  np.testing.assert_allclose(r, [0.1, 0.108, 0.3, 0.5, 0.5, 0.5], rtol=1e-6)


def _scores(b=64, n=392, seed=0):
  return jnp.asarray(np.random.default_rng(seed).permutation(b * n).reshape(b, n), jnp.float32)


def test_attmask_masks_the_top_tokens_when_gated_on_without_hints():
  s = _scores()
  m = masking.attmask_hint(s, 0.5, jax.random.key(0), clip_prob=1.0, hint_ratio=0.0)
  assert m.shape == s.shape and m.dtype == jnp.bool_
  top = np.argsort(-np.asarray(s), axis=1)[:, :196]
  want = np.zeros(s.shape, bool)
  np.put_along_axis(want, top, True, axis=1)
  np.testing.assert_array_equal(m, want)


def test_attmask_hints_come_from_the_most_attended_tokens():
  s = _scores()
  r = 0.5
  m = np.asarray(masking.attmask_hint(s, r, jax.random.key(1), clip_prob=1.0))
  rank = np.argsort(np.argsort(-np.asarray(s), axis=1), axis=1)
  n_hints = int(0.1 * r * 392)   # 19 of the top 39 are shown again
  assert (m.sum(1) == 196 - n_hints).all()
  shown = (rank < 196) & ~m
  assert (rank[shown] < 39).all()          # only from the hint pool
  assert len({tuple(np.flatnonzero(row)) for row in shown}) > 1  # drawn, not fixed
  assert not m[rank >= 196].any()


def test_attmask_clip_gate_and_traced_ratio():
  s = _scores(b=400)
  m = masking.attmask_hint(s, 0.3, jax.random.key(2))
  per_clip = np.asarray(m.sum(1))
  masked_clips = per_clip > 0
  assert set(np.unique(per_clip)) == {0, 117 - int(0.1 * 0.3 * 392)}
  assert 0.4 < masked_clips.mean() < 0.6   # clip_prob 0.5 over 400 clips
  jitted = jax.jit(masking.attmask_hint)(s, jnp.float32(0.3), jax.random.key(2))
  np.testing.assert_array_equal(jitted, m)  # the ratio may be traced: one compile per run


def test_mart_is_a_registered_method():
  from jaxaffect import method as methods
  assert "mart" in methods.known()
  assert methods.method_class("mart").__module__ == "jaxaffect.methods.mart.method"


def test_normalized_pixel_targets_against_a_per_tubelet_loop():
  from jaxaffect.methods.mart import losses
  rng = np.random.default_rng(3)
  video = rng.integers(0, 256, (2, 4, 32, 32, 3)).astype(np.float32)
  out = np.asarray(losses.normalized_pixel_targets(jnp.asarray(video)))
  assert out.shape == (2, 2 * 2 * 2, 2 * 16 * 16 * 3)
  i = 0
  for t in range(2):          # tokens in (t, h, w) raster order
    for h in range(2):
      for w in range(2):
        cube = video[1, 2 * t:2 * t + 2, 16 * h:16 * h + 16, 16 * w:16 * w + 16]  # [2,16,16,3]
        px = cube.reshape(-1, 3).astype(np.float64)
        want = (px - px.mean(0)) / (px.std(0, ddof=1) + 1e-6)
        np.testing.assert_allclose(out[1, i], want.reshape(-1), rtol=1e-4, atol=1e-4)
        i += 1
  # loss.rec_target="pixels": the same tokens, plain pixels scaled to [-1, 1].
  plain = np.asarray(losses.pixel_targets(jnp.asarray(video)))
  cube = video[0, 2:4, 16:32, 0:16]                       # token (t=1, h=1, w=0) = index 6
  np.testing.assert_allclose(plain[0, 6], cube.reshape(-1) / 127.5 - 1.0, atol=1e-6)
  assert plain.min() >= -1.0 and plain.max() <= 1.0


def test_masked_reconstruction_loss_by_hand():
  from jaxaffect.methods.mart import losses
  pred = jnp.asarray([[[1.0, 1.0], [3.0, 0.0], [0.0, 0.0]]])
  target = jnp.zeros((1, 3, 2))
  mask = jnp.asarray([[True, True, False]])
  # per-token MSE: 1.0, 4.5, 0.0; masked mean (1.0 + 4.5) / (2 + 1e-5)
  np.testing.assert_allclose(losses.masked_reconstruction_loss(pred, target, mask),
                             5.5 / (2 + 1e-5), rtol=1e-6)
  assert float(losses.masked_reconstruction_loss(pred, target, mask & False)) == 0.0


def test_cpc_score_against_numpy_and_padding():
  from jaxaffect.methods.mart import losses
  rng = np.random.default_rng(4)
  x, xh = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))

  def ref(x, xh):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    xh = xh / np.linalg.norm(xh, axis=1, keepdims=True)
    s = x @ xh.T
    neg = np.log(np.exp(s).sum(1))
    return float(np.mean(np.diag(s) - neg))

  np.testing.assert_allclose(losses.cpc_score(jnp.asarray(x, jnp.float32),
                                              jnp.asarray(xh, jnp.float32)),
                             ref(x, xh), rtol=1e-5)
  valid = np.array([1, 1, 0, 1, 0, 1], bool)   # padded rows are not rows at all
  np.testing.assert_allclose(
      losses.cpc_score(jnp.asarray(x, jnp.float32), jnp.asarray(xh, jnp.float32),
                       jnp.asarray(valid)), ref(x[valid], xh[valid]), rtol=1e-5)


def test_pcce_by_hand():
  from jaxaffect.nn.losses import pcce_loss
  logits = jnp.log(jnp.asarray([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))
  labels = jnp.asarray([0, 0])
  polarity = jnp.asarray([0, 0, 1])   # class 2 has the other polarity
  loss, w = pcce_loss(logits, labels, polarity, 0.5)
  np.testing.assert_allclose(w, [1.0, 1.5])
  np.testing.assert_allclose(loss, (-np.log(0.7) - 1.5 * np.log(0.1)) / 2, rtol=1e-6)


def test_mae_decoder_parameter_count_and_shapes():
  from jaxaffect.methods.mart import decoder
  from jaxaffect.nn import count_params
  tokens = jax.ShapeDtypeStruct((2, 392, 768), jnp.float32)
  shapes = jax.eval_shape(decoder.MAEDecoder().init, jax.random.key(0), tokens)
  # By hand: embed 768*512 + 512; per block qkv 512*1536 (no key bias: q and v biases 2*512),
  # out 512*512 + 512, two LayerNorms 4*512, MLP 512*2048 + 2048 + 2048*512 + 512; final
  # LayerNorm 2*512; head 512*1536 + 1536.
  block = 512 * 1536 + 2 * 512 + 512 * 512 + 512 + 4 * 512 + 512 * 2048 + 2048 + 2048 * 512 + 512
  want = 768 * 512 + 512 + 8 * block + 2 * 512 + 512 * 1536 + 1536
  assert count_params(shapes) == want == 26_397_696
  small = decoder.MAEDecoder(num_tokens=8, width=32, depth=2, num_heads=4, mlp_dim=64,
                             out_dim=24)
  x = jnp.ones((2, 8, 16))
  variables = small.init(jax.random.key(0), x)
  assert small.apply(variables, x).shape == (2, 8, 24)
  with pytest.raises(ValueError, match="position table"):
    small.apply(variables, jnp.ones((2, 9, 16)))


def test_apply_mask_token_replaces_only_masked_tokens():
  from jaxaffect.methods.mart import decoder
  tokens = jnp.arange(12.0).reshape(1, 3, 4)
  out = decoder.apply_mask_token(tokens, jnp.asarray([[False, True, False]]), -jnp.ones(4))
  np.testing.assert_array_equal(out, [[[0, 1, 2, 3], [-1, -1, -1, -1], [8, 9, 10, 11]]])


def test_cpc_score_has_finite_gradients_at_zero_rows():
  from jaxaffect.methods.mart import losses
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 6)), jnp.float32)
  x_hat = x.at[1].set(0.0)  # a zero prediction row (padding, or a ReLU that went dark)
  valid = jnp.asarray([True, True, True, False])
  g = jax.grad(lambda a, b: losses.cpc_score(a, b, valid), argnums=(0, 1))(x.at[3].set(0.0), x_hat)
  assert all(np.isfinite(np.asarray(t)).all() for t in g)


def test_reconstruction_targets_follow_the_patch_embedding_token_order():
  """The decoder predicts token i's pixels, so patchify (the targets) must order tokens and
  their pixels as PatchEmbed does: its output is patchify(x) @ kernel + bias."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 32, 32, 3)), jnp.float32)
  embed = patches.PatchEmbed(8, (2, 16, 16))
  v = nn.meta.unbox(embed.init(jax.random.key(0), x))["params"]
  want = patches.patchify(x, (2, 16, 16)) @ v["kernel"].reshape(-1, 8) + v["bias"]
  np.testing.assert_allclose(embed.apply({"params": v}, x), want, rtol=1e-5, atol=1e-5)
