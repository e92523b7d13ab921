"""MART's TACL block (temporal affective complementary learning): each segment's words attend to
its video patches and to its audio patches, the two word-aligned streams predict each other
along the word axis (the CPC term) and each feeds an emotion classifier.

Per clip (one segment of one video), words [L, E] as queries:
  v2l = proj_video(DropPath(cross_video(ln_text(words), ln_video(video))))   [L, E]
  a2l = proj_audio(DropPath(cross_audio(ln_text(words), ln_audio(audio))))   [L, E]
  v2l_hat = cpc_video(a2l), a2l_hat = cpc_audio(v2l)                         [L, E]
and per video, logits_v = cls_video(mean over segments of mean over words of v2l) (a2l alike).
The cross-attentions have ReLU after the q, k, v and output projections; DropPath (one rate,
an independent draw per clip and per stream) drops the whole attention output of a clip and
there is NO residual around it, as released. Each CPC predictor is 4 x (Conv1d(E, E, k=3,
pad=1) + ReLU) along the word axis, the last conv included. The inter-attention map is the
text -> video attention averaged over heads and words (stop_gradient), MART's masking hint.

Rows are clips, b-major (row = b * Ns + s), as the released text batch and the `(b s)` split
in its TACL. (The released video batch is s-major; the two agree only at batch 1, the released
setting.)

Padding. The release never masks padded words: BERT runs without an attention mask (outside
this block), the texts are padded to the longest in the batch, and TACL then averages v2l/a2l
over all L positions for the classifiers and Vatt over all L words, its CPC convolutions see
pad rows as neighbours (a receptive field of +-4 words), and its CPC rows and negatives include
the pad rows. Here `word_mask` removes them everywhere: pad rows are zero (the convolution's own
zero padding) before and after every CPC conv, the means run over real words (a clip with none
pools to zero) and `comp_loss` keeps the valid rows; real-word outputs, the pooled logits and the
map do not depend on the pads. `legacy_unmasked_pooling=True` ignores `word_mask` in the module,
as released (pass an all-True mask to `comp_loss` for the released CPC rows).

Parameters (ours <- PyTorch key under `tacl.`; linear kernels are the transposed weights, the
attention ones split per head, head-major; conv kernels [3, in, out] = weight.transpose(2, 1, 0)):
  ln_text, ln_video, ln_audio        <- l_norm, v_norm, a_norm (scale <- weight; eps 1e-5)
  cross_video, cross_audio           <- v2l_attn, a2l_attn: query/key/value/out <- linear_q/k/v/o
  proj_video, proj_audio             <- v_proj, a_proj: mlp_in <- fc1, mlp_out <- fc2 (GELU)
  cpc_video, cpc_audio               <- v2a_contrast, a2v_contrast: conv_i <- net.{2i}
  cls_video, cls_audio               <- v_fc, a_fc: mlp_in <- fc1, mlp_out <- fc2 (GELU)
Kernels draw PyTorch's default init (the release never initialises TACL otherwise); the linear
biases start at zero (the release: U(+-1/sqrt(fan_in))), the conv biases as PyTorch's. The
release fixes the CPC width at 768; here it is `hidden_size`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect.methods.mart.losses import cpc_score
from jaxaffect.nn.attention import MultiHeadAttention
from jaxaffect.nn.layers import Conv, torch_default_bias_init, torch_default_kernel_init
from jaxaffect.nn.transformer_parts import LayerNorm, Linear, Mlp

Array = jax.Array


def drop_path(x: Array, rate: float, rng: Array) -> Array:
  """Stochastic depth per sample: each x[i] is zeroed with probability `rate`, the kept ones
  are scaled by 1 / (1 - rate) (timm's drop_path)."""
  keep = 1.0 - rate
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  kept = jax.random.bernoulli(rng, keep, shape)
  return jnp.where(kept, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


def masked_word_mean(x: Array, keep: Array | None) -> Array:
  """x [R, L, ...] -> [R, ...] mean over the words where keep [R, L] is True (all when None),
  in float32; a row without real words gives zero."""
  x = x.astype(jnp.float32)
  if keep is None:
    return jnp.mean(x, axis=1)
  w = keep.astype(jnp.float32).reshape(keep.shape + (1,) * (x.ndim - 2))
  return jnp.sum(x * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)


class CpcPredictor(nn.Module):
  """y [R, L, E] -> x_hat [R, L, E]: `num_layers` x (Conv1d k=3 pad=1 along L, ReLU), the last
  included. keep [R, L] (None: no padding) zeroes pad rows before and after every conv, so a
  real word sees zeros past its clip's last real word, as in an unpadded sequence."""
  features: int
  num_layers: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, y: Array, keep: Array | None = None) -> Array:
    mask = (lambda t: t) if keep is None else (
        lambda t: jnp.where(keep[..., None], t, jnp.zeros((), t.dtype)))
    h = mask(y.astype(self.dtype))
    for i in range(self.num_layers):
      conv = Conv(self.features, (3,), padding=(1,), dtype=self.dtype,
                  kernel_init=torch_default_kernel_init,
                  bias_init=torch_default_bias_init(3 * h.shape[-1]), name=f"conv_{i}")
      h = mask(jax.nn.relu(conv(h)))
    return h


class Classifier(nn.Module):
  """[..., E] -> [..., num_classes]: mlp_out(gelu(mlp_in(x))), hidden width E (timm's Mlp)."""
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    e = x.shape[-1]
    h = Linear((e,), ("embed", "mlp"), dtype=self.dtype, kernel_init=torch_default_kernel_init,
               name="mlp_in")(x)
    h = nn.gelu(h, approximate=False)
    return Linear((self.num_classes,), ("mlp", "classes"), dtype=self.dtype,
                  kernel_init=torch_default_kernel_init, name="mlp_out")(h)


class TACL(nn.Module):
  """words [B*Ns, L, E], word_mask [B*Ns, L] (True = real token), video [B*Ns, Nv, E], audio
  [B*Ns, Na, E] -> dict:
    v2l, a2l [B*Ns, L, E]; v2l_hat (from a2l), a2l_hat (from v2l) [B*Ns, L, E] (compute dtype);
    logits_v, logits_a [B, num_classes] and inter_attention [B*Ns, Nv] (float32).
  `train` enables DropPath (rng "dropout")."""
  num_classes: int
  hidden_size: int = 768
  num_heads: int = 8
  drop_path_rate: float = 0.01
  cpc_layers: int = 4
  legacy_unmasked_pooling: bool = False  # True: ignore word_mask, as released (module doc)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, words: Array, word_mask: Array, video: Array, audio: Array, *,
               num_segments: int, train: bool = False) -> dict[str, Array]:
    rows, length, e = words.shape
    if e != self.hidden_size or self.hidden_size % self.num_heads:
      raise ValueError(f"TACL: words width {e}, hidden_size {self.hidden_size}, num_heads "
                       f"{self.num_heads} (width must equal hidden_size, a multiple of heads)")
    if (word_mask.shape != (rows, length) or video.shape[0] != rows
        or audio.shape[0] != rows or rows % num_segments):
      raise ValueError(f"TACL: words {words.shape}, word_mask {word_mask.shape}, video "
                       f"{video.shape}, audio {audio.shape} do not share B*Ns rows with "
                       f"num_segments={num_segments}")
    keep = None if self.legacy_unmasked_pooling else word_mask.astype(bool)
    norm = lambda name: LayerNorm(eps=1e-5, dtype=self.dtype, name=name)
    attend = lambda name: MultiHeadAttention(
        num_heads=self.num_heads, head_dim=e // self.num_heads, projection_activation="relu",
        dtype=self.dtype, kernel_init=torch_default_kernel_init, name=name)
    text = norm("ln_text")(words)
    v2l, v_att = attend("cross_video")(text, kv=norm("ln_video")(video), return_weights=True)
    a2l = attend("cross_audio")(text, kv=norm("ln_audio")(audio))
    if train and self.drop_path_rate > 0:
      v2l = drop_path(v2l, self.drop_path_rate, self.make_rng("dropout"))
      a2l = drop_path(a2l, self.drop_path_rate, self.make_rng("dropout"))
    proj = lambda name: Mlp(e, dtype=self.dtype, kernel_init=torch_default_kernel_init,
                            name=name)
    v2l = proj("proj_video")(v2l)
    a2l = proj("proj_audio")(a2l)
    cpc = lambda name: CpcPredictor(e, self.cpc_layers, dtype=self.dtype, name=name)
    v2l_hat = cpc("cpc_video")(a2l, keep)
    a2l_hat = cpc("cpc_audio")(v2l, keep)

    def video_mean(x):  # [B*Ns, L, E] -> [B, E]: words, then the Ns segments of each video
      return masked_word_mean(x, keep).reshape(rows // num_segments, num_segments, e).mean(1)

    classify = lambda name: Classifier(self.num_classes, dtype=self.dtype, name=name)
    logits_v = classify("cls_video")(video_mean(v2l)).astype(jnp.float32)
    logits_a = classify("cls_audio")(video_mean(a2l)).astype(jnp.float32)
    inter = masked_word_mean(jnp.mean(v_att, axis=1), keep)  # heads, then words
    return {"v2l": v2l, "a2l": a2l, "v2l_hat": v2l_hat, "a2l_hat": a2l_hat,
            "logits_v": logits_v, "logits_a": logits_a,
            "inter_attention": jax.lax.stop_gradient(inter)}


def comp_loss(out: dict[str, Array], word_mask: Array, cpc_sign: float,
              num_segments: int, negatives: str = "video") -> Array:
  """L_comp = cpc_sign * (CPC(v2l <- a2l) + CPC(a2l <- v2l)), computed per video over its
  (segment, word) rows (negatives from the same video only) and averaged over the videos: the
  release trains one video per step (batch 1, accumulated), so its negatives never cross
  videos, and per-video sets keep the similarity matrix at (Ns * L)^2 whatever the batch. Pad
  rows (word_mask False) are dropped. cpc_sign +1 is the release (it adds the score, so
  minimising pushes matched pairs apart); -1 is MMIM's (it minimises the negative score).
  `negatives="batch"` (loss.cpc_negatives) puts every video's rows in one set, as MMIM's CPC
  over a batch: rows of other videos become negatives, so the streams must share what tells
  videos apart (within one video of the synthetic world, nothing class-level does)."""
  rows, length = word_mask.shape
  if negatives not in ("video", "batch"):
    raise ValueError(f"negatives must be 'video' or 'batch', got {negatives!r}")
  groups = 1 if negatives == "batch" else rows // num_segments  # one set of rows per group
  grouped = lambda key: out[key].reshape(groups, -1, out[key].shape[-1])
  valid = word_mask.reshape(groups, -1)
  score = jax.vmap(cpc_score)
  return cpc_sign * jnp.mean(score(grouped("v2l"), grouped("v2l_hat"), valid)
                             + score(grouped("a2l"), grouped("a2l_hat"), valid))
