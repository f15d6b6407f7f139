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


#: Largest random input generated for one model input (export tracing and verification), and
#: largest array an ``.npz`` inputs file may hold for one input (declared size, checked before
#: anything is decompressed).
MAX_INPUT_BYTES = 4 * 1024**3
# .npz members are decompressed in pieces of this size into the array (no second copy).
_NPZ_CHUNK = 16 * 1024**2
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
    """Refuse a generated input with a negative size, no elements or more than
    :data:`MAX_INPUT_BYTES`. ``given``: the shape is the caller's ``inputs=`` (else read from
    the model)."""
    what = "{-inputs=label}" if given else "input {label}"
    if any(size < 0 for size in shape):
        # Two negative sizes multiply to a positive count: check each size, not the product.
        raise InputError.template(what + ": shape {shape} has a negative size; give every axis "
                                  "a size >= 1", label=label, shape="x".join(map(str, shape)))
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

    Sizes are checked from what the archive declares before anything is decompressed: each
    member's uncompressed size (zip central directory) and its ``.npy`` header's shape and
    dtype, at most :data:`MAX_INPUT_BYTES` each and, all together, half the machine's memory
    (:func:`npz_memory_budget`). The header must match the member's size, and decompression
    stops at that size, so a small archive cannot inflate into more than it declares; every
    damaged or unexpected member is an :class:`InputError`.
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
            members = archive.infolist()
            _check_declared_sizes(path, members)
            for info in members:
                name = info.filename.removesuffix(".npy")
                if name in arrays or not info.filename.endswith(".npy"):
                    what = "twice" if name in arrays else "not an .npy array"
                    raise ValueError(f"member {info.filename!r} is {what}")
                if info.flag_bits & 0x1:  # zipfile would ask for a password (RuntimeError)
                    raise ValueError(f"member {info.filename!r} is encrypted")
                with archive.open(info) as member:
                    arrays[name] = read_npy(member, info.file_size)
    except InputError:
        raise
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


def npz_memory_budget() -> int | None:
    """Bytes all arrays of an inputs file may take together: half the physical memory (None
    where the OS does not say). The inputs stay in memory while the reference and every
    provider run and keep their outputs, which are often as large."""
    import os

    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return None


def _check_declared_sizes(path: Path, members: Sequence[Any]) -> None:
    """Refuse, from the zip central directory alone, members that would decompress to more
    than :data:`MAX_INPUT_BYTES` each or to more than the memory budget together."""
    total = 0
    budget = npz_memory_budget()
    for info in members:
        if info.file_size > MAX_INPUT_BYTES:
            raise InputError(
                f"{path}: member {info.filename!r} declares {_gib(info.file_size)} uncompressed, "
                f"more than the {_gib(MAX_INPUT_BYTES)} wnconvert reads for one input; nothing "
                "was decompressed (save smaller inputs)"
            )
        total += info.file_size
        if budget is not None and total > budget:
            raise InputError(
                f"{path}: its members declare {_gib(total)} uncompressed (up to "
                f"{info.filename!r}), more than half this machine's memory ({_gib(budget)}); "
                "nothing was decompressed (save fewer or smaller inputs)"
            )


def _gib(nbytes: int) -> str:
    return f"{nbytes / 1024**3:.1f} GiB" if nbytes >= 1024**3 else f"{nbytes:,} bytes"


def read_npy(member: IO[bytes], size: int) -> np.ndarray:
    """One ``.npy`` member of ``size`` bytes; ValueError if it is not a plain numeric array
    whose data fills the member exactly."""
    import tokenize

    import numpy as np
    from numpy.lib import format as npy

    version = npy.read_magic(member)
    try:
        if version == (1, 0):
            shape, fortran_order, dtype = npy.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran_order, dtype = npy.read_array_header_2_0(member)
        else:  # 3.0 exists only for structured dtypes with non-ASCII field names
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
    except (SyntaxError, tokenize.TokenError) as exc:
        # numpy reads the header with Python's tokenizer and literal_eval: a damaged one
        # raises their errors, not ValueError.
        raise ValueError(f"the .npy header is not a valid header ({exc})") from None
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None:
        raise ValueError(f"dtype {dtype} is not a plain numeric type")
    count = 1
    for extent in shape:
        count *= extent
    expected, available = count * dtype.itemsize, size - member.tell()
    if expected != available:
        raise ValueError(f"shape {list(shape)} of {dtype} needs {expected} bytes of data, the "
                         f"member holds {available}")
    if expected > MAX_INPUT_BYTES:  # size was checked; a header is checked all the same
        raise ValueError(f"shape {list(shape)} of {dtype} is more than the "
                         f"{_gib(MAX_INPUT_BYTES)} wnconvert reads for one input")
    # Decompressed straight into the array, never more than `expected` bytes in all (and
    # zipfile stops at the member's declared size too): a stream that inflates past what the
    # header says is cut off and fails its CRC instead of filling memory.
    array = np.empty(count, dtype=dtype)
    buffer = array.reshape(-1).view(np.uint8)
    done = 0
    while done < expected:
        chunk = member.read(min(_NPZ_CHUNK, expected - done))
        if not chunk:
            raise ValueError(f"the member ends after {done} of {expected} bytes of data")
        buffer[done:done + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        done += len(chunk)
    if member.read(1):
        raise ValueError(f"the member holds more than the {expected} bytes its header declares")
    if fortran_order:  # C order, as every caller expects (ORT feeds, cropping)
        return np.ascontiguousarray(array.reshape(shape, order="F"))
    return array.reshape(shape)  # writable, owning its memory, like np.load's arrays


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
