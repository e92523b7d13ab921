"""Reads PyTorch `torch.save` files into NumPy without importing torch.

Both formats are supported:
  - zip (torch >= 1.6 default): `<archive>/data.pkl` pickles the object with persistent ids
    ("storage", storage_type, key, location, numel); storage bytes live in `<archive>/data/<key>`.
  - legacy (torch <= 1.5, or `_use_new_zipfile_serialization=False`): five consecutive pickles
    (magic number, protocol version, sys info, the object, the list of storage keys), then each
    storage as an int64 element count followed by its raw little-endian bytes.
The pre-2017 tar format is rejected with a message.

The unpickler is restricted: it never imports modules named in the file. Tensors become NumPy
arrays (copied, contiguous), torch.Size a tuple, OrderedDict itself; any other class or function
(optimizer/scheduler internals, torch.device, ...) becomes an inert `Opaque` record, so a
checkpoint can never execute code on load.
"""
from __future__ import annotations

import codecs
import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Callable

import numpy as np

from jaxaffect.errors import PathNotFound, UserError

try:
  from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy < 2
  from numpy.core.multiarray import _reconstruct as _np_reconstruct  # type: ignore

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "UntypedStorage": "uint8",
}


class TorchFileError(UserError, ValueError):
  """The file is not a readable torch.save checkpoint (message says why)."""


def _np_dtype(name: str) -> np.dtype:
  if name == "bfloat16":
    import ml_dtypes  # ships with jax
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name)


class Opaque:
  """Stand-in for any class/function the restricted unpickler does not rebuild."""
  qualname = "?"

  def __new__(cls, *args, **kwargs):
    obj = object.__new__(cls)
    obj.args, obj.state = args, None
    return obj

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f"Opaque({self.qualname})"


class _StorageType:
  """What a pickled `torch.<X>Storage` global becomes: just its element dtype."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = _np_dtype(_STORAGE_DTYPES[name])


class _Storage:
  """A storage whose bytes are filled in later (legacy) or read lazily (zip)."""

  def __init__(self, dtype: np.dtype, numel: int | None, reader: Callable[[], bytes] | None):
    self.dtype, self.numel, self._reader = dtype, numel, reader
    self._array: np.ndarray | None = None
    self.base: tuple[_Storage, int] | None = None  # legacy storage views: (root, elem offset)

  def array(self) -> np.ndarray:
    if self.base is not None:
      root, off = self.base
      return root.array()[off:off + self.numel]
    if self._array is None:
      if self._reader is None:
        raise TorchFileError("a tensor refers to a storage whose bytes were never read")
      self._array = np.frombuffer(self._reader(), dtype=self.dtype)
    return self._array

  def set_bytes(self, data: bytes) -> None:
    self._array = np.frombuffer(data, dtype=self.dtype)


class _LazyTensor:
  """A tensor view of a storage; materialised after every storage is readable."""

  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset = storage, int(offset)
    self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

  def materialize(self) -> np.ndarray:
    flat = self.storage.array()
    if not self.size:
      return np.array(flat[self.offset])
    if 0 in self.size:
      return np.zeros(self.size, flat.dtype)
    span = 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if self.offset + span > flat.size:
      raise TorchFileError(f"tensor of size {self.size} stride {self.stride} offset "
                           f"{self.offset} overruns its storage of {flat.size} elements")
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], shape=self.size, strides=[s * item for s in self.stride])
    return np.array(view, copy=True, order="C")


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  del unused  # requires_grad, backward_hooks, metadata
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *unused):
  del unused
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  del new_type, state
  return func(*args)


_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): tuple,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): codecs.encode,  # how protocol 2 pickles bytes
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
}


def _numpy_scalar(dtype, data=None):
  return np.frombuffer(data, dtype=dtype)[0] if data is not None else dtype.type()


class _Unpickler(pickle.Unpickler):

  def __init__(self, f, persistent_load_fn):
    super().__init__(f, encoding="latin1")
    self._persistent = persistent_load_fn
    self._opaque: dict[str, type] = {}

  def find_class(self, module: str, name: str):
    if (module, name) in _FUNCTIONS:
      return _FUNCTIONS[(module, name)]
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
      return _numpy_scalar
    if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
      return _StorageType(name)
    qual = f"{module}.{name}"
    if qual not in self._opaque:
      self._opaque[qual] = type(name, (Opaque,), {"qualname": qual})
    return self._opaque[qual]

  def persistent_load(self, pid):
    return self._persistent(pid)


def _materialize(obj: Any, seen: dict[int, Any] | None = None) -> Any:
  """Replaces every _LazyTensor in dicts/lists/tuples/Opaque records by a NumPy array."""
  seen = {} if seen is None else seen
  if id(obj) in seen:
    return seen[id(obj)]
  if isinstance(obj, _LazyTensor):
    out = seen[id(obj)] = obj.materialize()
    return out
  if isinstance(obj, dict):
    for k in list(obj.keys()):
      obj[k] = _materialize(obj[k], seen)
    return obj
  if isinstance(obj, list):
    for i, v in enumerate(obj):
      obj[i] = _materialize(v, seen)
    return obj
  if isinstance(obj, tuple):
    return tuple(_materialize(v, seen) for v in obj)
  if isinstance(obj, Opaque):
    seen[id(obj)] = obj
    obj.args = _materialize(obj.args, seen)
    obj.state = _materialize(obj.state, seen)
  return obj


def _storage_dtype(storage_type) -> np.dtype:
  if isinstance(storage_type, _StorageType):
    return storage_type.dtype
  if isinstance(storage_type, (Opaque, type)):
    name = getattr(storage_type, "qualname", storage_type)
    raise TorchFileError(f"unsupported storage type {name}")
  raise TorchFileError(f"unexpected storage type record {storage_type!r}")


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
      raise TorchFileError(f"{path}: zip archive without exactly one <archive>/data.pkl "
                           f"(found {pkl or 'none'}); not a torch.save file?")
    prefix = pkl[0][: -len("data.pkl")]
    order = prefix + "byteorder"
    if order in names and zf.read(order).decode().strip() != "little":
      raise TorchFileError(f"{path}: big-endian checkpoints are not supported")
    storages: dict[str, _Storage] = {}

    def persistent_load(pid):
      if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
        raise TorchFileError(f"{path}: unsupported persistent id {pid!r}")
      _, storage_type, key, _location, numel = pid[:5]
      if key not in storages:
        entry = f"{prefix}data/{key}"
        if entry not in names:
          raise TorchFileError(f"{path}: storage {key} missing from the archive")
        storages[key] = _Storage(_storage_dtype(storage_type), numel,
                                 lambda e=entry: zf.read(e))
      return storages[key]

    obj = _Unpickler(io.BytesIO(zf.read(pkl[0])), persistent_load).load()
    return _materialize(obj)


def _load_legacy(path: str) -> Any:
  with open(path, "rb") as f:
    head = f.read(512)
    if len(head) >= 262 and head[257:262] == b"ustar":
      raise TorchFileError(f"{path}: tar-format torch checkpoint (PyTorch < 0.1.10) is not "
                           "supported; re-save it with a recent torch")
    f.seek(0)
    try:
      magic = pickle.load(f)
    except Exception as e:
      raise TorchFileError(f"{path}: neither a zip nor a legacy torch.save file ({e})") from e
    if magic != _LEGACY_MAGIC:
      raise TorchFileError(f"{path}: not a torch.save file (bad magic number)")
    protocol = pickle.load(f)
    if protocol != _LEGACY_PROTOCOL:
      raise TorchFileError(f"{path}: unsupported legacy protocol version {protocol}")
    sys_info = pickle.load(f)
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
      raise TorchFileError(f"{path}: big-endian checkpoints are not supported")
    roots: dict[str, _Storage] = {}
    views: dict[str, _Storage] = {}

    def persistent_load(pid):
      if not isinstance(pid, tuple) or not pid:
        raise TorchFileError(f"{path}: unsupported persistent id {pid!r}")
      if pid[0] == "module":  # pickled module source (whole-model saves): not needed
        return None
      if pid[0] != "storage":
        raise TorchFileError(f"{path}: unsupported persistent id {pid[0]!r}")
      _, storage_type, root_key, _location, numel, view_metadata = pid[:6]
      dtype = _storage_dtype(storage_type)
      if root_key not in roots:
        roots[root_key] = _Storage(dtype, numel, None)
      if view_metadata is None:
        return roots[root_key]
      view_key, offset, view_size = view_metadata
      if view_key not in views:
        v = _Storage(dtype, view_size, None)
        v.base = (roots[root_key], int(offset))
        views[view_key] = v
      return views[view_key]

    obj = _Unpickler(f, persistent_load).load()
    keys = pickle.load(f)
    for key in keys:
      (count,) = struct.unpack("<q", f.read(8))
      st = roots.get(key)
      if st is None:
        raise TorchFileError(f"{path}: storage {key} listed but never referenced")
      nbytes = count * st.dtype.itemsize
      data = f.read(nbytes)
      if len(data) != nbytes:
        raise TorchFileError(f"{path}: truncated file (storage {key})")
      st.set_bytes(data)
    return _materialize(obj)


def load(path: str | os.PathLike) -> Any:
  """torch.load(path, map_location="cpu") without torch: tensors come back as NumPy arrays."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise PathNotFound(f"{path} does not exist")
  if zipfile.is_zipfile(path):
    return _load_zip(path)
  return _load_legacy(path)
