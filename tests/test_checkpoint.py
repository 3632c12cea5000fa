"""Tests of the torch-free, restricted legacy ``.pth`` reader."""

from __future__ import annotations

import pickle
import pickletools
import zipfile

import numpy as np
import pytest

from advpipe.models.checkpoint import (
    LEGACY_MAGIC_NUMBER,
    LEGACY_PROTOCOL_VERSION,
    UnsafeCheckpointError,
    UnsupportedCheckpointError,
    load_state_dict,
)
from advpipe.models.efficientnet_lite import checkpoint_path

SYS_INFO = {
    "protocol_version": LEGACY_PROTOCOL_VERSION,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 4},
}


# --- hand-written legacy checkpoints (pickle opcodes; no torch needed) ------------------


def _lit(obj) -> bytes:
    """Opcodes pushing a literal (str/int/tuple/None) on the pickle stack."""
    return pickle.dumps(obj, protocol=2)[2:-1]  # strip PROTO and STOP


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _call(module: str, name: str, *args) -> bytes:
    """Opcodes for ``module.name(*args)`` -- what a malicious ``__reduce__`` produces."""
    arguments = pickle.MARK + b"".join(_lit(a) for a in args) + pickle.TUPLE
    return _global(module, name) + arguments + pickle.REDUCE


def _tensor(key: str, storage: np.ndarray, offset: int, shape, stride) -> bytes:
    """Opcodes for ``torch._utils._rebuild_tensor_v2(<persistent storage>, ...)``."""
    storage_type = {"float32": "FloatStorage", "int64": "LongStorage"}[storage.dtype.name]
    persistent_id = (
        pickle.MARK
        + _lit("storage")
        + _global("torch", storage_type)
        + _lit(key)
        + _lit("cpu")
        + _lit(storage.size)
        + pickle.NONE
        + pickle.TUPLE
        + pickle.BINPERSID
    )
    hooks = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    return (
        _global("torch._utils", "_rebuild_tensor_v2")
        + pickle.MARK
        + persistent_id
        + _lit(offset)
        + _lit(tuple(shape))
        + _lit(tuple(stride))
        + pickle.NEWFALSE
        + hooks
        + pickle.TUPLE
        + pickle.REDUCE
    )


def _legacy_file(
    main_pickle: bytes, storages: dict[str, np.ndarray], sys_info: bytes | None = None
) -> bytes:
    """Assemble a legacy checkpoint: magic, protocol, sys_info, main pickle, keys, raw data."""
    header = (
        pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=2)
        + pickle.dumps(LEGACY_PROTOCOL_VERSION, protocol=2)
        + (sys_info if sys_info is not None else pickle.dumps(SYS_INFO, protocol=2))
    )
    raw = b"".join(
        np.int64(a.size).tobytes() + a.astype(a.dtype.newbyteorder("<")).tobytes()
        for a in storages.values()
    )
    return header + main_pickle + pickle.dumps(list(storages), protocol=2) + raw


def _state_dict_pickle(entries: list[tuple[str, bytes]]) -> bytes:
    body = b"".join(_lit(name) + tensor for name, tensor in entries)
    return (
        pickle.PROTO
        + b"\x02"
        + _global("collections", "OrderedDict")
        + pickle.EMPTY_TUPLE
        + pickle.REDUCE
        + pickle.MARK
        + body
        + pickle.SETITEMS
        + pickle.STOP
    )


def _manual_gather(storage: np.ndarray, offset: int, shape, stride) -> np.ndarray:
    """Reference strided gather: element at index i is storage[offset + i . stride]."""
    ndim = len(shape)
    flat_index = offset + sum(
        np.arange(n).reshape([-1 if d == axis else 1 for d in range(ndim)]) * s
        for axis, (n, s) in enumerate(zip(shape, stride))
    )
    return storage[flat_index]


# --- the real EfficientNet-Lite0 checkpoint ---------------------------------------------


@pytest.fixture(scope="module")
def lite0_state():
    return load_state_dict(checkpoint_path("lite0"))


def test_real_checkpoint_shapes(lite0_state):
    assert list(lite0_state)[0] == "_conv_stem.weight"
    expected = {
        "_conv_stem.weight": (32, 3, 3, 3),
        "_blocks.0._depthwise_conv.weight": (32, 1, 3, 3),
        "_blocks.3._depthwise_conv.weight": (144, 1, 5, 5),
        "_blocks.15._project_conv.weight": (320, 1152, 1, 1),
        "_conv_head.weight": (1280, 320, 1, 1),
        "_fc.weight": (1000, 1280),
        "_fc.bias": (1000,),
    }
    for key, shape in expected.items():
        assert lite0_state[key].shape == shape, key
        assert lite0_state[key].dtype == np.float32
    assert lite0_state["_bn0.num_batches_tracked"].dtype == np.int64
    assert all(v.flags.c_contiguous and v.flags.writeable for v in lite0_state.values())
    assert np.all(lite0_state["_bn0.running_var"] >= 0)


ITEMSIZE = {"torch FloatStorage": 4, "torch LongStorage": 8}


def _raw_storages_and_stem_key(path) -> tuple[dict[str, bytes], str]:
    """Independently walk the legacy file with :mod:`pickletools` (nothing is unpickled).

    Returns the raw bytes of every storage and the storage key of ``_conv_stem.weight``.
    """
    buffer = open(path, "rb").read()
    pos, itemsize, memo = 0, {}, {}
    for index in range(5):  # magic, protocol, sys_info, state dict, storage keys
        strings, last_global = [], None
        for opcode, arg, at in pickletools.genops(buffer[pos:]):
            if opcode.name in ("GLOBAL", "BINGET"):
                last_global = arg if opcode.name == "GLOBAL" else memo.get(arg)
            elif opcode.name == "BINPUT":
                memo[arg] = last_global
            elif opcode.name == "BINUNICODE":
                if last_global in ITEMSIZE:  # the storage key follows its storage type
                    itemsize[arg] = ITEMSIZE[last_global]
                strings.append(arg)
                last_global = None
            elif opcode.name == "STOP":
                pos += at + 1
                break
        if index == 3:
            main_strings = strings
    raw = {}
    for key in strings:  # the last pickle is the list of storage keys
        nbytes = int.from_bytes(buffer[pos : pos + 8], "little") * itemsize[key]
        raw[key] = buffer[pos + 8 : pos + 8 + nbytes]
        pos += 8 + nbytes
    assert pos == len(buffer)
    at = main_strings.index("_conv_stem.weight")
    assert main_strings[at + 1] == "storage"
    return raw, main_strings[at + 2]


def test_real_noncontiguous_weight_matches_manual_gather(lite0_state):
    # As recorded in the file (see pickletools.dis): the stem kernel has size
    # (32, 3, 3, 3), stride (1, 32, 288, 96), offset 0 -- channels-last storage.
    raw, key = _raw_storages_and_stem_key(checkpoint_path("lite0"))
    storage = np.frombuffer(raw[key], dtype="<f4")
    assert storage.size == 32 * 3 * 3 * 3
    expected = _manual_gather(storage, 0, (32, 3, 3, 3), (1, 32, 288, 96))
    np.testing.assert_array_equal(lite0_state["_conv_stem.weight"], expected)
    assert not np.array_equal(expected, storage.reshape(32, 3, 3, 3))  # really non-contiguous


def test_noncontiguous_tensor_matches_manual_gather(tmp_path):
    storage = np.arange(200, dtype=np.float32) * 0.5
    shape, stride, offset = (4, 3, 2, 2), (1, 16, 4, 48), 5  # OIHW viewed on channels-last data
    counter = np.arange(3, dtype=np.int64)
    main = _state_dict_pickle(
        [
            ("w", _tensor("k0", storage, offset, shape, stride)),
            ("t", _tensor("k0", storage, 7, (3, 2), (2, 1))),
            ("n", _tensor("k1", counter, 2, (), ())),
        ]
    )
    path = tmp_path / "strided.pth"
    path.write_bytes(_legacy_file(main, {"k0": storage, "k1": counter}))

    state = load_state_dict(path)
    assert list(state) == ["w", "t", "n"]
    np.testing.assert_array_equal(state["w"], _manual_gather(storage, offset, shape, stride))
    np.testing.assert_array_equal(state["t"], storage[7:13].reshape(3, 2))
    assert state["n"].shape == () and state["n"] == 2


def test_out_of_bounds_geometry_is_refused(tmp_path):
    storage = np.zeros(10, dtype=np.float32)
    # a (4, 4) contiguous view needs 16 elements, the storage has 10
    main = _state_dict_pickle([("w", _tensor("k0", storage, 0, (4, 4), (4, 1)))])
    path = tmp_path / "oob.pth"
    path.write_bytes(_legacy_file(main, {"k0": storage}))
    with pytest.raises(UnsupportedCheckpointError, match="exceeds its storage"):
        load_state_dict(path)


# --- malicious and unsupported files ---------------------------------------------------


def _eval_payload(marker) -> bytes:
    """A pickle that creates ``marker`` when loaded with plain :func:`pickle.load`."""
    code = f"open({str(marker)!r}, 'w').close()"
    return pickle.PROTO + b"\x02" + _call("builtins", "eval", code) + pickle.STOP


def test_malicious_payload_is_real(tmp_path):
    """Control: the very file the next test refuses runs its payload under plain pickle.

    The legacy file is a sequence of pickles (magic, protocol, sys_info, main); read it
    the way an unrestricted loader does and the ``eval`` runs. So it is the restricted
    unpickler of :func:`load_state_dict`, not the file, that keeps the marker away.
    """
    marker = tmp_path / "executed_by_plain_pickle"
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_file(_eval_payload(marker), {}))
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.eval"):
        load_state_dict(path)
    assert not marker.exists()
    with path.open("rb") as f:
        assert pickle.load(f) == LEGACY_MAGIC_NUMBER
        assert pickle.load(f) == LEGACY_PROTOCOL_VERSION
        pickle.load(f)  # sys_info
        pickle.load(f)  # the main pickle: the payload
    assert marker.exists()


@pytest.mark.parametrize("where", ["main", "sys_info"])
def test_eval_global_is_refused_and_not_executed(tmp_path, where):
    marker = tmp_path / "pwned"
    payload = _eval_payload(marker)
    if where == "main":
        content = _legacy_file(payload, {})
    else:
        content = _legacy_file(_state_dict_pickle([]), {}, sys_info=payload)
    path = tmp_path / "evil.pth"
    path.write_bytes(content)
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.eval"):
        load_state_dict(path)
    assert not marker.exists()


def test_os_system_hidden_in_state_dict_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    storage = np.ones(2, dtype=np.float32)
    main = _state_dict_pickle(
        [
            ("ok", _tensor("k0", storage, 0, (2,), (1,))),
            ("bad", _call("os", "system", f"touch '{marker}'")),
        ]
    )
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_file(main, {"k0": storage}))
    with pytest.raises(UnsafeCheckpointError, match=r"os\.system"):
        load_state_dict(path)
    assert not marker.exists()
    assert issubclass(UnsafeCheckpointError, pickle.UnpicklingError)


def test_zip_checkpoint_is_refused(tmp_path):
    path = tmp_path / "new_format.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({}))
    with pytest.raises(UnsupportedCheckpointError, match="zip"):
        load_state_dict(path)


def test_non_checkpoint_is_refused(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(UnsupportedCheckpointError, match="bad magic number"):
        load_state_dict(path)
