"""wnconvert's own safetensors reader/writer against the safetensors library."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file

from wnconvert import InputError
from wnconvert.dtypes import tensor_to_numpy
from wnconvert.formats import PlannedTensor, TensorInfo, source_of
from wnconvert.formats import safetensors_format as st


def assorted() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "a.float32": torch.randn(3, 5),
        "b.bfloat16": torch.randn(4, 3).to(torch.bfloat16),
        "c.float16": torch.randn(7).to(torch.float16),
        "d.int64": torch.arange(-5, 5).reshape(2, 5),
        "e.bool": torch.tensor([True, False, True]),
        "f.float64": torch.randn(2, 2, dtype=torch.float64),
        "g.scalar": torch.tensor(3.5),
        "h.empty": torch.zeros(0, 4),
        "i.uint8": torch.arange(9, dtype=torch.uint8),
        "j.float8": torch.tensor([0.5, -2.0]).to(torch.float8_e4m3fn),
    }


def bits(t: torch.Tensor) -> bytes:
    return t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""


def plan_for(tensors) -> list[PlannedTensor]:
    source = source_of(tensors)
    return [PlannedTensor(k, source.info(k), k) for k in source.keys()]


def write(path: Path, tensors, metadata=None) -> int:
    with open(path, "wb") as handle:
        return st.write_safetensors(handle, plan_for(tensors), source_of(tensors),
                                    metadata=metadata)


# --------------------------------------------------------------------------- reading


def test_reads_files_written_by_safetensors(save_st):
    tensors = assorted()
    path = save_st(tensors, metadata={"format": "pt", "note": "x"})
    file = st.SafetensorsFile(path)
    assert file.metadata == {"format": "pt", "note": "x"}
    assert sorted(file.keys()) == sorted(tensors)
    for key, tensor in tensors.items():
        info = file.info(key)
        assert info == TensorInfo(tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
        assert file.load(key).tobytes() == bits(tensor)
    assert (file.data_start) % 8 == 0


def test_source_keys_are_in_file_order(save_st):
    path = save_st({"z": torch.ones(1), "a": torch.ones(2), "m": torch.ones(3)})
    # safetensors' own writer sorts by dtype/name; whatever it chose, we follow the offsets.
    file = st.SafetensorsFile(path)
    offsets = [file.entries[k][1] for k in file.keys()]
    assert offsets == sorted(offsets)
    assert st.open_safetensors(path).keys() == file.keys()


def test_loaded_arrays_are_private_copies(save_st):
    path = save_st({"w": torch.ones(4)})
    file = st.SafetensorsFile(path)
    a = file.load("w")
    a[0] = 5
    assert file.load("w")[0] == 1
    assert a.flags.writeable


# --------------------------------------------------------------------------- writing


def test_written_file_is_readable_by_safetensors_bit_identical(tmp_path):
    tensors = assorted()
    path = tmp_path / "ours.safetensors"
    size = write(path, tensors, metadata={"format": "pt", "source": "test"})
    assert size == path.stat().st_size
    loaded = load_file(str(path))
    assert sorted(loaded) == sorted(tensors)
    for key, tensor in tensors.items():
        assert loaded[key].dtype == tensor.dtype and loaded[key].shape == tensor.shape
        assert bits(loaded[key]) == bits(tensor)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "source": "test"}
        assert list(f.keys()) == sorted(tensors)
        assert torch.equal(f.get_tensor("d.int64"), tensors["d.int64"])
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert (8 + header_len) % 8 == 0  # tensor data is 8-byte aligned


def test_written_header_order_and_offsets(tmp_path):
    tensors = {"second": torch.ones(3), "first": torch.zeros(2, dtype=torch.float64)}
    path = tmp_path / "o.safetensors"
    write(path, tensors)
    raw = path.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + header_len])
    assert "__metadata__" not in header
    assert header["second"] == {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}
    assert header["first"] == {"dtype": "F64", "shape": [2], "data_offsets": [12, 28]}
    assert st.SafetensorsFile(path).keys() == ["second", "first"]


def test_copy_raw_passes_bytes_through_unchanged(tmp_path, save_st):
    tensors = assorted()
    src_path = save_st(tensors)
    source = st.open_safetensors(src_path)
    plan = [PlannedTensor(k, source.info(k), k) for k in source.keys()]
    out = tmp_path / "copy.safetensors"
    with open(out, "wb") as handle:
        st.write_safetensors(handle, plan, source, metadata={"k": "v"})
    loaded = load_file(str(out))
    for key, tensor in tensors.items():
        assert bits(loaded[key]) == bits(tensor)


def test_produced_tensors_are_checked_against_the_plan(tmp_path):
    plan = [PlannedTensor("w", TensorInfo((2,), "float32"), "w",
                          lambda: np.zeros(3, dtype=np.float32))]
    with open(tmp_path / "out.safetensors", "wb") as out, \
            pytest.raises(AssertionError, match="internal error: w"):
        st.write_safetensors(out, plan, None)


def test_streamed_pieces_are_checked_against_the_plan(tmp_path):
    def write_into(write):
        write(4, np.zeros(2, dtype=np.float32))  # bytes 4..12 of an 8-byte tensor

    plan = [PlannedTensor("w", TensorInfo((2,), "float32"), "w", None, write_into)]
    with open(tmp_path / "out.safetensors", "wb") as out, \
            pytest.raises(AssertionError, match="internal error: w"):
        st.write_safetensors(out, plan, None)


def test_streamed_pieces_land_at_their_offsets_in_any_order(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(4, 3)

    def write_into(write):
        for row in (3, 1, 0, 2):  # out of order, as threads may finish
            write(row * 12, w[row : row + 1])

    plan = [PlannedTensor("b", TensorInfo((1,), "float16"), "b",
                          lambda: np.ones(1, dtype=np.float16)),
            PlannedTensor("w", TensorInfo((4, 3), "float32"), "w", None, write_into),
            PlannedTensor("z", TensorInfo((0,), "float32"), "z",
                          lambda: np.zeros(0, dtype=np.float32))]
    path = tmp_path / "out.safetensors"
    with open(path, "wb") as out:
        size = st.write_safetensors(out, plan, None, metadata={"k": "v"})
    assert path.stat().st_size == size
    loaded = load_numpy(str(path))
    assert np.array_equal(loaded["w"], w)
    assert np.array_equal(loaded["b"], np.ones(1, dtype=np.float16))
    assert loaded["z"].shape == (0,)


def test_view_is_a_read_only_map_of_the_file(tmp_path):
    path = tmp_path / "in.safetensors"
    tensors = {"a": np.arange(5, dtype=np.float32), "b": np.arange(7, dtype=np.float64),
               "e": np.zeros((0, 3), dtype=np.float32)}
    save_numpy(tensors, str(path))
    source = st.open_safetensors(path)
    for key, want in tensors.items():
        view = source.view(key)
        assert view.dtype == want.dtype and view.shape == want.shape
        assert np.array_equal(view, want)
        if view.size:
            assert not view.flags.writeable
            with pytest.raises(ValueError, match="read-only"):
                view[0] = 1


def test_dtype_that_safetensors_cannot_hold():
    with pytest.raises(InputError, match="complex64 cannot be stored in safetensors"):
        st.dtype_code("complex64")


def test_array_bytes_keeps_0d_and_non_contiguous():
    assert bytes(st.array_bytes(np.array(1.5, dtype=np.float32))) == np.float32(1.5).tobytes()
    a = np.arange(6, dtype=np.int16).reshape(2, 3).T
    assert bytes(st.array_bytes(a)) == np.ascontiguousarray(a).tobytes()
    assert bytes(st.array_bytes(np.zeros((0, 3)))) == b""


def test_zero_d_tensors_keep_their_shape(tmp_path):
    tensors = {"g": torch.tensor(2.5), "b": torch.tensor(2.5, dtype=torch.bfloat16)}
    path = tmp_path / "s.safetensors"
    write(path, tensors)
    assert load_file(str(path))["g"].shape == ()
    file = st.SafetensorsFile(path)
    assert file.info("b").shape == () and file.load("b").shape == ()
    assert tensor_to_numpy(tensors["b"]).tobytes() == file.load("b").tobytes()


# --------------------------------------------------------------------------- bad files


def _with_header(header: object, data: bytes = b"", raw: bytes | None = None) -> bytes:
    body = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "shorter than the 8-byte header"),
        (b"\x01\x02", "shorter than the 8-byte header"),
        (struct.pack("<Q", 1 << 40) + b"{}", "over the format's limit"),
        (struct.pack("<Q", 500) + b"{}", "does not fit"),
        (_with_header(None, raw=b"\xff\xfe garbage \x00"), "not valid JSON"),
        (_with_header(None, raw=b"{not json"), "not valid JSON"),
        (_with_header([1, 2, 3]), "not a JSON object"),
        (_with_header({"__metadata__": {"a": 1}}), "__metadata__ must map strings to strings"),
        (_with_header({"w": {"dtype": "F32"}}), "lacks dtype/shape/data_offsets"),
        (_with_header({"w": {"dtype": "F32", "shape": "ab", "data_offsets": [0, 4]}}, b"\0" * 4),
         "shape must be a list of non-negative integers"),
        (_with_header({"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
         "dtype 'Q7'"),
        (_with_header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4),
         "truncated"),
        (_with_header({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
         "its shape needs 12"),
        (_with_header({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 8),
         "truncated or corrupt"),
    ],
)
def test_bad_headers_are_input_errors(tmp_path, content, words):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(InputError, match="bad.safetensors: not a valid safetensors file") as info:
        st.SafetensorsFile(path)
    assert words in str(info.value)


def test_truncated_file_cut_in_half(tmp_path, save_st):
    path = save_st({"a": torch.randn(64, 64), "b": torch.randn(64)})
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        st.SafetensorsFile(cut)


def test_file_shrunk_after_opening_is_input_error(tmp_path, save_st):
    path = save_st({"a": torch.randn(64)})
    file = st.SafetensorsFile(path)
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(InputError, match="could not be read in full"):
        file.load("a")
