"""TSL-Net (ACM MM 2022): temporal sentiment localization from single-frame supervision.

Model: jaxaffect.methods.tsl.model.TSLNet on per-snippet I3D RGB [1024] + log-mel [32, 60]
features.
Loss (jaxaffect.methods.tsl.loss, as the released train.py):
  L = l0 * L_vid + l1 * ((1 - l2) * L_frame + l2 * (L_bkg + L_pact)) + l3 * cpc_sign * cpc
with lambdas [2, 1, 0.5, 1]; cpc_sign +1 is the code (which adds the CPC log-likelihood to a
minimised loss), -1 the paper/MMIM form.

Batches (jaxaffect.methods.tsl.data): videos padded to a bucket length L, "rgb" [B, L, 1024],
"audio" [B, L, 32, 60] (normalised (x + 50) / 80), "mask" [B, L], "length" [B],
"point_label" [B, L] (-1 = none), "point_count" [B, 2], "index" [B]. A batch of several videos
averages per-video losses (BatchNorm statistics then pool the batch's real snippets).

Evaluation: per test video the fused scores and the video score go through the original's
post-processing (methods/tsl/postprocess.py) to ActivityNet results, scored by
evaluation/localization.py; the JSON files and per-snippet scores go to <workdir>/eval_outputs/.

Recipe, faithfulness flags, ablation switches, metrics and outputs: README.md, section "TSL-Net".
"""
from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxaffect import evaluators
from jaxaffect import method as base
from jaxaffect.data import families
from jaxaffect.evaluation import localization
from jaxaffect.methods.tsl import loss as tsl_loss
from jaxaffect.methods.tsl import model as tsl_model
from jaxaffect.methods.tsl import postprocess as tsl_postprocess

log = logging.getLogger(__name__)

LOSS_TERMS = ("video", "frame", "background", "pseudo_action", "cpc")
CLASS_NAMES = ("n", "p")   # config.class_dict of the original: 0 -> 'n', 1 -> 'p'
EVAL_SUBDIR = "eval_outputs"


@evaluators.register("tsl_localization")
def localization_evaluator(outputs, fields, *, method, subset: str = "test") -> dict:
  """The `tsl_localization` evaluator: each test video's fused scores and video score go
  through the original's post-processing (`config.postprocess`) to ActivityNet results,
  scored by evaluation/localization.py; the JSON files and scores are written below the
  workdir (Method.write_outputs)."""
  src = method.source(subset)
  pp = dict(method.config.get("postprocess", {}) or {})
  fused_all, vscore_all = outputs["cas_sigmoid_fuse"], outputs["video_score"]
  results, database, scores = {}, {}, {}
  for i, (index, length) in enumerate(zip(fields["index"], fields["length"])):
    info = method.pipeline().video_info(src, int(index))
    vid = info["video_id"]
    fused = np.asarray(fused_all[i])[:int(length)]
    vscore = np.asarray(vscore_all[i])
    results[vid] = tsl_postprocess.postprocess_video(fused, vscore, float(info["fps"]), **pp)
    database[vid] = {"subset": subset, "duration": float(info["duration"]),
                     "annotations": [{"segment": [float(s), float(e)],
                                      "label": CLASS_NAMES[int(c)]}
                                     for (s, e), c in zip(info["segments"],
                                                          info["segment_labels"])]}
    scores[vid] = (fused, vscore, float(info["fps"]))
  gt = {"database": database}
  pred = tsl_postprocess.results_json(results)
  metrics = localization.evaluate_detection(gt, pred, subset=subset)
  method.write_outputs(gt, pred, scores)
  keep = {k: v for k, v in metrics.items() if isinstance(v, float)}
  keep["num_videos"] = float(len(database))
  return keep


class Method(base.Method):
  state_collections = ("batch_stats",)
  eval_label_keys = ("index", "length")

  def build_model(self):
    kw = dict(self.config.model.to_dict())
    kw["reverse_mapping"] = bool(kw.get("reverse_mapping", True)) and self._on("cpc")
    return tsl_model.TSLNet(**kw)

  def _on(self, term: str) -> bool:
    """loss.<term> switches a term off; the CPC term is also off when its lambda is 0 (then
    the reverse-mapping heads are not built at all)."""
    lc = self.config.loss
    on = bool(lc.get(term, True))
    if term == "cpc":
      on = on and float(lc.lambdas[3]) != 0.0
    return on

  # ---- batches -------------------------------------------------------------------------------
  def example_batch(self, batch_size: int):
    # The length used for init and for --mode benchmark (any length traces the same params).
    length = int(self.config.dataset.get("example_length", self.config.dataset.buckets[0]))
    feats = self.config.dataset.get("rgb_features", 1024)
    return {"rgb": np.zeros((batch_size, length, feats), np.float32),
            "audio": np.zeros((batch_size, length, 32, 60), np.float32),
            "mask": np.ones((batch_size, length), np.float32),
            "length": np.full((batch_size,), length, np.int32),
            "point_label": np.full((batch_size, length), -1, np.int32),
            "point_count": np.ones((batch_size, 2), np.float32),
            "index": np.zeros((batch_size,), np.int32)}

  def model_inputs(self, batch):
    return {"rgb": batch["rgb"], "audio": batch["audio"], "mask": batch["mask"],
            "length": batch["length"]}

  # ---- loss ----------------------------------------------------------------------------------
  def loss(self, params, model_state, batch, rng, step=None):
    out, new_state = self.model.apply({"params": params, **model_state},
                                      **self.model_inputs(batch), train=True,
                                      rngs={"dropout": rng},
                                      mutable=list(self.state_collections))
    lc = self.config.loss
    lam = [float(x) for x in lc.lambdas]
    p = out["cas_sigmoid_fuse"]
    valid = batch["mask"] > 0
    y = tsl_loss.point_rows(batch["point_label"], smooth=float(lc.label_smoothing))
    act_seed, bkg_seed = tsl_loss.select_seeds(p, y, valid, float(lc.background_threshold))
    zero = jnp.zeros(p.shape[:1], jnp.float32)
    terms = {
        "video": tsl_loss.video_loss(out["video_distribution"], batch["point_count"])
                 if self._on("video") else zero,
        "frame": tsl_loss.frame_loss(p, y) if self._on("frame") else zero,
        "background": tsl_loss.background_loss(p, bkg_seed) if self._on("background") else zero,
        "pseudo_action": tsl_loss.pseudo_action_loss(p, act_seed)
                         if self._on("pseudo_action") else zero,
    }
    cpc = zero
    if self._on("cpc"):
      for feat, pred in (("audio", "audio_pred"), ("visual", "visual_pred")):
        if pred in out:
          cpc = cpc + tsl_model.cpc_score(out[feat], out[pred], valid)
    terms["cpc"] = cpc
    per_video = (lam[0] * terms["video"]
                 + lam[1] * ((1.0 - lam[2]) * terms["frame"]
                             + lam[2] * (terms["background"] + terms["pseudo_action"]))
                 + lam[3] * float(lc.cpc_sign) * cpc)
    loss = jnp.mean(per_video)
    metrics = {f"loss_{k}": jnp.mean(v) for k, v in terms.items()}
    metrics["pseudo_action_snippets"] = jnp.mean(
        jnp.sum((jnp.max(act_seed, -1) > 0) & valid, -1).astype(jnp.float32))
    metrics["background_seed_snippets"] = jnp.mean(jnp.sum(bkg_seed > 0, -1).astype(jnp.float32))
    return loss, (metrics, dict(new_state))

  # ---- evaluation ----------------------------------------------------------------------------
  def predict(self, params, model_state, batch):
    out = self.model.apply({"params": params, **model_state}, **self.model_inputs(batch),
                           train=False)
    return {"cas_sigmoid_fuse": out["cas_sigmoid_fuse"], "video_score": out["video_score"]}

  def write_outputs(self, gt, pred, scores) -> None:
    if not self.workdir or jax.process_index() != 0:
      return
    out = os.path.join(self.workdir, EVAL_SUBDIR)
    os.makedirs(out, exist_ok=True)
    for name, obj in (("ground_truth.json", gt), ("predictions.json", pred)):
      tmp = os.path.join(out, name + ".tmp")
      with open(tmp, "w") as f:
        json.dump(obj, f)
      os.replace(tmp, os.path.join(out, name))
    arrays = {}
    for vid, (fused, vscore, fps) in scores.items():
      arrays[f"{vid}/cas_sigmoid_fuse"] = fused
      arrays[f"{vid}/video_score"] = vscore
      arrays[f"{vid}/fps"] = np.float32(fps)
    tmp = os.path.join(out, "scores.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, os.path.join(out, "scores.npz"))

  # ---- data ----------------------------------------------------------------------------------
  @staticmethod
  def pipeline():
    from jaxaffect.methods.tsl import data as tsl_pipeline  # deferred: grain
    return tsl_pipeline

  def source(self, split: str):
    cache = self.__dict__.setdefault("_sources", {})
    if split not in cache:
      cache[split] = self.pipeline().tsl_source(self.config.dataset, split)
    return cache[split]

  def prepare_data(self):
    families.prepare(self.pipeline().FAMILY, self.config.dataset)

  def train_iterator(self, *, seed, global_batch_size, process_index, process_count):
    ds = self.config.dataset
    return iter(self.pipeline().train_dataset(
        self.source("train"), seed=seed, global_batch_size=global_batch_size,
        process_index=process_index, process_count=process_count,
        buckets=tuple(ds.buckets), annotator=ds.annotator,
        group_by_length=int(ds.get("group_by_length", 0))))

  def eval_batches(self, *, global_batch_size, process_index, process_count):
    return self.pipeline().eval_batches(
        self.source("test"), global_batch_size=global_batch_size,
        process_index=process_index, process_count=process_count,
        buckets=tuple(self.config.dataset.buckets),
        sort_by_length=True)  # less padding; metrics do not depend on the order
