"""``load_inputs_npz``: what np.savez writes loads exactly; damaged archives are InputErrors."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.fuzzing import FUZZ, examples, flips
from wnconvert.errors import InputError
from wnconvert.export.inputs import load_inputs_npz

ARRAYS = {"mel": np.arange(12, dtype=np.float32).reshape(3, 4), "ids": np.ones(3, np.int64),
          "mask": np.asfortranarray(np.eye(3, dtype=np.bool_)),
          "half": np.linspace(-1, 1, 6, dtype=np.float16)}


def _npz(*, compressed: bool) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **ARRAYS)
    return buffer.getvalue()


NPZ = {False: _npz(compressed=False), True: _npz(compressed=True)}


@pytest.mark.parametrize("compressed", [False, True])
def test_savez_round_trip_is_exact_and_ordered(tmp_path: Path, compressed: bool) -> None:
    path = tmp_path / "inputs.npz"
    path.write_bytes(NPZ[compressed])
    loaded = load_inputs_npz(path)
    assert list(loaded) == list(ARRAYS)
    with np.load(path, allow_pickle=False) as reference:
        for name, array in ARRAYS.items():
            assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
            np.testing.assert_array_equal(loaded[name], array)
            np.testing.assert_array_equal(loaded[name], reference[name])
            assert loaded[name].flags.writeable


def _rewritten(members: dict[str, bytes], *, encrypted: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    data = bytearray(buffer.getvalue())
    if encrypted is not None:  # set the "encrypted" flag in both headers of that member
        name = encrypted.encode()
        for header, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            at = data.find(header)
            while at >= 0:
                if name in data[at:at + 64]:
                    data[at + flag_at] |= 1
                at = data.find(header, at + 4)
    return bytes(data)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("case, phrase", [
    ("huge-shape", "needs"),  # numpy would allocate the declared shape before reading
    ("short-data", "needs"),
    ("long-data", "needs"),
    ("not-npy", "not an .npy array"),
    ("object", "not a plain numeric type"),
    ("structured", "not a plain numeric type"),
    ("encrypted", "encrypted"),
    ("bad-deflate", "cannot read as .npz"),
    ("empty", "holds no arrays"),
])
def test_damaged_archives_are_input_errors(tmp_path: Path, case: str, phrase: str) -> None:
    good = _npy(np.ones(4, np.float32))
    members = {"x.npy": good}
    if case == "huge-shape":
        members["x.npy"] = good.replace(b"(4,)", b"(1099511627776,)".ljust(4))
    elif case == "short-data":
        members["x.npy"] = good[:-4]
    elif case == "long-data":
        members["x.npy"] = good + b"\0" * 4
    elif case == "not-npy":
        members["notes.txt"] = b"hello"
    elif case == "object":
        members["x.npy"] = good.replace(b"'<f4'", b"'|O' ")
    elif case == "structured":
        members["x.npy"] = _npy(np.zeros(2, dtype=[("a", np.float32), ("b", np.int8)]))
    elif case == "empty":
        members = {}
    path = tmp_path / "inputs.npz"
    if case == "bad-deflate":
        data = bytearray(NPZ[True])
        # Past the name and numpy's 20-byte zip64 extra field: inside mel's deflate data.
        data[data.find(b"mel.npy") + len("mel.npy") + 40] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(_rewritten(members, encrypted="x.npy" if case == "encrypted" else None))
    with pytest.raises(InputError, match=phrase) as caught:
        load_inputs_npz(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@settings(FUZZ, max_examples=examples(60))
@given(flips=flips, compressed=st.booleans(), cut=st.integers(0, 40))
@example(flips=[(247, 0)], compressed=True, cut=0)  # deflate data: zlib.error escaped
@example(flips=[(1048576, 1)], compressed=False, cut=0)  # "encrypted": RuntimeError escaped
def test_mutated_archives_load_or_are_input_errors(tmp_path: Path, flips, compressed: bool,
                                                    cut: int) -> None:
    data = bytearray(NPZ[compressed])
    for where, value in flips:
        data[where % len(data)] = value
    path = tmp_path / "inputs.npz"
    path.write_bytes(bytes(data[:len(data) - cut]))
    try:
        loaded = load_inputs_npz(path)
    except InputError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
    else:
        assert loaded and all(array.size for array in loaded.values())
