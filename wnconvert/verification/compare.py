"""Comparing one candidate array with its reference (element-wise, in float64)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..dtypes import name_of_numpy
from .tolerance import Tolerance

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class ArrayComparison:
    """One candidate array against its reference under one tolerance."""

    shape: tuple[int, ...]
    dtype: str
    reference_shape: tuple[int, ...]
    reference_dtype: str
    atol: float
    rtol: float
    max_abs: float
    max_rel: float
    mean_abs: float
    min_atol: float  # smallest atol that passes at this rtol; inf when NaN/Inf disagree
    mismatched: int  # elements outside the tolerance (NaN/Inf disagreements included)
    nonfinite_mismatch: int
    size: int
    worst_index: tuple[int, ...] | None = None
    worst_candidate: float | None = None
    worst_reference: float | None = None
    message: str | None = None  # shape/dtype problems
    ref_max_abs: float = 0.0  # largest finite |reference|: how strong atol is for this array

    @property
    def passed(self) -> bool:
        return self.message is None and self.mismatched == 0


def dtype_name(array: np.ndarray) -> str:
    """numpy dtype name; ml_dtypes' bfloat16 reads ``bfloat16``."""
    return name_of_numpy(array.dtype)


def compare_arrays(
    candidate: np.ndarray, reference: np.ndarray, tolerance: Tolerance
) -> ArrayComparison:
    """Apply the rule element-wise in float64 and summarise the errors."""
    import numpy as np

    cand_shape, ref_shape = tuple(candidate.shape), tuple(reference.shape)
    cand_dtype, ref_dtype = dtype_name(candidate), dtype_name(reference)
    base: dict[str, Any] = {
        "shape": cand_shape,
        "dtype": cand_dtype,
        "reference_shape": ref_shape,
        "reference_dtype": ref_dtype,
        "atol": tolerance.atol,
        "rtol": tolerance.rtol,
    }
    if cand_shape != ref_shape:
        size = int(np.prod(ref_shape, dtype=np.int64))
        return ArrayComparison(
            **base, max_abs=math.inf, max_rel=math.inf, mean_abs=math.inf, min_atol=math.inf,
            mismatched=size, nonfinite_mismatch=0, size=size,
            message=f"shape {list(cand_shape)} differs from the reference's {list(ref_shape)}",
        )
    size = int(np.prod(ref_shape, dtype=np.int64))
    if cand_dtype == ref_dtype and _same_bytes(candidate, reference):
        # Bit-identical (copied weights, or both sides folded by the same code): every error
        # is 0 and NaN/Inf agree, so skip the element-wise pass over what may be gigabytes.
        peak, finite = _finite_peak_and_count(reference)
        return ArrayComparison(
            **base, max_abs=0.0, max_rel=0.0, mean_abs=0.0, min_atol=0.0, mismatched=0,
            nonfinite_mismatch=0, size=size, ref_max_abs=peak,
            message=_nothing_finite(size, finite),
        )
    cand_flat = np.asarray(candidate).reshape(-1)
    ref_flat = np.asarray(reference).reshape(-1)
    n_finite = nonfinite_mismatch = mismatched = 0
    max_abs = max_rel = sum_abs = ref_max_abs = 0.0
    max_excess = -math.inf
    worst_score, worst_flat = -math.inf, None
    # Chunks keep the float64 temporaries in cache and memory flat for large weights.
    for start in range(0, size, _COMPARE_CHUNK):
        c = _as_float64(cand_flat[start : start + _COMPARE_CHUNK])
        r = _as_float64(ref_flat[start : start + _COMPARE_CHUNK])
        finite = np.isfinite(c) & np.isfinite(r)
        # Non-finite values agree only when both are NaN or both are the same infinity.
        agree = (np.isnan(c) & np.isnan(r)) | (np.isinf(c) & np.isinf(r) & (c == r))
        nonfinite_bad = ~finite & ~agree
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            diff = np.where(finite, np.abs(c - r), 0.0)
            abs_r = np.where(finite, np.abs(r), 0.0)
            # x/0 -> inf: any error on a zero is an "inf" relative error
            rel = np.where(diff == 0, 0.0, diff / abs_r)
            excess = diff - tolerance.rtol * abs_r
            bad = (diff > tolerance.atol + tolerance.rtol * abs_r) | nonfinite_bad
        n_finite += int(finite.sum())
        nonfinite_mismatch += int(nonfinite_bad.sum())
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            ref_max_abs = max(ref_max_abs, float(abs_r.max()))
        if diff.size:
            max_rel = max(max_rel, float(rel.max()))
            max_excess = max(max_excess, float(excess.max()))
        sum_abs += float(diff.sum())
        chunk_bad = int(bad.sum())
        if chunk_bad:
            mismatched += chunk_bad
            # Where the check fails worst (a disagreeing NaN/Inf first).
            score = np.where(nonfinite_bad, np.inf, excess)
            i = int(np.argmax(score))
            if score[i] > worst_score:
                worst_score, worst_flat = float(score[i]), start + i
    mean_abs = sum_abs / n_finite if n_finite else 0.0
    min_atol = max(max_excess, 0.0) if size else 0.0
    if nonfinite_mismatch:
        min_atol = math.inf
    worst = None
    worst_c = worst_r = None
    if worst_flat is not None:
        worst = tuple(int(i) for i in np.unravel_index(worst_flat, ref_shape))
        worst_c, worst_r = float(cand_flat[worst_flat]), float(ref_flat[worst_flat])
    message = _nothing_finite(size, n_finite + nonfinite_mismatch)
    if cand_dtype != ref_dtype:
        message = f"dtype {cand_dtype} differs from the reference's {ref_dtype}"
    return ArrayComparison(
        **base, max_abs=max_abs, max_rel=max_rel, mean_abs=mean_abs, min_atol=min_atol,
        mismatched=mismatched, nonfinite_mismatch=nonfinite_mismatch, size=size,
        worst_index=worst, worst_candidate=worst_c, worst_reference=worst_r, message=message,
        ref_max_abs=ref_max_abs,
    )


_COMPARE_CHUNK = 1 << 18  # elements per chunk: 2 MiB of float64


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    import numpy as np

    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and (
        a.nbytes == 0 or np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))
    )


def _nothing_finite(size: int, compared: int) -> str | None:
    """Why a comparison of only agreeing NaN/Inf is no check (None when something was)."""
    if size == 0 or compared:
        return None
    return (f"all {size} reference values are NaN or Inf, so nothing was compared; give inputs "
            "the model is defined on (--inputs)")


def _finite_peak_and_count(array: np.ndarray) -> tuple[float, int]:
    """The largest finite ``|x|`` and how many finite elements ``array`` has."""
    import numpy as np

    flat = np.asarray(array).reshape(-1)
    peak, count = 0.0, 0
    for start in range(0, flat.size, _COMPARE_CHUNK):
        chunk = np.abs(_as_float64(flat[start : start + _COMPARE_CHUNK]))
        chunk = chunk[np.isfinite(chunk)]
        count += int(chunk.size)
        if chunk.size:
            peak = max(peak, float(chunk.max()))
    return peak, count


def _as_float64(array: np.ndarray) -> np.ndarray:
    from ..numerics import as_float64

    return as_float64(array)



def describe(comp: ArrayComparison) -> str:
    """A one-line account of a failed comparison."""
    if comp.message and comp.message.startswith("shape"):
        return comp.message
    parts = []
    if comp.message:
        parts.append(comp.message)
    if comp.nonfinite_mismatch:
        parts.append(f"{comp.nonfinite_mismatch} NaN/Inf disagree")
    if comp.mismatched:
        where = ""
        if comp.worst_index is not None:
            where = (
                f"; worst at {list(comp.worst_index)}: candidate {comp.worst_candidate:.7g}, "
                f"reference {comp.worst_reference:.7g}"
            )
        parts.append(
            f"{comp.mismatched}/{comp.size} elements outside atol {comp.atol:g} + rtol "
            f"{comp.rtol:g} * |ref| (max_abs {comp.max_abs:.3g}, needs atol >= "
            f"{_fmt(comp.min_atol)}){where}"
        )
    return "; ".join(parts) or "passed"


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3g}"


def json_number(value: float) -> float | None:
    """JSON has no Infinity/NaN: non-finite numbers are written as null."""
    return value if math.isfinite(value) else None
