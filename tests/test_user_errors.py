"""One line for every user mistake on the main command line: stderr holds exactly one
`error: ...` line naming the key/path/value, the exit status is not 0, and no traceback."""
import os
import subprocess
import sys

import pytest
from cpu_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = "tests/configs/toy.py"


def _run(args, tmp_path):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
  env["XLA_FLAGS"] = xla_flags(8)
  env["JAX_PLATFORMS"] = "cpu"
  env["JAXAFFECT_DATA_DIR"] = str(tmp_path / "data")
  args = [a.replace("{tmp}", str(tmp_path)) for a in args]
  return subprocess.run([sys.executable, "-m", "jaxaffect.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def _prepare(tmp_path):
  (tmp_path / "empty").mkdir()
  unfinished = tmp_path / "unfinished" / "checkpoints" / "5.orbax-checkpoint-tmp-1700000000"
  unfinished.mkdir(parents=True)


# (case, argv, what the one line must contain)
CASES = [
    ("misspelt_key", ["--config", TOY, "--workdir", "{tmp}/w", "--config.totl_steps=3"],
     "--config.totl_steps: no such config key (did you mean 'total_steps'?)"),
    ("misspelt_nested_key", ["--config", TOY, "--workdir", "{tmp}/w",
                             "--config.optimizer.learnig_rate=0.1"],
     "did you mean 'optimizer.learning_rate'?"),
    ("bad_config_argument", ["--config", "configs/demo.py:smok", "--workdir", "{tmp}/w"],
     "config argument 'smok' unknown (did you mean 'smoke'?)"),
    ("missing_config_file", ["--config", "configs/nope.py", "--workdir", "{tmp}/w"],
     "configs/nope.py does not exist"),
    ("override_without_value", ["--config", TOY, "--workdir", "{tmp}/w", "--config.seed"],
     "--config.seed: missing value"),
    ("wrong_value_type", ["--config", TOY, "--workdir", "{tmp}/w", "--config.batch_size=abc"],
     "--config.batch_size=abc: expected int"),
    ("group_set_as_value", ["--config", TOY, "--workdir", "{tmp}/w", "--config.optimizer=3"],
     "--config.optimizer is a group of keys"),
    ("misspelt_flag", ["--config", TOY, "--workdr", "{tmp}/w"], "workdr"),
    ("optimizer_name", ["--config", TOY, "--workdir", "{tmp}/w", "--config.optimizer.name=adm"],
     "config.optimizer.name='adm' is not one of adam, adamw, sgd (did you mean 'adam'?)"),
    ("schedule_name", ["--config", TOY, "--workdir", "{tmp}/w", "--config.schedule.name=cosin"],
     "config.schedule.name='cosin' is not one of"),
    ("loss_name", ["--config", "configs/demo.py:smoke", "--workdir", "{tmp}/w",
                   "--config.loss.name=focal"], "config.loss.name='focal' is not one of pcce, ce"),
    ("dtype_name", ["--config", "configs/demo.py:smoke", "--workdir", "{tmp}/w",
                    "--config.model.dtype=bf16"], "(did you mean 'bfloat16'?)"),
    ("batch_size_zero", ["--config", TOY, "--workdir", "{tmp}/w", "--config.batch_size=0"],
     "config.batch_size=0 must be a positive number"),
    ("batch_size_negative", ["--config", TOY, "--workdir", "{tmp}/w", "--config.batch_size=-8"],
     "config.batch_size=-8 must be a positive number"),
    ("total_steps_zero", ["--config", TOY, "--workdir", "{tmp}/w", "--config.total_steps=0"],
     "config.total_steps=0 must be at least 1"),
    ("batch_not_divisible", ["--config", TOY, "--workdir", "{tmp}/w", "--config.batch_size=12"],
     "config.batch_size=12 must be divisible by the data x fsdp mesh size (8)"),
    ("init_from_empty_folder", ["--config", TOY, "--workdir", "{tmp}/w",
                                "--config.init_from={tmp}/empty"],
     "init_from: {tmp}/empty is empty"),
    ("init_from_unfinished", ["--config", TOY, "--workdir", "{tmp}/w",
                              "--config.init_from={tmp}/unfinished"],
     "holds no finished checkpoint (unfinished saves: 5.orbax-checkpoint-tmp-1700000000)"),
    ("init_from_missing", ["--config", TOY, "--workdir", "{tmp}/w",
                           "--config.init_from={tmp}/nowhere"], "{tmp}/nowhere does not exist"),
    ("eval_without_checkpoint", ["--config", TOY, "--workdir", "{tmp}/w", "--mode", "eval"],
     "no checkpoint under {tmp}/w/checkpoints"),
    ("workdir_is_a_file", ["--config", TOY, "--workdir", "{tmp}/unfinished/checkpoints/x/y"],
     "{tmp}/unfinished/checkpoints/x"),
]


@pytest.mark.parametrize("case,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_one_line_per_mistake(tmp_path, case, argv, expected):
  _prepare(tmp_path)
  if case == "workdir_is_a_file":
    (tmp_path / "unfinished" / "checkpoints" / "x").write_text("a file, not a folder")
  r = _run(argv, tmp_path)
  assert r.returncode != 0
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith(("I", "W"))]
  assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
  assert expected.replace("{tmp}", str(tmp_path)) in lines[0], lines[0]


def _mount(*args):
  return subprocess.run(["mount", *args], capture_output=True, text=True).returncode == 0


@pytest.fixture
def read_only_workdir(tmp_path):
  """A finished toy workdir behind a read-only bind mount (needs mount rights; else skipped)."""
  src, ro = tmp_path / "src", tmp_path / "ro"
  ro.mkdir()
  r = _run(["--config", TOY, "--workdir", str(src / "w"), "--config.total_steps=2"], tmp_path)
  assert r.returncode == 0, r.stderr[-2000:]
  os.remove(src / "w" / "results.json")  # so that a train run has work to do
  if not (_mount("--bind", str(src), str(ro)) and _mount("-o", "remount,ro,bind", str(ro))):
    subprocess.run(["umount", str(ro)], capture_output=True)
    pytest.skip("no permission to make a read-only mount here")
  yield ro / "w"
  subprocess.run(["umount", str(ro)], capture_output=True)


def test_read_only_workdir_train_is_one_line_and_eval_prints_results(tmp_path,
                                                                     read_only_workdir):
  wd = str(read_only_workdir)
  r = _run(["--config", TOY, "--workdir", wd, "--config.total_steps=2"], tmp_path)
  lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith(("I", "W"))]
  assert r.returncode != 0 and "Traceback" not in r.stderr
  assert lines == [f"error: cannot lock the workdir at {wd}/run.lock: Read-only file system"]
  r = _run(["--config", TOY, "--workdir", wd, "--config.total_steps=2", "--mode", "eval"],
           tmp_path)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.startswith("results: {") and '"eval/top1": ' in r.stdout
  assert "results not written" in r.stderr
