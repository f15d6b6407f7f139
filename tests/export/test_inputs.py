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


def _bomb(path: Path, **arrays: np.ndarray) -> Path:
    """A small .npz whose arrays (zeros) inflate to far more than the file's size."""
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture
def no_decompression(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening an archive member to read it fails the test: sizes are refused from the
    declarations (writing one, to build the archive, is fine)."""
    original = zipfile.ZipFile.open

    def refuse(self: zipfile.ZipFile, name: object, mode: str = "r", **kwargs: object) -> object:
        assert mode != "r", "a member was opened to be decompressed"
        return original(self, name, mode, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(zipfile.ZipFile, "open", refuse)


@pytest.mark.usefixtures("no_decompression")
def test_a_member_declaring_more_than_the_input_limit_is_refused_unread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 8 MiB of zeros in a 9 KB file, against a limit lowered to 1 MiB (the real one is 4 GiB:
    # a 6 MB file inflating to 6 GiB is the same case).
    path = _bomb(tmp_path / "bomb.npz", ok=np.ones(4, np.float32),
                 x=np.zeros(2 * 2**20, np.float32))
    assert path.stat().st_size < 20_000
    monkeypatch.setattr("wnconvert.export.inputs.MAX_INPUT_BYTES", 2**20)
    with pytest.raises(InputError) as caught:
        load_inputs_npz(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: member 'x.npy' declares 8,388,736 bytes uncompressed")
    assert "more than the 1,048,576 bytes wnconvert reads for one input" in message
    assert "\n" not in message


@pytest.mark.usefixtures("no_decompression")
def test_members_declaring_more_than_half_the_memory_together_are_refused_unread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _bomb(tmp_path / "bomb.npz", a=np.zeros(2**18, np.float32),
                 b=np.zeros(2**18, np.float32))
    monkeypatch.setattr("wnconvert.export.inputs.npz_memory_budget", lambda: 1_500_000)
    with pytest.raises(InputError, match="members declare 2,097,408 bytes uncompressed \\(up to "
                                         "'b.npy'\\), more than half this machine's memory"):
        load_inputs_npz(path)


def test_an_npz_bomb_is_refused_by_the_commands(tmp_path: Path, monkeypatch) -> None:
    """Through ``verify --inputs`` in-process: exit 2, one line, no traceback."""
    from typer.testing import CliRunner

    from tests.onnx_graph.builders import save, weight_norm_model
    from wnconvert.cli import app

    model = save(weight_norm_model((4, 3), 0)[0], tmp_path / "m.onnx")
    path = _bomb(tmp_path / "bomb.npz", x=np.zeros(2 * 2**20, np.float32))
    monkeypatch.setattr("wnconvert.export.inputs.MAX_INPUT_BYTES", 2**20)
    result = CliRunner().invoke(app, ["verify", str(model), "--reference", str(model),
                                      "--inputs", str(path)])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert f"{path}: member 'x.npy' declares" in line and "Traceback" not in result.output


def test_decompression_stops_at_the_declared_size(tmp_path: Path) -> None:
    """A member whose deflate stream holds more than its headers say: cut off at the declared
    size (and refused), never inflated in full."""
    good = _npy(np.ones(4, np.float32))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", good + bytes(4 * 2**20))  # 4 MiB more than the header says
    data = bytearray(buffer.getvalue())
    size = len(good) + 4 * 2**20
    # Both headers say the member is just the .npy of 4 floats.
    for header, at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = data.find(header)
        assert int.from_bytes(data[start + at:start + at + 4], "little") == size
        data[start + at:start + at + 4] = len(good).to_bytes(4, "little")
    path = tmp_path / "lying.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="cannot read as .npz"):
        load_inputs_npz(path)


@pytest.mark.parametrize("shape", [(-3, 4), (-3, -4)])
def test_a_negative_size_is_refused_even_when_the_count_is_positive(shape) -> None:
    from wnconvert.export.inputs import check_input_size

    with pytest.raises(InputError, match="has a negative size"):
        check_input_size("'x'", shape, "float32")


def test_npz_member_with_a_damaged_header_is_an_input_error(tmp_path: Path) -> None:
    # numpy parses the .npy header with Python's tokenizer: a broken bracket raised
    # tokenize.TokenError/SyntaxError through the reader instead of one error line.
    import io
    import zipfile

    buffer = io.BytesIO()
    np.save(buffer, np.ones((2, 3), np.float32))
    data = bytearray(buffer.getvalue())
    data[42] = ord("[")  # in 'descr': an unclosed bracket (found by fuzzing the Polygraphy reader)
    path = tmp_path / "bad.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", bytes(data))
    with pytest.raises(InputError, match="not a valid header"):
        load_inputs_npz(path)
