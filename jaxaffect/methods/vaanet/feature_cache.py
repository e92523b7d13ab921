"""Frozen-backbone feature cache for VAANet (the shared builder: jaxaffect/data/feature_cache.py).

    python -m jaxaffect.methods.vaanet.feature_cache --config configs/vaanet_ve8.py --out DIR
        [--views 4] [--batch_size 8] [--config.init_from=CONVERTED_BACKBONE] [--config.k=v ...]
    python -m jaxaffect.main --config configs/vaanet_ve8.py --workdir W
        --config.model.visual_input=features --config.dataset.feature_cache=DIR

Why, how it diverges from the released code, and the cache's layout: README.md, section
"VAANet at paper fidelity" (feature cache). VAANet caches the backbone's map
[S, T', H', W', C] per view, and the MFCC audio, label and polarity once per video (its audio
transform draws nothing at random).
"""
from __future__ import annotations

import dataclasses

from jaxaffect.data import feature_cache
from jaxaffect.data.feature_cache import eval_batches, train_iterator  # noqa: F401 (re-exported)

COMMAND = "python -m jaxaffect.methods.vaanet.feature_cache"


def cache_spec(config) -> feature_cache.CacheSpec:
  from jaxaffect.data import video_transforms  # deferred: grain + media stack
  ds = config.dataset
  names = {f.name for f in dataclasses.fields(video_transforms.TransformConfig)}
  tcfg = video_transforms.TransformConfig.create({k: ds[k] for k in names if k in ds})
  return feature_cache.CacheSpec(
      transform=lambda train: video_transforms.VideoAudioTransform(tcfg, train=train),
      pooled=False, per_view=(), per_example=("audio", "label", "polarity"), command=COMMAND,
      transform_meta=feature_cache.jsonable(tcfg))


def build_cache(config, out_dir: str, *, views: int = 4, batch_size: int = 8) -> None:
  """Backbone maps for the train split (`views` views) and the eval split (1)."""
  feature_cache.build_cache(config, out_dir, cache_spec(config), views=views,
                            batch_size=batch_size)


class CachedFeatures(feature_cache.CachedFeatures):
  """One split of a VAANet cache (errors name this module's CLI)."""

  def __init__(self, root: str, split: str):
    super().__init__(root, split, command=COMMAND)


def main(argv=None) -> None:
  feature_cache.main(build_cache, argv)


if __name__ == "__main__":
  main()
