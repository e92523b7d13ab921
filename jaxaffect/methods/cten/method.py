"""CTEN (Zhang et al., CVPR 2023): cross-modal temporal erasing network.

Model: model.CTEN. Training step (one jitted function, shared weights, as the released loop's
three forward passes):
  1. encode the video (frozen 3D ResNet, pooled per segment) and the audio once;
  2. view "original": relations + temporal attention + classifier -> logits o, gamma;
  3. from gamma (no gradient: the threshold is discrete), erasing.py's index maps give the
     "rest" view (segments below the threshold, the released pass 2) and the "keyframes" view
     (above it, pass 3), each re-sampled to S segments of its own video;
  4. each view goes through the head again (erase.input="features": the segment features of
     step 1 gathered; "frames": the frames and fbank windows gathered and encoded again, so
     the frozen backbone's train-mode BatchNorm sees each view's batch, as released);
  5. loss = the three cross-entropies, summed (the paper) or averaged (erase.reduce="mean",
     the code). erase.enabled=False (the ablation's no-erasing rows) trains on view 1 only.
Evaluation uses the original view only (the paper's protocol; the released best-of-three on
the test split is not reproduced).

model.visual_input="features" trains and evaluates from a cache of the frozen backbone's
pooled segment features (feature_cache.py, README "CTEN"): the backbone is not built, step 1
reads the cached [B, S, C], and the erased views gather them (erase.input="features" only).

Config keys: model.* (CTEN's fields, and visual_input "frames" | "features"), erase.{enabled,
theta, rule ("paper" | "legacy"), reduce ("sum" | "mean"), input ("features" | "frames")},
dataset.* (data.py; dataset.feature_cache: the cache folder).
"""
from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxaffect import config_lib
from jaxaffect import evaluators
from jaxaffect import method as base
from jaxaffect.data import families
from jaxaffect.data import video_emotion
from jaxaffect.errors import UserError
from jaxaffect.evaluation import keyframes
from jaxaffect.evaluation import localization
from jaxaffect.evaluation import segment_table
from jaxaffect.methods.cten import erasing
from jaxaffect.methods.cten import model as cten_model

ERASE_RULES = ("paper", "legacy")
ERASE_REDUCTIONS = ("sum", "mean")
ERASE_INPUTS = ("features", "frames")
VIEWS = ("original", "rest", "keyframes")
KEYFRAMES_FILE = "keyframes.json"  # the synthetic world's (data_pipelines/synthetic)

log = logging.getLogger(__name__)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


class Method(base.Method):
  state_collections = ("batch_stats",)

  def build_model(self):
    c = self.config
    kwargs = dict(c.model.to_dict())
    kwargs.setdefault("num_classes", int(c.dataset.num_classes))
    kwargs.setdefault("num_segments", int(c.dataset.num_segments))
    e = c.erase
    config_lib.check_choice("erase.rule", e.rule, ERASE_RULES)
    config_lib.check_choice("erase.reduce", e.reduce, ERASE_REDUCTIONS)
    config_lib.check_choice("erase.input", e.input, ERASE_INPUTS)
    if not 0.0 <= float(e.theta) <= 1.0:
      raise UserError(f"erase.theta must be in [0, 1], got {e.theta}")
    # "frames": decoded snippets through the frozen backbone; "features": its cached pooled
    # outputs (feature_cache.py), the backbone is not built.
    self.visual_input = kwargs.pop("visual_input", "frames")
    config_lib.check_choice("model.visual_input", self.visual_input, ("frames", "features"))
    # A converted checkpoint's backbone has no place in a features-mode model.
    self.init_from_ignore = ("visual_backbone",) if self.visual_input == "features" else ()
    if not c.model.get("use_visual", True):  # the paper's audio rows: one-line config errors
      if not c.model.get("use_audio", True):
        raise UserError("model.use_visual=False and model.use_audio=False leave no stream")
      if c.model.get("use_inter", True):
        raise UserError("model.use_visual=False needs model.use_inter=False (the inter-modal "
                        "relation needs both streams)")
      if c.model.get("legacy_code", False):
        raise UserError("model.use_visual=False has no legacy_code form (the release has no "
                        "audio-only model); use the paper's forms")
      if self.visual_input == "features":
        raise UserError("model.use_visual=False reads no visual features; set "
                        "model.visual_input='frames'")
    if self.visual_input == "features":
      if e.input == "frames":
        raise UserError("erase.input='frames' re-encodes the erased views' frames, which a "
                        "model.visual_input='features' run does not read; use "
                        "erase.input='features'")
      if c.model.get("train_backbone", False):
        raise UserError("model.train_backbone=True cannot train from cached features (the "
                        "cache holds a fixed backbone's outputs); set it False or use "
                        "model.visual_input='frames'")
      if c.model.get("backbone_bn", "batch_stats") == "batch_stats":
        log.warning("model.visual_input='features': the cached features were computed with "
                    "the backbone's running BatchNorm statistics, not the train-mode batch "
                    "statistics of model.backbone_bn='batch_stats' (the released code): this "
                    "changes the legacy BatchNorm behaviour")
    return cten_model.CTEN(**kwargs)

  @property
  def uses_audio(self) -> bool:
    return bool(self.config.model.get("use_audio", True))

  @property
  def uses_visual(self) -> bool:
    return bool(self.config.model.get("use_visual", True))

  def example_batch(self, batch_size: int):
    ds = self.config.dataset
    s, t, c = int(ds.num_segments), int(ds.snippet_len), int(ds.crop_size)
    out = {}
    if not self.uses_visual:
      pass  # the pipeline's frames are not read (audio rows)
    elif self.visual_input == "features":
      out["video_features"] = np.zeros((batch_size, s, self.model.visual_dim), np.float32)
    else:
      out["video"] = np.zeros((batch_size, s, t, c, c, 3), np.uint8)
    out["label"] = np.zeros((batch_size,), np.int32)
    if self.uses_audio:
      out["audio"] = np.zeros((batch_size, s, int(ds.get("audio_frames", 100)),
                               int(ds.extraction.fbank_bins)), np.float32)
    return out

  def model_inputs(self, batch):
    if not self.uses_visual:
      return {"audio": batch["audio"]}
    visual = "video_features" if self.visual_input == "features" else "video"
    return {visual: batch[visual], "audio": batch.get("audio")}

  # ---- the three views ---------------------------------------------------------------------
  def loss(self, params, model_state, batch, rng, step=None):
    del step
    e = self.config.erase
    mutable = list(self.state_collections)
    state = dict(model_state)
    calls = iter(range(8))  # one dropout key per apply (at most 2 encodes + 3 heads)

    def apply(method, *args, **kwargs):
      nonlocal state
      out, new = self.model.apply({"params": params, **state}, *args, method=method,
                                  mutable=mutable, rngs={"dropout": jax.random.fold_in(rng, next(calls))}, **kwargs)
      state = {**state, **new}
      return out

    video, audio = batch.get("video") if self.uses_visual else None, batch.get("audio")
    if self.visual_input == "features":
      v, a = apply(cten_model.CTEN.encode, None, audio, True,
                   video_features=batch["video_features"])
    else:
      v, a = apply(cten_model.CTEN.encode, video, audio, True)
    out = apply(cten_model.CTEN.head, v, a, True)
    labels = batch["label"]
    losses = [_cross_entropy(out["logits"], labels)]
    metrics = {"top1": jnp.mean((jnp.argmax(out["logits"], -1) == labels).astype(jnp.float32))}
    if e.enabled:
      gv = jax.lax.stop_gradient(out["gamma"])  # the audio's own without the visual stream
      ga = jax.lax.stop_gradient(out["gamma_audio"]) if a is not None and v is not None else None
      key, rest = erasing.keyframe_masks(gv, ga, float(e.theta), str(e.rule))
      metrics["keyframe_fraction"] = jnp.mean(key.astype(jnp.float32))
      metrics["flat_fallback"] = jnp.mean((~jnp.any(key, -1)).astype(jnp.float32))
      for name, keep in (("rest", rest), ("keyframes", key)):  # the released pass order
        idx = erasing.view_indices(keep)
        if e.input == "frames":
          vi, ai = apply(cten_model.CTEN.encode,
                         None if video is None else erasing.gather_segments(video, idx),
                         None if audio is None else erasing.gather_segments(audio, idx), True)
        else:
          vi = None if v is None else erasing.gather_segments(v, idx)
          ai = None if a is None else erasing.gather_segments(a, idx)
        view = apply(cten_model.CTEN.head, vi, ai, True)
        losses.append(_cross_entropy(view["logits"], labels))
        metrics[f"loss_{name}"] = losses[-1]
    metrics["loss_original"] = losses[0]
    total = sum(losses)
    if e.reduce == "mean":
      total = total / len(losses)
    return total, (metrics, state)

  def predict(self, params, model_state, batch):
    """Logits, attentions and the original view's keyframes (erase.theta and erase.rule, as
    the erasing in training) with a per-segment score: the min-max-normalised attention
    (the mean of both modalities' under the paper's rule)."""
    out = self.model.apply({"params": params, **model_state}, **self.model_inputs(batch),
                           train=False)
    e = self.config.erase
    ga = out["gamma_audio"] if self.uses_audio and self.uses_visual else None
    key, _ = erasing.keyframe_masks(out["gamma"], ga, float(e.theta), str(e.rule))
    score = erasing.normalise(out["gamma"])[0]
    if ga is not None and e.rule == "paper":
      score = 0.5 * (score + erasing.normalise(ga)[0])
    return {"logits": out["logits"], "gamma": out["gamma"], "gamma_audio": out["gamma_audio"],
            "keyframes": key, "keyframe_score": score}

  # ---- single videos (python -m jaxaffect.predict) -------------------------------------------
  def example_from_video(self, path):
    if self.visual_input != "frames":
      raise UserError("python -m jaxaffect.predict decodes frames; this model reads cached "
                      "backbone features (model.visual_input='features')")
    from jaxaffect.methods.cten import data  # deferred: grain + media stack
    record = video_emotion.decode_video(self.config.dataset, path)
    example = data.CtenTransform(data.data_config(self.config), train=False).random_map(
        record, np.random.default_rng(0))
    return {k: example[k] for k in ("video", "audio") if k in example and (
        k != "audio" or self.uses_audio)}

  def prediction_figure(self, example, outputs, path, title):
    from jaxaffect.methods.cten import figures  # deferred: matplotlib
    figures.three_views(example["video"], outputs, path, title,
                        theta=float(self.config.erase.theta))

  # "index": the eval record's position, for the keyframe evaluator's ground truth.
  eval_label_keys = ("label", "index")

  # ---- data --------------------------------------------------------------------------------
  def _feature_cache(self, split):
    from jaxaffect.methods.cten import feature_cache  # deferred: grain + media stack
    return feature_cache.open_cache(self.config, split, self.model.visual_dim)

  def prepare_data(self):
    if self.visual_input == "features":
      self._feature_cache("train")  # built beforehand; fail here, before any compile
      return
    families.prepare(video_emotion.FAMILY, self.config.dataset)

  def train_iterator(self, *, seed, global_batch_size, process_index, process_count):
    if self.visual_input == "features":
      from jaxaffect.data import feature_cache  # deferred: grain + media stack
      return feature_cache.train_iterator(
          self._feature_cache("train"), seed=seed, global_batch_size=global_batch_size,
          process_index=process_index, process_count=process_count)
    from jaxaffect.methods.cten import data  # deferred: grain + media stack
    return data.train_iterator(self.config, seed=seed, global_batch_size=global_batch_size,
                               process_index=process_index, process_count=process_count)

  def eval_batches(self, *, global_batch_size, process_index, process_count):
    if self.visual_input == "features":
      from jaxaffect.data import feature_cache  # deferred: grain + media stack
      return feature_cache.eval_batches(
          self._feature_cache(self.config.dataset.get("eval_split", "test")),
          global_batch_size=global_batch_size, process_index=process_index,
          process_count=process_count, index=True)
    from jaxaffect.methods.cten import data  # deferred: grain + media stack
    return data.eval_batches(self.config, global_batch_size=global_batch_size,
                             process_index=process_index, process_count=process_count)

  def eval_keys(self, indices) -> list[str]:
    """The builder keys of the eval examples at `indices` (from the cache in features mode:
    the prepared data need not be there)."""
    if self.visual_input == "features":
      return self._feature_cache(self.config.dataset.get("eval_split", "test")).keys(indices)
    from jaxaffect.methods.cten import data  # deferred: grain + media stack
    return data.eval_keys(self.config, indices)


@evaluators.register("cten_keyframes")
def keyframe_evaluator(outputs, fields, *, method, ground_truth: str = "",
                       chance_draws: int = 10) -> dict:
  """Weakly supervised keyframe detection (evaluation/keyframes.py): the original view's
  keyframes of each eval video against its annotated emotional segments, mAP at tIoU 0.1-0.5.
  `ground_truth`: an ActivityNet-style JSON keyed by the builder's keys ("Class/name"), or a
  .csv/.tsv table of segments (evaluation/segment_table.py); default the synthetic world's
  keyframes.json (dataset.synthetic.keyframes=True)."""
  config = method.config
  path = ground_truth or os.path.join(families.raw_dir(video_emotion.FAMILY, config.dataset),
                                      KEYFRAMES_FILE)
  if not os.path.exists(path):
    raise UserError(f"evals: cten_keyframes needs keyframe annotations; {path} does not exist "
                    f"(generate them with --config.dataset.synthetic.keyframes=True, or set "
                    f"the evaluator's ground_truth to an annotation file)")
  gt = (segment_table.read(path) if segment_table.is_table(path)
        else localization.load_json(path, "keyframe ground truth"))
  keys = method.eval_keys(fields["index"])
  return keyframes.evaluate(gt, keys, np.asarray(outputs["keyframes"]),
                            np.asarray(outputs["keyframe_score"]), chance_draws=chance_draws)
