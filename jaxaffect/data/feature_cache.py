"""Frozen-backbone feature cache, shared by the methods that run a frozen 3D ResNet per
snippet (VAANet, CTEN). Each method has a thin CLI that supplies its example transform:

    python -m jaxaffect.methods.vaanet.feature_cache --config ... --out DIR [--views 4]
    python -m jaxaffect.methods.cten.feature_cache --config ... --out DIR [--batch_size 8]

Per split, DIR/<split>/ holds features.npy (float16 [V, N, ...]: the backbone's map
[S, T', H', W', C], or its mean over T', H', W' [S, C] when pooled), one .npy per stored batch
key (per view: [V, N, ...]; once per example: [N, ...]), key.npy (the builder keys, when the
transform keeps them) and meta.json, written last (tmp + os.replace): a split without it is
incomplete and the same command resumes it view by view (views_done.json). meta "per_view"
lists the per-view files; a cache without it (VAANet's first layout) has only the features
per view. The backbone runs on its running BatchNorm statistics: batch statistics depend on
the batch and cannot be cached (README, "VAANet at paper fidelity" and "CTEN").
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
from typing import Any, Callable

import grain
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxaffect import converted_checkpoint as convert_store
from jaxaffect import xla_options
from jaxaffect.data import families, video_emotion
from jaxaffect.errors import PathNotFound, UserError
from jaxaffect.nn.resnet3d import ResNet3D, normalize_video

log = logging.getLogger(__name__)

FEATURE_DTYPE = np.float16
FEATURES = "features"  # the file; the batch key is "video_features"
_LEGACY_PER_EXAMPLE = ("audio", "label", "polarity")  # VAANet's first layout


@dataclasses.dataclass(frozen=True)
class CacheSpec:
  """What a method caches. `transform(train)`: the grain RandomMap that makes one example
  (with "video") from a record; `pooled`: store the mean over T', H', W' ([S, C]) instead of
  the map; `per_view`: batch keys drawn anew per view (CTEN's random fbank windows), stored
  [V, N, ...] beside the features; `per_example`: keys stored once from view 0 (absent ones
  skipped); `command`: the CLI that builds it (named in errors)."""
  transform: Callable[[bool], grain.transforms.RandomMap]
  pooled: bool
  per_view: tuple[str, ...]
  per_example: tuple[str, ...]
  command: str
  transform_meta: dict = dataclasses.field(default_factory=dict)
  family: families.DatasetFamily = video_emotion.FAMILY


def jsonable(transform_config) -> dict:
  """A transform config's fields for meta.json (tuples as lists)."""
  return {k: (list(v) if isinstance(v, tuple) else v)
          for k, v in dataclasses.asdict(transform_config).items()}


def split_dir(root: str, split: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(root)), split)


def backbone(config) -> tuple[ResNet3D, dict[str, Any]]:
  """The frozen visual backbone of config.model and its variables: from the converted
  checkpoint(s) in config.init_from that hold params/visual_backbone (with its BatchNorm
  statistics), else a fresh init with config.seed."""
  m, ds = config.model, config.dataset
  net = ResNet3D(int(m.visual_depth), int(m.visual_width),
                 conv1_t_size=int(m.get("conv1_t_size", 7)), conv_impl=m.conv_impl)
  snippet = (1, int(ds.snippet_len), int(ds.crop_size), int(ds.crop_size), 3)
  # Jitted: one compile (kept by a persistent compilation cache) instead of every op's own,
  # with the train step's init options (LLVM O1 on CPU).
  init = jax.jit(functools.partial(net.init, use_running_average=True),
                 compiler_options=xla_options.for_init(jax.default_backend()))
  variables = init(jax.random.key(int(config.seed)), jnp.zeros(snippet, jnp.float32))
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
  return net, variables


def _other_subtrees(meta) -> tuple[str, ...]:
  names = {s.split("/")[1] for s in (meta or {}).get("subtrees") or [] if "/" in s}
  return tuple(sorted(names - {"visual_backbone"}))


def _open(path: str, shape: tuple[int, ...], dtype) -> np.memmap:
  """The array at `path`, created on first use; reopened (r+) when resuming."""
  if not os.path.exists(path):
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
  arr = np.lib.format.open_memmap(path, mode="r+")
  if arr.shape != shape or arr.dtype != np.dtype(dtype):
    raise UserError(f"feature cache: {path} holds {arr.dtype} {arr.shape}, this build writes "
                    f"{np.dtype(dtype)} {shape} (other --views or settings); delete "
                    f"{os.path.dirname(path)} to rebuild it")
  return arr


def build_cache(config, out_dir: str, spec: CacheSpec, *, views: int = 4,
                batch_size: int = 8) -> None:
  """Backbone outputs for the train split (`views` views) and the eval split (1)."""
  if config.model.get("visual_input", "frames") != "frames":
    raise UserError("build the cache with config.model.visual_input='frames'")
  families.prepare(spec.family, config.dataset)
  m, ds = config.model, config.dataset
  net, variables = backbone(config)

  @functools.partial(jax.jit, compiler_options=xla_options.for_step(jax.default_backend()))
  def features(video):  # [b, S, T, H, W, 3] uint8 -> [b, S, T', H', W', C] or [b, S, C]
    b, s = video.shape[:2]
    x = normalize_video(video, m.normalization).reshape((b * s,) + video.shape[2:])
    y = net.apply(variables, x, use_running_average=True)
    if spec.pooled:  # as CTEN.encode_visual: the mean in float32 (Hara's AvgPool3d)
      y = jnp.mean(y.astype(jnp.float32), axis=(1, 2, 3))
    return y.reshape((b, s) + y.shape[1:]).astype(FEATURE_DTYPE)

  for split, n_views, train in (("train", views, True),
                                (ds.get("eval_split", "test"), 1, False)):
    d = split_dir(out_dir, split)
    if os.path.exists(os.path.join(d, "meta.json")):
      log.info("feature cache %s: complete, skipped", d)
      continue
    src = families.open_source(spec.family, ds, split)
    n = len(src)
    os.makedirs(d, exist_ok=True)
    transform = spec.transform(train)
    progress = os.path.join(d, "views_done.json")
    done = _read_json(progress) if os.path.exists(progress) else []
    for view in range(n_views):
      if view in done:
        continue
      data = (grain.MapDataset.source(src).seed(int(config.seed) * 1000 + view)
              .random_map(transform).batch(batch_size))
      pos, keys = 0, []
      for batch in tqdm(data, desc=f"{split} view {view + 1}/{n_views}", unit="batch",
                        file=sys.stderr):
        k = batch["video"].shape[0]
        per_view = {FEATURES: np.asarray(features(batch["video"])),
                    **{name: batch[name] for name in spec.per_view}}
        for name, x in per_view.items():
          arr = _open(os.path.join(d, f"{name}.npy"), (n_views, n) + x.shape[1:], x.dtype)
          arr[view, pos:pos + k] = x
          arr.flush()
        if view == 0:
          for name in spec.per_example:
            if name in batch:
              arr = _open(os.path.join(d, f"{name}.npy"), (n,) + batch[name].shape[1:],
                          batch[name].dtype)
              arr[pos:pos + k] = batch[name]
              arr.flush()
          if "key" in batch:
            keys.extend(str(x.decode() if isinstance(x, bytes) else x)
                        for x in np.asarray(batch["key"]).tolist())
        pos += k
      if view == 0 and keys:
        np.save(os.path.join(d, "key.npy"), np.asarray(keys, dtype=str))
      done.append(view)
      _write_json(progress, done)
    # The per-example keys view 0 found in its batches (in this run or an interrupted one).
    stored = {name for name in spec.per_example if os.path.exists(os.path.join(d, f"{name}.npy"))}
    shape = np.load(os.path.join(d, f"{FEATURES}.npy"), mmap_mode="r").shape
    meta = {"views": n_views, "num_examples": n, "feature_shape": list(shape[2:]),
            "pooled": bool(spec.pooled), "per_view": [FEATURES, *spec.per_view],
            "per_example": sorted(stored),
            "backbone": {"depth": int(m.visual_depth), "width": int(m.visual_width),
                         "normalization": m.normalization, "bn": "running",
                         "init_from": config.get("init_from", "")},
            "transform": spec.transform_meta}
    _write_json(os.path.join(d, "meta.json"), meta)
    log.info("feature cache %s: %d examples x %d views", d, n, n_views)


def _write_json(path: str, value) -> None:
  """Whole or not at all (a kill mid-write leaves the previous file)."""
  with open(path + ".tmp", "w") as fh:
    json.dump(value, fh, indent=2)
  os.replace(path + ".tmp", path)


def _read_json(path: str):
  try:
    with open(path) as fh:
      return json.load(fh)
  except (OSError, ValueError) as e:
    raise UserError(f"feature cache: {path} is unreadable ({e}); delete it to rebuild "
                    f"that split") from None


class CachedFeatures:
  """Random access to one split of a cache; item i of view v. Picklable (opens lazily)."""

  def __init__(self, root: str, split: str, *, command: str = "the method's feature_cache CLI"):
    self.dir = split_dir(root, split)
    meta = os.path.join(self.dir, "meta.json")
    if not os.path.exists(meta):
      what = ("is incomplete (no meta.json); rerun" if os.path.isdir(self.dir) else
              "does not exist; build it with")
      raise PathNotFound(f"feature cache: {self.dir} {what} {command}")
    self.meta = _read_json(meta)
    self.per_view = tuple(self.meta.get("per_view", (FEATURES,)))
    self._arrays: dict[str, Any] | None = None

  def _load(self) -> dict[str, Any]:
    if self._arrays is None:
      names = self.per_view + tuple(self.meta.get("per_example", _LEGACY_PER_EXAMPLE))
      self._arrays = {k: np.load(os.path.join(self.dir, f"{k}.npy"), mmap_mode="r")
                      for k in names if os.path.exists(os.path.join(self.dir, f"{k}.npy"))}
    return self._arrays

  def __getstate__(self):
    return {**self.__dict__, "_arrays": None}

  @property
  def views(self) -> int:
    return int(self.meta["views"])

  @property
  def feature_shape(self) -> tuple[int, ...]:
    return tuple(self.meta["feature_shape"])

  @property
  def pooled(self) -> bool:
    return bool(self.meta.get("pooled", False))  # VAANet's first layout: maps

  def __len__(self) -> int:
    return int(self.meta["num_examples"])

  def example(self, index: int, view: int) -> dict[str, np.ndarray]:
    out = {}
    for name, arr in self._load().items():
      x = np.asarray(arr[view, index] if name in self.per_view else arr[index])
      if name == FEATURES:
        out["video_features"] = x.astype(np.float32)
      else:
        out[name] = x.astype(np.int32) if name in ("label", "polarity") else x
    return out

  def keys(self, indices) -> list[str]:
    """The builder keys ("Class/name") of the examples at `indices`."""
    path = os.path.join(self.dir, "key.npy")
    if not os.path.exists(path):
      raise UserError(f"feature cache {self.dir} stores no example keys (built by a CLI whose "
                      "transform drops them)")
    keys = np.load(path)
    return [str(keys[int(i)]) for i in indices]

  def __getitem__(self, index: int) -> int:
    return index  # views are picked by the pipeline's random map


class _PickView(grain.transforms.RandomMap):
  """One of the pre-sampled views at random (all per-view keys from the same one)."""

  def __init__(self, cache: CachedFeatures):
    self.cache = cache

  def random_map(self, index, rng: np.random.Generator):
    return self.cache.example(int(index), int(rng.integers(self.cache.views)))


def train_iterator(cache: CachedFeatures, *, seed: int, global_batch_size: int,
                   process_index: int, process_count: int):
  """Same topology rule as the frames pipeline: global shuffle, then every P-th batch."""
  ds = (grain.MapDataset.source(cache).seed(seed).shuffle().repeat(None)
        .random_map(_PickView(cache))
        .batch(global_batch_size // process_count, drop_remainder=True)
        [process_index::process_count])
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))


def eval_batches(cache: CachedFeatures, *, global_batch_size: int, process_index: int,
                 process_count: int, index: bool = False):
  """Every example once (view 0), the last global batch padded with example 0 and masked;
  `index` adds each example's position in the split (int32; a keyframe evaluator's lookup)."""
  n = len(cache)
  local = global_batch_size // process_count
  total = -(-n // global_batch_size) * global_batch_size
  for start in range(0, total, global_batch_size):
    idx = np.arange(start, start + global_batch_size)[process_index * local:
                                                       (process_index + 1) * local]
    real = idx < n
    rows = np.where(real, idx, 0)
    items = [cache.example(int(i), 0) for i in rows]
    batch = {k: np.stack([it[k] for it in items]) for k in items[0]}
    if index:
      batch["index"] = rows.astype(np.int32)
    batch["_mask"] = real
    yield batch


def main(build: Callable[..., None], argv=None) -> None:
  """A method's cache CLI: --config (+ --config.a.b=v overrides), --out, --views,
  --batch_size; `build(config, out, views=, batch_size=)`."""
  from absl import app, flags

  from jaxaffect import config_lib

  config_flag = flags.DEFINE_string("config", None, "Config file (path[:arg]); override keys "
                                    "with --config.a.b=value.", required=True)
  overrides: list[str] = []
  out = flags.DEFINE_string("out", None, "Cache directory.", required=True)
  views = flags.DEFINE_integer("views", 4, "Pre-sampled training views per video.")
  batch = flags.DEFINE_integer("batch_size", 8, "Videos per backbone call.")

  def run(_):
    logging.getLogger("jaxaffect").setLevel(logging.INFO)
    try:
      config = config_lib.load(config_flag.value, overrides)
      build(config, out.value, views=views.value, batch_size=batch.value)
    except UserError as e:
      print(f"error: {str(e).splitlines()[0]}", file=sys.stderr, flush=True)
      raise SystemExit(1) from None

  app.run(run, argv=argv, flags_parser=config_lib.absl_flags_parser(overrides))
