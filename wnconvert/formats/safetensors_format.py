"""safetensors, read and written by wnconvert itself, one tensor at a time.

Why not ``safetensors.torch.load_file``/``save_file``: both hold the whole file in memory. Here
the header is parsed and validated up front, each tensor is read with ``readinto`` into a buffer
of its own size when it is needed, and the output is streamed: its header is known before any
data is computed (a fold or decompose changes no shape it cannot predict), so peak memory stays
near the largest tensor. Tensors that pass through unchanged are copied file-to-file by the
kernel (``os.copy_file_range``).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..dtypes import (
    ITEMSIZE,
    c_contiguous,
    from_safetensors_code,
    numpy_dtype,
    safetensors_code,
)
from ..errors import InputError
from .byteio import copy_range, write_at
from .files import require_regular_file
from .source import PlannedTensor, TensorInfo, TensorSource

_MAX_HEADER = 100_000_000  # the reference reader's limit (MAX_HEADER_SIZE)
_MAX_DIMS = 64  # numpy's and torch's limit: safe_open cannot return a tensor with more
_MAX_BYTES = 2**63 - 1  # numpy and torch size arrays with signed 64-bit integers
_MAX_USIZE = 2**64 - 1  # shapes and offsets are Rust usize values
_MAX_NESTING = 100  # serde_json refuses nesting past 128 levels; a real header has 3
_ALIGN = 8


class DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object that refuses a repeated key (Python's json would keep the last silently,
    so two readers could disagree about which tensor a name means)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateKey(key)
        obj[key] = value
    return obj


def _parse_usize(text: str) -> int:
    # serde reads "-0" as a float and refuses it where Python reads int 0: mark every negative
    # number with -1 so the non-negative checks refuse it too.
    return -1 if text.startswith("-") else int(text)


def _parse_finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: serde_json refuses a number out of range
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _refuse_constant(text: str) -> float:
    raise ValueError(f"{text} is not JSON")  # Python's json alone accepts NaN and Infinity


def _is_usize(value: object) -> bool:
    return type(value) is int and 0 <= value <= _MAX_USIZE  # bool is not an int here


def _json_problem(root: object) -> str | None:
    """What makes a parsed header unacceptable to a strict JSON reader (serde_json), if any:
    nesting past its limit, or a string that is not Unicode text (a lone surrogate escape)."""
    stack: list[tuple[object, int]] = [(root, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: list[object] = [*value.keys(), *value.values()]
        elif isinstance(value, list):
            children = value
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return f"header holds the string {value!r}, which is not valid Unicode"
            continue
        else:
            continue
        if depth > _MAX_NESTING:
            return "header JSON is nested too deeply"
        stack.extend((child, depth + 1) for child in children)
    return None


def dtype_code(name: str) -> str:
    code = safetensors_code(name)
    if code is None:
        raise InputError(f"dtype {name} cannot be stored in safetensors; save as .pt instead")
    return code


class SafetensorsFile:
    """One validated safetensors file: header entries, metadata, data offset.

    The header is checked as strictly as the reference library (safetensors' Rust reader) checks
    it, and a little more where numpy or torch could not hold the result, before anything else
    is read: a file ``safetensors.safe_open`` refuses is refused here.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        size = require_regular_file(path, what="safetensors file").st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise self._bad("file is shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > _MAX_HEADER:
                raise self._bad(
                    f"header length {header_len} is over the format's limit of {_MAX_HEADER} bytes"
                )
            if 8 + header_len > size:
                raise self._bad(f"header length {header_len} does not fit in a {size}-byte file")
            raw = f.read(header_len)
        header = self._parse_json(raw)
        meta = header.pop("__metadata__", None)
        if meta is not None and not (
            isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
        ):
            raise self._bad("__metadata__ must map strings to strings")
        self.metadata: dict[str, str] | None = meta
        self.data_start = 8 + header_len
        self.entries: dict[str, tuple[TensorInfo, int, int]] = {}
        for key, entry in header.items():
            self.entries[key] = self._entry(key, entry)
        self._check_layout(size - self.data_start)

    def _parse_json(self, raw: bytes) -> dict[str, Any]:
        try:
            header = json.loads(
                raw.decode("utf-8"),
                object_pairs_hook=unique_object,
                parse_int=_parse_usize,
                parse_float=_parse_finite,
                parse_constant=_refuse_constant,
            )
        except DuplicateKey as exc:
            raise self._bad(f"header has the key {exc.key!r} twice") from None
        except RecursionError:
            raise self._bad("header JSON is nested too deeply") from None
        except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise self._bad(f"header is not valid JSON ({exc.__class__.__name__})") from None
        if not isinstance(header, dict):
            raise self._bad("header is not a JSON object")
        problem = _json_problem(header)
        if problem:
            raise self._bad(problem)
        return header

    def _entry(self, key: str, entry: object) -> tuple[TensorInfo, int, int]:
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise self._bad(f"entry {key!r} lacks dtype/shape/data_offsets")
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(shape, list) or not all(_is_usize(s) for s in shape):
            raise self._bad(f"tensor {key!r}: shape must be a list of non-negative integers")
        if len(shape) > _MAX_DIMS:
            raise self._bad(f"tensor {key!r} has {len(shape)} dimensions; at most {_MAX_DIMS}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_usize, offsets))):
            raise self._bad(f"tensor {key!r}: data_offsets must be two non-negative integers")
        name = from_safetensors_code(code) if isinstance(code, str) else None
        if name is None:
            raise self._bad(
                f"tensor {key!r} has dtype {repr(code)[:40]}, which wnconvert cannot read"
            )
        info = TensorInfo(tuple(shape), name)
        # Like numpy and torch, count every axis (an empty one too): the product must fit.
        extent = ITEMSIZE[name]
        for s in shape:
            extent *= max(s, 1)
        if extent > _MAX_BYTES:
            raise self._bad(f"tensor {key!r}: shape {shape} overflows (too many elements)")
        begin, end = offsets
        if end < begin:
            raise self._bad(
                f"tensor {key!r} has data_offsets [{begin}, {end}], which end before they "
                "begin (truncated or corrupt)"
            )
        if end - begin != info.nbytes:
            raise self._bad(
                f"tensor {key!r} has {end - begin} bytes, its shape needs {info.nbytes}"
            )
        return info, begin, end

    def _check_layout(self, data_len: int) -> None:
        # The reference reader's rule: sorted by offsets, the tensors tile the data exactly, from
        # byte 0 to the end of the file: no gap, no overlap, nothing after the last one.
        position = 0
        for key, (_, begin, end) in sorted(self.entries.items(), key=lambda kv: kv[1][1:]):
            if end > data_len:
                raise self._bad(
                    f"tensor {key!r} ends at byte {end} but the file has {data_len} data bytes "
                    "(truncated or corrupt)"
                )
            if begin != position:
                what = "overlaps the one before it" if begin < position else "leaves a gap"
                raise self._bad(f"tensor {key!r} starts at byte {begin}: it {what}")
            position = end
        if position != data_len:
            raise self._bad(
                f"{data_len - position} bytes after the last tensor (trailing data or corrupt)"
            )

    def _bad(self, what: str) -> InputError:
        return InputError(
            f"{self.path}: not a valid safetensors file: {what}; re-download or re-save it"
        )

    def keys(self) -> list[str]:
        # File order (by offset) is the order tensors were written in.
        return sorted(self.entries, key=lambda k: self.entries[k][1])

    def info(self, key: str) -> TensorInfo:
        return self.entries[key][0]

    def load(self, key: str) -> np.ndarray:
        """Read one tensor into a fresh array of its own (no mmap: RSS stays per tensor)."""
        info, begin, end = self.entries[key]
        buffer = np.empty(end - begin, dtype=np.uint8)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            read = f.readinto(memoryview(buffer)) if end > begin else 0  # type: ignore[arg-type]
        if read != end - begin:
            raise self._bad(f"tensor {key!r} could not be read in full")
        return buffer.view(numpy_dtype(info.dtype)).reshape(info.shape)

    def view(self, key: str) -> np.ndarray:
        """A read-only array over the tensor's bytes in the file, through a memory map.

        No copy and no fresh memory to fault in: the arithmetic reads the page cache directly.
        The map covers this tensor only and is unmapped when the array is garbage collected, so
        resident memory stays near the tensors in use. Falls back to :meth:`load` where the file
        cannot be mapped.
        """
        info, begin, end = self.entries[key]
        if end == begin:
            return self.load(key)  # mmap cannot map zero bytes
        start = self.data_start + begin
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        try:
            with open(self.path, "rb") as f:
                mapped = mmap.mmap(
                    f.fileno(),
                    start - aligned + end - begin,
                    offset=aligned,
                    access=mmap.ACCESS_READ,
                )
        except (OSError, ValueError):
            return self.load(key)
        if hasattr(mapped, "madvise"):
            mapped.madvise(mmap.MADV_SEQUENTIAL)  # read ahead: each tensor is read front to back
        flat = np.frombuffer(
            mapped, dtype=numpy_dtype(info.dtype), count=info.numel, offset=start - aligned
        )
        return flat.reshape(info.shape)

    def copy_raw(self, key: str, out_fd: int, out_offset: int) -> None:
        """Copy a tensor's bytes to ``out_fd`` at ``out_offset`` without decoding them."""
        _, begin, end = self.entries[key]
        copy_range(self.path, self.data_start + begin, end - begin, out_fd, out_offset)


class SafetensorsSource:
    """TensorSource over one or more safetensors files (several for a sharded checkpoint)."""

    def __init__(self, files: dict[str, SafetensorsFile]) -> None:
        self.files = files  # key -> the file holding it
        self._keys = [k for f in dict.fromkeys(files.values()) for k in f.keys()]

    def keys(self) -> list[str]:
        return list(self._keys)

    def info(self, key: str) -> TensorInfo:
        return self.files[key].info(key)

    def load(self, key: str) -> np.ndarray:
        return self.files[key].load(key)

    def view(self, key: str) -> np.ndarray:
        return self.files[key].view(key)

    def copy_raw(self, key: str, out_fd: int, out_offset: int) -> None:
        self.files[key].copy_raw(key, out_fd, out_offset)


def open_safetensors(path: Path) -> SafetensorsSource:
    file = SafetensorsFile(path)
    return SafetensorsSource(dict.fromkeys(file.entries, file))


def array_bytes(array: np.ndarray) -> memoryview:
    """The little-endian bytes of an array, without a copy where it is already contiguous."""
    flat = c_contiguous(array).reshape(-1)
    return memoryview(flat.view(np.uint8)) if flat.size else memoryview(b"")  # type: ignore[arg-type]


def write_safetensors(
    out: BinaryIO,
    plan: list[PlannedTensor],
    source: TensorSource | None,
    *,
    metadata: dict[str, str] | None = None,
    on_tensor: Callable[[str], None] | None = None,
) -> int:
    """Stream ``plan`` into ``out`` in safetensors layout; return the number of bytes written.

    The header fixes every tensor's place in the file before any data exists, so tensors are
    written at their offsets (``pwrite``): a streamed fold writes its pieces from several
    threads at once, pass-through tensors are copied file to file by the kernel, and nothing
    depends on the order writes finish in.
    """
    header: dict[str, object] = {}
    offsets: list[int] = []
    offset = 0
    for item in plan:
        header[item.key] = {
            "dtype": dtype_code(item.info.dtype),
            "shape": list(item.info.shape),
            "data_offsets": [offset, offset + item.info.nbytes],
        }
        offsets.append(offset)
        offset += item.info.nbytes
    if metadata:
        header = {"__metadata__": dict(metadata), **header}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % _ALIGN)  # keep tensor data 8-byte aligned
    out.write(struct.pack("<Q", len(raw)))
    out.write(raw)
    out.flush()
    fd = out.fileno()
    data_start = 8 + len(raw)
    total = data_start + offset
    # Write-behind for whole arrays: one thread writes tensor i while this one reads and
    # computes tensor i + 1. At most one such write is in flight, so memory stays near two
    # tensors. Streamed tensors write their own pieces as they are computed.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wnconvert-write") as writer:
        pending: Future[None] | None = None
        for item, at in zip(plan, offsets, strict=True):
            position = data_start + at
            job: Callable[[], None] | None = None
            if item.write_into is not None:
                item.write_into(partial(_write_piece, item, fd, position))
            elif item.produce is None and hasattr(source, "copy_raw"):
                job = partial(source.copy_raw, item.source_key, fd, position)  # type: ignore[union-attr]
            else:
                array = item.produce() if item.produce is not None else source.load(item.source_key)  # type: ignore[union-attr]
                if tuple(array.shape) != item.info.shape or array.dtype != numpy_dtype(
                    item.info.dtype
                ):
                    raise AssertionError(
                        f"internal error: {item.key} is {tuple(array.shape)} {array.dtype}, "
                        f"planned {item.info.shape} {item.info.dtype}"
                    )
                job = partial(write_at, fd, array_bytes(array), position)
                del array
            if job is not None:
                if pending is not None:
                    pending.result()  # bounds memory, and raises the writer's errors here
                pending = writer.submit(job)
            if on_tensor is not None:
                on_tensor(item.key)
        if pending is not None:
            pending.result()
    os.ftruncate(fd, total)  # the size is exact even if the last tensors are empty
    out.seek(total)
    return total


def _write_piece(
    item: PlannedTensor, fd: int, position: int, offset: int, piece: np.ndarray
) -> None:
    if offset < 0 or offset + piece.nbytes > item.info.nbytes:
        raise AssertionError(
            f"internal error: {item.key} got bytes {offset}..{offset + piece.nbytes}, "
            f"planned {item.info.nbytes}"
        )
    write_at(fd, array_bytes(piece), position + offset)
