"""BPM-GCN (TAC 2024): gait emotion recognition from 3D skeletons.

Model: model.BPMGCN (posture + movement streams, bilateral fusion, per-frame affective-feature
regression). Loss as the released code: CE(posture logits) + CE(movement
logits) + w * MSE(affective regression, the 31 STEP features computed from the skeleton).
Predictions average the two streams' logits. Data: Emotion-Gait layout (h5 + labels) through
the `emotion_gait` builder; batches "skeleton" [B, 48, 16, 3], "mask" [B, 48], "label" [B].
A single stream (model.streams) trains on its own CE only.

Recipe, faithfulness flags, ablation switches and the evaluation protocol (incl. the original's
best-over-epochs, tools/best_over_evals.py): README.md, section "BPM-GCN".
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxaffect import method as base
from jaxaffect.data import families
from jaxaffect.errors import UserError
from jaxaffect.methods.bpmgcn import gait_features
from jaxaffect.methods.bpmgcn import model as bpmgcn_model

log = logging.getLogger(__name__)


class Method(base.Method):
  state_collections = ("batch_stats",)

  def build_model(self):
    kwargs = dict(self.config.model.to_dict())
    kwargs.setdefault("num_classes", int(self.config.dataset.num_classes))
    model = bpmgcn_model.BPMGCN(**kwargs)
    try:
      model.check()
    except ValueError as e:
      raise UserError(f"model: {e}") from e
    w = float(self.config.loss.affective_weight)
    if w > 0 and not model.has_affective:
      raise UserError(
          f"loss.affective_weight={w} needs the affective regression head, which "
          f"model.streams={model.streams!r} / model.affective_head={model.affective_head} "
          "does not build; set loss.affective_weight=0")
    if w == 0 and model.has_affective:
      log.info("loss.affective_weight=0: fc2_aff is built but unused (no gradient, only weight "
               "decay); model.affective_head=False removes it")
    return model

  def example_batch(self, batch_size: int):
    t, j = int(self.config.dataset.num_frames), 16
    return {"skeleton": np.zeros((batch_size, t, j, 3), np.float32),
            "mask": np.ones((batch_size, t), np.float32),
            "label": np.zeros((batch_size,), np.int32)}

  def model_inputs(self, batch):
    return {"skeleton": batch["skeleton"], "frame_mask": batch["mask"] > 0}

  def loss(self, params, model_state, batch, rng, step=None):
    del rng
    out, new_state = self.model.apply({"params": params, **model_state},
                                      **self.model_inputs(batch), train=True,
                                      mutable=list(self.state_collections))
    labels = batch["label"]
    lc = self.config.loss
    ce = lambda logits: optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels).mean()
    loss, metrics = 0.0, {}
    for stream in ("posture", "movement"):  # the streams the model has (model.streams)
      if f"logits_{stream}" in out:
        metrics[f"ce_{stream}"] = ce(out[f"logits_{stream}"])
        loss = loss + metrics[f"ce_{stream}"]
    if float(lc.affective_weight) > 0:
      mask = batch["mask"] > 0
      target = jax.lax.stop_gradient(gait_features.affective_features(batch["skeleton"], mask))
      err = jnp.square(out["affective"].astype(jnp.float32) - target)
      if lc.get("mask_affective_padding", False):
        m = mask[..., None].astype(jnp.float32)
        mse = jnp.sum(err * m) / jnp.maximum(jnp.sum(m) * err.shape[-1], 1.0)
      else:  # the released code: mean over every frame, padding included
        mse = jnp.mean(err)
      loss = loss + float(lc.affective_weight) * mse
      metrics["affective_mse"] = mse
    acc = jnp.mean((jnp.argmax(out["logits"], -1) == labels).astype(jnp.float32))
    metrics["top1"] = acc
    return loss, (metrics, dict(new_state))

  def predict(self, params, model_state, batch):
    out = self.model.apply({"params": params, **model_state}, **self.model_inputs(batch),
                           train=False)
    return {"logits": out["logits"].astype(jnp.float32)}

  def prepare_data(self):
    from jaxaffect.methods.bpmgcn import data as gait_pipeline  # deferred: grain
    families.prepare(gait_pipeline.FAMILY, self.config.dataset)

  def train_iterator(self, *, seed, global_batch_size, process_index, process_count):
    from jaxaffect.methods.bpmgcn import data as gait_pipeline  # deferred: grain
    ds = self.config.dataset
    src = families.open_source(gait_pipeline.FAMILY, ds, "train")
    aug = ds.get("augment", None)
    return iter(gait_pipeline.train_dataset(
        src, seed=seed, global_batch_size=global_batch_size, process_index=process_index,
        process_count=process_count, augment=aug.to_dict() if aug is not None else None,
        center=str(ds.get("center", "none"))))

  def eval_batches(self, *, global_batch_size, process_index, process_count):
    from jaxaffect.methods.bpmgcn import data as gait_pipeline  # deferred: grain
    ds = self.config.dataset
    src = families.open_source(gait_pipeline.FAMILY, ds, "test")
    return gait_pipeline.eval_batches(src, global_batch_size=global_batch_size,
                                      process_index=process_index, process_count=process_count,
                                      center=str(ds.get("center", "none")))
