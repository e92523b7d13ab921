"""config.ema: an exponential moving average of the params, used by evaluation (MART's fine-tune
stage evaluates its EMA model), checked against the same average computed on the host."""
import jax
import numpy as np
import pytest

import toy_method
from jaxaffect import config_lib, steps
from jaxaffect import sharding as shd
from jaxaffect.errors import UserError


def _run(c, n):
  m = toy_method.ToyMethod(c)
  s = steps.build(c, m, shd.make_mesh(c.mesh, jax.devices()[:1]))
  it = m.train_iterator(seed=0, global_batch_size=16, process_index=0, process_count=1)
  params, states, batch = [], [], None
  with s.context():
    state = s.init_fn(jax.random.key(0))
    for _ in range(n):
      batch = steps.make_global_batch(next(it), s.batch_sharding)
      state, _ = s.train_step(state, batch, jax.random.key(0))
      params.append(jax.device_get(state["params"]))
      states.append(jax.device_get(state.get("ema_params")))
    preds = jax.device_get(s.eval_step(state, batch))
  return m, params, states, preds, jax.device_get(state), batch


def test_ema_copies_then_averages_with_the_ramp():
  c = toy_method.toy_config()
  c.ema.update(decay=0.9, ramp_steps=3.0, start_step=2)
  _, params, averaged, _, _, _ = _run(c, 5)
  want = None
  for i, p in enumerate(params):   # train step i (0-based) produced params[i]
    if i < 2:
      want = p
    else:
      d = 0.9 * (1.0 - np.exp(-(i + 1 - 2) / 3.0))
      want = jax.tree.map(lambda a, q: d * a + (1 - d) * q, want, p)
    for a, b in zip(jax.tree.leaves(averaged[i]), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  # the average really lags the params once averaging starts
  assert not np.allclose(jax.tree.leaves(averaged[-1])[0], jax.tree.leaves(params[-1])[0])


def test_eval_uses_the_average_and_off_means_no_extra_state():
  c = toy_method.toy_config()
  c.ema.decay = 0.5
  m, _, _, preds, state, batch = _run(c, 3)
  with_avg = m.predict(state["ema_params"], state["model_state"], batch)
  for k in preds:
    np.testing.assert_allclose(preds[k], jax.device_get(with_avg[k]), rtol=1e-5, atol=1e-6)
  off = toy_method.toy_config()
  assert "ema_params" not in _run(off, 1)[4]


def test_ema_settings_are_checked_and_old_runs_resume():
  c = toy_method.toy_config()
  c.ema.decay = 1.0
  with pytest.raises(UserError, match=r"config\.ema: decay must be in \[0, 1\)"):
    config_lib.check_common(c)
  # A run made before config.ema existed resumes when the key is at its default ...
  saved = config_lib.as_json_dict(toy_method.toy_config())
  del saved["ema"]
  assert config_lib.resume_differences(saved, toy_method.toy_config()) == {}
  # ... and is refused when it is not.
  changed = toy_method.toy_config()
  changed.ema.decay = 0.99
  assert config_lib.resume_differences(saved, changed) == {"ema.decay": ("<absent>", 0.99)}
