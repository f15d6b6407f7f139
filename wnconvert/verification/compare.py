"""Comparing one candidate array with its reference (in float64): the element-wise rule, the
error statistics (max, mean, median and a quantile of the absolute and relative error, SNR in
dB) and the pass rule built on them (:class:`~.tolerance.PassRule`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..dtypes import name_of_numpy
from .tolerance import PassRule, Tolerance

if TYPE_CHECKING:
    import numpy as np


#: Relative errors divide by ``|reference|``; where the reference is exactly 0 they divide by
#: this instead (float64's machine epsilon, what Polygraphy adds), so they stay finite and
#: a statistic over them means something.
REL_EPSILON = 2.220446049250313e-16


@dataclass(frozen=True)
class ErrorStats:
    """The error budget of one comparison, over the elements finite on both sides.

    ``abs_*``: ``|c - r|``; ``rel_*``: ``|c - r| / |r|`` (:data:`REL_EPSILON` for ``r == 0``).
    Median and quantile use numpy's default (linear) interpolation. ``snr_db``:
    ``10 * log10(sum(r**2) / sum((c - r)**2))``, +inf when the two are identical, -inf when the
    reference is all zeros and the candidate is not, NaN when not computed (shapes differ).
    """

    quantile: float
    abs_max: float
    abs_mean: float
    abs_median: float
    abs_quantile: float
    rel_max: float
    rel_mean: float
    rel_median: float
    rel_quantile: float
    snr_db: float
    finite: int  # the elements the statistics are over

    def of(self, kind: str, stat: str) -> float:
        """``of("abs", "mean")``: one statistic (``stat`` one of max/mean/median/quantile)."""
        return float(getattr(self, f"{kind}_{stat}"))

    def summary(self) -> str:
        """``abs max 1.2e-06 mean 3e-08 median 1e-08 p99 6e-07; rel max ...; SNR 121.3 dB``."""
        parts = []
        for kind in ("abs", "rel"):
            figures = " ".join(f"{stat_label(stat, self.quantile)} {self.of(kind, stat):.3g}"
                               for stat in ("max", "mean", "median", "quantile"))
            parts.append(f"{kind} {figures}")
        return "; ".join(parts) + f"; SNR {snr_text(self.snr_db)}"

    @classmethod
    def zero(cls, quantile: float, finite: int) -> ErrorStats:
        return cls(quantile, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, math.inf, finite)

    @classmethod
    def unknown(cls, quantile: float) -> ErrorStats:
        inf = math.inf
        return cls(quantile, inf, inf, inf, inf, inf, inf, inf, inf, math.nan, 0)


def quantile_label(quantile: float) -> str:
    """``p99`` for 0.99, ``p99.9`` for 0.999, ``p50`` for 0.5."""
    return f"p{round(quantile * 100, 6):g}"


def stat_label(stat: str, quantile: float) -> str:
    return quantile_label(quantile) if stat == "quantile" else stat


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
    # Smallest atol that passes: at this rtol (elemwise), or the statistic of the absolute error
    # (which passes whatever rtol); inf when NaN/Inf disagree.
    min_atol: float
    mismatched: int  # elements outside the tolerance (NaN/Inf disagreements included)
    nonfinite_mismatch: int
    size: int
    worst_index: tuple[int, ...] | None = None
    worst_candidate: float | None = None
    worst_reference: float | None = None
    message: str | None = None  # shape/dtype problems
    ref_max_abs: float = 0.0  # largest finite |reference|: how strong atol is for this array
    rule: PassRule = PassRule()
    stats: ErrorStats | None = None  # None when not asked for (weights)
    # The rules that failed: the statistic checked (elemwise, max, ...) and/or "min_snr".
    failed_rules: tuple[str, ...] = ()
    min_rtol: float = 0.0  # the same for rtol (at this atol for elemwise)

    @property
    def passed(self) -> bool:
        if self.stats is None:
            return self.message is None and self.mismatched == 0
        return self.message is None and not self.failed_rules


def dtype_name(array: np.ndarray) -> str:
    """numpy dtype name; ml_dtypes' bfloat16 reads ``bfloat16``."""
    return name_of_numpy(array.dtype)


def compare_arrays(
    candidate: np.ndarray, reference: np.ndarray, tolerance: Tolerance,
    rule: PassRule | None = None,
) -> ArrayComparison:
    """Apply the rule in float64 and summarise the errors.

    Without ``rule`` (weights): the element-wise rule, and no error distribution (median and
    quantiles need every error in memory). With it: :class:`ErrorStats` too, and the pass rule
    it names; a NaN/Inf disagreement fails whatever the rule.
    """
    import numpy as np

    with_stats = rule is not None
    rule = rule if rule is not None else PassRule()

    cand_shape, ref_shape = tuple(candidate.shape), tuple(reference.shape)
    cand_dtype, ref_dtype = dtype_name(candidate), dtype_name(reference)
    base: dict[str, Any] = {
        "shape": cand_shape,
        "dtype": cand_dtype,
        "reference_shape": ref_shape,
        "reference_dtype": ref_dtype,
        "atol": tolerance.atol,
        "rtol": tolerance.rtol,
        "rule": rule,
    }
    if cand_shape != ref_shape:
        size = int(np.prod(ref_shape, dtype=np.int64))
        return ArrayComparison(
            **base, max_abs=math.inf, max_rel=math.inf, mean_abs=math.inf, min_atol=math.inf,
            mismatched=size, nonfinite_mismatch=0, size=size, min_rtol=math.inf,
            message=f"shape {list(cand_shape)} differs from the reference's {list(ref_shape)}",
            stats=ErrorStats.unknown(rule.quantile) if with_stats else None,
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
            stats=ErrorStats.zero(rule.quantile, finite) if with_stats else None,
        )
    cand_flat = np.asarray(candidate).reshape(-1)
    ref_flat = np.asarray(reference).reshape(-1)
    n_finite = nonfinite_mismatch = mismatched = 0
    max_abs = max_rel = sum_abs = ref_max_abs = sum_rel = signal = noise = min_rtol = 0.0
    # Every finite error, kept for the median and the quantile (with_stats only).
    abs_errors = np.empty(size if with_stats else 0, dtype=np.float64)
    rel_errors = np.empty_like(abs_errors)
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
            if with_stats:
                over_atol = diff > tolerance.atol
                if over_atol.any():  # rtol that would cover what atol does not, at this atol
                    need = (diff[over_atol] - tolerance.atol) / abs_r[over_atol]
                    min_rtol = max(min_rtol, float(need.max()))
                all_finite = bool(finite.all())  # the usual case: no boolean indexing
                kept_abs = diff if all_finite else diff[finite]
                kept_ref = abs_r if all_finite else abs_r[finite]
                end = n_finite + kept_abs.size
                abs_errors[n_finite:end] = kept_abs
                kept_rel = rel_errors[n_finite:end]
                np.divide(kept_abs, np.where(kept_ref == 0, REL_EPSILON, kept_ref), out=kept_rel)
                sum_rel += float(kept_rel.sum())
                # Dot products: sums of squares without a temporary array.
                signal += float(np.dot(abs_r, abs_r))
                noise += float(np.dot(diff, diff))
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
    if not with_stats:
        return ArrayComparison(
            **base, max_abs=max_abs, max_rel=max_rel, mean_abs=mean_abs, min_atol=min_atol,
            mismatched=mismatched, nonfinite_mismatch=nonfinite_mismatch, size=size,
            worst_index=worst, worst_candidate=worst_c, worst_reference=worst_r,
            message=message, ref_max_abs=ref_max_abs,
        )
    stats = _error_stats(abs_errors[:n_finite], rel_errors[:n_finite], sum_rel=sum_rel,
                         mean_abs=mean_abs, signal=signal, noise=noise, quantile=rule.quantile)
    failed: list[str] = []
    if rule.stat == "elemwise":
        if mismatched:
            failed.append("elemwise")
    else:
        abs_stat, rel_stat = stats.of("abs", rule.stat), stats.of("rel", rule.stat)
        # Polygraphy's rule: fails only when both are over (a NaN statistic is over).
        if nonfinite_mismatch or not (abs_stat <= tolerance.atol or rel_stat <= tolerance.rtol):
            failed.append(rule.stat)
        # The minimum tolerance that passes, as Polygraphy prints it: an atol at the absolute
        # statistic passes whatever rtol, an rtol at the relative one whatever atol.
        min_atol, min_rtol = abs_stat, rel_stat
    if rule.min_snr is not None and (nonfinite_mismatch or not stats.snr_db >= rule.min_snr):
        failed.append("min_snr")
    if nonfinite_mismatch:
        min_atol = min_rtol = math.inf
    return ArrayComparison(
        **base, max_abs=max_abs, max_rel=max_rel, mean_abs=mean_abs, min_atol=min_atol,
        mismatched=mismatched, nonfinite_mismatch=nonfinite_mismatch, size=size,
        worst_index=worst, worst_candidate=worst_c, worst_reference=worst_r, message=message,
        ref_max_abs=ref_max_abs, stats=stats, failed_rules=tuple(failed), min_rtol=min_rtol,
    )


def _error_stats(abs_errors: np.ndarray, rel_errors: np.ndarray, *, sum_rel: float,
                 mean_abs: float, signal: float, noise: float, quantile: float) -> ErrorStats:
    """Statistics of the finite errors. np.quantile partitions (no full sort) and, with its
    default linear method, gives np.median at 0.5: one call gives both."""
    import numpy as np

    n = abs_errors.size
    if not n:
        return ErrorStats.zero(quantile, 0)
    # The arrays are this comparison's own: partition them in place, no copy (max and mean
    # are taken first, since partitioning reorders them).
    abs_max, rel_max = float(abs_errors.max()), float(rel_errors.max())
    abs_median, abs_q = (float(v) for v in np.quantile(abs_errors, [0.5, quantile],
                                                       overwrite_input=True))
    rel_median, rel_q = (float(v) for v in np.quantile(rel_errors, [0.5, quantile],
                                                       overwrite_input=True))
    if noise == 0:
        snr = math.inf
    elif signal == 0:
        snr = -math.inf
    else:
        snr = 10.0 * math.log10(signal / noise)
    return ErrorStats(
        quantile=quantile, abs_max=abs_max, abs_mean=mean_abs,
        abs_median=abs_median, abs_quantile=abs_q, rel_max=rel_max,
        rel_mean=sum_rel / n, rel_median=rel_median, rel_quantile=rel_q, snr_db=snr, finite=n,
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
    stats, rule = comp.stats, comp.rule
    if stats is not None and rule.stat != "elemwise":
        if rule.stat in comp.failed_rules and not comp.nonfinite_mismatch:
            label = stat_label(rule.stat, stats.quantile)
            abs_stat, rel_stat = stats.of("abs", rule.stat), stats.of("rel", rule.stat)
            parts.append(
                f"{label} abs error {abs_stat:.3g} > atol {comp.atol:g} and {label} rel error "
                f"{rel_stat:.3g} > rtol {comp.rtol:g} (needs atol >= {_fmt(abs_stat)} or rtol "
                f">= {_fmt(rel_stat)})")
    elif comp.mismatched:
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
    if stats is not None and "min_snr" in comp.failed_rules and not comp.nonfinite_mismatch:
        parts.append(f"SNR {snr_text(stats.snr_db)} < min_snr {rule.min_snr:g} dB (passes "
                     f"with min_snr <= {snr_text(stats.snr_db)})")
    return "; ".join(parts) or "passed"


def snr_text(value: float) -> str:
    """``121.3 dB``; ``inf dB`` for identical arrays."""
    if math.isnan(value):
        return "n/a"
    return f"{value:.1f} dB" if math.isfinite(value) else f"{'-' if value < 0 else ''}inf dB"


def json_snr(value: float) -> float | str | None:
    """SNR in JSON: a number, the strings ``"inf"`` (identical) / ``"-inf"`` (all-zero
    reference, non-zero candidate), or null when not computed."""
    if math.isnan(value):
        return None
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3g}"


def json_number(value: float) -> float | None:
    """JSON has no Infinity/NaN: non-finite numbers are written as null."""
    return value if math.isfinite(value) else None
