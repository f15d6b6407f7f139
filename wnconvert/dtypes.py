"""The one dtype registry: names shared by every format, with their numpy, torch, safetensors,
ONNX and ONNX Runtime spellings.

wnconvert names dtypes by strings (``"float32"``, ``"bfloat16"``...) so that code paths that
only stream safetensors never import torch. bfloat16 and float8 use ml_dtypes' numpy types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

@dataclass(frozen=True)
class DType:
    """One dtype under every spelling wnconvert meets: the numpy-style name (the key used
    everywhere), its size, its safetensors code, its ONNX ``TensorProto`` code and ONNX
    Runtime's type string. ``None`` where a format has no such type."""

    name: str
    itemsize: int
    safetensors: str | None
    onnx: int | None
    floating: bool = False

    @property
    def ort(self) -> str | None:
        """ONNX Runtime's spelling (``tensor(float)``), from the ONNX type's name."""
        return None if self.onnx is None else f"tensor({_ORT_NAMES[self.onnx]})"


# The ONNX codes are TensorProto.DataType values (fixed by the ONNX spec); written out so that
# safetensors-only paths never import onnx.
REGISTRY: dict[str, DType] = {d.name: d for d in (
    DType("float64", 8, "F64", 11, floating=True),
    DType("float32", 4, "F32", 1, floating=True),
    DType("float16", 2, "F16", 10, floating=True),
    DType("bfloat16", 2, "BF16", 16, floating=True),
    DType("int64", 8, "I64", 7),
    DType("int32", 4, "I32", 6),
    DType("int16", 2, "I16", 5),
    DType("int8", 1, "I8", 3),
    DType("uint8", 1, "U8", 2),
    DType("uint16", 2, "U16", 4),
    DType("uint32", 4, "U32", 12),
    DType("uint64", 8, "U64", 13),
    DType("bool", 1, "BOOL", 9),
    DType("float8_e4m3fn", 1, "F8_E4M3", 17),
    DType("float8_e5m2", 1, "F8_E5M2", 19),
    DType("complex64", 8, None, 14),
    DType("complex128", 16, None, 15),
)}
_ORT_NAMES = {1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
              9: "bool", 10: "float16", 11: "double", 12: "uint32", 13: "uint64",
              14: "complex64", 15: "complex128", 16: "bfloat16", 17: "float8e4m3fn",
              19: "float8e5m2"}

FLOATING = tuple(d.name for d in REGISTRY.values() if d.floating)
ITEMSIZE = {d.name: d.itemsize for d in REGISTRY.values()}
_FROM_SAFETENSORS = {d.safetensors: d.name for d in REGISTRY.values() if d.safetensors}
_FROM_ONNX = {d.onnx: d.name for d in REGISTRY.values() if d.onnx is not None}
_FROM_ORT = {d.ort: d.name for d in REGISTRY.values() if d.ort is not None}


def onnx_code(name: str) -> int | None:
    """``TensorProto`` data type of ``name`` (``"float32"`` -> 1)."""
    entry = REGISTRY.get(name)
    return entry.onnx if entry else None


def from_onnx_code(code: int) -> str | None:
    """The name of ONNX data type ``code`` (1 -> ``"float32"``), None when unsupported."""
    return _FROM_ONNX.get(code)


def from_ort_type(text: str) -> str | None:
    """The name of ONNX Runtime's type string (``"tensor(float)"`` -> ``"float32"``)."""
    return _FROM_ORT.get(text)


def is_floating(name: str) -> bool:
    return name in FLOATING


def numpy_dtype(name: str) -> np.dtype:
    if name == "bfloat16" or name.startswith("float8"):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def name_of_numpy(dtype: np.dtype) -> str:
    return np.dtype(dtype).name  # ml_dtypes types are named "bfloat16", "float8_e4m3fn"...


def safetensors_code(name: str) -> str | None:
    entry = REGISTRY.get(name)
    return entry.safetensors if entry else None


def from_safetensors_code(code: str) -> str | None:
    return _FROM_SAFETENSORS.get(code)


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return getattr(torch, name)


def name_of_torch(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tensor_to_numpy(tensor: Any) -> np.ndarray:
    """A numpy view of a CPU torch tensor (bfloat16/float8 through ml_dtypes), no copy."""
    import torch

    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    name = name_of_torch(t.dtype)
    if name == "bfloat16":
        return t.view(torch.uint16).numpy().view(numpy_dtype(name))
    if name.startswith("float8"):
        return t.view(torch.uint8).numpy().view(numpy_dtype(name))
    return t.numpy()


def c_contiguous(array: np.ndarray) -> np.ndarray:
    """``array`` in C order, keeping its rank (``np.ascontiguousarray`` makes 0-d arrays 1-d)."""
    array = np.asarray(array)
    return array if array.flags.c_contiguous else array.copy(order="C")


def numpy_to_tensor(array: np.ndarray) -> torch.Tensor:
    """A torch tensor sharing ``array``'s memory (bfloat16/float8 included)."""
    import torch

    name = name_of_numpy(array.dtype)
    array = c_contiguous(array)
    if not array.flags.writeable:
        array = array.copy()  # torch.from_numpy warns on read-only buffers
    if name == "bfloat16":
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    if name.startswith("float8"):
        return torch.from_numpy(array.view(np.uint8)).view(torch_dtype(name))
    return torch.from_numpy(array)
