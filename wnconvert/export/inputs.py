"""Model inputs and outputs: input specifications, ``.npz`` inputs, the one random-input
generator (shared by export tracing and verification) and output flattening.

Imports numpy and torch inside functions: importing this module is cheap.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..dtypes import ITEMSIZE
from ..errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import torch


#: Largest random input generated for one model input (export tracing and verification).
MAX_INPUT_BYTES = 4 * 1024**3
FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")
DTYPES = (*FLOAT_DTYPES, "int64", "int32", "int16", "int8", "uint8", "bool")


@dataclass(frozen=True)
class InputSpec:
    """One model input to generate: its shape, dtype and (optionally) its name.

    Validated on creation: a known dtype, and at least one element but no more than
    :data:`MAX_INPUT_BYTES` (a check on an empty input compares nothing and cannot fail; a huge
    one would exhaust memory long before it said anything useful). ``text`` is how the user
    wrote it, for messages.
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    name: str | None = None
    text: str = ""

    def __post_init__(self) -> None:
        label = self.text or "x".join(map(str, self.shape))
        if self.dtype not in DTYPES:
            raise InputError.template("{-inputs=label}: unknown dtype {dtype!r}; use one of "
                                      "{choices}", label=label, dtype=self.dtype,
                                      choices=", ".join(DTYPES))
        if not self.shape or any(not isinstance(s, int) or s < 0 for s in self.shape):
            raise InputError.template("{-inputs=label}: a shape is one or more sizes >= 0 joined "
                                      "by 'x', e.g. 1x80x200", label=label)
        check_input_size(label, self.shape, self.dtype)


def check_input_size(label: str, shape: Sequence[int], dtype: str, *,
                     given: bool = True) -> None:
    """Refuse a generated input with no elements or more than :data:`MAX_INPUT_BYTES`.
    ``given``: the shape is the caller's ``inputs=`` (else read from the model)."""
    what = "{-inputs=label}" if given else "input {label}"
    count = math.prod(shape)
    if count == 0:
        raise InputError.template(
            what + ": shape {shape} has no elements, so a check on it would compare "
            "nothing; give every axis a size >= 1", label=label,
            shape="x".join(map(str, shape)))
    itemsize = ITEMSIZE[dtype]
    if count * itemsize > MAX_INPUT_BYTES:
        raise InputError.template(
            what + ": {gib} GiB for one input is more than the {limit} GiB wnconvert "
            "generates; use a smaller shape", label=label,
            gib=f"{count * itemsize / 1024**3:.1f}", limit=MAX_INPUT_BYTES // 1024**3)


@dataclass(frozen=True)
class DynamicAxis:
    """``--dynamic [INPUT:]AXIS[=NAME]``: an input axis whose size may change at run time.

    INPUT is an input's index or name (default: the first input); NAME is the symbolic size's
    name in the ONNX graph (axes with the same NAME must have the same size).
    """

    axis: int
    input: int | str = 0
    dim_name: str | None = None
    text: str = ""

    def __post_init__(self) -> None:
        shown = self.text or str(self.axis)
        if not isinstance(self.axis, int) or self.axis < 0:
            raise InputError.template("{-dynamic=shown}: the axis is a number >= 0 (e.g. 2, or "
                                      "mel:2=time)", shown=shown)
        if self.dim_name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*",
                                                          self.dim_name):
            raise InputError.template("{-dynamic=shown}: NAME must be an identifier (letters, "
                                      "digits, _)", shown=shown)

    def input_name(self, names: Sequence[str]) -> str:
        if isinstance(self.input, int):
            if not 0 <= self.input < len(names):
                raise InputError.template("{-dynamic=text}: input index {index} is out of "
                                          "range; the model has {count} inputs ({names})",
                                          text=self.text, index=self.input, count=len(names),
                                          names=", ".join(names))
            return names[self.input]
        if self.input not in names:
            raise InputError.template("{-dynamic=text}: the model has no input {name!r}; its "
                                      "inputs are {names}", text=self.text, name=self.input,
                                      names=", ".join(names))
        return self.input

    def symbol(self, names: Sequence[str]) -> str:
        return self.dim_name or f"{self.input_name(names)}_dim{self.axis}"


def load_inputs_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` file in file order (no pickles: object arrays are refused).

    Each member's ``.npy`` header is read first and its declared size checked against the
    member's size in the archive, so a damaged header cannot make numpy allocate what the
    file does not hold; every damaged or unexpected member is an :class:`InputError`.
    """
    import zipfile
    import zlib

    from ..formats.files import require_regular_file

    require_regular_file(path, what="inputs file")
    if not zipfile.is_zipfile(path):
        # np.load would happily return a single array for .npy (no input names) or try to
        # unpickle anything else; only an .npz archive maps names to inputs.
        raise InputError(f"{path}: not an .npz archive; save the inputs with "
                         "numpy.savez(path, name=array, ...) so each array names its input")
    try:
        with zipfile.ZipFile(path) as archive:
            arrays = {}
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                if name in arrays or not info.filename.endswith(".npy"):
                    what = "twice" if name in arrays else "not an .npy array"
                    raise ValueError(f"member {info.filename!r} is {what}")
                if info.flag_bits & 0x1:  # zipfile would ask for a password (RuntimeError)
                    raise ValueError(f"member {info.filename!r} is encrypted")
                with archive.open(info) as member:
                    arrays[name] = _read_npy(member, info.file_size)
    except (ValueError, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise InputError(f"{path}: cannot read as .npz without pickles ({exc}); save plain "
                         "numeric arrays with numpy.savez") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read as .npz: {exc}") from None
    if not arrays:
        raise InputError(f"{path}: holds no arrays; a check on no inputs compares nothing")
    for name, array in arrays.items():
        if array.size == 0:
            raise InputError(f"{path}: array {name!r} has no elements (shape {array.shape}); a "
                             "check on it would compare nothing")
    return arrays


def _read_npy(member: IO[bytes], size: int) -> np.ndarray:
    """One ``.npy`` member of ``size`` bytes; ValueError if it is not a plain numeric array
    whose data fills the member exactly."""
    import numpy as np
    from numpy.lib import format as npy

    version = npy.read_magic(member)
    if version == (1, 0):
        shape, fortran_order, dtype = npy.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran_order, dtype = npy.read_array_header_2_0(member)
    else:  # 3.0 exists only for structured dtypes with non-ASCII field names
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None:
        raise ValueError(f"dtype {dtype} is not a plain numeric type")
    count = 1
    for extent in shape:
        count *= extent
    expected, available = count * dtype.itemsize, size - member.tell()
    if expected != available:
        raise ValueError(f"shape {list(shape)} of {dtype} needs {expected} bytes of data, the "
                         f"member holds {available}")
    data = member.read(expected)
    if len(data) != expected:
        raise ValueError(f"the member ends after {len(data)} of {expected} bytes of data")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    return array.copy()  # writable, owning its memory, like np.load's arrays


def random_array(rng: np.random.Generator, shape: Sequence[int], dtype: str) -> np.ndarray:
    """The one random-input generator: standard normal for floating dtypes, 0/1 for bool,
    0..7 for integers (small, so they are valid indices and lengths for most models)."""
    import numpy as np

    from ..dtypes import numpy_dtype

    if dtype in FLOAT_DTYPES:
        return rng.standard_normal(tuple(shape)).astype(numpy_dtype(dtype))
    if dtype == "bool":
        return rng.integers(0, 2, tuple(shape)).astype(np.bool_)
    return rng.integers(0, 8, tuple(shape)).astype(dtype)


def example_inputs(specs: Sequence[InputSpec], *, seed: int = 0) -> list[torch.Tensor]:
    """Seeded random tensors for export tracing (see :func:`random_array`)."""
    import numpy as np

    from ..dtypes import numpy_to_tensor

    rng = np.random.default_rng([seed, 1_000_003])
    return [numpy_to_tensor(random_array(rng, spec.shape, spec.dtype)) for spec in specs]


# --------------------------------------------------------------------------------------------
# Outputs


def flatten_outputs(result: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Flatten a model's output into ``(name, tensor)`` pairs, in a stable order.

    A single tensor is ``output``; tuples/lists give ``output_0``, ``output_1``; mappings (and
    HF-style ``ModelOutput``), dataclasses and named tuples give their field names; nesting joins
    with ``.``. ``None`` entries are skipped (they are not outputs of the exported graph).
    """
    import torch

    if isinstance(result, torch.Tensor):
        return [(prefix or "output", result)]
    if result is None:
        return []
    items: list[tuple[str, Any]]
    if isinstance(result, Mapping):
        items = [(str(k), v) for k, v in result.items()]
    elif dataclasses.is_dataclass(result) and not isinstance(result, type):
        items = [(f.name, getattr(result, f.name)) for f in dataclasses.fields(result)]
    elif isinstance(result, tuple) and hasattr(result, "_fields"):
        items = [(name, getattr(result, name)) for name in result._fields]
    elif isinstance(result, (tuple, list)):
        base = prefix or "output"
        flat: list[tuple[str, torch.Tensor]] = []
        for i, item in enumerate(result):
            flat.extend(flatten_outputs(item, f"{base}_{i}"))
        return flat
    else:
        raise InputError(
            f"model output {prefix or 'output'!r} is a {type(result).__name__}; only tensors "
            "(in tuples, lists, dicts or dataclasses) can become ONNX outputs"
        )
    flat = []
    for name, item in items:
        flat.extend(flatten_outputs(item, f"{prefix}.{name}" if prefix else name))
    return flat


def output_names(flat: Sequence[tuple[str, Any]], input_names: Sequence[str]) -> list[str]:
    """ONNX output names for flattened outputs: unique, and never an input's name."""
    names = [name for name, _ in flat]
    if len(set(names)) != len(names):
        # Two fields flattened to the same name: fall back to positional names.
        names = [f"output_{i}" for i in range(len(names))]
    # ONNX forbids an output named like an input (one name, one value).
    return [f"{name}_out" if name in input_names else name for name in names]
