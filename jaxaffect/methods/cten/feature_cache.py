"""CTEN's frozen-backbone feature cache (the shared builder: jaxaffect/data/feature_cache.py).

    python -m jaxaffect.methods.cten.feature_cache --config configs/cten_ve8.py --out DIR
        [--views 4] [--batch_size 8] [--config.init_from=CONVERTED_BACKBONE] [--config.k=v ...]
    python -m jaxaffect.main --config configs/cten_ve8.py --workdir W
        --config.model.visual_input=features --config.dataset.feature_cache=DIR

Per view it stores the backbone's output pooled per segment ([S, C], the mean over T', H', W'
as CTEN.encode_visual) and the fbank windows (`audio` [S, F, M]: drawn at random per training
view, so they belong to the view); label and polarity once; the eval split's builder keys (the
keyframe evaluator's lookup). Why and how it diverges from the released code: README, "CTEN"
(cached backbone features): running BatchNorm statistics instead of the release's train-mode
BatchNorm of the frozen backbone.
"""
from __future__ import annotations

from jaxaffect.data import feature_cache
from jaxaffect.errors import UserError

COMMAND = "python -m jaxaffect.methods.cten.feature_cache"


def cache_spec(config) -> feature_cache.CacheSpec:
  from jaxaffect.methods.cten import data  # deferred: grain + media stack
  cfg = data.data_config(config)
  use_audio = bool(config.model.get("use_audio", True))
  return feature_cache.CacheSpec(
      transform=lambda train: data.CtenTransform(cfg, train=train, keep_key=True),
      pooled=True, per_view=("audio",) if use_audio else (), per_example=("label", "polarity"),
      command=COMMAND,
      transform_meta={**feature_cache.jsonable(cfg.video), "audio_frames": cfg.audio_frames})


def build_cache(config, out_dir: str, *, views: int = 4, batch_size: int = 8) -> None:
  """Pooled backbone features (+ fbank windows) for the train split (`views` views) and the
  eval split (1)."""
  feature_cache.build_cache(config, out_dir, cache_spec(config), views=views,
                            batch_size=batch_size)


def open_cache(config, split: str, visual_dim: int) -> feature_cache.CachedFeatures:
  """The cache of config.dataset.feature_cache for `split`, checked against the config and the
  model's segment-feature width `visual_dim` (CTEN.visual_dim)."""
  ds = config.dataset
  if not ds.get("feature_cache", ""):
    raise UserError("model.visual_input='features' needs --config.dataset.feature_cache=DIR "
                    f"(built with {COMMAND})")
  cache = feature_cache.CachedFeatures(ds.feature_cache, split, command=COMMAND)
  if not cache.pooled:
    raise UserError(f"feature cache {cache.dir} holds backbone maps "
                    f"{cache.feature_shape}, CTEN reads pooled [S, C] features (a VAANet "
                    f"cache?); build one with {COMMAND}")
  # feature_shape is [S, C]: named by the config keys that set them.
  want = {"dataset.num_segments": int(ds.num_segments),
          "C (model.visual_depth/visual_width)": int(visual_dim)}
  got = dict(zip(want, cache.feature_shape))
  diff = [f"{k}: cache {got.get(k)}, config {v}" for k, v in want.items() if got.get(k) != v]
  if diff:
    raise UserError(f"feature cache {cache.dir} does not match the config ({'; '.join(diff)}); "
                    f"rebuild it with {COMMAND} and this config")
  if bool(config.model.get("use_audio", True)) and "audio" not in cache.per_view:
    raise UserError(f"feature cache {cache.dir} holds no audio (built with "
                    "model.use_audio=False); this config reads audio")
  return cache


def main(argv=None) -> None:
  feature_cache.main(build_cache, argv)


if __name__ == "__main__":
  main()
