"""MART's stage-1 model (MART.py's wrapper): the MBT backbone plus a BERT text encoder, TACL, a
mask token and the MAE-style decoder. Stage 2 and evaluation use the MBT part alone
(`MART.__call__`), so one parameter tree serves both stages.

`MART.pretrain(video, fbank, text_ids, text_mask, ratio, num_segments, train)`, per video
batch B with Ns segments (rows are clips, video-major: row = b * Ns + s):
  1. MBT over the B * Ns clips, with the last video block's CLS -> patch attention (intra).
  2. BERT over each segment's text; TACL cross-attends the words to the video and audio
     patches (v2l, a2l, the CPC predictions, two classifier heads, the text -> video
     attention: inter).
  3. The masking score lam * intra + (1 - lam) * inter ranks the video patches; AttMask-Hint
     (masking.attmask_hint, rng "masking") masks the top ratio of them with hints, per clip
     with probability 0.5; the masked patch tokens of the encoder OUTPUT are replaced by the
     mask token (the encoder saw every patch), and the decoder predicts every tubelet's
     normalised pixels.
Returned: the MBT outputs, the TACL outputs, "mask" [B*Ns, Nv] bool, "reconstruction"
[B*Ns, Nv, tubelet pixels], "logits_a_stage1"/"logits_v_stage1" [B, C] (the heads on the
segment-mean of the normed audio CLS/DIST and of the RAW video CLS, as MART.forward_c does),
and with num_moods "mood_logits" [B*Ns, num_moods]: a linear head on the mean of the masked
patch tokens (the decoder's input), for loss.distribution (not in the release; README).

Parameters: mbt (model.MBT), text (encoders.BertEncoder), tacl (tacl.TACL), mask_token
[1, 1, E] (the release's Vmask_token), decoder (decoder.MAEDecoder). Stage 2 trains mbt only
(the release drops the wrapper); the method freezes nothing by name, the other subtrees just
get no gradient there.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxaffect.methods.mart import masking
from jaxaffect.methods.mart.decoder import MAEDecoder, apply_mask_token
from jaxaffect.methods.mart.encoders import BertEncoder
from jaxaffect.methods.mart.model import MBT, segment_mean
from jaxaffect.methods.mart.tacl import TACL
from jaxaffect.nn.transformer_parts import Linear

Array = jax.Array


class MART(nn.Module):
  """mbt_kwargs: MBT keyword arguments; text_kwargs: BertEncoder's (its hidden size is the
  MBT's); decoder_kwargs: MAEDecoder's (num_tokens and out_dim are derived)."""
  num_classes: int = 8
  mbt_kwargs: Any = None  # dict
  text_kwargs: Any = None  # dict
  decoder_kwargs: Any = None  # dict
  tacl_heads: int = 8
  tacl_drop_path: float = 0.01
  legacy_unmasked_pooling: bool = False
  intra_weight: float = 0.9  # lambda of the masking score
  mask_clip_prob: float = 0.5
  hint_pool: float = 0.1
  hint_ratio: float = 0.1  # hints = floor(hint_ratio * ratio * n)
  num_moods: int = 0  # > 0: the mood head of loss.distribution (8 Hourglass moods)
  dtype: Any = jnp.float32

  def setup(self):
    self.mbt = MBT(num_classes=self.num_classes, dtype=self.dtype, **dict(self.mbt_kwargs or {}))
    e = self.mbt.hidden_size
    t, p = self.mbt.tubelet_size, self.mbt.patch_size
    self.num_patches = (self.mbt.num_frames // t) * (self.mbt.image_size // p) ** 2
    self.text = BertEncoder(hidden_size=e, dtype=self.dtype, **dict(self.text_kwargs or {}))
    self.tacl = TACL(num_classes=self.num_classes, hidden_size=e, num_heads=self.tacl_heads,
                     drop_path_rate=self.tacl_drop_path,
                     legacy_unmasked_pooling=self.legacy_unmasked_pooling, dtype=self.dtype)
    self.mask_token = self.param(
        "mask_token", nn.with_logical_partitioning(nn.initializers.truncated_normal(0.02),
                                                   (None, None, "embed")), (1, 1, e), jnp.float32)
    if self.num_moods:
      self.mood_head = Linear((self.num_moods,), ("embed", None), dtype=jnp.float32)
    self.decoder = MAEDecoder(num_tokens=self.num_patches, out_dim=t * p * p * 3,
                              dtype=self.dtype, **dict(self.decoder_kwargs or {}))

  def __call__(self, video: Array, fbank: Array, train: bool = False) -> dict[str, Array]:
    """Stage 2 / evaluation: video [B, Ns, T, H, W, 3], fbank [B, Ns, F, M] -> {"logits"
    [B, C] (the sum of both heads' segment means), "logits_a", "logits_v" [B, C]}."""
    b, ns = video.shape[:2]
    out = self.mbt(video.reshape((b * ns,) + video.shape[2:]),
                        fbank.reshape((b * ns,) + fbank.shape[2:]), train=train)
    logits_a = segment_mean(out["logits_a"], ns)
    logits_v = segment_mean(out["logits_v"], ns)
    return {"logits": logits_a + logits_v, "logits_a": logits_a, "logits_v": logits_v}

  def pretrain(self, video: Array, fbank: Array, text_ids: Array, text_mask: Array, ratio,
               train: bool = False) -> dict[str, Array]:
    """Stage 1 (see the module docstring); text_ids/text_mask [B, Ns, L]; ratio: the masking
    ratio (a traced scalar is fine: shapes do not depend on it)."""
    b, ns = video.shape[:2]
    flat = lambda x: x.reshape((b * ns,) + x.shape[2:])
    out = dict(self.mbt(flat(video), flat(fbank), train=train, with_attention=True))
    words_mask = flat(text_mask).astype(bool)
    words = self.text(flat(text_ids), words_mask, train=train)["last_hidden_state"]
    video_patches = out["video_tokens"][:, 1:]
    audio_patches = out["audio_tokens"][:, 2:]
    tacl = self.tacl(words.astype(self.dtype), words_mask, video_patches, audio_patches,
                     num_segments=ns, train=train)
    score = (self.intra_weight * out["intra_attention"]
             + (1.0 - self.intra_weight) * tacl["inter_attention"])
    rng = self.make_rng("masking") if self.has_rng("masking") else jax.random.key(0)
    mask = masking.attmask_hint(score, ratio, rng, clip_prob=self.mask_clip_prob,
                                hint_pool=self.hint_pool, hint_ratio=self.hint_ratio)
    tokens = apply_mask_token(video_patches, mask, self.mask_token[0, 0])
    out.update({f"tacl_{k}": v for k, v in tacl.items()})
    out["mask"] = mask
    out["reconstruction"] = self.decoder(tokens, train=train)
    if self.num_moods:  # the segment's mood distribution, read from its masked video
      out["mood_logits"] = self.mood_head(jnp.mean(tokens.astype(jnp.float32), axis=1))
    out["logits_a_stage1"] = segment_mean(out["logits_a"], ns)
    out["logits_v_stage1"] = segment_mean(out["logits_v_raw_cls"], ns)
    return out
