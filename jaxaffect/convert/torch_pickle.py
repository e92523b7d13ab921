"""Reads PyTorch `torch.save` files (and bare pickles of state_dicts) into NumPy without torch.

Formats:
  - zip (torch >= 1.6 default): `<archive>/data.pkl` pickles the object with persistent ids
    ("storage", storage_type, key, location, numel); storage bytes live in `<archive>/data/<key>`.
  - legacy (torch <= 1.5, or `_use_new_zipfile_serialization=False`): five consecutive pickles
    (magic number, protocol version, sys info, the object, the list of storage keys), then each
    storage as an int64 element count followed by its raw little-endian bytes.
  - bare pickle (`pickle.dump` of a state_dict): a non-zip file whose first pickle is not the
    legacy magic number. Tensors pickled that way carry their storage as a nested legacy
    torch.save byte string (`torch.storage._load_from_bytes`), read the same way.
The pre-2017 tar format is rejected with a message.

Every pickle in every slot goes through one ALLOW-LIST unpickler (`_ALLOWED`): tensor/parameter
rebuild functions, storage types, torch.Size, torch dtypes and devices (which become inert
strings), OrderedDict/Counter, set/frozenset/slice/complex/bytearray, the `_codecs.encode` that
protocol 2 writes for bytes, and NumPy ndarray/scalar/dtype reconstruction (plain numeric dtypes,
data from raw bytes: no object arrays). Each callable is a local, argument-checking stand-in and
BUILD may not rewrite the reader's own records; nothing named in the file is ever imported or
called. Any other global, and any unreadable file (truncated, corrupt, not a checkpoint), raises
a one-line TorchFileError naming the file. Tensors come back as NumPy arrays (copied, contiguous).
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO, Callable

import numpy as np

from jaxaffect.errors import PathNotFound, UserError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = b"PK\x03\x04"

_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
}
# Names torch dtypes pickle as (`torch.<name>`); the ones NumPy can hold map to its dtype.
_TORCH_DTYPES = {
    "float32": "float32", "float64": "float64", "float16": "float16", "bfloat16": "bfloat16",
    "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64", "uint8": "uint8",
    "uint16": "uint16", "uint32": "uint32", "uint64": "uint64", "bool": "bool",
    "complex64": "complex64", "complex128": "complex128", "float8_e4m3fn": "float8_e4m3fn",
    "float8_e5m2": "float8_e5m2", "float8_e4m3fnuz": "float8_e4m3fnuz",
    "float8_e5m2fnuz": "float8_e5m2fnuz", "complex32": None, "qint8": None, "qint32": None,
    "quint8": None, "quint4x2": None, "quint2x4": None, "float8_e8m0fnu": None,
    "float4_e2m1fn_x2": None, "bits1x8": None, "bits2x4": None, "bits4x2": None, "bits8": None,
    "bits16": None, **{f"int{i}": None for i in range(1, 8)},
    **{f"uint{i}": None for i in range(1, 8)},
}
_REFUSED = ("refuses to load global {!r} (only tensors, containers and numeric types are "
            "allowed); no code from the file was run")


class TorchFileError(UserError, ValueError):
  """The file is not a readable torch.save checkpoint (message says why)."""


def _np_dtype(name: str) -> np.dtype:
  if name == "bfloat16" or name.startswith("float8"):
    import ml_dtypes  # ships with jax
    return np.dtype(getattr(ml_dtypes, name))
  return np.dtype(name)


class _Inert:
  """Our own pickle-built objects: a file's BUILD opcode may not rewrite their fields."""
  __slots__ = ()

  def __setstate__(self, state):
    raise TorchFileError(f"the file tries to set the state of a {type(self).__name__.strip('_')}")


class _Marker(_Inert):
  """A class global that is only valid as an argument (ndarray to _reconstruct, Tensor and
  Parameter to _rebuild_from_type_v2); calling it is refused."""
  __slots__ = ("qualname",)

  def __init__(self, qualname: str):
    self.qualname = qualname

  def __call__(self, *args, **kwargs):
    raise TorchFileError(f"refuses to call global {self.qualname!r} (only allowed as an "
                         "argument); no code from the file was run")

  def __repr__(self):
    return self.qualname


class _StorageType(_Inert):
  """What a pickled `torch.<X>Storage` global becomes: just its element dtype."""
  __slots__ = ("name", "dtype")

  def __init__(self, name: str):
    self.name = name
    self.dtype = _np_dtype(_STORAGE_DTYPES[name])

  def __call__(self, *args, **kwargs):
    raise TorchFileError(f"refuses to call global 'torch.{self.name}' (only allowed as a "
                         "storage type); no code from the file was run")


class _Storage(_Inert):
  """A storage whose bytes are filled in later (legacy) or read from the archive (zip)."""
  __slots__ = ("dtype", "numel", "_reader", "_array", "base")

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
      self.set_bytes(self._reader())
    return self._array

  def set_bytes(self, data: bytes) -> None:
    if len(data) % self.dtype.itemsize:
      raise TorchFileError(f"storage of {len(data)} bytes is not a whole number of {self.dtype}")
    self._array = np.frombuffer(data, dtype=self.dtype)


def _index(x, what: str) -> int:
  if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 0:
    raise TorchFileError(f"tensor {what} {x!r} is not a non-negative integer")
  return int(x)


def _shape(x, what: str) -> tuple[int, ...]:
  if not isinstance(x, tuple):
    raise TorchFileError(f"tensor {what} {x!r} is not a tuple")
  return tuple(_index(s, what) for s in x)


class _LazyTensor(_Inert):
  """A tensor view of a storage; materialised after every storage is readable."""
  __slots__ = ("storage", "offset", "size", "stride", "dtype")

  def __init__(self, storage, offset, size, stride, dtype: np.dtype | None = None):
    if not isinstance(storage, _Storage):
      raise TorchFileError(f"a tensor is rebuilt from {type(storage).__name__}, not a storage")
    self.storage, self.offset, self.dtype = storage, _index(offset, "offset"), dtype
    self.size, self.stride = _shape(size, "size"), _shape(stride, "stride")
    if len(self.size) != len(self.stride):
      raise TorchFileError(f"tensor size {self.size} and stride {self.stride} differ in rank")

  def materialize(self) -> np.ndarray:
    flat = self.storage.array()
    if self.dtype is not None and self.dtype != flat.dtype:  # v3: an untyped (byte) storage
      if flat.nbytes % self.dtype.itemsize:
        raise TorchFileError(f"storage of {flat.nbytes} bytes does not hold {self.dtype} items")
      flat = flat.view(self.dtype)
    if 0 in self.size:
      return np.zeros(self.size, flat.dtype)
    span = 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if self.offset + span > flat.size:  # strides are non-negative: this bounds every read
      raise TorchFileError(f"tensor of size {self.size} stride {self.stride} offset "
                           f"{self.offset} overruns its storage of {flat.size} elements")
    if not self.size:
      return np.array(flat[self.offset])
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[self.offset:], shape=self.size, strides=[s * item for s in self.stride])
    return np.array(view, copy=True, order="C")


# ---- the allow-list: local stand-ins, each checking its arguments --------------------------------

def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  del unused  # requires_grad, backward_hooks, metadata
  return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, *unused):
  del requires_grad, backward_hooks, unused
  name = dtype[len("torch."):] if isinstance(dtype, str) and dtype.startswith("torch.") else None
  if _TORCH_DTYPES.get(name) is None:
    raise TorchFileError(f"tensor dtype {dtype} is not supported")
  return _LazyTensor(storage, storage_offset, size, stride, _np_dtype(_TORCH_DTYPES[name]))


def _rebuild_parameter(data, *unused):
  del unused  # requires_grad, backward_hooks, (state)
  return data


_TENSOR_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter)
_TENSOR_TYPES = (_Marker("torch.Tensor"), _Marker("torch.nn.parameter.Parameter"))


def _rebuild_from_type_v2(func, new_type, args, state):
  """A tensor with Python attributes (or a Parameter subclass): the attributes are dropped."""
  del state
  if func not in _TENSOR_REBUILDERS or new_type not in _TENSOR_TYPES or not isinstance(args,
                                                                                         tuple):
    raise TorchFileError(f"_rebuild_from_type_v2 of {new_type!r} is not a plain tensor rebuild")
  return func(*args)


def _encode(text, encoding="utf-8", errors="strict"):
  """`_codecs.encode`: protocol 2 pickles bytes as encode(str, 'latin1'). No other codec: codec
  lookup can import modules."""
  del errors
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
    raise TorchFileError(f"_codecs.encode with encoding {encoding!r} is not allowed")
  return text.encode(encoding)


def _torch_size(dims=()):
  return tuple(_index(d, "size") for d in dims)


def _torch_device(kind, index=None):
  if not isinstance(kind, str) or (index is not None and not isinstance(index, int)):
    raise TorchFileError(f"torch.device({kind!r}, {index!r}) is not a device")
  return kind if index is None else f"{kind}:{index}"


class _NpDtype(_Inert):
  """`numpy.dtype(spec)` plus its BUILD state, resolved here: numpy's own dtype.__setstate__
  trusts the flags in the file (flags=0 on an 'O8' dtype lets raw bytes become object pointers).
  Only plain numeric, bool and fixed-size string dtypes; byte order is taken from the state."""
  __slots__ = ("dtype",)

  def __init__(self, spec, align=False, copy=False):
    del align, copy
    dtype = np.dtype(spec) if isinstance(spec, str) else None
    if dtype is None or dtype.kind not in "biufcSU" or dtype.fields is not None:
      raise TorchFileError(f"numpy dtype {spec!r} is not allowed (plain numeric dtypes only)")
    self.dtype = dtype

  def __setstate__(self, state):
    if not isinstance(state, tuple) or len(state) < 6:
      raise TorchFileError(f"numpy dtype state {state!r} is not understood")
    endian, subdescr, names, fields, elsize = state[1:6]
    if (subdescr, names, fields) != (None, None, None) or elsize not in (-1, self.dtype.itemsize):
      raise TorchFileError(f"numpy dtype state {state!r} is not a plain dtype")
    if endian not in ("<", ">", "|", "="):
      raise TorchFileError(f"numpy dtype byte order {endian!r} is not understood")
    if endian in ("<", ">"):
      self.dtype = self.dtype.newbyteorder(endian)


def _dtype_of(dtype) -> np.dtype:
  if not isinstance(dtype, _NpDtype):
    raise TorchFileError(f"{type(dtype).__name__} where a numpy dtype was expected")
  return dtype.dtype


def _array_from_bytes(raw, dtype, shape, fortran: bool) -> np.ndarray:
  if isinstance(raw, str):  # Python 2 pickles: raw bytes read as latin1 text
    raw = raw.encode("latin1")
  if not isinstance(raw, (bytes, bytearray)):
    raise TorchFileError("numpy array data is not raw bytes (object arrays are not allowed)")
  dtype, shape = _dtype_of(dtype), _shape(shape, "shape")
  if len(raw) != math.prod(shape) * dtype.itemsize:
    raise TorchFileError(f"numpy array of shape {shape} {dtype} with {len(raw)} bytes of data")
  return np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C").copy(order="K")


class _NpArray(_Inert):
  """`_reconstruct(ndarray, ...)` plus its BUILD state, built here from raw bytes only."""
  __slots__ = ("array",)

  def __init__(self):
    self.array: np.ndarray | None = None

  def __setstate__(self, state):
    if isinstance(state, tuple) and len(state) == 4:  # numpy < 1.? wrote no version
      state = (1, *state)
    if not isinstance(state, tuple) or len(state) != 5:
      raise TorchFileError("numpy array state is not understood")
    _, shape, dtype, fortran, raw = state
    self.array = _array_from_bytes(raw, dtype, shape, bool(fortran))


def _np_reconstruct_safe(subtype, shape, dtype_code):
  del shape, dtype_code  # placeholders; the BUILD state carries the real ones
  if subtype is not _NDARRAY:
    raise TorchFileError(f"numpy _reconstruct of {subtype!r} is not allowed")
  return _NpArray()


def _np_frombuffer(buf, dtype, shape, order="C"):
  """numpy's protocol-5 array reconstructor."""
  if order not in ("C", "F"):
    raise TorchFileError(f"numpy array order {order!r} is not understood")
  return _array_from_bytes(buf, dtype, shape, order == "F")


def _np_scalar(dtype, data=None):
  dtype = _dtype_of(dtype)
  if data is None:
    return dtype.type()
  if isinstance(data, str):
    data = data.encode("latin1")
  if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
    raise TorchFileError(f"numpy scalar of dtype {dtype} with {type(data).__name__} data")
  return np.frombuffer(data, dtype=dtype)[0]


_NDARRAY = _Marker("numpy.ndarray")
_LOAD_FROM_BYTES = object()  # resolved per reader: it needs the nesting depth

_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TENSOR_TYPES[0],
    ("torch.nn.parameter", "Parameter"): _TENSOR_TYPES[1],
    ("torch.storage", "_load_from_bytes"): _LOAD_FROM_BYTES,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "Counter"): collections.Counter,  # MultiStepLR milestones
    ("_codecs", "encode"): _encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("numpy", "dtype"): _NpDtype,
    ("numpy", "ndarray"): _NDARRAY,
    **{(m, "_reconstruct"): _np_reconstruct_safe
       for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _np_scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _np_frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    **{("torch", n): f"torch.{n}" for n in _TORCH_DTYPES},  # dtypes: inert strings
    **{(m, n): _StorageType(n) for m in ("torch", "torch.cuda") for n in _STORAGE_DTYPES},
    ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage"),
}


class _Unpickler(pickle.Unpickler):
  """The one unpickler for every slot: globals come from `_ALLOWED` only."""

  def __init__(self, f: BinaryIO, persistent_load_fn: Callable[[Any], Any] | None, depth: int):
    super().__init__(f, encoding="latin1")
    self._persistent, self._depth = persistent_load_fn, depth

  def find_class(self, module: str, name: str):
    key = (module, name)
    if key in _compat_pickle.NAME_MAPPING:  # Python 2 names (protocol <= 2): __builtin__.set
      key = _compat_pickle.NAME_MAPPING[key]
    elif module in _compat_pickle.IMPORT_MAPPING:
      key = (_compat_pickle.IMPORT_MAPPING[module], name)
    found = _ALLOWED.get(key)
    if found is None:
      raise TorchFileError(_REFUSED.format(f"{key[0]}.{key[1]}"))
    if found is _LOAD_FROM_BYTES:
      return self._load_from_bytes
    return found

  def _load_from_bytes(self, payload):
    """`torch.storage._load_from_bytes`: a storage as a nested torch.save byte string (how plain
    pickle.dumps writes tensors), read by this same restricted reader."""
    if self._depth > 0:
      raise TorchFileError("a nested storage payload holds another nested payload")
    if not isinstance(payload, (bytes, bytearray)):
      raise TorchFileError("torch.storage._load_from_bytes of a non-bytes value")
    storage = _read(io.BytesIO(payload), self._depth + 1)
    if not isinstance(storage, _Storage):
      raise TorchFileError(f"a nested storage payload holds {type(storage).__name__}, "
                           "not a storage")
    return storage

  def persistent_load(self, pid):
    if self._persistent is None:
      raise TorchFileError(f"unexpected persistent id {pid!r} outside the object pickle")
    return self._persistent(pid)


def _unpickle(f: BinaryIO, persistent_load_fn=None, depth: int = 0) -> Any:
  return _Unpickler(f, persistent_load_fn, depth).load()


def _materialize(obj: Any, seen: dict[int, Any] | None = None) -> Any:
  """Replaces the lazy records (tensors, stray storages, numpy arrays and dtypes) in
  dicts/lists/tuples by NumPy objects."""
  seen = {} if seen is None else seen
  if id(obj) in seen:
    return seen[id(obj)]
  if isinstance(obj, _LazyTensor):
    out = seen[id(obj)] = obj.materialize()
    return out
  if isinstance(obj, _Storage):
    out = seen[id(obj)] = obj.array().copy()
    return out
  if isinstance(obj, _NpArray):
    if obj.array is None:
      raise TorchFileError("a numpy array without its data")
    return obj.array
  if isinstance(obj, _NpDtype):
    return obj.dtype
  if isinstance(obj, dict):
    seen[id(obj)] = obj
    for k in list(obj.keys()):
      obj[k] = _materialize(obj[k], seen)
    return obj
  if isinstance(obj, list):
    seen[id(obj)] = obj
    for i, v in enumerate(obj):
      obj[i] = _materialize(v, seen)
    return obj
  if isinstance(obj, tuple):
    return tuple(_materialize(v, seen) for v in obj)
  return obj


def _storage_dtype(storage_type) -> np.dtype:
  if isinstance(storage_type, _StorageType):
    return storage_type.dtype
  raise TorchFileError(f"unexpected storage type record {storage_type!r}")


def _read_zip(f: BinaryIO, depth: int) -> Any:
  with zipfile.ZipFile(f) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
      raise TorchFileError(f"zip archive without exactly one <archive>/data.pkl "
                           f"(found {pkl or 'none'}); not a torch.save file?")
    prefix = pkl[0][: -len("data.pkl")]
    order = prefix + "byteorder"
    if order in names and zf.read(order).decode().strip() != "little":
      raise TorchFileError("big-endian checkpoints are not supported")
    storages: dict[str, _Storage] = {}

    def persistent_load(pid):
      if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
        raise TorchFileError(f"unsupported persistent id {pid!r}")
      _, storage_type, key, _location, numel = pid[:5]
      if not isinstance(key, str):
        raise TorchFileError(f"storage key {key!r} is not a string")
      if key not in storages:
        entry = f"{prefix}data/{key}"
        if entry not in names:
          raise TorchFileError(f"storage {key} missing from the archive")
        storages[key] = _Storage(_storage_dtype(storage_type), numel,
                                 lambda e=entry: zf.read(e))
      return storages[key]

    obj = _unpickle(io.BytesIO(zf.read(pkl[0])), persistent_load, depth)
    for st in storages.values():  # read now: the archive closes on return
      st.array()
    return obj


def _remaining(f: BinaryIO) -> int:
  here = f.tell()
  end = f.seek(0, io.SEEK_END)
  f.seek(here)
  return end - here


def _read_legacy(f: BinaryIO, depth: int) -> Any:
  """The four pickles after the magic number, then the storage bytes."""
  protocol = _unpickle(f, None, depth)
  if type(protocol) is not int or protocol != _LEGACY_PROTOCOL:
    raise TorchFileError(f"unsupported legacy protocol version {protocol!r}")
  sys_info = _unpickle(f, None, depth)
  if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
    raise TorchFileError("big-endian checkpoints are not supported")
  roots: dict[str, _Storage] = {}
  views: dict[str, _Storage] = {}

  def persistent_load(pid):
    if not isinstance(pid, tuple) or not pid:
      raise TorchFileError(f"unsupported persistent id {pid!r}")
    if pid[0] == "module":  # pickled module source (whole-model saves): not needed
      return None
    if pid[0] != "storage" or len(pid) < 6:
      raise TorchFileError(f"unsupported persistent id {pid[0]!r}")
    _, storage_type, root_key, _location, numel, view_metadata = pid[:6]
    dtype = _storage_dtype(storage_type)
    if root_key not in roots:
      roots[root_key] = _Storage(dtype, numel, None)
    if view_metadata is None:
      return roots[root_key]
    view_key, offset, view_size = view_metadata
    if view_key not in views:
      v = _Storage(dtype, _index(view_size, "storage view size"), None)
      v.base = (roots[root_key], _index(offset, "storage view offset"))
      views[view_key] = v
    return views[view_key]

  obj = _unpickle(f, persistent_load, depth)
  keys = _unpickle(f, None, depth)
  if not isinstance(keys, list):
    raise TorchFileError(f"storage key list is a {type(keys).__name__}")
  for key in keys:
    st = roots.get(key) if isinstance(key, str) else None
    if st is None:
      raise TorchFileError(f"storage {key!r} listed but never referenced")
    head = f.read(8)
    if len(head) != 8:
      raise TorchFileError(f"truncated file (storage {key})")
    (count,) = struct.unpack("<q", head)
    nbytes = count * st.dtype.itemsize
    if count < 0 or nbytes > _remaining(f):  # checked before reading: no huge allocation
      raise TorchFileError(f"truncated file (storage {key} of {count} elements)")
    st.set_bytes(f.read(nbytes))
  return obj


def _read(f: BinaryIO, depth: int = 0) -> Any:
  """The object of a zip, legacy or bare-pickle stream, tensors still lazy."""
  head = f.read(512)
  f.seek(0)
  if head.startswith(_ZIP_MAGIC):
    return _read_zip(f, depth)
  if len(head) >= 262 and head[257:262] == b"ustar":
    raise TorchFileError("tar-format torch checkpoint (PyTorch < 0.1.10) is not supported; "
                         "re-save it with a recent torch")
  if not head:
    raise TorchFileError("empty file")
  first = _unpickle(f, None, depth)
  if type(first) is int and first == _LEGACY_MAGIC:
    return _read_legacy(f, depth)
  return first  # a bare pickle: its only object is the content


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
  text = text if len(text) <= 200 else text[:197] + "..."
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load(path: str | os.PathLike) -> Any:
  """torch.load(path, map_location="cpu", weights_only=True) without torch: tensors come back as
  NumPy arrays. Also reads bare pickles of state_dicts. Raises TorchFileError (one line, naming
  the file) for anything outside the allow-list and for any unreadable file."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise PathNotFound(f"{path} does not exist")
  try:
    with open(path, "rb") as f:
      return _materialize(_read(f))
  except TorchFileError as e:
    raise TorchFileError(f"{path}: {' '.join(str(e).split())}") from None
  except Exception as e:  # truncated/corrupt: EOFError, UnpicklingError, BadZipFile, ...
    raise TorchFileError(f"{path}: not a readable torch.save file or pickle, or truncated or "
                         f"corrupt ({_one_line(e)})") from e
