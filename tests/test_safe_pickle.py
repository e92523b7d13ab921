"""The torch-free .pth reader never runs code from the file: one allow-list unpickler reads every
pickle slot (zip data.pkl, the five legacy pickles, bare pickles, nested `_load_from_bytes`
payloads). Malicious payloads would create a marker file; each test checks the refusal message
(one line, naming the file and the global) and that the marker was never created."""
from __future__ import annotations

import builtins
import collections
import io
import os
import pickle
import pickletools
import shlex
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxaffect.convert import torch_pickle  # noqa: E402
from jaxaffect.convert.torch_pickle import TorchFileError  # noqa: E402

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("os.system", "builtins.exec", "subprocess.Popen")


class _Call:
  """Pickles as GLOBAL func + REDUCE args (+ BUILD state): a crafted checkpoint's payload."""

  def __init__(self, func, args, state=None):
    self.func, self.args, self.state = func, args, state

  def __reduce__(self):
    return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _evil(kind: str, marker) -> _Call:
  marker = str(marker)
  if kind == "os.system":
    return _Call(os.system, (f"touch {shlex.quote(marker)}",))
  if kind == "builtins.exec":
    return _Call(builtins.exec, (f"open({marker!r}, 'w').close()",))
  return _Call(subprocess.Popen, (["touch", marker],))


def _global_name(kind: str) -> str:
  func = {"os.system": os.system, "builtins.exec": builtins.exec,
          "subprocess.Popen": subprocess.Popen}[kind]
  return f"{func.__module__}.{func.__qualname__}"  # os.system pickles as posix.system


def _payload(kind: str, marker, protocol: int = 2) -> bytes:
  return pickle.dumps(_evil(kind, marker), protocol=protocol)


def _assert_refused(path, global_name: str, marker) -> None:
  with pytest.raises(TorchFileError) as info:
    torch_pickle.load(path)
  msg = str(info.value)
  assert "\n" not in msg, msg
  assert msg == (f"{path}: refuses to load global '{global_name}' (only tensors, containers and "
                 "numeric types are allowed); no code from the file was run"), msg
  time.sleep(0.05)  # a Popen that had run would touch the marker asynchronously
  assert not os.path.exists(marker)


def _assert_unreadable(path) -> str:
  with pytest.raises(TorchFileError) as info:
    torch_pickle.load(path)
  msg = str(info.value)
  assert "\n" not in msg and msg.startswith(f"{path}: "), msg
  return msg


def _legacy_parts(obj) -> tuple[list[bytes], bytes]:
  """A real legacy torch.save split into its five pickles and the raw storage bytes."""
  buf = io.BytesIO()
  torch.save(obj, buf, _use_new_zipfile_serialization=False)
  raw = buf.getvalue()
  f, ends = io.BytesIO(raw), []
  for _ in range(5):
    for _ in pickletools.genops(f):  # stops right after the STOP opcode
      pass
    ends.append(f.tell())
  parts = [raw[a:b] for a, b in zip([0] + ends[:-1], ends)]
  assert b"".join(parts) + raw[ends[-1]:] == raw
  return parts, raw[ends[-1]:]


def _write_zip(path, entries: dict[str, bytes]) -> None:
  with zipfile.ZipFile(path, "w") as zf:
    for name, data in entries.items():
      zf.writestr(name, data)


def _sample():
  g = torch.Generator().manual_seed(0)
  return {"w": torch.randn(3, 4, generator=g), "b": torch.arange(5)}


# ---- the payloads are live: plain pickle would run them ------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_payloads_would_run_under_plain_pickle(tmp_path, kind):
  """Control: the same bytes given to pickle.loads do create the marker, so the 'marker absent'
  checks below are meaningful."""
  marker = tmp_path / "ran"
  out = pickle.loads(_payload(kind, marker))
  if isinstance(out, subprocess.Popen):
    out.wait(timeout=30)
  assert marker.exists()


# ---- malicious pickles in every slot -------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_zip_data_pkl_refused(tmp_path, kind):
  marker, path = tmp_path / "MARKER", tmp_path / "evil.pth"
  _write_zip(path, {"archive/data.pkl": _payload(kind, marker), "archive/byteorder": b"little"})
  _assert_refused(path, _global_name(kind), marker)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_save_with_embedded_payload_refused(tmp_path, zip_format):
  """A real checkpoint whose state_dict carries one extra malicious object."""
  marker, path = tmp_path / "MARKER", tmp_path / "model.pth"
  torch.save({"state_dict": _sample(), "extra": _evil("os.system", marker)}, path,
             _use_new_zipfile_serialization=zip_format)
  _assert_refused(path, "posix.system", marker)


@pytest.mark.parametrize("slot", range(5), ids=["magic", "protocol", "sys_info", "object",
                                                 "storage_keys"])
@pytest.mark.parametrize("kind", KINDS)
def test_legacy_slot_refused(tmp_path, slot, kind):
  parts, tail = _legacy_parts(_sample())
  marker, path = tmp_path / "MARKER", tmp_path / "legacy.pth"
  parts[slot] = _payload(kind, marker)
  path.write_bytes(b"".join(parts) + tail)
  _assert_refused(path, _global_name(kind), marker)


def test_legacy_split_reads_back(tmp_path):
  """The unmodified parts are a valid file: the slot tests replace exactly one pickle."""
  parts, tail = _legacy_parts(_sample())
  path = tmp_path / "legacy.pth"
  path.write_bytes(b"".join(parts) + tail)
  got = torch_pickle.load(path)
  np.testing.assert_array_equal(got["w"], _sample()["w"].numpy())


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("kind", KINDS)
def test_bare_pickle_refused(tmp_path, kind, protocol):
  marker, path = tmp_path / "MARKER", tmp_path / "model_seed_123.pkl"
  path.write_bytes(pickle.dumps({"w": np.ones(3), "x": _evil(kind, marker)}, protocol=protocol))
  _assert_refused(path, _global_name(kind), marker)


class _LoadFromBytes:
  """How plain pickle writes a tensor's storage: torch.storage._load_from_bytes(<torch.save>)."""

  def __init__(self, payload: bytes):
    self.payload = payload

  def __reduce__(self):
    return torch.storage._load_from_bytes, (self.payload,)


@pytest.mark.parametrize("nested", ["bare", "legacy_object", "legacy_keys"])
def test_nested_load_from_bytes_payload_refused(tmp_path, nested):
  marker, path = tmp_path / "MARKER", tmp_path / "sd.pkl"
  if nested == "bare":
    inner = _payload("os.system", marker)
  else:
    parts, tail = _legacy_parts(torch.ones(3).untyped_storage())
    parts[3 if nested == "legacy_object" else 4] = _payload("os.system", marker)
    inner = b"".join(parts) + tail
  path.write_bytes(pickle.dumps({"w": _LoadFromBytes(inner)}))
  _assert_refused(path, "posix.system", marker)


def test_refuses_other_globals_without_importing(tmp_path):
  """Inert-looking classes are refused too (as weights_only=True does), by name."""
  import argparse
  path = tmp_path / "ckpt.pth"
  torch.save({"args": argparse.Namespace(lr=0.1), "state_dict": _sample()}, path)
  with pytest.raises(TorchFileError, match=r"refuses to load global 'argparse\.Namespace'"):
    torch_pickle.load(path)
  path.write_bytes(pickle.dumps(collections.defaultdict(list)))
  with pytest.raises(TorchFileError, match=r"'collections\.defaultdict'"):
    torch_pickle.load(path)


# ---- crafted tensor records --------------------------------------------------------------------

class _StorageRef:
  pass


class _RecordPickler(pickle.Pickler):
  def persistent_id(self, obj):
    return ("storage", torch.FloatStorage, "0", "cpu", 4) if isinstance(obj, _StorageRef) else None


def _crafted_zip(path, tensor_record) -> None:
  buf = io.BytesIO()
  _RecordPickler(buf, protocol=2).dump({"t": tensor_record})
  _write_zip(path, {"archive/data.pkl": buf.getvalue(),
                    "archive/data/0": np.arange(4, dtype=np.float32).tobytes()})


def _tensor(offset, size, stride, state=None):
  return _Call(torch._utils._rebuild_tensor_v2,
               (_StorageRef(), offset, size, stride, False, collections.OrderedDict()), state)


def test_crafted_tensor_records(tmp_path):
  path = tmp_path / "t.pth"
  _crafted_zip(path, _tensor(1, (3,), (1,)))
  np.testing.assert_array_equal(torch_pickle.load(path)["t"], [1, 2, 3])
  for record, why in ((_tensor(0, (2,), (-1,)), "not a non-negative integer"),
                      (_tensor(0, (2, 2), (2, 2)), "overruns its storage"),
                      (_tensor(0, (2,), (1,), state={"offset": -8}), "set the state"),
                      (_Call(torch._utils._rebuild_tensor_v2, (np.float32(0), 0, (1,), (1,),
                                                               False, None)), "not a storage")):
    _crafted_zip(path, record)
    assert why in _assert_unreadable(path)


def test_numpy_object_dtype_from_raw_bytes_refused(tmp_path):
  """Raw bytes never become object pointers: an f8 array re-labelled O8 (whose dtype state,
  flags=0, would make numpy's own __setstate__ accept raw bytes as PyObject*) is refused, and so
  are object arrays built from lists."""
  data = pickle.dumps(np.zeros(2), protocol=2)
  assert data.count(b"f8") == 1
  path = tmp_path / "obj.pkl"
  path.write_bytes(data.replace(b"f8", b"O8"))
  assert "numpy dtype 'O8' is not allowed" in _assert_unreadable(path)
  path.write_bytes(pickle.dumps(np.array([1, None], dtype=object)))
  assert "numpy dtype 'O8' is not allowed" in _assert_unreadable(path)
  path.write_bytes(pickle.dumps(np.zeros(2, dtype=[("a", "f4")])))
  assert "not allowed" in _assert_unreadable(path)


# ---- what must keep loading --------------------------------------------------------------------

def _model_and_training_state():
  torch.manual_seed(0)
  model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
  sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
  adam = torch.optim.AdamW(model.parameters(), lr=1e-3)
  for opt in (sgd, adam):
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
  return {
      "epoch": 3, "state_dict": model.state_dict(), "sgd": sgd.state_dict(),
      "adam": adam.state_dict(),
      "multistep": torch.optim.lr_scheduler.MultiStepLR(sgd, [10, 20, 20]).state_dict(),
      "cosine": torch.optim.lr_scheduler.CosineAnnealingLR(adam, 10).state_dict(),
      "plateau": torch.optim.lr_scheduler.ReduceLROnPlateau(sgd).state_dict(),
      "rng": torch.get_rng_state(), "np_rng": np.random.RandomState(0).get_state(),
      "dtype": torch.float16, "devices": [torch.device("cpu"), torch.device("cuda", 1)],
      "size": torch.Size([2, 3]), "best": np.float64(0.75), "flags": {1, 2}, "z": 1 + 2j,
  }


def _check_training_state(got, ref):
  for k, v in ref["state_dict"].items():
    np.testing.assert_array_equal(got["state_dict"][k], v.numpy())
  assert got["state_dict"]["1.num_batches_tracked"].dtype == np.int64
  for name in ("sgd", "adam"):
    for pid, st in ref[name]["state"].items():
      for k, v in st.items():
        np.testing.assert_array_equal(got[name]["state"][pid][k], np.asarray(v))
    assert got[name]["param_groups"] == ref[name]["param_groups"]
  assert got["multistep"]["milestones"] == collections.Counter({10: 1, 20: 2})
  assert isinstance(got["multistep"]["milestones"], collections.Counter)
  assert got["plateau"]["mode_worse"] == float("inf")
  np.testing.assert_array_equal(got["rng"], ref["rng"].numpy())
  np.testing.assert_array_equal(got["np_rng"][1], ref["np_rng"][1])
  assert (got["dtype"], got["devices"], got["size"]) == ("torch.float16", ["cpu", "cuda:1"], (2, 3))
  assert (got["best"], got["flags"], got["z"]) == (0.75, {1, 2}, 1 + 2j)


@pytest.mark.parametrize("fmt", ["zip", "legacy", "bare_pickle"])
def test_training_checkpoint_loads(tmp_path, fmt):
  """Model, SGD/AdamW state after a step, schedulers (MultiStepLR's Counter), RNG states."""
  ref = _model_and_training_state()
  path = tmp_path / "ckpt.pth"
  if fmt == "bare_pickle":
    path.write_bytes(pickle.dumps(ref))
  else:
    torch.save(ref, path, _use_new_zipfile_serialization=fmt == "zip")
  _check_training_state(torch_pickle.load(path), ref)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_bare_pickled_state_dicts(tmp_path, protocol):
  """A plain pickle.dump of a state_dict (numpy arrays, or torch tensors whose storages are nested
  legacy torch.save payloads): views, Parameters, v3 dtypes."""
  g = torch.Generator().manual_seed(1)
  base = torch.randn(4, 6, generator=g)
  sd = collections.OrderedDict(
      w=base, wt=base.t(), part=base[1:3, 2:], p=torch.nn.Parameter(torch.ones(2)),
      u16=torch.tensor([1, 65535]).to(torch.uint16), h=torch.randn(3, generator=g).half(),
      empty=torch.zeros(0, 2), n=torch.tensor(7))
  path = tmp_path / "model_seed_123.pkl"
  path.write_bytes(pickle.dumps(sd, protocol=protocol))
  got = torch_pickle.load(path)
  assert list(got) == list(sd)
  for k, v in sd.items():
    ref = v.detach().numpy()
    assert got[k].dtype == ref.dtype and got[k].shape == ref.shape, k
    np.testing.assert_array_equal(got[k], ref)
  arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3).T, "s": np.int64(3),
            "f": np.asfortranarray(np.ones((2, 3))), "be": np.arange(3, dtype=">f4"),
            "str": np.array(["ab", "c"]), "b": np.bool_(True)}
  path.write_bytes(pickle.dumps(arrays, protocol=protocol))
  got = torch_pickle.load(path)
  for k, v in arrays.items():
    np.testing.assert_array_equal(got[k], v)
    assert got[k].dtype == np.asarray(v).dtype, k


def test_tensors_with_python_state(tmp_path):
  """_rebuild_from_type_v2 (a tensor with attributes) and _rebuild_parameter_with_state."""
  t, p = torch.arange(3.0), torch.nn.Parameter(torch.ones(2))
  t.note, p.note = "x", "y"
  path = tmp_path / "s.pth"
  torch.save({"t": t, "p": p, "f8": torch.ones(2).to(torch.float8_e4m3fn)}, path)
  got = torch_pickle.load(path)
  np.testing.assert_array_equal(got["t"], [0, 1, 2])
  np.testing.assert_array_equal(got["p"], [1, 1])
  np.testing.assert_array_equal(got["f8"].astype(np.float32), [1, 1])


# ---- unreadable files: one line naming the file ------------------------------------------------

def _real_pth(tmp_path, zip_format=True):
  path = tmp_path / ("real.pth" if zip_format else "real_legacy.pth")
  torch.save({"state_dict": _sample(), "epoch": 1}, path, _use_new_zipfile_serialization=zip_format)
  return path


@pytest.mark.parametrize("case", ["zip_half", "legacy_half", "legacy_storage_cut", "bare_half",
                                  "garbage", "bad_utf8_text", "bad_utf8_byteorder", "empty",
                                  "huge_count", "zip_without_data_pkl"])
def test_unreadable_files_one_line(tmp_path, case):
  path = tmp_path / "broken.pth"
  if case in ("zip_half", "legacy_half", "legacy_storage_cut"):
    data = _real_pth(tmp_path, zip_format=case == "zip_half").read_bytes()
    data = data[:-8] if case == "legacy_storage_cut" else data[:len(data) // 2]
  elif case == "bare_half":
    data = pickle.dumps({"w": np.ones(100)})[:300]
  elif case == "garbage":
    data = bytes(np.random.RandomState(0).randint(128, 256, 4096, dtype=np.uint8))
  elif case == "bad_utf8_text":
    data = b"\x80\x04X\x02\x00\x00\x00\xff\xfe."  # BINUNICODE with invalid UTF-8
  elif case == "bad_utf8_byteorder":
    buf = io.BytesIO()
    _RecordPickler(buf, protocol=2).dump({})
    _write_zip(path, {"archive/data.pkl": buf.getvalue(), "archive/byteorder": b"\xff\xfe"})
    data = path.read_bytes()
  elif case == "empty":
    data = b""
  elif case == "huge_count":
    parts, tail = _legacy_parts(_sample())
    data = b"".join(parts) + (2**62).to_bytes(8, "little") + tail[8:]
  else:
    _write_zip(path, {"archive/other.pkl": b"x"})
    data = path.read_bytes()
  path.write_bytes(data)
  _assert_unreadable(path)


# ---- the CLI: exit 2, one error line, no traceback ---------------------------------------------

def test_cli_refuses_malicious_and_broken_files(tmp_path):
  marker = tmp_path / "MARKER"
  evil = tmp_path / "evil.pth"
  _write_zip(evil, {"archive/data.pkl": _payload("os.system", marker)})
  half = tmp_path / "half.pth"
  data = _real_pth(tmp_path).read_bytes()
  half.write_bytes(data[:len(data) // 2])
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"\xff\xfe\xfa" * 100)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  for path, want in ((evil, "refuses to load global 'posix.system'"),
                     (half, "truncated or corrupt"), (garbage, "truncated or corrupt")):
    r = subprocess.run([sys.executable, "-m", "jaxaffect.convert", "inspect", str(path)],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.splitlines()
    errors = [ln for ln in lines if not ln.startswith("[convert] ")]  # progress lines aside
    assert len(errors) == 1 and errors[0].startswith(f"error: {path}: "), r.stderr
    assert want in errors[0], errors[0]
  assert not marker.exists()
