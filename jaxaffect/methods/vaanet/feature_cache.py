"""Frozen-backbone feature cache for VAANet-style models.

    python -m jaxaffect.methods.vaanet.feature_cache --config configs/vaanet_ve8.py --out DIR
        [--views 4] [--batch_size 8] [--config.init_from=CONVERTED_BACKBONE] [--config.k=v ...]
    python -m jaxaffect.main --config configs/vaanet_ve8.py --workdir W
        --config.model.visual_input=features --config.dataset.feature_cache=DIR

Why, how it diverges from the released code, and the cache's layout: README.md, section
"VAANet at paper fidelity" (feature cache). meta.json is written last, so a cache without it is
incomplete and is resumed view by view.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import grain
import jax
import numpy as np
from tqdm import tqdm

from jaxaffect import config_lib
from jaxaffect import converted_checkpoint as convert_store
from jaxaffect.data import families, video_emotion, video_transforms
from jaxaffect.errors import PathNotFound, UserError
from jaxaffect.methods.vaanet.model import normalize_video
from jaxaffect.nn.resnet3d import ResNet3D

log = logging.getLogger(__name__)

_FEATURE_DTYPE = np.float16


def _split_dir(root: str, split: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(root)), split)


def build_cache(config, out_dir: str, *, views: int = 4, batch_size: int = 8) -> None:
  """Extracts backbone features for the train split (`views` views) and the eval split (1)."""
  if config.model.get("visual_input", "frames") != "frames":
    raise UserError("build the cache with config.model.visual_input='frames'")
  families.prepare(video_emotion.FAMILY, config.dataset)
  m = config.model
  net = ResNet3D(int(m.visual_depth), int(m.visual_width),
                 conv1_t_size=int(m.get("conv1_t_size", 7)), conv_impl=m.conv_impl)
  ds = config.dataset
  snippet = (1, int(ds.snippet_len), int(ds.crop_size), int(ds.crop_size), 3)
  variables = net.init(jax.random.key(int(config.seed)), np.zeros(snippet, np.float32),
                       use_running_average=True)
  paths = [p.strip() for p in str(config.get("init_from", "")).split(",") if p.strip()]
  # The converted checkpoint(s) covering the visual backbone (others, e.g. audio, are skipped).
  paths = [p for p in paths if "params/visual_backbone" in
           ((convert_store.read_meta(p) or {}).get("subtrees") or [])]
  for path in paths:
    params, state = convert_store.restore_converted(
        path, {"visual_backbone": variables["params"]},
        {"batch_stats": {"visual_backbone": variables["batch_stats"]}},
        ignore_subtrees=_other_subtrees(convert_store.read_meta(path)))
    variables = {"params": params["visual_backbone"],
                 "batch_stats": state["batch_stats"]["visual_backbone"]}
    log.info("feature cache: backbone and its BatchNorm statistics from %s", path)
  if not paths:
    log.warning("feature cache: no converted visual backbone in config.init_from; the "
                "backbone is randomly initialised")

  @jax.jit
  def backbone(video):  # [b, S, T, H, W, 3] uint8 -> [b, S, T', H', W', C]
    b, s = video.shape[:2]
    x = normalize_video(video, m.normalization).reshape((b * s,) + video.shape[2:])
    y = net.apply(variables, x, use_running_average=True)
    return y.reshape((b, s) + y.shape[1:]).astype(_FEATURE_DTYPE)

  names = {f.name for f in __import__("dataclasses").fields(video_transforms.TransformConfig)}
  tcfg = video_transforms.TransformConfig.create({k: ds[k] for k in names if k in ds})
  for split, n_views, train in (("train", views, True),
                                (ds.get("eval_split", "test"), 1, False)):
    src = families.open_source(video_emotion.FAMILY, ds, split)
    n = len(src)
    d = _split_dir(out_dir, split)
    if os.path.exists(os.path.join(d, "meta.json")):
      log.info("feature cache %s: complete, skipped", d)
      continue
    os.makedirs(d, exist_ok=True)
    transform = video_transforms.VideoAudioTransform(tcfg, train=train)
    feats = None
    progress = os.path.join(d, "views_done.json")
    done = json.load(open(progress)) if os.path.exists(progress) else []
    for view in range(n_views):
      if view in done:
        continue
      data = (grain.MapDataset.source(src).seed(int(config.seed) * 1000 + view)
              .random_map(transform).batch(batch_size))
      pos = 0
      for batch in tqdm(data, desc=f"{split} view {view + 1}/{n_views}", unit="batch",
                        file=sys.stderr):
        f = np.asarray(backbone(batch["video"]))
        if feats is None:
          shape = (n_views, n) + f.shape[1:]
          path = os.path.join(d, "features.npy")
          feats = (np.lib.format.open_memmap(path, mode="r+") if os.path.exists(path) else
                   np.lib.format.open_memmap(path, mode="w+", dtype=_FEATURE_DTYPE, shape=shape))
        k = f.shape[0]
        feats[view, pos:pos + k] = f
        if view == 0:
          _store(d, "audio", batch["audio"], pos, n)
          _store(d, "label", batch["label"], pos, n)
          if "polarity" in batch:
            _store(d, "polarity", batch["polarity"], pos, n)
        pos += k
      feats.flush()
      done.append(view)
      json.dump(done, open(progress, "w"))
    meta = {"views": n_views, "num_examples": n, "feature_shape": list(feats.shape[2:]),
            "backbone": {"depth": int(m.visual_depth), "width": int(m.visual_width),
                         "normalization": m.normalization, "bn": "running",
                         "init_from": config.get("init_from", "")},
            "transform": {k: (list(v) if isinstance(v, tuple) else v)
                          for k, v in tcfg.__dict__.items()}}
    with open(os.path.join(d, "meta.json.tmp"), "w") as fh:
      json.dump(meta, fh, indent=2)
    os.replace(os.path.join(d, "meta.json.tmp"), os.path.join(d, "meta.json"))
    log.info("feature cache %s: %d examples x %d views", d, n, n_views)


def _other_subtrees(meta) -> tuple[str, ...]:
  names = {s.split("/")[1] for s in (meta or {}).get("subtrees") or [] if "/" in s}
  return tuple(sorted(names - {"visual_backbone"}))


def _store(d: str, name: str, values: np.ndarray, pos: int, n: int) -> None:
  path = os.path.join(d, f"{name}.npy")
  if not os.path.exists(path):
    np.lib.format.open_memmap(path, mode="w+", dtype=values.dtype, shape=(n,) + values.shape[1:])
  arr = np.lib.format.open_memmap(path, mode="r+")
  arr[pos:pos + values.shape[0]] = values
  arr.flush()


class CachedFeatures:
  """Random access to one split of a cache; item i of view v. Picklable (opens lazily)."""

  def __init__(self, root: str, split: str):
    self.dir = _split_dir(root, split)
    meta = os.path.join(self.dir, "meta.json")
    if not os.path.exists(meta):
      raise PathNotFound(f"feature cache: {meta} does not exist (build the cache with "
                         "python -m jaxaffect.methods.vaanet.feature_cache)")
    with open(meta) as f:
      self.meta = json.load(f)
    self._arrays: dict[str, Any] | None = None

  def _load(self) -> dict[str, Any]:
    if self._arrays is None:
      self._arrays = {k: np.load(os.path.join(self.dir, f"{k}.npy"), mmap_mode="r")
                      for k in ("features", "audio", "label", "polarity")
                      if os.path.exists(os.path.join(self.dir, f"{k}.npy"))}
    return self._arrays

  def __getstate__(self):
    return {"dir": self.dir, "meta": self.meta, "_arrays": None}

  @property
  def views(self) -> int:
    return int(self.meta["views"])

  def __len__(self) -> int:
    return int(self.meta["num_examples"])

  def example(self, index: int, view: int) -> dict[str, np.ndarray]:
    a = self._load()
    out = {"video_features": np.asarray(a["features"][view, index], np.float32),
           "audio": np.asarray(a["audio"][index]),
           "label": np.asarray(a["label"][index], np.int32)}
    if "polarity" in a:
      out["polarity"] = np.asarray(a["polarity"][index], np.int32)
    return out

  def __getitem__(self, index: int) -> int:
    return index  # views are picked by the pipeline's random map


def train_iterator(cache: CachedFeatures, *, seed: int, global_batch_size: int,
                   process_index: int, process_count: int):
  """Same topology rule as the frames pipeline: global shuffle, then every P-th batch."""

  class _PickView(grain.transforms.RandomMap):

    def random_map(self, index, rng: np.random.Generator):
      return cache.example(int(index), int(rng.integers(cache.views)))

  ds = (grain.MapDataset.source(cache).seed(seed).shuffle().repeat(None)
        .random_map(_PickView())
        .batch(global_batch_size // process_count, drop_remainder=True)
        [process_index::process_count])
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))


def eval_batches(cache: CachedFeatures, *, global_batch_size: int, process_index: int,
                 process_count: int):
  """Every example once, the last global batch padded with example 0 and masked."""
  n = len(cache)
  local = global_batch_size // process_count
  total = -(-n // global_batch_size) * global_batch_size
  for start in range(0, total, global_batch_size):
    idx = np.arange(start, start + global_batch_size)[process_index * local:
                                                       (process_index + 1) * local]
    real = idx < n
    items = [cache.example(int(i) if r else 0, 0) for i, r in zip(idx, real)]
    batch = {k: np.stack([it[k] for it in items]) for k in items[0]}
    batch["_mask"] = real
    yield batch


def main(argv=None) -> None:
  from absl import app, flags

  config_flag = flags.DEFINE_string("config", None, "Config file (path[:arg]); override keys "
                                    "with --config.a.b=value.", required=True)
  overrides: list[str] = []
  out = flags.DEFINE_string("out", None, "Cache directory.", required=True)
  views = flags.DEFINE_integer("views", 4, "Pre-sampled training views per video.")
  batch = flags.DEFINE_integer("batch_size", 8, "Videos per backbone call.")

  def run(_):
    logging.getLogger("jaxaffect").setLevel(logging.INFO)
    config = config_lib.load(config_flag.value, overrides)
    build_cache(config, out.value, views=views.value, batch_size=batch.value)

  app.run(run, argv=argv, flags_parser=config_lib.absl_flags_parser(overrides))


if __name__ == "__main__":
  main()
