"""The feature cache stores exactly what the frozen backbone computes: eval logits from cached
features equal eval logits from frames (running-statistics BN, same params)."""
import functools
import os

import jax
import numpy as np

from jaxaffect import config_lib
from jaxaffect import xla_options
from jaxaffect.methods.vaanet import feature_cache
from jaxaffect import method as methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cached_features_reproduce_frames_path(tmp_path, smoke_data_dir):
  c = config_lib.sibling_config(os.path.join(ROOT, "configs", "x.py"), "demo.py", "smoke")
  c.dataset.data_dir = smoke_data_dir
  c.model.backbone_bn = "running"
  feature_cache.build_cache(c, str(tmp_path / "cache"), views=1, batch_size=4)
  frames = methods.get_method(c)
  cf = c.copy_and_resolve_references()
  cf.model.visual_input = "features"
  cf.dataset.feature_cache = str(tmp_path / "cache")
  feats = methods.get_method(cf)

  # The cache used a freshly initialised backbone with the config's seed; use the same one.
  from jaxaffect.nn.resnet3d import ResNet3D
  m = c.model
  net = ResNet3D(m.visual_depth, m.visual_width, conv_impl=m.conv_impl)
  snippet = np.zeros((1, c.dataset.snippet_len, c.dataset.crop_size, c.dataset.crop_size, 3),
                     np.float32)
  # Jitted with the init options (op by op, these inits took most of this test's time); the
  # backbone's program is the builder's, so the compilation cache has it.
  opts = xla_options.for_init(jax.default_backend())
  backbone_vars = jax.jit(functools.partial(net.init, use_running_average=True),
                          compiler_options=opts)(jax.random.key(c.seed), snippet)
  variables = jax.jit(frames.init_variables, compiler_options=opts)(
      jax.random.key(1), frames.example_batch(2))
  variables = jax.tree.map(np.asarray, variables)
  variables["params"]["visual_backbone"] = jax.device_get(backbone_vars["params"])
  variables["batch_stats"]["visual_backbone"] = jax.device_get(backbone_vars["batch_stats"])
  feat_vars = {k: {n: v for n, v in col.items() if n != "visual_backbone"}
               for k, col in variables.items()}

  def logits(method, var, batch):
    state = {k: v for k, v in var.items() if k != "params"}
    batch = {k: batch[k] for k in ("video", "video_features", "audio") if k in batch}
    return np.asarray(jax.jit(method.predict)(var["params"], state, batch)["logits"])

  got, want = [], []
  for fb, cb in zip(frames.eval_batches(global_batch_size=4, process_index=0, process_count=1),
                    feats.eval_batches(global_batch_size=4, process_index=0, process_count=1)):
    np.testing.assert_array_equal(fb["label"], cb["label"])
    np.testing.assert_array_equal(fb["_mask"], cb["_mask"])
    want.append(logits(frames, variables, fb))
    got.append(logits(feats, feat_vars, cb))
  np.testing.assert_allclose(np.concatenate(got), np.concatenate(want), atol=2e-2, rtol=2e-2)
  assert len(got) == 2  # 8 test examples in batches of 4
