"""Read PyTorch checkpoints (``torch.save`` zip files, legacy files, plain pickles of modules)
without torch and without running code from the file.

A pickle can name any importable callable and have it called while loading (``os.system`` via
``__reduce__``); :class:`RestrictedUnpickler` resolves only an allow-list: the tensor and
parameter rebuild functions (re-implemented here on numpy), storage types, ``OrderedDict`` and
plain containers. Classes a network pickle names (``torch.nn`` modules, EDM's persistent
classes, whose source code is in the file and is never executed) become inert
:class:`InertObject` stand-ins that only keep their pickled state. Anything else is refused with
:class:`UnsafePickleError` before it is called.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmjax.errors import CheckpointImportError, UnsafePickleError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

# torch.save's legacy (pre-zip) format starts with this pickled number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass(frozen=True)
class StorageType:
    """Stands in for ``torch.FloatStorage`` etc.: just the element dtype."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        if self.name == "BFloat16Storage":
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(_STORAGE_DTYPES[self.name])


@dataclass
class Storage:
    """A flat typed buffer; ``array`` is filled once the file's data is read."""

    dtype: np.dtype
    numel: int
    array: np.ndarray | None = None


@dataclass
class LazyTensor:
    """A strided view of a storage, turned into a numpy array by :func:`materialize`."""

    storage: Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def numpy(self) -> np.ndarray:
        data = self.storage.array
        if data is None:
            raise CheckpointImportError("a tensor's storage has no data in the file")
        size = tuple(int(s) for s in self.size)
        if not size:
            return np.array(data[self.offset])
        if 0 in size:
            return np.zeros(size, data.dtype)
        last = self.offset + sum((s - 1) * st for s, st in zip(size, self.stride, strict=True))
        if last >= data.size:
            raise CheckpointImportError("a tensor reaches past the end of its storage")
        strides = tuple(int(st) * data.itemsize for st in self.stride)
        view = np.lib.stride_tricks.as_strided(data[self.offset :], size, strides, writeable=False)
        return np.array(view)


class InertObject:
    """Stands in for a class named by the pickle; keeps the pickled state and runs nothing.

    ``cls_name`` is "module.Class" as the pickle names it; ``state`` what the pickle gave to
    ``__setstate__`` (a module's ``__dict__``); ``meta`` EDM's persistence metadata
    (class_name, state; its ``module_src`` is kept as a string and never executed).
    """

    cls_name = "?"
    # Class-level defaults: pickle's NEWOBJ creates instances without calling __init__.
    args: tuple = ()
    state: Any = None
    meta: dict | None = None

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<inert {self.cls_name}>"


_INERT: dict[str, type] = {}


def _inert_class(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _INERT:
        _INERT[key] = type(name, (InertObject,), {"cls_name": key})
    return _INERT[key]


def _edm_persistent_obj(meta: dict) -> InertObject:
    """EDM's ``torch_utils.persistence._reconstruct_persistent_obj`` without exec'ing the
    embedded source: an inert object named by ``meta['class_name']`` holding its state."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise UnsafePickleError("unsupported EDM persistent object (expected type 'class')")
    obj = _inert_class("persistent", str(meta.get("class_name")))()
    obj.meta = {k: v for k, v in meta.items() if k != "module_src"}
    obj.state = meta.get("state")
    return obj


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, meta=None):
    if not isinstance(storage, Storage):
        raise UnsafePickleError("a tensor is rebuilt from something that is not a storage")
    return LazyTensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_tensor(storage, offset, size, stride):
    return _rebuild_tensor_v2(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    return data


def _torch_size(*args):
    return tuple(*args)


def _numpy_scalar(dtype, data=b""):
    return np.frombuffer(data, dtype=np.dtype(dtype))[0] if isinstance(data, bytes) else data


def _numpy_dtype(name, align=False, copy=False):
    return np.dtype(name)


def _numpy_reconstruct(*args):
    raise UnsafePickleError("numpy arrays pickled by numpy are not supported; save tensors")


SAFE_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _torch_size,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _edm_persistent_obj,
}

# Classes that only carry state (module containers, EDM's dict type): inert stand-ins.
INERT_MODULE_PREFIXES = ("torch.nn.modules.",)
INERT_CLASSES = {("dnnlib.util", "EasyDict")}


@dataclass
class _Context:
    """Storages of one file; ``read`` loads a storage's bytes (zip) or is None (legacy)."""

    where: str
    read: Callable[[str], bytes] | None
    storages: dict[str, Storage] = field(default_factory=dict)


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only :data:`SAFE_GLOBALS`, storage types and inert
    stand-ins, and turns torch's persistent storage ids into :class:`Storage` objects."""

    def __init__(self, file, ctx: _Context):
        super().__init__(file)
        self.ctx = ctx

    def find_class(self, module: str, name: str):
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[(module, name)]
        if module == "torch" and (name in _STORAGE_DTYPES or name == "BFloat16Storage"):
            return StorageType(name)
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return lambda data: _load_nested(data, self.ctx.where)
        if module.startswith(INERT_MODULE_PREFIXES) or (module, name) in INERT_CLASSES:
            return _inert_class(module, name)
        raise UnsafePickleError(
            f"{self.ctx.where}: refusing to load {module}.{name}: this file's pickle names "
            "code that is neither a tensor nor a plain container, and loading it could run "
            "that code; nothing was run"
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnsafePickleError(f"{self.ctx.where}: unsupported persistent id {pid!r:.60}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, StorageType):
            raise UnsafePickleError(f"{self.ctx.where}: storage of unknown type {storage_type!r}")
        key = str(key)
        if key not in self.ctx.storages:
            dtype = storage_type.dtype
            storage = Storage(dtype, int(numel))
            if self.ctx.read is not None:
                raw = self.ctx.read(key)
                storage.array = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))[: int(numel)]
            self.ctx.storages[key] = storage
        return self.ctx.storages[key]


def _unpickle(data: bytes | io.BufferedIOBase, ctx: _Context) -> Any:
    f = io.BytesIO(data) if isinstance(data, bytes) else data
    return RestrictedUnpickler(f, ctx).load()


def _load_zip(data: bytes | Path, where: str) -> Any:
    with zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("data.pkl")]
        if not pkl:
            raise CheckpointImportError(f"{where}: a zip without data.pkl is not a torch file")
        prefix = pkl[0][: -len("data.pkl")]

        def read(key: str) -> bytes:
            return z.read(f"{prefix}data/{key}")

        return _unpickle(z.read(pkl[0]), _Context(where, read))


def _load_legacy(f: io.BufferedIOBase, where: str) -> Any:
    ctx = _Context(where, None)
    magic = _unpickle(f, ctx)
    if magic != _LEGACY_MAGIC:
        raise CheckpointImportError(f"{where}: not a torch.save file (bad magic number)")
    _unpickle(f, ctx)  # protocol version
    _unpickle(f, ctx)  # sys info
    obj = _unpickle(f, ctx)
    keys = _unpickle(f, ctx)
    for key in keys:
        storage = ctx.storages.get(str(key))
        (numel,) = struct.unpack("<q", f.read(8))
        if storage is None:
            raise CheckpointImportError(f"{where}: data for an unknown storage {key!r}")
        nbytes = numel * storage.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise CheckpointImportError(f"{where}: the file ends inside a tensor (truncated?)")
        storage.array = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"))
    return obj


def _load_nested(data: bytes, where: str) -> Storage:
    """``torch.storage._load_from_bytes``: a storage saved inside a plain pickle."""
    if not isinstance(data, bytes):
        raise UnsafePickleError(f"{where}: _load_from_bytes of {type(data).__name__}")
    obj = _load_zip(data, where) if data[:2] == b"PK" else _load_legacy(io.BytesIO(data), where)
    if not isinstance(obj, Storage):
        raise UnsafePickleError(f"{where}: a nested torch.save holds {type(obj).__name__}")
    return obj


def materialize(obj: Any, _seen: dict[int, Any] | None = None) -> Any:
    """``obj`` with every tensor as a numpy array (dicts, lists, tuples, inert states)."""
    seen = {} if _seen is None else _seen
    if isinstance(obj, LazyTensor):
        return obj.numpy()
    if id(obj) in seen:
        return seen[id(obj)]
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, OrderedDict) else {}
        seen[id(obj)] = out
        for k, v in obj.items():
            out[k] = materialize(v, seen)
        return out
    if isinstance(obj, list | tuple):
        return type(obj)(materialize(v, seen) for v in obj)
    if isinstance(obj, InertObject):
        seen[id(obj)] = obj
        obj.state = materialize(obj.state, seen)
        obj.args = materialize(obj.args, seen)
        return obj
    return obj


def load(path: str | Path) -> Any:
    """The object in a torch checkpoint, tensors as numpy arrays; runs no code from the file.

    Handles ``torch.save`` zip files (state dicts such as ``cd_imagenet64_l2.pt``), legacy
    ``torch.save`` files and plain pickles (EDM's ``network-snapshot-*.pkl``).
    """
    path = Path(path)
    try:
        return _load(path)
    except CheckpointImportError:
        raise
    except (
        zipfile.BadZipFile,
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        IndexError,
        struct.error,
        UnicodeDecodeError,
        RecursionError,
        MemoryError,  # a length field that asks for more than the file holds
        OverflowError,
    ) as e:  # a malformed file: its bytes, not our code
        text = " ".join(str(e).split())[:200]
        raise CheckpointImportError(
            f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {text}); is the "
            "download complete?"
        ) from None


def _load(path: Path) -> Any:
    where = str(path)
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if head == b"PK":
            obj = _load_zip(path, where)
        else:
            ctx = _Context(where, None)
            first = _unpickle(f, ctx)
            if isinstance(first, int) and first == _LEGACY_MAGIC:
                f.seek(0)
                obj = _load_legacy(f, where)
            else:
                obj = first
    return materialize(obj)
