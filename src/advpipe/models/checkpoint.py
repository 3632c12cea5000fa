"""Torch-free, restricted reader for PyTorch *legacy* ``.pth`` state dicts.

PyTorch's legacy (pre-1.6, non-zip) serialisation is a concatenation of
pickles followed by raw tensor storages::

    pickle(MAGIC_NUMBER)
    pickle(PROTOCOL_VERSION)           # 1001
    pickle(sys_info)                   # {'little_endian': True, ...}
    pickle(state_dict)                 # tensors refer to storages by key
    pickle([storage_key, ...])         # order of the raw blocks below
    for each key: <int64 LE element count> <count * itemsize raw bytes>

Inside the main pickle every tensor is ``torch._utils._rebuild_tensor_v2(
storage, storage_offset, size, stride, ...)`` and every storage is a
*persistent id* ``('storage', StorageType, key, location, size[, view])``.

Unpickling such a file with plain :mod:`pickle` executes whatever globals the
file names, so this module uses a :class:`pickle.Unpickler` whose
``find_class`` only resolves an explicit allow-list and maps each allowed name
to a local stand-in.  Torch is never imported.  Anything else raises
:class:`UnsafeCheckpointError` before it can be called.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass
from os import PathLike
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = [
    "UnsafeCheckpointError",
    "UnsupportedCheckpointError",
    "load_state_dict",
]

#: Magic number written first by ``torch.save`` in the legacy format.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
#: Legacy serialisation protocol version understood by this reader.
LEGACY_PROTOCOL_VERSION = 1001

#: Legacy storage classes and the NumPy dtype of their elements (little endian).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint references a global outside the state-dict allow-list."""


class UnsupportedCheckpointError(ValueError):
    """The file is not a (well-formed) legacy PyTorch checkpoint."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a ``torch.*Storage`` class: only carries the dtype."""

    name: str
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    """A storage (or a view of one) named by the main pickle; data comes later."""

    key: str
    dtype: np.dtype
    size: int
    view_offset: int = 0
    view_size: int | None = None


@dataclass(frozen=True)
class _PendingTensor:
    """Arguments of ``_rebuild_tensor_v2``, resolved once storages are read."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_ignored) -> _PendingTensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2`` (requires_grad, hooks ignored)."""
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride) -> _PendingTensor:
    """Stand-in for ``torch._utils._rebuild_tensor``."""
    if not isinstance(storage, _StorageRef):
        raise UnsupportedCheckpointError("tensor rebuilt from something that is not a storage")
    return _PendingTensor(storage, int(storage_offset), tuple(map(int, size)),
                          tuple(map(int, stride)))


def _rebuild_parameter(data, requires_grad, backward_hooks, *_ignored):
    """Stand-in for ``torch._utils._rebuild_parameter``: a Parameter is its data."""
    return data


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler resolving only :data:`_SAFE_GLOBALS`; records storage references."""

    def __init__(self, file: io.BufferedIOBase) -> None:
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load global '{module}.{name}': only state dicts of "
                "tensors are allowed (OrderedDict, torch._utils._rebuild_tensor*, "
                "torch.*Storage)"
            ) from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise UnsupportedCheckpointError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, size = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsupportedCheckpointError(f"unknown storage type {storage_type!r}")
        key, size = str(key), int(size)
        root = self.storages.setdefault(key, _StorageRef(key, storage_type.dtype, size))
        if root.dtype != storage_type.dtype or root.size != size:
            raise UnsupportedCheckpointError(f"storage {key!r} declared inconsistently")
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return root
        _view_key, view_offset, view_size = view
        return _StorageRef(key, root.dtype, size, int(view_offset), int(view_size))


def _read_storages(
    stream: io.BytesIO, buffer: bytes, keys: list[str], refs: dict[str, _StorageRef]
) -> dict[str, np.ndarray]:
    """Read the raw storage blocks following the pickles, in ``keys`` order."""
    arrays: dict[str, np.ndarray] = {}
    pos = stream.tell()
    for key in keys:
        if key not in refs:
            raise UnsupportedCheckpointError(f"storage {key!r} listed but never referenced")
        ref = refs[key]
        if pos + 8 > len(buffer):
            raise UnsupportedCheckpointError("truncated checkpoint (storage header)")
        count = int.from_bytes(buffer[pos : pos + 8], "little", signed=True)
        pos += 8
        nbytes = count * ref.dtype.itemsize
        if count != ref.size or pos + nbytes > len(buffer):
            raise UnsupportedCheckpointError(f"storage {key!r}: bad element count {count}")
        arrays[key] = np.frombuffer(buffer, dtype=ref.dtype, count=count, offset=pos)
        pos += nbytes
    missing = set(refs) - set(arrays)
    if missing:
        raise UnsupportedCheckpointError(f"storages without data: {sorted(missing)}")
    return arrays


def _materialise(tensor: _PendingTensor, storages: dict[str, np.ndarray]) -> np.ndarray:
    """Gather a (possibly non-contiguous) tensor from its storage, bounds-checked."""
    ref = tensor.storage
    flat = storages[ref.key]
    if ref.view_size is not None:
        flat = flat[ref.view_offset : ref.view_offset + ref.view_size]
    shape, stride, offset = tensor.shape, tensor.stride, tensor.offset
    if len(shape) != len(stride) or min(shape, default=0) < 0 or min(stride, default=0) < 0:
        raise UnsupportedCheckpointError(f"invalid tensor geometry {shape} / {stride}")
    if 0 in shape:
        return np.empty(shape, dtype=flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(shape, stride))
    if offset < 0 or last >= flat.size:
        raise UnsupportedCheckpointError(
            f"tensor {shape} / {stride} at offset {offset} exceeds its storage ({flat.size})"
        )
    base = flat[offset:]
    strides = [s * base.itemsize for s in stride]
    view = as_strided(base, shape=shape, strides=strides, writeable=False)
    return np.array(view, copy=True, order="C")


def _resolve(obj: Any, storages: dict[str, np.ndarray]) -> Any:
    """Replace every pending tensor in a nested dict/list by its NumPy array."""
    if isinstance(obj, _PendingTensor):
        return _materialise(obj, storages)
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _resolve(v, storages)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, storages) for v in obj)
    return obj


def load_state_dict(path: str | PathLike[str]) -> dict[str, np.ndarray]:
    """Load a legacy-format PyTorch state dict as an ordered ``{name: ndarray}``.

    Only the globals a plain state dict needs are resolved; any other global
    raises :class:`UnsafeCheckpointError` without being called.  Zip-format
    (PyTorch >= 1.6 default) files raise :class:`UnsupportedCheckpointError`.
    """
    with open(path, "rb") as fh:
        buffer = fh.read()
    if buffer[:4] == b"PK\x03\x04":
        raise UnsupportedCheckpointError(
            f"{path}: zip-format PyTorch checkpoint; only the legacy (non-zip) "
            "format is supported (re-save with _use_new_zipfile_serialization=False)"
        )
    stream = io.BytesIO(buffer)

    def next_pickle() -> tuple[Any, _RestrictedUnpickler]:
        unpickler = _RestrictedUnpickler(stream)
        try:
            return unpickler.load(), unpickler
        except UnsafeCheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise UnsupportedCheckpointError(
                f"{path}: not a legacy PyTorch checkpoint ({exc})"
            ) from exc

    if next_pickle()[0] != LEGACY_MAGIC_NUMBER:
        raise UnsupportedCheckpointError(f"{path}: bad magic number, not a legacy checkpoint")
    if next_pickle()[0] != LEGACY_PROTOCOL_VERSION:
        raise UnsupportedCheckpointError(f"{path}: unsupported legacy protocol version")
    sys_info = next_pickle()[0]
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian", False)):
        raise UnsupportedCheckpointError(f"{path}: only little-endian checkpoints are supported")
    state, main = next_pickle()
    keys = next_pickle()[0]
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise UnsupportedCheckpointError(f"{path}: malformed storage key list")
    storages = _read_storages(stream, buffer, keys, main.storages)
    result = _resolve(state, storages)
    if not isinstance(result, dict):
        raise UnsupportedCheckpointError(f"{path}: top-level object is not a state dict")
    return result
