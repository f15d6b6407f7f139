"""The arithmetic of weight normalization: ``w = g * v / ||v||``, in numpy.

Everything is computed in float64 and rounded once to the stored dtype, with correct
round-to-nearest-even for every target. (torch's and ml_dtypes' float64 -> float16/bfloat16
casts go through float32 and can round twice; numpy's float64 -> float16 cast is correct, and
bfloat16 is rounded here by hand.) The norm is taken over every axis except ``dim``;
``dim=None`` is one norm over the whole tensor.

Work is done in cache-sized chunks of rows (axis 0), split over threads: numpy releases the GIL
in its loops, and chunks keep the float64 temporaries small, so memory stays near the size of
the output tensor. Results do not depend on the number of threads (each row's sum is formed in
one call; partial sums are combined in a fixed order).
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from .dtypes import c_contiguous, is_floating, name_of_numpy, numpy_dtype
from .errors import InputError

# 2 MiB of float64 per chunk. Smaller, cache-sized chunks measured 3x slower with two threads:
# every numpy call hands the GIL over, and thousands of tiny calls make the threads queue on it.
_CHUNK_ELEMENTS = 1 << 18
# The float32 dim=0 fold computes each chunk in blocks of this many elements: 1 MiB of float64
# that stays in a core's L2 cache (2 MiB here) with its float32 input and output while it is
# widened, summed and scaled. Measured (1 thread, CPU s per GB): 2^17 0.47-0.48, 2^16 0.50,
# 2^18 (the whole chunk, as before) 0.51-0.53, 2^15 0.61 (numpy's per-call cost).
_BLOCK_ELEMENTS = 1 << 17
_PARALLEL_MIN = 1 << 20  # below this many elements threads cost more than they save
_THREADS = max(1, min(8, os.cpu_count() or 1))
_pool: ThreadPoolExecutor | None = None
# Per-thread scratch arrays of the streamed fold, reused from chunk to chunk (see _scratch).
_scratch_local = threading.local()

# (significand bits incl. the implicit one, exponent of the smallest normal, largest finite)
_BFLOAT16 = (8, -126, 3.3895313892515355e38)


def infer_dim(g_shape: tuple[int, ...], v_shape: tuple[int, ...]) -> int | None:
    """Return the axis that keeps its size in ``g`` (``None`` = one norm over the whole tensor).

    ``g`` has ``v``'s rank with size 1 on every axis but ``dim`` (PyTorch's ``norm_except_dim``);
    a 0-d ``g`` is the whole-tensor norm (``dim=None``, stored by legacy PyTorch as -1). A ``g``
    with one element and ``v``'s rank is read as the first axis of size 1 in ``v`` (if any; else
    ``None``): both readings give the same numbers. Raises :class:`ValueError` if shapes do not fit.
    """
    g_shape, v_shape = tuple(g_shape), tuple(v_shape)
    if len(g_shape) == 0:
        return None
    if len(g_shape) != len(v_shape):
        raise ValueError(
            f"g has shape {list(g_shape)} and v has shape {list(v_shape)}: g must be 0-d or have "
            f"v's rank ({len(v_shape)}) with size 1 on every axis but one"
        )
    kept = [
        i for i, (gs, vs) in enumerate(zip(g_shape, v_shape, strict=True)) if gs == vs and gs != 1
    ]
    bad = [i for i, (gs, vs) in enumerate(zip(g_shape, v_shape, strict=True)) if gs not in (1, vs)]
    if bad or len(kept) > 1:
        raise ValueError(
            f"g has shape {list(g_shape)} and v has shape {list(v_shape)}: g must have size 1 on "
            "every axis but the one weight norm keeps"
        )
    if kept:
        return kept[0]
    size_one = [i for i, vs in enumerate(v_shape) if vs == 1]
    return size_one[0] if size_one else None


def normalize_dim(dim: int, rank: int) -> int:
    """Map a possibly negative ``dim`` into ``range(rank)``; raise ValueError if out of range."""
    if not -rank <= dim < rank:
        raise ValueError(f"dim {dim} is out of range for a tensor of rank {rank}")
    return dim % rank


def g_shape_for(v_shape: tuple[int, ...], dim: int | None) -> tuple[int, ...]:
    """The shape PyTorch gives ``g`` for a weight of ``v_shape`` normalized over all but ``dim``."""
    if dim is None:
        return ()
    dim = normalize_dim(dim, len(v_shape))
    return tuple(s if i == dim else 1 for i, s in enumerate(v_shape))


def check_pair_shapes(name: str, g_shape: tuple[int, ...], v_shape: tuple[int, ...]) -> int | None:
    """:func:`infer_dim` that raises :class:`InputError` naming the parameter."""
    try:
        return infer_dim(g_shape, v_shape)
    except ValueError as exc:
        raise InputError(
            f"weight-norm pair {name!r} does not fit: {exc}; the checkpoint is inconsistent "
            "(re-save it from the model, or exclude this parameter)"
        ) from None


# --------------------------------------------------------------------------- widening


def as_float64(array: np.ndarray) -> np.ndarray:
    """``array`` widened to float64 (a copy), NaN payloads and all.

    A checkpoint's bytes are whatever they are: a float32 signalling NaN raises the CPU's
    "invalid" flag when widened, which numpy reports as a RuntimeWarning. The value is a NaN
    either way (torch widens it silently to a quiet NaN), so the flag is not news; what the
    NaN does to a result is counted where it matters (``FoldStats.nonfinite_rows``).
    """
    with np.errstate(invalid="ignore"):
        return np.asarray(array).astype(np.float64)


# --------------------------------------------------------------------------- rounding


def round_from_float64(x64: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """Round a float64 array once, to nearest-even, into ``dtype``.

    float32 and float16 use numpy's casts, which round correctly from float64. bfloat16 is
    rounded here in float64 to 8 significant bits, so the final cast is exact.
    """
    dtype = numpy_dtype(dtype) if isinstance(dtype, str) else np.dtype(dtype)
    name = name_of_numpy(dtype)
    if name == "float64":
        return x64
    if name in ("float32", "float16"):
        with np.errstate(over="ignore"):  # overflow to ±inf is the correct rounding
            return x64.astype(dtype)
    if name != "bfloat16":
        raise ValueError(f"cannot round to {name}: not a floating dtype wnconvert handles")
    return _round_bfloat16(x64).astype(dtype)


def _round_bfloat16(x64: np.ndarray) -> np.ndarray:
    precision, min_exp, max_finite = _BFLOAT16
    with np.errstate(invalid="ignore", over="ignore"):
        _, exponent = np.frexp(x64)  # x = m * 2**exponent, 0.5 <= |m| < 1
        # Spacing of bfloat16 values in x's binade, never finer than the subnormal spacing;
        # dividing and multiplying by it are exact (powers of two). np.rint is half-to-even.
        quantum_exp = np.maximum(exponent - 1, min_exp) - (precision - 1)
        rounded = np.ldexp(np.rint(np.ldexp(x64, -quantum_exp)), quantum_exp)
        rounded = np.where(np.isfinite(x64), rounded, x64)
        # Past the largest finite value IEEE rounding gives inf.
        return np.where(np.abs(rounded) > max_finite, np.copysign(np.inf, x64), rounded)


# --------------------------------------------------------------------------- chunked loops


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="wnconvert")
    return _pool


def _row_chunks(rows: int, row_size: int, elements: int | None = None) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges of about ``elements`` (default: a chunk's) each, at least
    one row."""
    step = max(1, (elements or _CHUNK_ELEMENTS) // max(1, row_size))
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


def _run_chunks(
    chunks: list[tuple[int, int]], work: Callable[[int, int], object], total: int
) -> list:
    """Apply ``work(start, stop)`` to every chunk; threads for big tensors. Results in order."""
    if total < _PARALLEL_MIN or _THREADS == 1 or len(chunks) < 2:
        return [work(a, b) for a, b in chunks]
    # Each thread takes the next chunk when it is done with one (not a fixed share): a thread
    # the system runs less (a busy machine) then does less, instead of keeping the others
    # waiting for its share at the end of the tensor.
    results: list[object] = [None] * len(chunks)
    taken = itertools.count()  # next() is atomic: its C code runs under the GIL
    failed = threading.Event()

    def worker() -> None:
        for index in taken:
            if index >= len(chunks) or failed.is_set():
                return
            try:
                results[index] = work(*chunks[index])
            except BaseException:
                failed.set()  # the other threads stop at their next chunk
                raise

    futures = [_executor().submit(worker) for _ in range(min(_THREADS, len(chunks)))]
    wait(futures)  # every thread has stopped before an error is raised
    for future in futures:
        future.result()
    return results


def _as_rows(v: np.ndarray) -> np.ndarray:
    """``v`` as 2-D (axis 0, everything else) for chunking; 0-d and 1-d get a row axis."""
    if v.ndim == 0:
        return v.reshape(1, 1)
    if v.ndim == 1:
        return v.reshape(-1, 1)
    return v.reshape(v.shape[0], -1)


def squared_norms(v: np.ndarray, dim: int | None) -> np.ndarray:
    """Sum of squares over every axis but ``dim``, in float64, with ``g``'s shape."""
    v = c_contiguous(v)
    shape = g_shape_for(v.shape, dim) if v.ndim else ()
    if dim is not None and v.ndim:
        dim = normalize_dim(dim, v.ndim)
    rows = _as_rows(v)
    chunks = _row_chunks(rows.shape[0], rows.shape[1])

    if dim == 0 and v.ndim:

        def per_row(a: int, b: int) -> np.ndarray:
            c = as_float64(rows[a:b])
            return np.einsum("ij,ij->i", c, c)

        return np.concatenate(_run_chunks(chunks, per_row, v.size)).reshape(shape)

    # The norm spans many rows: sum per chunk, then combine the partial sums in chunk order.
    if dim is None or v.ndim == 0:

        def total(a: int, b: int) -> float:
            c = as_float64(rows[a:b])
            return float(np.einsum("ij,ij->", c, c))

        return np.array(sum(_run_chunks(chunks, total, v.size)), dtype=np.float64)

    axes = tuple(i for i in range(v.ndim) if i != dim)

    def partial(a: int, b: int) -> np.ndarray:
        c = as_float64(v[a:b])
        with np.errstate(invalid="ignore"):  # a signalling NaN squared: NaN, nothing more
            return np.sum(c * c, axis=axes, keepdims=True)

    parts = _run_chunks(_row_chunks(v.shape[0], rows.shape[1]), partial, v.size)
    acc = np.zeros(shape, dtype=np.float64)
    for p in parts:
        acc += p
    return acc


def _scratch(name: str, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
    """A per-thread array of ``shape``, reused by the next chunk this thread works on.

    A fresh array per chunk costs a malloc and, once glibc returns the memory to the kernel, a
    page fault per 4 KiB on the next touch; a gigabyte folded in 2 MiB chunks did that 500
    times per thread. Arrays above a chunk's size (one very long row) are not kept.
    """
    size = math.prod(shape)
    if size > 2 * _CHUNK_ELEMENTS:
        return np.empty(shape, dtype=dtype)
    key = (name, np.dtype(dtype))
    buffers: dict[tuple[str, np.dtype], np.ndarray] = _scratch_local.__dict__.setdefault(
        "buffers", {})
    flat = buffers.get(key)
    if flat is None or flat.size < size:
        flat = buffers[key] = np.empty(max(size, _CHUNK_ELEMENTS), dtype=dtype)
    return flat[:size].reshape(shape)


@dataclass(frozen=True)
class FoldStats:
    """What fold noticed about one pair."""

    zero_norm_rows: int  # rows whose norm is 0 (PyTorch would produce NaN there)
    nonfinite_rows: int  # rows (or g entries) with NaN/Inf in g or v


def fold(g: np.ndarray, v: np.ndarray, dim: int | None) -> tuple[np.ndarray, FoldStats]:
    """Return ``w = g * v / ||v||`` in ``v``'s dtype, computed in float64 and rounded once.

    Rows whose norm is zero come out as zeros (PyTorch gives NaN); their count is in the stats.
    """
    out = np.empty(np.shape(v), dtype=np.asarray(v).dtype)
    out_bytes = out.reshape(-1).view(np.uint8)

    def write(offset: int, piece: np.ndarray) -> None:
        out_bytes[offset : offset + piece.nbytes] = piece.reshape(-1).view(np.uint8)

    return out, fold_into(g, v, dim, write)


def fold_into(
    g: np.ndarray, v: np.ndarray, dim: int | None, write: Callable[[int, np.ndarray], None]
) -> FoldStats:
    """Fold like :func:`fold`, handing the result over in pieces instead of as one array.

    ``write(offset, piece)`` receives consecutive rows (axis 0) of ``w`` in C order, ``offset``
    being the byte offset of the piece in ``w``. The pieces cover ``w`` exactly once, may come
    from several threads at a time and in any order, and are only valid during the call. This is
    what lets a writer stream a fold straight into a file (``os.pwrite``) while reading ``v``
    from a memory map: no array the size of ``w`` is ever allocated.

    For ``dim=0`` (per-row norms, by far the most common) this is a single pass over ``v``:
    each chunk's norms are computed and applied while the chunk is still in cache.
    """
    if not is_floating(name_of_numpy(v.dtype)):
        raise ValueError(f"v has dtype {v.dtype}; weight norm needs a floating dtype")
    if v.size == 0:
        raise ValueError(f"v has shape {list(v.shape)}, no elements; there is nothing to fold")
    v = c_contiguous(v)
    if dim is not None and v.ndim:
        dim = normalize_dim(dim, v.ndim)
    rows = _as_rows(v)
    row_bytes = rows.shape[1] * v.dtype.itemsize
    chunks = _row_chunks(v.shape[0] if v.ndim else 1, rows.shape[1])

    if dim == 0 and v.ndim:
        g_rows = np.asarray(g).reshape(-1)
        if g_rows.size != rows.shape[0]:
            raise ValueError(f"g has {g_rows.size} elements, v has {rows.shape[0]} rows")

        def widened(a: int, b: int) -> np.ndarray:
            block = _scratch("block", rows[a:b].shape, np.float64)
            with np.errstate(invalid="ignore"):  # as in as_float64: a NaN stays a NaN
                np.copyto(block, rows[a:b])
            return block

        def row_scale(block: np.ndarray, a: int, b: int) -> tuple[np.ndarray, int, int]:
            norms = np.sqrt(np.einsum("ij,ij->i", block, block))
            g64 = as_float64(g_rows[a:b])
            zero = norms == 0
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                # A zero-norm row is all zeros in v; scaling it by 0 gives zeros, not 0/0 = NaN.
                scale = np.where(zero, 0.0, g64 / np.where(zero, 1.0, norms))
            nonfinite = int((~np.isfinite(norms)).sum() + (~np.isfinite(g64)).sum())
            return scale[:, None], int(zero.sum()), nonfinite

        def fold_rows(a: int, b: int) -> tuple[int, int]:
            if v.dtype != np.float32:
                block = widened(a, b)
                scale, zero, nonfinite = row_scale(block, a, b)
                with np.errstate(invalid="ignore", over="ignore"):
                    block *= scale
                    write(a * row_bytes, round_from_float64(block, v.dtype))
                return zero, nonfinite
            # float32: the chunk is written in one piece (few, large writes), but computed in
            # cache-sized blocks of rows, each widened, summed and scaled while it stays in the
            # core's cache; the float64 product is rounded as it is stored into the chunk's
            # float32 buffer (numpy's float64 -> float32 cast, as round_from_float64's).
            out = _scratch("float32", rows[a:b].shape, np.float32)
            zero = nonfinite = 0
            for c, d in _row_chunks(b - a, rows.shape[1], _BLOCK_ELEMENTS):
                block = widened(a + c, a + d)
                scale, block_zero, block_nonfinite = row_scale(block, a + c, a + d)
                with np.errstate(invalid="ignore", over="ignore"):
                    np.multiply(block, scale, out=out[c:d], casting="same_kind")
                zero += block_zero
                nonfinite += block_nonfinite
            write(a * row_bytes, out)
            return zero, nonfinite

        counts = _run_chunks(chunks, fold_rows, v.size)
        return FoldStats(sum(c[0] for c in counts), sum(c[1] for c in counts))

    # The norm spans many rows: all norms first, then a second pass applies them.
    norms = np.sqrt(squared_norms(v, dim))
    g64 = as_float64(g).reshape(norms.shape)
    zero = norms == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(zero, 0.0, g64 / np.where(zero, 1.0, norms))
    stats = FoldStats(int(zero.sum()), int((~np.isfinite(norms)).sum() + (~np.isfinite(g64)).sum()))
    # For dim > 0 the scale varies inside a row: broadcast it over v's own shape per chunk.
    full_scale = scale if scale.ndim else None

    def apply(a: int, b: int) -> None:
        with np.errstate(invalid="ignore", over="ignore"):
            if full_scale is not None:
                block = as_float64(v[a:b]) * full_scale
            else:
                block = as_float64(rows[a:b])
                block *= float(scale)
            write(a * row_bytes, round_from_float64(block, v.dtype))

    _run_chunks(chunks, apply, v.size)
    return stats


def decompose(w: np.ndarray, dim: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Return ``(g, v, zero_norm_rows)``: ``g = ||w||`` rounded once to ``w``'s dtype, ``v = w``.

    ``v`` is ``w`` itself (bit-identical); ``g`` has PyTorch's shape for ``dim``.
    """
    if not is_floating(name_of_numpy(w.dtype)):
        raise ValueError(f"weight has dtype {w.dtype}; weight norm needs a floating dtype")
    if w.size == 0:
        raise ValueError(f"weight has shape {list(w.shape)}, no elements; it has no norm")
    norms = np.sqrt(squared_norms(w, dim))
    return round_from_float64(norms, w.dtype), w, int((norms == 0).sum())


# --------------------------------------------------------------------------- spectral norm

#: PyTorch's default ``eps`` of spectral norm (``F.normalize`` of a 1-D weight divides by
#: ``max(‖W‖, eps)``).
SPECTRAL_EPS = 1e-12


def spectral_sigma(weight: np.ndarray, u: np.ndarray, v: np.ndarray, dim: int) -> float:
    """``σ = uᵀ · W_mat · v`` in float64, ``W_mat`` being ``weight`` with axis ``dim`` moved
    first and the rest flattened: what PyTorch's eval-mode spectral norm divides by (the
    stored power-iteration vectors, no new iteration)."""
    w64 = as_float64(weight)
    dim = normalize_dim(dim, w64.ndim)
    mat = np.moveaxis(w64, dim, 0).reshape(w64.shape[dim], -1)
    u64, v64 = as_float64(u).reshape(-1), as_float64(v).reshape(-1)
    if u64.shape != (mat.shape[0],) or v64.shape != (mat.shape[1],):
        raise ValueError(f"spectral norm vectors of lengths {u64.size} and {v64.size} do not fit "
                         f"a weight of shape {list(w64.shape)} with dim={dim} (want "
                         f"{mat.shape[0]} and {mat.shape[1]})")
    return float(u64 @ (mat @ v64))


def spectral_fold(weight: np.ndarray, u: np.ndarray | None, v: np.ndarray | None,
                  dim: int = 0, *, eps: float = SPECTRAL_EPS) -> tuple[np.ndarray, float]:
    """The weight PyTorch's eval-mode spectral norm computes, in float64 rounded once to
    ``weight``'s dtype, and the σ it divided by.

    With ``u``/``v``: ``W = W_orig / σ`` (:func:`spectral_sigma`). Without them (a 1-D weight,
    which PyTorch normalizes instead): ``W = W_orig / max(‖W_orig‖, eps)``.
    """
    w64 = as_float64(weight)
    if u is None and v is None:
        sigma = max(float(np.sqrt(np.sum(w64 * w64))), eps)
    elif u is None or v is None:
        raise ValueError("spectral norm needs both u and v (or neither, for a 1-D weight)")
    else:
        sigma = spectral_sigma(weight, u, v, dim)
    with np.errstate(divide="ignore", invalid="ignore"):  # σ = 0 gives ±inf/NaN, as PyTorch
        return round_from_float64(w64 / sigma, np.asarray(weight).dtype), sigma


def spectral_dims(shape: tuple[int, ...], u_size: int, v_size: int) -> list[int]:
    """The axes ``dim`` of a weight of ``shape`` that spectral norm's stored vectors fit: ``u``
    has the size of ``dim``, ``v`` the product of the other sizes. Several axes fit a square
    weight (a ConvTranspose with as many inputs as outputs), where only the model can tell."""
    total = math.prod(shape)
    return [d for d, size in enumerate(shape)
            if size == u_size and size and total // size == v_size]


def spectral_dim_from_vectors(weight: np.ndarray, u: np.ndarray, v: np.ndarray,
                              dims: list[int]) -> int | None:
    """Of ``dims`` (axes that ``u``/``v`` fit by size), the one the stored vectors were computed
    for, or None when they do not tell clearly.

    PyTorch's power iteration ends with ``v = normalize(W_matᵀ · u)``: for the right axis ``v``
    is (nearly, once the optimizer moved the weight) parallel to ``W_matᵀ · u``; for a wrong
    one the two are unrelated. Decided only with a clear margin: cosine >= 0.9 for one axis,
    <= 0.5 for every other.
    """
    w64 = as_float64(weight)
    u64, v64 = as_float64(u).reshape(-1), as_float64(v).reshape(-1)
    v_norm = float(np.linalg.norm(v64))
    cosines = []
    for dim in dims:
        t = np.moveaxis(w64, dim, 0).reshape(w64.shape[dim], -1).T @ u64
        denominator = float(np.linalg.norm(t)) * v_norm
        cosines.append(abs(float(t @ v64)) / denominator if denominator > 0 else 0.0)
    if not all(np.isfinite(cosines)):
        return None
    best = int(np.argmax(cosines))
    others = [c for i, c in enumerate(cosines) if i != best]
    return dims[best] if cosines[best] >= 0.9 and all(c <= 0.5 for c in others) else None
