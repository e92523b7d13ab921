"""Trust: one run per workdir, verified checkpoints with fallback, resume config checks, and
sharding-independent checksums (issue #9)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toy_method
from jaxaffect import checksums
from jaxaffect import sharding as shd
from jaxaffect import trainer
from jaxaffect import workdir_lock
from jaxaffect.errors import NoIntactCheckpoint, UserError, WorkdirInUse
from cpu_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
  env["XLA_FLAGS"] = xla_flags(8)
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _config(total=8, every=2):
  c = toy_method.toy_config()
  c.method = "toy_method:ToyMethod"
  c.total_steps, c.checkpoint.every_steps, c.checkpoint.keep, c.log_every_steps = total, every, 3, 1
  return c


def _records(workdir):
  """metrics.jsonl without wall-clock fields."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(l).items() if "per_sec" not in k} for l in f]


def _results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def _cli(workdir, *args):
  return [sys.executable, "-m", "jaxaffect.main", "--config", "tests/configs/toy.py",
          "--workdir", workdir, "--config.total_steps=8", *args]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted toy run (8 steps, a checkpoint every 2: keeps 4, 6, 8), written by
  another process as a real workdir is (no reader caches shared with the tests)."""
  wd = str(tmp_path_factory.mktemp("reference"))
  r = subprocess.run(_cli(wd), cwd=ROOT, env=_env(), capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  return wd


# ---- checksums ---------------------------------------------------------------------------------

def test_checksums_are_mesh_independent_and_see_one_bit():
  x = np.random.default_rng(0).standard_normal((16, 24)).astype(np.float32)
  tree = {"f32": x, "bf16": x.astype(jnp.bfloat16), "i32": np.arange(7, dtype=np.int32),
          "bool": x > 0, "scalar": np.float32(3.0)}
  one = checksums.of_arrays(jax.device_put(tree, jax.devices()[0]))
  mesh = shd.make_mesh(dict(data=2, fsdp=2, tensor=2))
  sharded = dict(tree, f32=jax.device_put(
      x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), "tensor"))))
  assert checksums.of_arrays(sharded) == one
  replicated = jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  assert checksums.of_arrays(replicated) == one  # one replica of each shard counts
  wide = {"f64": np.arange(5, dtype=np.float64), "u8": np.arange(9, dtype=np.uint8)}
  got = checksums.of_arrays(wide)
  words = np.arange(5, dtype=np.float64).view(np.uint32)
  assert got["['f64']"]["sum"][0] == int(words.sum()) % 2**32
  flipped = x.copy()
  flipped.view(np.uint32)[5, 7] ^= 1 << 13
  got = checksums.of_arrays(dict(tree, f32=flipped))
  assert got["['f32']"]["sum"][0] != one["['f32']"]["sum"][0]
  assert got["['f32']"]["sum"][1] != one["['f32']"]["sum"][1]
  swapped = x.copy()
  swapped[[0, 1]] = swapped[[1, 0]]
  got = checksums.of_arrays(dict(tree, f32=swapped))
  assert got["['f32']"]["sum"][0] == one["['f32']"]["sum"][0]  # same words, other places
  assert got["['f32']"]["sum"][1] != one["['f32']"]["sum"][1]


def test_a_flipped_bit_the_reader_misses_is_caught_by_the_checksums(tmp_path):
  """One bit flipped inside raw array bytes reads back silently; the checksum names it."""
  from jaxaffect import checkpointing
  # Random bits: incompressible, so the stored chunk holds the raw bytes.
  pattern = np.random.default_rng(0).integers(0, 2**32, 4096, dtype=np.uint32).view(np.float32)
  state = {"params": {"w": pattern, "b": np.arange(8, dtype=np.float32)}}
  ck = checkpointing.Checkpointer(str(tmp_path / "ck"), every_steps=1, keep=2)
  ck.save(1, jax.device_put(state))
  ck.close()
  needle = pattern[:64].tobytes()
  hits = []
  for d, _, files in os.walk(tmp_path / "ck" / "1" / "state"):
    for f in files:
      data = open(os.path.join(d, f), "rb").read()
      if needle in data:
        hits.append((os.path.join(d, f), data.index(needle) + 4 * 1000 + 2))
  assert hits, "the array bytes are not stored raw; pick another corruption"
  for path, offset in hits:
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x04
    open(path, "wb").write(bytes(data))
  abstract = jax.eval_shape(lambda: jax.device_put(state))
  ck = checkpointing.Checkpointer(str(tmp_path / "ck"), every_steps=1, keep=2)
  with pytest.raises(UserError, match=r"step 1 .*unusable \(checksum mismatch in "
                                      r"\['params'\]\['w'\]\)"):
    ck.restore(1, abstract)
  ck.close()


# ---- corrupt checkpoints: warn, fall back to the newest intact one, same numbers --------------

def _data_files(step_dir):
  """The largest data file of each OCDBT folder of the step's arrays: the merged root
  (state/d) and process 0's (state/ocdbt.process_0/d). Which of them holds the arrays depends
  on the layout orbax chose, so each corruption is applied to both."""
  out = []
  for sub in ("d", os.path.join("ocdbt.process_0", "d")):
    d = os.path.join(step_dir, "state", sub)
    if os.path.isdir(d) and os.listdir(d):
      out.append(max((os.path.join(d, f) for f in os.listdir(d)), key=os.path.getsize))
  return out


def _flip_one_bit(path):
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x10
  open(path, "wb").write(bytes(data))


def _each(fn):
  return lambda step: [fn(p) for p in _data_files(step)]


CORRUPTIONS = {
    "truncated": _each(lambda p: os.truncate(p, os.path.getsize(p) // 2)),
    "bit_flipped": _each(_flip_one_bit),
    "file_missing": _each(os.remove),
    "no_checksums": lambda step: shutil.rmtree(os.path.join(step, "integrity")),
    "iterator_edited": lambda step: open(os.path.join(
        step, "data_iter", "process_0-of-1.json"), "w").write('{"next_index": 3}'),
}


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_corrupt_newest_checkpoint_falls_back_with_same_numbers(tmp_path, reference, how,
                                                                caplog):
  wd = str(tmp_path / "run")
  shutil.copytree(reference, wd)
  # A run killed after its step-6 checkpoint: no step 8, no results, metrics up to step 8.
  shutil.rmtree(os.path.join(wd, "checkpoints", "8"))
  os.remove(os.path.join(wd, "results.json"))
  CORRUPTIONS[how](os.path.join(wd, "checkpoints", "6"))
  with caplog.at_level("WARNING", logger="jaxaffect"):
    results = trainer.train_and_evaluate(_config(), wd)
  warned = [r.getMessage() for r in caplog.records if "step 6" in r.getMessage()]
  assert warned and "unusable" in warned[0], caplog.text
  assert any("resuming from step 4" in r.getMessage() for r in caplog.records)
  assert os.path.isdir(os.path.join(wd, "checkpoints_unusable", "6"))  # moved, not deleted
  assert _records(wd) == _records(reference)
  assert results == {k: v for k, v in _results(reference).items() if k != "step"}
  assert _results(wd) == _results(reference)


def test_no_intact_checkpoint_is_one_line_and_moves_nothing(tmp_path, reference):
  wd = str(tmp_path / "run")
  shutil.copytree(reference, wd)
  os.remove(os.path.join(wd, "results.json"))
  for step in ("4", "6", "8"):
    CORRUPTIONS["bit_flipped"](os.path.join(wd, "checkpoints", step))
  before = sorted(os.listdir(os.path.join(wd, "checkpoints")))
  with pytest.raises(NoIntactCheckpoint, match=r"no intact checkpoint .*step 8: .*step 4: "):
    trainer.train_and_evaluate(_config(), wd)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == before
  assert not os.path.exists(os.path.join(wd, "checkpoints_unusable"))
  assert _records(wd) == _records(reference)  # nothing truncated either


# ---- resuming with a changed config --------------------------------------------------------

def test_resume_with_changed_config_is_refused_then_allowed_and_recorded(tmp_path):
  wd = str(tmp_path / "run")
  trainer.train_and_evaluate(_config(total=4), wd)
  c = _config(total=6)
  c.optimizer.learning_rate = 0.05
  c.log_every_steps = 2  # operational keys may change freely
  with pytest.raises(UserError, match=r"resume refused: .*optimizer.learning_rate: 0.01 -> "
                                       r"0.05.*total_steps: 4 -> 6") as e:
    trainer.train_and_evaluate(c, wd)
  assert "log_every_steps" not in str(e.value) and "\n" not in str(e.value)
  c.resume_changes = "allow"
  trainer.train_and_evaluate(c, wd)
  saved = json.load(open(os.path.join(wd, "config.json")))
  assert saved["optimizer"]["learning_rate"] == 0.05
  (entry,) = saved["_resume_history"]
  assert entry["step"] == 4
  assert entry["changes"] == {"optimizer.learning_rate": [0.01, 0.05], "total_steps": [4, 6]}


def test_resume_with_other_model_shapes_is_refused_even_when_allowed(tmp_path):
  wd = str(tmp_path / "run")
  trainer.train_and_evaluate(_config(total=2), wd)
  c = _config(total=4)
  c.model.hidden = 48
  c.resume_changes = "allow"
  with pytest.raises(UserError, match=r"model differs from the checkpoint's \(\['params'\]"
                                      r"\['BatchNorm_0'\].*changed config keys: model.hidden: "
                                      r"32 -> 48"):
    trainer.train_and_evaluate(c, wd)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2"]  # nothing moved


# ---- one run per workdir ---------------------------------------------------------------------

def test_second_run_on_a_workdir_fails_at_once_and_the_first_is_undisturbed(tmp_path, reference):
  wd = str(tmp_path / "run")
  # The first run's input holds at its third batch until `go` exists, so it is alive, whatever
  # the machine's load, while the second one starts.
  go = tmp_path / "go"
  cmd = _cli(wd, f"--config.dataset.hold_until_file={go}")
  first = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and not os.path.exists(os.path.join(wd, "metrics.jsonl")):
    time.sleep(0.2)
  t0 = time.time()
  try:
    second = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                            timeout=120)
    took = time.time() - t0
  finally:
    go.touch()
  out, err = first.communicate(timeout=300)
  assert first.returncode == 0, err[-2000:]
  assert second.returncode != 0 and took < 30
  lines = [l for l in second.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr[-2000:]
  assert f"workdir {wd} is in use by host" in lines[0] and f"pid {first.pid}" in lines[0]
  assert _records(wd) == _records(reference)
  assert _results(wd) == _results(reference)
  assert not os.path.exists(os.path.join(wd, workdir_lock.LOCK_FILE))  # released on exit


def test_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
  wd = str(tmp_path / "run")
  holder = subprocess.run(
      [sys.executable, "-c", "import os, sys; from jaxaffect import workdir_lock; "
       "workdir_lock.WorkdirLock(sys.argv[1]).__enter__(); os.kill(os.getpid(), 9)", wd],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
  assert holder.returncode == -signal.SIGKILL
  stale = json.load(open(os.path.join(wd, workdir_lock.LOCK_FILE)))
  with caplog.at_level("WARNING", logger="jaxaffect"):
    with workdir_lock.WorkdirLock(wd):
      with pytest.raises(WorkdirInUse, match=f"pid {os.getpid()}"):
        subprocess_lock = workdir_lock.WorkdirLock(wd)
        # flock is per open file: a second open in this process conflicts like another run.
        subprocess_lock.__enter__()
  assert f"pid {stale['pid']}" in caplog.text and "no longer running" in caplog.text


def test_converted_checkpoints_are_verified_on_init_from(tmp_path):
  from jaxaffect import converted_checkpoint as store
  from jaxaffect.convert.keymap import ConversionError

  class Converted:  # what a converter returns, reduced to what save_converted reads
    variables = {"params": {"head": {"w": np.random.default_rng(0).integers(
        0, 2**32, 4096, dtype=np.uint32).view(np.float32)}}}

    def meta(self):
      return {"converter": "test", "subtrees": ["params/head"]}

  out = str(tmp_path / "converted")
  store.save_converted(out, Converted())
  fresh = {"head": {"w": np.zeros(4096, np.float32)}}
  params, _ = store.restore_converted(out, fresh, {})
  np.testing.assert_array_equal(params["head"]["w"], Converted.variables["params"]["head"]["w"])
  needle = Converted.variables["params"]["head"]["w"][:16].tobytes()
  for d, _, files in os.walk(out):
    for f in files:
      data = bytearray(open(os.path.join(d, f), "rb").read())
      if needle in data:
        data[data.index(needle) + 2001] ^= 0x01
        open(os.path.join(d, f), "wb").write(bytes(data))
  with pytest.raises(ConversionError, match=r"fails its checksums \(params/head/w\)"):
    store.restore_converted(out, fresh, {})
