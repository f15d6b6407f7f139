"""Dtype names and the zero-copy torch <-> numpy bridges (bfloat16 and float8 included)."""

from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import pytest
import torch

from wnconvert import dtypes

ALL = ["float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
       "bool", "float8_e4m3fn", "float8_e5m2"]


def sample(name: str) -> torch.Tensor:
    t = torch.tensor([[0.0, -1.5, 3.0], [2.0**-9, 7.0, -0.0]])
    if name == "bool":
        return t > 0
    return t.to(getattr(torch, name))


@pytest.mark.parametrize("name", ALL)
def test_names_agree_across_numpy_torch_and_safetensors(name):
    t = sample(name)
    assert dtypes.name_of_torch(t.dtype) == name
    assert dtypes.torch_dtype(name) is t.dtype
    assert dtypes.name_of_numpy(dtypes.numpy_dtype(name)) == name
    assert dtypes.ITEMSIZE[name] == t.element_size() == dtypes.numpy_dtype(name).itemsize
    code = dtypes.safetensors_code(name)
    assert code is not None and dtypes.from_safetensors_code(code) == name


@pytest.mark.parametrize("name", ALL)
def test_tensor_numpy_round_trip_is_bit_identical_and_shares_memory(name):
    t = sample(name)
    a = dtypes.tensor_to_numpy(t)
    assert dtypes.name_of_numpy(a.dtype) == name
    assert a.shape == tuple(t.shape)
    assert a.tobytes() == t.contiguous().view(torch.uint8).numpy().tobytes()
    back = dtypes.numpy_to_tensor(a)
    assert back.dtype == t.dtype
    assert torch.equal(back.view(torch.uint8), t.view(torch.uint8))
    assert a.ctypes.data == t.data_ptr() == back.data_ptr()  # no copies either way


def test_bfloat16_uses_ml_dtypes():
    assert dtypes.numpy_dtype("bfloat16") == np.dtype(ml_dtypes.bfloat16)
    assert dtypes.numpy_dtype("float8_e4m3fn") == np.dtype(ml_dtypes.float8_e4m3fn)


def test_numpy_to_tensor_copies_read_only_arrays_without_warning():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    a.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = dtypes.numpy_to_tensor(a)
    assert torch.equal(t, torch.arange(6, dtype=torch.float32).reshape(2, 3))
    t[0, 0] = 100  # the read-only original is untouched
    assert a[0, 0] == 0


def test_numpy_to_tensor_makes_non_contiguous_arrays_contiguous():
    a = np.arange(12, dtype=np.float32).reshape(3, 4).T
    t = dtypes.numpy_to_tensor(a)
    assert t.is_contiguous() and torch.equal(t, torch.from_numpy(np.ascontiguousarray(a)))


def test_tensor_to_numpy_detaches_parameters():
    p = torch.nn.Parameter(torch.ones(2, 2))
    a = dtypes.tensor_to_numpy(p)
    np.testing.assert_array_equal(a, np.ones((2, 2), dtype=np.float32))


def test_is_floating_and_unknown_codes():
    floating = [n for n in ALL if dtypes.is_floating(n)]
    assert floating == ["float64", "float32", "float16", "bfloat16"]
    assert dtypes.safetensors_code("complex64") is None
    assert dtypes.from_safetensors_code("F4") is None


def test_onnx_and_ort_spellings_agree_with_onnx_itself() -> None:
    import onnx
    from onnx import helper

    for entry in dtypes.REGISTRY.values():
        if entry.onnx is None:
            continue
        np_type = helper.tensor_dtype_to_np_dtype(entry.onnx)
        assert dtypes.from_onnx_code(entry.onnx) == entry.name
        assert dtypes.onnx_code(entry.name) == entry.onnx
        assert np_type.itemsize == entry.itemsize
        if entry.name not in ("bfloat16",) and not entry.name.startswith("float8"):
            assert np_type == dtypes.numpy_dtype(entry.name)
        assert onnx.TensorProto.DataType.Name(entry.onnx)  # a real ONNX type
    assert dtypes.from_ort_type("tensor(float)") == "float32"
    assert dtypes.from_ort_type("tensor(bfloat16)") == "bfloat16"
    assert dtypes.from_ort_type("tensor(double)") == "float64"
    assert dtypes.from_ort_type("tensor(string)") is None


def test_onnx_float_types_come_from_the_registry() -> None:
    from wnconvert.onnx_graph import analysis

    assert analysis.FLOAT_TYPES == {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}
    assert {analysis.FLOAT, analysis.FLOAT16, analysis.DOUBLE, analysis.BFLOAT16} == set(
        analysis.FLOAT_TYPES)
