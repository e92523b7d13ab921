"""VAANet (Zhao et al., AAAI 2020): visual-audio attention + polarity-consistent cross-entropy.

Model: model.VAANet. Loss: PCCE, per-sample CE weighted by (1 + lambda) when the argmax
prediction's polarity differs from the label's (a hard, non-differentiable weight, as the
released code computes it). Metrics: top-1, per-class and mean-class accuracy, polarity
accuracy, confusion matrix. Data: VE-8-style datasets through the video_emotion builder.
Faithfulness flags, converters and the feature cache: README.md, section "VAANet at paper
fidelity".
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxaffect import config_lib
from jaxaffect import method as base
from jaxaffect.data import families
from jaxaffect.data import video_emotion
from jaxaffect.errors import UserError
from jaxaffect.methods.vaanet import model as vaanet_model
from jaxaffect.nn.losses import pcce_loss


class Method(base.Method):
  state_collections = ("batch_stats",)

  def build_model(self):
    m = self.config.model
    ds = self.config.dataset
    kwargs = dict(m.to_dict())
    # "frames": decoded snippets through the frozen backbone; "features": the backbone's cached
    # layer4 outputs (see jaxaffect/methods/vaanet/feature_cache.py), the backbone is not built.
    self.visual_input = kwargs.pop("visual_input", "frames")
    config_lib.check_choice("model.visual_input", self.visual_input, ("frames", "features"))
    # Trained from cached backbone features: a converted checkpoint's backbone is not used.
    self.init_from_ignore = ("visual_backbone",) if self.visual_input == "features" else ()
    # "pcce": polarity-consistent CE (the paper); "ce": plain cross-entropy (its ablation).
    config_lib.check_choice("loss.name", self.config.loss.get("name", "pcce"), ("pcce", "ce"))
    kwargs.setdefault("num_classes", int(ds.num_classes))
    kwargs.setdefault("num_segments", int(ds.num_segments))
    kwargs.setdefault("audio_segments", int(ds.audio_segments))
    return vaanet_model.VAANet(**kwargs)

  @property
  def polarity(self) -> np.ndarray:
    return np.asarray(self.config.dataset.polarity, np.int32)

  def backbone_feature_shape(self) -> tuple[int, ...]:
    """[T', H', W', C] of the frozen backbone's output for one snippet."""
    ds, m = self.config.dataset, self.config.model
    t, c = int(ds.snippet_len), int(ds.crop_size)
    net = vaanet_model.ResNet3D(int(m.visual_depth), int(m.visual_width),
                                conv1_t_size=int(m.get("conv1_t_size", 7)), conv_impl="native")
    x = jax.ShapeDtypeStruct((1, t, c, c, 3), jnp.float32)
    out = jax.eval_shape(lambda x: net.init_with_output(jax.random.key(0), x,
                                                        use_running_average=True)[0], x)
    return tuple(out.shape[1:])

  def example_batch(self, batch_size: int):
    ds = self.config.dataset
    s, t, c = int(ds.num_segments), int(ds.snippet_len), int(ds.crop_size)
    a, f, m = int(ds.audio_segments), int(ds.audio_frames_per_segment), int(ds.extraction.n_mfcc)
    if self.visual_input == "features":
      visual = {"video_features": np.zeros((batch_size, s) + self.backbone_feature_shape(),
                                           np.float32)}
    else:
      visual = {"video": np.zeros((batch_size, s, t, c, c, 3), np.uint8)}
    return {
        **visual,
        "audio": np.zeros((batch_size, a, f, m), np.float32),
        "label": np.zeros((batch_size,), np.int32),
        "polarity": np.zeros((batch_size,), np.int32),
    }

  def model_inputs(self, batch):
    visual = "video_features" if self.visual_input == "features" else "video"
    return {visual: batch[visual], "audio": batch["audio"]}

  def loss(self, params, model_state, batch, rng, step=None):
    del rng  # VAANet has no dropout
    out, new_state = self.model.apply({"params": params, **model_state},
                                      **self.model_inputs(batch), train=True,
                                      mutable=list(self.state_collections))
    logits = out["logits"]
    lc = self.config.loss
    lam = float(lc.pcce_lambda) if lc.name == "pcce" else 0.0
    loss, weights = pcce_loss(logits, batch["label"], jnp.asarray(self.polarity), lam)
    acc = jnp.mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32))
    return loss, ({"top1": acc, "pcce_weight": jnp.mean(weights)}, dict(new_state))

  def predict(self, params, model_state, batch):
    out = self.model.apply({"params": params, **model_state}, **self.model_inputs(batch),
                           train=False)
    return {"logits": out["logits"].astype(jnp.float32), "alpha": out["alpha"],
            "gamma": out["gamma"], "audio_gamma": out["audio_gamma"]}

  # ---- single videos (python -m jaxaffect.predict) -------------------------------------------
  def example_from_video(self, path):
    if self.visual_input != "frames":
      raise UserError("python -m jaxaffect.predict decodes frames; this model reads cached "
                      "backbone features (model.visual_input='features')")
    from jaxaffect.data import video_transforms  # deferred: grain + media stack
    record = video_emotion.decode_video(self.config.dataset, path)
    out = video_transforms.VideoAudioTransform(self.transform_config(), train=False)(record)
    return {"video": out["video"], "audio": out["audio"]}

  def prediction_figure(self, example, outputs, path, title):
    """The attention figure of `python -m jaxaffect.methods.vaanet.attention`."""
    from jaxaffect.methods.vaanet import attention  # deferred: matplotlib
    video = example["video"]
    seg, t_len, crop = video.shape[:3]
    alpha = np.asarray(outputs["alpha"], np.float64)
    grid = attention.feature_grid(self, t_len, crop, alpha.shape[-1])
    z = np.asarray(outputs["logits"], np.float64)
    probs = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    names = list(self.config.dataset.get("class_names", ()))
    m = self.model
    attention.plot(dict(
        video_path=title, workdir="", step="", frames=video[:, t_len // 2],
        frame_index=t_len // 2, snippet_len=t_len, alpha=alpha.reshape(seg, *grid), grid=grid,
        gamma=np.asarray(outputs["gamma"], np.float64),
        audio_gamma=np.asarray(outputs["audio_gamma"], np.float64) if m.use_audio else None,
        use_temporal_attention=bool(m.use_temporal_attention),
        use_spatial_attention=bool(m.use_spatial_attention), probs=probs,
        class_names=names if len(names) == len(probs) else [str(i) for i in range(len(probs))]),
        path)

  # ---- data ------------------------------------------------------------------------------------
  def _feature_cache(self, split):
    from jaxaffect.methods.vaanet import feature_cache  # deferred: grain + media stack
    if not self.config.dataset.get("feature_cache", ""):
      raise UserError("model.visual_input='features' needs --config.dataset.feature_cache=DIR "
                      "(built with python -m jaxaffect.methods.vaanet.feature_cache)")
    return feature_cache.CachedFeatures(self.config.dataset.feature_cache, split)

  def prepare_data(self):
    if self.visual_input == "features":
      return  # the cache was built beforehand (python -m jaxaffect.methods.vaanet.feature_cache)
    families.prepare(video_emotion.FAMILY, self.config.dataset)

  # Data modules are imported where used: model-only uses (summary, step benchmarks, converters)
  # need neither grain nor the media stack.
  def transform_config(self):
    from jaxaffect.data import video_transforms  # deferred: grain + media stack
    ds = self.config.dataset
    names = {f.name for f in dataclasses.fields(video_transforms.TransformConfig)}
    return video_transforms.TransformConfig.create({k: ds[k] for k in names if k in ds})

  def train_iterator(self, *, seed, global_batch_size, process_index, process_count):
    from jaxaffect.data import families  # deferred: grain + media stack
    from jaxaffect.data import pipeline
    from jaxaffect.data import video_emotion
    ds = self.config.dataset
    if self.visual_input == "features":
      from jaxaffect.methods.vaanet import feature_cache  # deferred: grain + media stack
      return feature_cache.train_iterator(
          self._feature_cache("train"), seed=seed, global_batch_size=global_batch_size,
          process_index=process_index, process_count=process_count)
    src = families.open_source(video_emotion.FAMILY, ds, "train")
    dataset = pipeline.train_dataset(
        src, transform_cfg=self.transform_config(), seed=seed, global_batch_size=global_batch_size,
        process_index=process_index, process_count=process_count,
        worker_count=int(ds.get("worker_count", 0)))
    return iter(dataset)

  def eval_batches(self, *, global_batch_size, process_index, process_count):
    from jaxaffect.data import families  # deferred: grain + media stack
    from jaxaffect.data import pipeline
    from jaxaffect.data import video_emotion
    ds = self.config.dataset
    if self.visual_input == "features":
      from jaxaffect.methods.vaanet import feature_cache  # deferred: grain + media stack
      return feature_cache.eval_batches(
          self._feature_cache(ds.get("eval_split", "test")), global_batch_size=global_batch_size,
          process_index=process_index, process_count=process_count)
    src = families.open_source(video_emotion.FAMILY, ds, ds.get("eval_split", "test"))
    return pipeline.eval_batches(src, transform_cfg=self.transform_config(),
                                 global_batch_size=global_batch_size,
                                 process_index=process_index, process_count=process_count)
