"""MART (Zhang et al., CVPR 2024): masked affective representation learning over video, audio
and subtitles, then supervised fine-tuning; both stages are one run.

Steps [0, pretrain.steps) are stage 1 (pretrain_model.MART.pretrain):
  L = rec_weight * L_rec + comp_weight * L_comp + cls_weight * L_cls + cls_c_weight * L_cls_c
      + dist_weight * L_dist (loss.distribution: the reconstructed temporal emotion
      distribution, KL from each segment's lexicon mood histogram to a head on its masked video)
  L_rec: MSE to the normalised tubelet pixels over the masked patches (loss.rec_target=
  "pixels": the plain pixels in [-1, 1], MAE without norm_pix_loss); L_comp: TACL's CPC term
  times loss.cpc_sign (+1 as released, -1 as MMIM), negatives from the same video (as
  released) or, loss.cpc_negatives="batch", from the whole batch (as MMIM); L_cls: PCCE of
  the audio head plus PCCE of the video head (each on segment means); L_cls_c: the same over
  TACL's two heads. Examples without a label (label -1: the unlabelled pool) count in L_rec
  and L_comp only.
Steps [pretrain.steps, total_steps) are stage 2: PCCE over the MBT's audio and video heads,
with the EMA (config.ema, start_step = pretrain.steps) used by evaluation. The stage and the
masking ratio are functions of the step, so a resumed run continues in the right stage and
schedule. Evaluation: the MBT path (fc_norm of the CLS), logits = audio + video heads.

Stage-1 data (`pretrain.data`): "labelled" (the train split, as released) or "unlabelled" (the
pool or corpus of methods/mart/data.py; stage 2 then reads the train split; with no stage 2
the run is label-free pretraining). Faithfulness flags: README, "MART".
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxaffect import config_lib
from jaxaffect import method as base
from jaxaffect.errors import UserError
from jaxaffect.methods.mart import losses as mart_losses
from jaxaffect.methods.mart import masking
from jaxaffect.methods.mart.pretrain_model import MART
from jaxaffect.methods.mart.tacl import comp_loss
from jaxaffect.nn.losses import pcce_loss

TEXT_SOURCES = ("raw", "emotion_words", "both")
PRETRAIN_DATA = ("labelled", "unlabelled")
CPC_NEGATIVES = ("video", "batch")  # TACL's CPC: the same video's rows (released), or the batch's
NUM_MOODS = 8  # the Hourglass moods of data_pipelines/text.py
STAGE1_TERMS = ("rec", "comp", "cls", "cls_c", "dist")


def _mood_kl(logits, target, valid):
  """loss.distribution: KL(p_s || softmax(logits_s)) per segment s with a mood histogram
  (valid), averaged over those; p is the lexicon's |polarity|-weighted mood histogram."""
  p = target.reshape(-1, target.shape[-1]).astype(jnp.float32)
  log_q = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  kl = jnp.sum(jnp.where(p > 0, p * (jnp.log(jnp.maximum(p, 1e-12)) - log_q), 0.0), axis=-1)
  v = valid.reshape(-1).astype(jnp.float32)
  return jnp.sum(kl * v) / jnp.maximum(jnp.sum(v), 1.0)


def _top1(logits, labels):
  """Accuracy over the labelled examples (label >= 0); 0 when there are none."""
  valid = (labels >= 0).astype(jnp.float32)
  hit = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return jnp.sum(hit * valid) / jnp.maximum(jnp.sum(valid), 1.0)


class Method(base.Method):

  def build_model(self):
    c = self.config
    m, ds = c.model, c.dataset
    config_lib.check_choice("text.source", c.text.source, TEXT_SOURCES)
    self.stage1_steps = int(c.pretrain.steps)
    if not 0 <= self.stage1_steps:
      raise UserError(f"config.pretrain.steps must be >= 0, got {self.stage1_steps}")
    config_lib.check_choice("pretrain.data", c.pretrain.data, PRETRAIN_DATA)
    config_lib.check_choice("loss.cpc_negatives", c.loss.get("cpc_negatives", "video"),
                            CPC_NEGATIVES)
    self.rec_target = mart_losses.REC_TARGETS[config_lib.check_choice(
        "loss.rec_target", c.loss.get("rec_target", "normalized"), tuple(mart_losses.REC_TARGETS))]
    ema = c.get("ema", None)
    if ema is not None and float(ema.decay) > 0 and int(ema.start_step) != self.stage1_steps:
      raise UserError(f"config.ema.start_step={ema.start_step} but pretrain.steps="
                      f"{self.stage1_steps}: MART's EMA starts with stage 2; set "
                      f"--config.ema.start_step={self.stage1_steps}")
    # pretrain.reset_optimizer: stage 2 starts with a fresh Adam (as a separate fine-tuning
    # run would); off = one optimizer across the stages, as released.
    total = int(c.total_steps)
    self.optimizer_reset_steps = (
        (self.stage1_steps,) if c.pretrain.get("reset_optimizer", False)
        and 0 < self.stage1_steps < total else ())
    self.distribution = bool(c.loss.get("distribution", False))
    if self.distribution and not ds.extraction.get("lexicon", ""):
      raise UserError("config.loss.distribution=True needs mood tags: set "
                      "dataset.extraction.lexicon (a lexicon file, README 'Data')")
    dtype = jnp.dtype(m.get("dtype", "float32"))
    common = dict(scan=bool(m.scan), remat_policy=str(m.remat_policy))
    mbt = dict(hidden_size=int(m.hidden_size), num_heads=int(m.num_heads),
               mlp_dim=int(m.mlp_dim), num_layers=int(m.num_layers),
               fusion_layers=int(m.fusion_layers), bottleneck_tokens=int(m.bottleneck_tokens),
               num_frames=int(ds.snippet_len), image_size=int(ds.crop_size),
               patch_size=int(m.patch_size), tubelet_size=int(m.tubelet_size),
               num_mel_bins=int(ds.fbank_bins), audio_frames=int(ds.audio_frames),
               freeze_audio_lower=bool(m.freeze_audio_lower), **common)
    text = dict(vocab_size=int(m.text.vocab_size), num_layers=int(m.text.num_layers),
                num_heads=int(m.text.num_heads), mlp_dim=int(m.text.mlp_dim),
                max_positions=int(m.text.max_positions), **common)
    decoder = dict(width=int(m.decoder.width), depth=int(m.decoder.depth),
                   num_heads=int(m.decoder.num_heads), mlp_dim=int(m.decoder.mlp_dim), **common)
    mk = c.mask
    return MART(num_classes=int(ds.num_classes), mbt_kwargs=mbt, text_kwargs=text,
                decoder_kwargs=decoder, tacl_heads=int(m.tacl_heads),
                tacl_drop_path=float(m.tacl_drop_path),
                legacy_unmasked_pooling=bool(m.legacy_unmasked_pooling),
                intra_weight=float(mk.intra_weight), mask_clip_prob=float(mk.clip_prob),
                hint_pool=float(mk.hint_pool), hint_ratio=float(mk.hint_ratio),
                num_moods=NUM_MOODS if self.distribution else 0, dtype=dtype)

  @property
  def polarity(self) -> np.ndarray:
    return np.asarray(self.config.dataset.polarity, np.int32)

  # ---- shapes --------------------------------------------------------------------------------
  def example_batch(self, batch_size: int):
    ds, c = self.config.dataset, self.config
    s, t, px = int(ds.num_segments), int(ds.snippet_len), int(ds.crop_size)
    length = int(c.text.max_len)
    batch = {
        "video": np.zeros((batch_size, s, t, px, px, 3), np.uint8),
        "fbank": np.zeros((batch_size, s, int(ds.audio_frames), int(ds.fbank_bins)), np.float32),
        "text_ids": np.zeros((batch_size, s, length), np.int32),
        "text_mask": np.zeros((batch_size, s, length), bool),
        "label": np.zeros((batch_size,), np.int32),  # -1: unlabelled
    }
    if self.distribution:
      batch["mood"] = np.zeros((batch_size, s, NUM_MOODS), np.float32)
      batch["mood_valid"] = np.zeros((batch_size, s), bool)
    return batch

  def init_variables(self, rng, batch):
    rngs = {"params": rng, "dropout": rng, "masking": rng}
    return self.model.init(rngs, batch["video"], batch["fbank"], batch["text_ids"],
                           batch["text_mask"], 0.5, method=MART.pretrain)

  def model_inputs(self, batch):
    return {"video": batch["video"], "fbank": batch["fbank"]}

  # ---- losses --------------------------------------------------------------------------------
  def mask_ratio(self, step):
    """The AttMask ratio at a train step: masking.ratio_schedule of the 1-based epoch."""
    mk = self.config.mask
    epoch = step // max(1, int(self.config.pretrain.steps_per_epoch)) + 1
    return masking.ratio_schedule(epoch, int(mk.schedule_epochs), float(mk.ratio_base),
                                  float(mk.ratio_slope), float(mk.ratio_cap))

  def _pcce(self, logits, labels):
    lam = float(self.config.loss.pcce_lambda)
    return pcce_loss(logits, labels, jnp.asarray(self.polarity), lam, valid=labels >= 0)[0]

  def _stage1(self, params, batch, rng, step):
    lc = self.config.loss
    k_mask, k_drop = jax.random.split(rng)
    out = self.model.apply({"params": params}, batch["video"], batch["fbank"],
                           batch["text_ids"], batch["text_mask"], self.mask_ratio(step),
                           train=True, method=MART.pretrain,
                           rngs={"masking": k_mask, "dropout": k_drop})
    b, ns = batch["video"].shape[:2]
    video = batch["video"].reshape((b * ns,) + batch["video"].shape[2:])
    tubelet = (int(self.config.model.tubelet_size),) + (int(self.config.model.patch_size),) * 2
    target = self.rec_target(video, tubelet)
    terms = {"rec": mart_losses.masked_reconstruction_loss(out["reconstruction"], target,
                                                           out["mask"])}
    words_mask = batch["text_mask"].reshape(b * ns, -1).astype(bool)
    tacl = {k[len("tacl_"):]: v for k, v in out.items() if k.startswith("tacl_")}
    if bool(self.config.model.legacy_unmasked_pooling):  # the release's CPC rows include pads
      words_mask = jnp.ones_like(words_mask)
    terms["comp"] = comp_loss(tacl, words_mask, float(lc.cpc_sign), ns,
                              str(lc.get("cpc_negatives", "video")))
    zero = jnp.zeros((), jnp.float32)
    labels = batch["label"]
    terms["cls"] = (self._pcce(out["logits_a_stage1"], labels)
                    + self._pcce(out["logits_v_stage1"], labels))
    terms["cls_c"] = (self._pcce(tacl["logits_v"], labels)
                      + self._pcce(tacl["logits_a"], labels))
    top1 = _top1(out["logits_a_stage1"] + out["logits_v_stage1"], labels)
    terms["dist"] = (_mood_kl(out["mood_logits"], batch["mood"], batch["mood_valid"])
                     if self.distribution else zero)
    loss = sum(float(lc[f"{k}_weight"]) * terms[k] for k in STAGE1_TERMS)
    metrics = {f"loss_{k}": terms[k] for k in STAGE1_TERMS}
    metrics.update(top1=top1, masked_fraction=jnp.mean(out["mask"].astype(jnp.float32)),
                   mask_ratio=jnp.asarray(self.mask_ratio(step), jnp.float32),
                   stage=jnp.ones((), jnp.float32))
    return loss, metrics

  def _stage2(self, params, batch, rng, step):
    out = self.model.apply({"params": params}, batch["video"], batch["fbank"], train=True,
                           rngs={"dropout": rng})
    labels = batch["label"]
    loss = self._pcce(out["logits_a"], labels) + self._pcce(out["logits_v"], labels)
    zero = jnp.zeros((), jnp.float32)
    metrics = {f"loss_{k}": zero for k in STAGE1_TERMS}
    metrics["loss_cls"] = loss
    metrics.update(top1=_top1(out["logits"], labels),
                   masked_fraction=zero, mask_ratio=zero, stage=jnp.full((), 2.0, jnp.float32))
    return loss, metrics

  def loss(self, params, model_state, batch, rng, step=None):
    step = jnp.zeros((), jnp.int32) if step is None else step
    total = int(self.config.total_steps)
    if self.stage1_steps >= total:
      loss, metrics = self._stage1(params, batch, rng, step)
    elif self.stage1_steps == 0:
      loss, metrics = self._stage2(params, batch, rng, step)
    else:  # one compiled step for the whole run; the branch not taken costs nothing
      loss, metrics = jax.lax.cond(step < self.stage1_steps, self._stage1, self._stage2,
                                   params, batch, rng, step)
    return loss, (metrics, model_state)

  def predict(self, params, model_state, batch):
    out = self.model.apply({"params": params}, batch["video"], batch["fbank"], train=False)
    return {"logits": out["logits"].astype(jnp.float32)}

  # ---- data ----------------------------------------------------------------------------------
  # Imported where used: model-only uses (summary, memory, converters) need no grain/media.
  def prepare_data(self):
    from jaxaffect.methods.mart import data  # deferred: grain + media stack
    data.prepare(self.config)

  def train_iterator(self, *, seed, global_batch_size, process_index, process_count):
    from jaxaffect.methods.mart import data  # deferred: grain + media stack
    return data.train_iterator(self.config, seed=seed, global_batch_size=global_batch_size,
                               process_index=process_index, process_count=process_count)

  def eval_batches(self, *, global_batch_size, process_index, process_count):
    from jaxaffect.methods.mart import data  # deferred: grain + media stack
    return data.eval_batches(self.config, global_batch_size=global_batch_size,
                             process_index=process_index, process_count=process_count)
