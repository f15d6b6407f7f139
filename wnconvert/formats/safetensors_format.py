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
import mmap
import os
import struct
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..dtypes import c_contiguous, from_safetensors_code, numpy_dtype, safetensors_code
from ..errors import InputError
from .atomic import copy_range, write_at
from .source import PlannedTensor, TensorInfo, TensorSource

_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit
_ALIGN = 8


def dtype_code(name: str) -> str:
    code = safetensors_code(name)
    if code is None:
        raise InputError(f"dtype {name} cannot be stored in safetensors; save as .pt instead")
    return code


class SafetensorsFile:
    """One validated safetensors file: header entries, metadata, data offset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise self._bad("file is shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > _MAX_HEADER or 8 + header_len > size:
                raise self._bad(f"header length {header_len} does not fit in a {size}-byte file")
            raw = f.read(header_len)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._bad(f"header is not valid JSON ({exc.__class__.__name__})") from None
        if not isinstance(header, dict):
            raise self._bad("header is not a JSON object")
        meta = header.pop("__metadata__", None)
        if meta is not None and not (
            isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
        ):
            raise self._bad("__metadata__ must map strings to strings")
        self.metadata: dict[str, str] | None = meta
        self.data_start = 8 + header_len
        self.entries: dict[str, tuple[TensorInfo, int, int]] = {}
        data_len = size - self.data_start
        for key, entry in header.items():
            try:
                code, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
                shape = tuple(int(s) for s in shape)
            except (KeyError, TypeError, ValueError):
                raise self._bad(f"entry {key!r} lacks dtype/shape/data_offsets") from None
            name = from_safetensors_code(str(code))
            if name is None:
                raise self._bad(f"tensor {key!r} has dtype {code}, which wnconvert cannot read")
            info = TensorInfo(shape, name)
            if not 0 <= begin <= end <= data_len:
                raise self._bad(
                    f"tensor {key!r} ends at byte {end} but the file has {data_len} data bytes "
                    "(truncated or corrupt)"
                )
            if end - begin != info.nbytes:
                raise self._bad(
                    f"tensor {key!r} has {end - begin} bytes, its shape needs {info.nbytes}"
                )
            self.entries[key] = (info, begin, end)

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
            read = f.readinto(memoryview(buffer)) if end > begin else 0
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
    return memoryview(flat.view(np.uint8)) if flat.size else memoryview(b"")


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
