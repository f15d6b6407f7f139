"""Numerical verification of an ONNX model against a reference (PyTorch or another ONNX model).

The rule, element-wise for every output::

    |candidate - reference| <= atol + rtol * |reference|

NaN or Inf on either side fails unless both sides agree (NaN with NaN, +Inf with +Inf, -Inf with
-Inf). Defaults depend on the reference output's dtype (:data:`DEFAULT_TOLERANCES`); ``atol`` /
``rtol`` override them for every output and per-output overrides win over both.

Inputs are seeded random draws (``numpy.random.default_rng([seed, run])``, standard normal for
floating inputs) of the shapes given or read from the model, or real data from an ``.npz`` file.
When the model has dynamic axes, one more case runs at a second size of those axes.

The candidate runs on ONNX Runtime once per execution provider; CUDA runs with TF32 off unless
asked (``use_tf32=0``), so float32 results are comparable with float32 references.

Public entry points: :func:`verify_onnx_against_torch`, :func:`verify_onnx_against_onnx`,
:func:`compare_arrays`, :func:`compare_weights`, :func:`resolve_providers`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ._version import __version__
from .dtypes import name_of_numpy, numpy_dtype, numpy_to_tensor, tensor_to_numpy
from .errors import InputError, InputNotFound
from .export import (
    DynamicAxis,
    InputSpec,
    flatten_outputs,
    load_inputs_npz,
    output_names,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .cli.common import VerifyCliOptions

RULE = "|candidate - reference| <= atol + rtol * |reference| (element-wise; NaN/Inf must agree)"
REPORT_SCHEMA = "wnconvert.verify/1"


# --------------------------------------------------------------------------------------------
# Tolerances


@dataclass(frozen=True)
class Tolerance:
    """Absolute and relative tolerance of the rule ``|c - r| <= atol + rtol * |r|``."""

    atol: float
    rtol: float


#: Defaults per reference dtype. float32 is the issue's contract; float16/bfloat16 allow for
#: their 11/8-bit significands (about 1e-3 and 8e-3 relative per rounding) accumulating through
#: a network; integer and bool outputs must match exactly.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(atol=1e-7, rtol=1e-6),
    "float32": Tolerance(atol=1e-5, rtol=1e-4),
    "float16": Tolerance(atol=1e-3, rtol=1e-2),
    "bfloat16": Tolerance(atol=1e-2, rtol=5e-2),
}
EXACT = Tolerance(atol=0.0, rtol=0.0)


def default_tolerance(dtype: str) -> Tolerance:
    """The documented default for a reference of ``dtype`` (a numpy-style name)."""
    return DEFAULT_TOLERANCES.get(dtype, EXACT)


@dataclass(frozen=True)
class ToleranceOverride:
    """``--tol NAME=ATOL[:RTOL]``: ``rtol=None`` keeps the global/default rtol."""

    atol: float
    rtol: float | None = None


def parse_output_tolerance(text: str) -> tuple[str, ToleranceOverride]:
    """Parse ``NAME=ATOL[:RTOL]`` (e.g. ``logits=1e-4:1e-3``)."""
    name, eq, values = text.rpartition("=")
    atol_text, _, rtol_text = values.partition(":")
    try:
        if not eq or not name:
            raise ValueError
        atol = float(atol_text)
        rtol = float(rtol_text) if rtol_text else None
    except ValueError:
        raise InputError(
            f"--tol {text!r}: expected NAME=ATOL or NAME=ATOL:RTOL (e.g. output=1e-4:1e-3)"
        ) from None
    if atol < 0 or (rtol is not None and rtol < 0) or math.isnan(atol):
        raise InputError(f"--tol {text!r}: tolerances must be non-negative numbers")
    return name, ToleranceOverride(atol, rtol)


# --------------------------------------------------------------------------------------------
# Options


WeightsMode = Literal["fail", "report", "off"]


@dataclass(frozen=True)
class VerifyOptions:
    """Everything that decides how verification runs.

    ``providers``: ONNX Runtime provider names or aliases (``cpu``, ``cuda``, ``tensorrt`` or the
    full ``CUDAExecutionProvider``); empty means CPU plus CUDA when usable.
    ``input_specs`` / ``inputs_file``: the inputs (shapes for random data, or real data); with
    neither, shapes come from the candidate model (symbolic axes get ``default_dim``).
    ``dynamic_axes``: axes to re-verify at a second size (symbolic axes of the candidate's
    inputs are added automatically).
    ``weights``: compare weights by name; ``"fail"`` makes a mismatch fail the check,
    ``"report"`` only reports it.
    """

    providers: tuple[str, ...] = ()
    seed: int = 0
    runs: int = 1
    atol: float | None = None
    rtol: float | None = None
    output_tolerances: Mapping[str, ToleranceOverride] = field(default_factory=dict)
    input_specs: tuple[InputSpec, ...] = ()
    inputs_file: Path | None = None
    dynamic_axes: tuple[DynamicAxis, ...] = ()
    default_dim: int = 16
    cuda_tf32: bool = False
    weights: WeightsMode = "fail"

    def __post_init__(self) -> None:
        if self.runs < 1:
            raise InputError(f"--runs {self.runs}: must be at least 1")
        for label, value in (("--atol", self.atol), ("--rtol", self.rtol)):
            if value is not None and not value >= 0:
                raise InputError(f"{label} {value}: must be a non-negative number")
        if self.default_dim < 1:
            raise InputError(f"default size of symbolic axes {self.default_dim}: must be >= 1")

    @classmethod
    def from_cli(
        cls,
        cli: VerifyCliOptions,
        *,
        input_shapes: Sequence[str] = (),
        inputs_file: Path | None = None,
        dynamic: Sequence[str] = (),
        weights: WeightsMode = "fail",
        cuda_tf32: bool = False,
    ) -> VerifyOptions:
        """Parse the command line's raw strings (raises :class:`InputError` on bad ones)."""
        from .cli.parse import parse_dynamic_axis, parse_input_spec  # interim, see verify/ split
        overrides: dict[str, ToleranceOverride] = {}
        for text in cli.output_tolerances:
            name, override = parse_output_tolerance(text)
            overrides[name] = override
        return cls(
            providers=tuple(cli.providers),
            seed=cli.seed,
            runs=cli.runs,
            atol=cli.atol,
            rtol=cli.rtol,
            output_tolerances=overrides,
            input_specs=tuple(parse_input_spec(text) for text in input_shapes),
            inputs_file=inputs_file,
            dynamic_axes=tuple(parse_dynamic_axis(text) for text in dynamic),
            cuda_tf32=cuda_tf32,
            weights=weights,
        )

    def tolerance_for(self, output: str, dtype: str) -> Tolerance:
        """Per-output override, else ``--atol``/``--rtol``, else the dtype default."""
        base = default_tolerance(dtype)
        atol = base.atol if self.atol is None else self.atol
        rtol = base.rtol if self.rtol is None else self.rtol
        override = self.output_tolerances.get(output)
        if override is not None:
            atol = override.atol
            rtol = rtol if override.rtol is None else override.rtol
        return Tolerance(atol, rtol)


# --------------------------------------------------------------------------------------------
# Comparing arrays


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
    base = {
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
        return ArrayComparison(
            **base, max_abs=0.0, max_rel=0.0, mean_abs=0.0, min_atol=0.0, mismatched=0,
            nonfinite_mismatch=0, size=size,
        )
    cand_flat = np.asarray(candidate).reshape(-1)
    ref_flat = np.asarray(reference).reshape(-1)
    n_finite = nonfinite_mismatch = mismatched = 0
    max_abs = max_rel = sum_abs = 0.0
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
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float(rel.max()))
        sum_abs += float(diff.sum())
        max_excess = max(max_excess, float(excess.max()))
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
    message = None
    if cand_dtype != ref_dtype:
        message = f"dtype {cand_dtype} differs from the reference's {ref_dtype}"
    return ArrayComparison(
        **base, max_abs=max_abs, max_rel=max_rel, mean_abs=mean_abs, min_atol=min_atol,
        mismatched=mismatched, nonfinite_mismatch=nonfinite_mismatch, size=size,
        worst_index=worst, worst_candidate=worst_c, worst_reference=worst_r, message=message,
    )


_COMPARE_CHUNK = 1 << 18  # elements per chunk: 2 MiB of float64


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    import numpy as np

    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and (
        a.nbytes == 0 or np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))
    )


def _as_float64(array: np.ndarray) -> np.ndarray:
    import numpy as np

    if array.dtype == np.bool_:
        return array.astype(np.float64)
    return np.asarray(array).astype(np.float64)


# --------------------------------------------------------------------------------------------
# Report model


@dataclass(frozen=True)
class CaseInfo:
    """One set of inputs every provider and the reference ran on."""

    label: str
    source: Literal["random", "file"]
    inputs: Mapping[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype)
    seed: tuple[int, int] | None = None  # (seed, draw) for random data


@dataclass(frozen=True)
class OutputResult:
    """One output on one provider, over every case."""

    name: str
    reference_name: str
    cases: tuple[tuple[str, ArrayComparison], ...]  # (case label, comparison)

    @property
    def passed(self) -> bool:
        return all(comp.passed for _, comp in self.cases)

    @property
    def first(self) -> ArrayComparison:
        return self.cases[0][1]

    @property
    def max_abs(self) -> float:
        return max(comp.max_abs for _, comp in self.cases)

    @property
    def max_rel(self) -> float:
        return max(comp.max_rel for _, comp in self.cases)

    @property
    def mean_abs(self) -> float:
        total = sum(comp.size for _, comp in self.cases)
        if not total:
            return 0.0
        return sum(comp.mean_abs * comp.size for _, comp in self.cases) / total

    @property
    def min_atol(self) -> float:
        return max(comp.min_atol for _, comp in self.cases)

    @property
    def mismatched(self) -> int:
        return sum(comp.mismatched for _, comp in self.cases)

    @property
    def worst_case(self) -> tuple[str, ArrayComparison]:
        """The case whose check failed worst (or the first one when all pass)."""
        failing = [item for item in self.cases if not item[1].passed]
        if not failing:
            return self.cases[0]
        return max(failing, key=lambda item: (item[1].message is not None, item[1].min_atol))


@dataclass(frozen=True)
class ProviderResult:
    """Every output on one ONNX Runtime execution provider."""

    name: str  # as ONNX Runtime spells it
    options: Mapping[str, str]
    notes: tuple[str, ...]
    outputs: tuple[OutputResult, ...]
    error: str | None = None  # the session failed to load or run

    @property
    def passed(self) -> bool:
        return self.error is None and all(out.passed for out in self.outputs)


@dataclass(frozen=True)
class WeightComparison:
    name: str
    shape: tuple[int, ...]
    dtype: str
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    passed: bool


@dataclass(frozen=True)
class WeightsReport:
    """Weights compared by name (checkpoint tensor or reference initializer vs candidate)."""

    mode: WeightsMode
    compared: tuple[WeightComparison, ...]
    skipped: tuple[tuple[str, str], ...]  # (name, why) for same name but another shape
    only_in_candidate: tuple[str, ...]
    only_in_reference: tuple[str, ...]

    @property
    def failed(self) -> tuple[WeightComparison, ...]:
        return tuple(w for w in self.compared if not w.passed)

    @property
    def passed(self) -> bool:
        return self.mode != "fail" or not self.failed

    @property
    def worst(self) -> WeightComparison | None:
        if not self.compared:
            return None
        return max(self.compared, key=lambda w: (not w.passed, w.max_abs))


@dataclass
class VerificationReport:
    """The whole verification: what ran, on which inputs, and every comparison."""

    candidate: dict[str, Any]
    reference: dict[str, Any]
    cases: tuple[CaseInfo, ...]
    providers: tuple[ProviderResult, ...]
    weights: WeightsReport | None
    output_matching: Literal["name", "position"] = "name"
    notes: tuple[str, ...] = ()
    rule: str = RULE

    @property
    def passed(self) -> bool:
        weights_ok = self.weights is None or self.weights.passed
        return bool(self.providers) and weights_ok and all(p.passed for p in self.providers)

    def failures(self) -> list[str]:
        """One line per failed check, naming the provider and output (or weight)."""
        lines: list[str] = []
        for provider in self.providers:
            if provider.error:
                lines.append(f"{provider.name}: {provider.error}")
            for out in provider.outputs:
                if out.passed:
                    continue
                label, comp = out.worst_case
                lines.append(f"{provider.name}: output {out.name!r} ({label}): {describe(comp)}")
        if self.weights is not None and self.weights.mode == "fail":
            for w in self.weights.failed:
                lines.append(
                    f"weight {w.name!r} differs: max_abs {w.max_abs:.3g} > atol {w.atol:g} + "
                    f"rtol {w.rtol:g} * |ref|"
                )
        return lines

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (schema ``wnconvert.verify/1``, documented in docs/export_verify.md)."""
        return {
            "schema": REPORT_SCHEMA,
            "passed": self.passed,
            "tool": {"name": "wnconvert", "version": __version__},
            "rule": self.rule,
            "candidate": self.candidate,
            "reference": self.reference,
            "output_matching": self.output_matching,
            "cases": [
                {
                    "label": case.label,
                    "source": case.source,
                    "seed": list(case.seed) if case.seed is not None else None,
                    "inputs": {
                        name: {"shape": list(shape), "dtype": dtype}
                        for name, (shape, dtype) in case.inputs.items()
                    },
                }
                for case in self.cases
            ],
            "providers": [_provider_dict(p) for p in self.providers],
            "weights": _weights_dict(self.weights) if self.weights is not None else None,
            "notes": list(self.notes),
            "failures": self.failures(),
        }


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


def _comparison_dict(comp: ArrayComparison) -> dict[str, Any]:
    return {
        "shape": list(comp.shape),
        "dtype": comp.dtype,
        "reference_shape": list(comp.reference_shape),
        "reference_dtype": comp.reference_dtype,
        "max_abs": json_number(comp.max_abs),
        "max_rel": json_number(comp.max_rel),
        "mean_abs": json_number(comp.mean_abs),
        "min_atol": json_number(comp.min_atol),
        "mismatched": comp.mismatched,
        "nonfinite_mismatch": comp.nonfinite_mismatch,
        "size": comp.size,
        "worst_index": list(comp.worst_index) if comp.worst_index is not None else None,
        "message": comp.message,
        "passed": comp.passed,
    }


def _output_dict(out: OutputResult) -> dict[str, Any]:
    first = out.first
    return {
        "name": out.name,
        "reference_name": out.reference_name,
        "passed": out.passed,
        "shape": list(first.shape),
        "dtype": first.dtype,
        "atol": first.atol,
        "rtol": first.rtol,
        "max_abs": json_number(out.max_abs),
        "max_rel": json_number(out.max_rel),
        "mean_abs": json_number(out.mean_abs),
        "min_atol": json_number(out.min_atol),
        "mismatched": out.mismatched,
        "failure": None if out.passed else describe(out.worst_case[1]),
        "cases": [{"case": label, **_comparison_dict(comp)} for label, comp in out.cases],
    }


def _provider_dict(provider: ProviderResult) -> dict[str, Any]:
    return {
        "name": provider.name,
        "passed": provider.passed,
        "options": dict(provider.options),
        "notes": list(provider.notes),
        "error": provider.error,
        "outputs": [_output_dict(out) for out in provider.outputs],
    }


def _weights_dict(weights: WeightsReport) -> dict[str, Any]:
    worst = weights.worst
    return {
        "mode": weights.mode,
        "passed": weights.passed,
        "compared": len(weights.compared),
        "failed": [w.name for w in weights.failed],
        "worst": None
        if worst is None
        else {"name": worst.name, "max_abs": json_number(worst.max_abs),
              "max_rel": json_number(worst.max_rel)},
        "tensors": [
            {
                "name": w.name,
                "shape": list(w.shape),
                "dtype": w.dtype,
                "max_abs": json_number(w.max_abs),
                "max_rel": json_number(w.max_rel),
                "atol": w.atol,
                "rtol": w.rtol,
                "passed": w.passed,
            }
            for w in weights.compared
        ],
        "skipped": [{"name": name, "reason": why} for name, why in weights.skipped],
        "only_in_candidate": list(weights.only_in_candidate),
        "only_in_reference": list(weights.only_in_reference),
    }


# --------------------------------------------------------------------------------------------
# Execution providers

_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
}
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class ProviderSpec:
    """An execution provider as ONNX Runtime spells it, with the options we pass to it."""

    name: str
    options: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    explicit: bool = True  # asked for by the user (a failure to start is an input error)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def resolve_providers(requested: Sequence[str], *, cuda_tf32: bool = False) -> list[ProviderSpec]:
    """Map names/aliases to ORT provider names; default: CPU, plus CUDA when installed.

    An unknown or unavailable provider is an :class:`InputError` that lists the available ones.
    The default CUDA entry is dropped later if no GPU can run it (see :func:`open_session`).
    """
    available = available_providers()
    if not requested:
        names = [CPU] + ([CUDA] if CUDA in available else [])
        return [_spec(name, cuda_tf32=cuda_tf32, explicit=False) for name in names]
    specs: list[ProviderSpec] = []
    for text in requested:
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            name = _canonical_provider(item, available)
            if name not in available:
                raise InputError(
                    f"--provider {item}: {name} is not available in this onnxruntime "
                    f"installation; available: {', '.join(available)} (for CUDA install "
                    "onnxruntime-gpu)"
                )
            if name not in (s.name for s in specs):
                specs.append(_spec(name, cuda_tf32=cuda_tf32, explicit=True))
    if not specs:
        raise InputError("--provider: no provider named; use e.g. --provider cpu")
    return specs


def _canonical_provider(text: str, available: Sequence[str]) -> str:
    lowered = text.lower()
    for name in available:
        if lowered in (name.lower(), name.lower().removesuffix("executionprovider")):
            return name
    return _ALIASES.get(lowered, text)


def _spec(name: str, *, cuda_tf32: bool, explicit: bool) -> ProviderSpec:
    if name == CUDA:
        # ORT's CUDA provider uses TF32 for float32 matmul/conv on Ampere+ by default, which
        # rounds inputs to 10 significand bits: results would not be float32-comparable.
        flag = "1" if cuda_tf32 else "0"
        note = "TF32 on (use_tf32=1)" if cuda_tf32 else "TF32 off (use_tf32=0)"
        return ProviderSpec(name, {"use_tf32": flag}, (note,), explicit)
    return ProviderSpec(name, {}, (), explicit)


class ProviderUnavailable(Exception):
    """A default (not explicitly requested) provider could not start; it is skipped."""


def open_session(path: Path, provider: ProviderSpec) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``provider`` (CPU only as fallback for ops).

    Raises :class:`InputError` when an explicitly requested provider does not start (e.g.
    onnxruntime-gpu without a GPU) and :class:`ProviderUnavailable` for a default one.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Fatal only: ORT's warnings are about performance, and its errors are reported by
    # wnconvert in the table and the failure lines (printing them twice is noise).
    options.log_severity_level = 4
    providers: list[Any] = [(provider.name, dict(provider.options))]
    if provider.name != CPU:
        providers.append(CPU)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if provider.name != CPU and provider.name.lower() in text.lower():
            return _provider_failed(provider, text)
        raise InputError(f"{path}: ONNX Runtime cannot load this model: {text}") from None
    if session.get_providers()[0] != provider.name:
        # ORT silently falls back to CPU when a provider's libraries or device are missing.
        return _provider_failed(provider, "it fell back to CPU (no usable device or libraries)")
    return session


def _provider_failed(provider: ProviderSpec, why: str) -> Any:
    if provider.explicit:
        raise InputError(
            f"--provider {provider.name}: could not start: {why}; available here: "
            f"{', '.join(available_providers())} (check the GPU and its driver, or drop it)"
        )
    raise ProviderUnavailable(f"{provider.name} skipped: {why}")


# --------------------------------------------------------------------------------------------
# Runners


class Runner(Protocol):
    """Something that maps named input arrays to named output arrays."""

    output_names: list[str]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class InputSignature:
    """One ONNX model input: its name, element type and dims (str/None for symbolic)."""

    name: str
    dtype: str
    dims: tuple[int | str | None, ...]


class OrtRunner:
    """The candidate (or an ONNX reference) on one ONNX Runtime provider."""

    def __init__(self, path: Path, provider: ProviderSpec) -> None:
        self.path = path
        self.provider = provider
        self.session = open_session(path, provider)
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def inputs(self) -> list[InputSignature]:
        return [
            InputSignature(i.name, ort_type_to_dtype(i.type), tuple(i.shape))
            for i in self.session.get_inputs()
        ]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, outputs, strict=True))


class TorchRunner:
    """A PyTorch module run on CPU: positional inputs in the candidate's input order."""

    def __init__(self, module: torch.nn.Module, *, input_names: Sequence[str],
                 output_names: Sequence[str] | None = None) -> None:
        self.module = module
        self.input_names = list(input_names)
        self.output_names = list(output_names or [])

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [numpy_to_tensor(feeds[name]) for name in self.input_names]
        with torch.inference_mode():
            result = self.module(*args)
        flat = flatten_outputs(result)
        names = output_names(flat, self.input_names)
        if not self.output_names:
            self.output_names = names
        return {name: torch_to_numpy(tensor) for name, (_, tensor) in zip(names, flat, strict=True)}


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def ort_type_to_dtype(ort_type: str) -> str:
    if ort_type not in _ORT_TYPES:
        raise InputError(f"model input of type {ort_type}: wnconvert can only feed tensors of "
                         f"{', '.join(sorted(set(_ORT_TYPES.values())))}")
    return _ORT_TYPES[ort_type]


def torch_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy; bfloat16 becomes ml_dtypes.bfloat16 (bit-identical)."""
    return tensor_to_numpy(tensor).copy()


# --------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class InputCase:
    info: CaseInfo
    feeds: dict[str, np.ndarray]


def build_cases(signature: Sequence[InputSignature], options: VerifyOptions) -> list[InputCase]:
    """The input sets to run: ``runs`` draws (or the file's data) plus one at a second size.

    The second size doubles every dynamic axis for random data (doubling keeps any
    divisibility a model needs) and crops it to half for real data.
    """
    if options.inputs_file is not None:
        arrays = _file_inputs(signature, options.inputs_file)
        shapes = {name: tuple(a.shape) for name, a in arrays.items()}
    else:
        shapes = _input_shapes(signature, options)
    groups = _dynamic_groups(signature, options)
    cases: list[InputCase] = []
    if options.inputs_file is not None:
        cases.append(_case("inputs file", "file", arrays, None))
        if groups:
            second = _resize(shapes, groups, grow=False)
            if second != shapes:
                cropped = {name: a[tuple(slice(0, n) for n in second[name])]
                           for name, a in arrays.items()}
                cases.append(_case(_size_label(second, groups), "file", cropped, None))
        return cases
    dtypes = _input_dtypes(signature, options)
    for run in range(options.runs):
        feeds = _random_feeds(shapes, dtypes, seed=options.seed, draw=run)
        cases.append(_case(f"run {run}", "random", feeds, (options.seed, run)))
    if groups:
        second = _resize(shapes, groups, grow=True)
        feeds = _random_feeds(second, dtypes, seed=options.seed, draw=options.runs)
        cases.append(_case(_size_label(second, groups), "random", feeds,
                           (options.seed, options.runs)))
    return cases


def _case(label: str, source: Literal["random", "file"], feeds: dict[str, np.ndarray],
          seed: tuple[int, int] | None) -> InputCase:
    info = CaseInfo(label, source, {n: (tuple(a.shape), dtype_name(a)) for n, a in feeds.items()},
                    seed)
    return InputCase(info, feeds)


def _input_shapes(signature: Sequence[InputSignature],
                  options: VerifyOptions) -> dict[str, tuple[int, ...]]:
    specs = _specs_by_input(signature, options.input_specs)
    shapes: dict[str, tuple[int, ...]] = {}
    for sig in signature:
        spec = specs.get(sig.name)
        if spec is not None:
            if len(spec.shape) != len(sig.dims):
                raise InputError(
                    f"--input {spec.text}: model input {sig.name!r} has rank {len(sig.dims)} "
                    f"(dims {_dims_text(sig.dims)}), not {len(spec.shape)}; fix the shape"
                )
            for axis, (want, have) in enumerate(zip(spec.shape, sig.dims, strict=True)):
                if isinstance(have, int) and have != want:
                    raise InputError(
                        f"--input {spec.text}: model input {sig.name!r} has fixed size {have} on "
                        f"axis {axis}, not {want}; fix the shape"
                    )
            shapes[sig.name] = spec.shape
        else:
            shapes[sig.name] = tuple(
                d if isinstance(d, int) else _symbolic_default(d, options.default_dim)
                for d in sig.dims
            )
    return shapes


def _symbolic_default(name: str | None, default: int) -> int:
    # A batch axis is 1 in deployment; any other symbolic axis (time, tokens) gets `default`.
    return 1 if name and "batch" in name.lower() else default


def _dims_text(dims: Sequence[int | str | None]) -> str:
    return "x".join(str(d) if d is not None else "?" for d in dims)


def _specs_by_input(signature: Sequence[InputSignature],
                    specs: Sequence[InputSpec]) -> dict[str, InputSpec]:
    if not specs:
        return {}
    names = [sig.name for sig in signature]
    if any(spec.name for spec in specs):
        out: dict[str, InputSpec] = {}
        for spec in specs:
            if spec.name not in names:
                raise InputError(f"--input {spec.text}: the model has no input {spec.name!r}; "
                                 f"its inputs are {', '.join(names)}")
            out[spec.name] = spec
        return out
    if len(specs) != len(names):
        raise InputError(
            f"--input given {len(specs)} times but the model has {len(names)} inputs "
            f"({', '.join(names)}); give one --input per positional input"
        )
    return dict(zip(names, specs, strict=True))


def _input_dtypes(signature: Sequence[InputSignature], options: VerifyOptions) -> dict[str, str]:
    specs = _specs_by_input(signature, options.input_specs)
    dtypes = {}
    for sig in signature:
        spec = specs.get(sig.name)
        dtypes[sig.name] = spec.dtype if spec is not None and spec.dtype else sig.dtype
        if dtypes[sig.name] != sig.dtype:
            raise InputError(
                f"--input {spec.text if spec else sig.name}: model input {sig.name!r} takes "
                f"{sig.dtype}, not {dtypes[sig.name]}; fix the dtype"
            )
    return dtypes


def _random_feeds(shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str], *,
                  seed: int, draw: int) -> dict[str, np.ndarray]:
    import numpy as np

    rng = np.random.default_rng([seed, draw])
    feeds = {}
    for name, shape in shapes.items():
        dtype = dtypes[name]
        if dtype in ("float32", "float64", "float16", "bfloat16"):
            data = rng.standard_normal(shape).astype(numpy_dtype(dtype))
        elif dtype == "bool":
            data = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            # Small non-negative integers are valid ids/indices for most models; use --inputs
            # with real data for anything more specific.
            data = rng.integers(0, 8, shape).astype(dtype)
        feeds[name] = data
    return feeds


def _file_inputs(signature: Sequence[InputSignature], path: Path) -> dict[str, np.ndarray]:
    data = load_inputs_npz(path)
    names = [sig.name for sig in signature]
    if set(data) == set(names):
        arrays = {name: data[name] for name in names}
    elif len(data) == len(names):
        # np.savez(path, a, b) stores arr_0, arr_1...: use file order as positional order.
        arrays = dict(zip(names, data.values(), strict=True))
    else:
        raise InputError(
            f"{path}: holds {len(data)} arrays ({', '.join(data)}) but the model has "
            f"{len(names)} inputs ({', '.join(names)}); save one array per input, named after it"
        )
    for sig in signature:
        array = arrays[sig.name]
        if dtype_name(array) != sig.dtype:
            raise InputError(f"{path}: array for input {sig.name!r} is {dtype_name(array)}, the "
                             f"model takes {sig.dtype}; convert it with numpy .astype")
        if len(array.shape) != len(sig.dims) or any(
            isinstance(d, int) and d != s for d, s in zip(sig.dims, array.shape, strict=True)
        ):
            raise InputError(f"{path}: array for input {sig.name!r} has shape "
                             f"{list(array.shape)}, the model takes {_dims_text(sig.dims)}")
    return arrays


def _dynamic_groups(signature: Sequence[InputSignature],
                    options: VerifyOptions) -> dict[str, list[tuple[str, int]]]:
    """Symbolic size name -> the (input, axis) places that share it."""
    groups: dict[str, list[tuple[str, int]]] = {}
    names = [sig.name for sig in signature]
    for sig in signature:
        for axis, dim in enumerate(sig.dims):
            if not isinstance(dim, int):
                key = dim if dim else f"{sig.name}.{axis}"
                groups.setdefault(key, []).append((sig.name, axis))
    for dyn in options.dynamic_axes:
        name = dyn.input_name(names)
        place = (name, dyn.axis)
        if any(place in places for places in groups.values()):
            continue
        groups.setdefault(dyn.dim_name or f"{name}.{dyn.axis}", []).append(place)
    return groups


def _resize(shapes: Mapping[str, tuple[int, ...]], groups: Mapping[str, list[tuple[str, int]]],
            *, grow: bool) -> dict[str, tuple[int, ...]]:
    new = {name: list(shape) for name, shape in shapes.items()}
    for places in groups.values():
        for name, axis in places:
            if axis >= len(new[name]):
                raise InputError(f"--dynamic {name}:{axis}: input {name!r} has only "
                                 f"{len(new[name])} axes")
        size = shapes[places[0][0]][places[0][1]]
        target = size * 2 if grow else max(1, size // 2)
        for name, axis in places:
            new[name][axis] = target
    return {name: tuple(shape) for name, shape in new.items()}


def _size_label(shapes: Mapping[str, tuple[int, ...]],
                groups: Mapping[str, list[tuple[str, int]]]) -> str:
    parts = [f"{key}={shapes[places[0][0]][places[0][1]]}" for key, places in groups.items()]
    return "second size " + ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Weights


def compare_weights(candidate: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                    *, options: VerifyOptions) -> WeightsReport:
    """Compare tensors present on both sides by name (weight-norm pairs folded first).

    Tensors are loaded (and pairs folded) one name at a time, so with lazy mappings such as
    :func:`onnx_initializers` peak memory stays near the largest tensor, not the model.
    """
    cand = _weight_loaders(candidate)
    ref = _weight_loaders(reference)
    compared: list[WeightComparison] = []
    skipped: list[tuple[str, str]] = []
    for name in (n for n in ref if n in cand):
        (c_shape, _, c_load), (r_shape, r_dtype, r_load) = cand[name], ref[name]
        if c_shape != r_shape:
            skipped.append((name, f"shape {list(c_shape)} vs reference {list(r_shape)}"))
            continue
        tol = options.tolerance_for(name, r_dtype)
        comp = compare_arrays(c_load(), r_load(), tol)
        compared.append(WeightComparison(
            name=name, shape=r_shape, dtype=r_dtype, max_abs=comp.max_abs,
            max_rel=comp.max_rel, atol=tol.atol, rtol=tol.rtol, passed=comp.mismatched == 0,
        ))
    return WeightsReport(
        mode=options.weights,
        compared=tuple(compared),
        skipped=tuple(skipped),
        only_in_candidate=tuple(n for n in cand if n not in ref),
        only_in_reference=tuple(n for n in ref if n not in cand),
    )


_FLOAT_NAMES = ("float64", "float32", "float16", "bfloat16")
_Loader = tuple[tuple[int, ...], str, Callable[[], "np.ndarray"]]


def _weight_loaders(tensors: Mapping[str, np.ndarray]) -> dict[str, _Loader]:
    """name -> (shape, dtype, load) for the floating tensors, weight-norm pairs folded.

    Integer tensors are shape constants or counters (num_batches_tracked), not weights.
    Shapes and dtypes come from the mapping's metadata when it has some (no data is read).
    """
    from .keys import find_pair_keys
    from .numerics import fold, infer_dim

    meta = {}
    for key in tensors:
        shape, dtype = _shape_dtype(tensors, key)
        if dtype in _FLOAT_NAMES:
            meta[key] = (shape, dtype)
    pairs = {}
    for pair in find_pair_keys(meta):
        try:
            dim = infer_dim(meta[pair.g_key][0], meta[pair.v_key][0])
        except ValueError:
            continue  # not a real pair; compare the tensors as they are
        pairs[pair.g_key] = pairs[pair.v_key] = (pair, dim)
    out: dict[str, _Loader] = {}
    for key, (shape, dtype) in meta.items():
        if key not in pairs:
            out[key] = (shape, dtype, lambda key=key: tensors[key])
            continue
        pair, dim = pairs[key]
        if pair.weight_key in out:
            continue
        v_shape, v_dtype = meta[pair.v_key]

        def load_folded(pair=pair, dim=dim) -> np.ndarray:
            return fold(tensors[pair.g_key], tensors[pair.v_key], dim)[0]

        out[pair.weight_key] = (v_shape, v_dtype, load_folded)
    return out


def _shape_dtype(tensors: Mapping[str, np.ndarray], key: str) -> tuple[tuple[int, ...], str]:
    describe = getattr(tensors, "describe", None)
    if describe is not None:
        return describe(key)
    array = tensors[key]
    return tuple(array.shape), dtype_name(array)


class _LazyInitializers(Mapping):
    """The main graph's initializers, each read when accessed.

    The model is scanned without its tensor bytes (inline or external), so an inline 1 GB
    model costs 1 GB only while one of its tensors is in use, not for the whole comparison.
    """

    def __init__(self, path: Path) -> None:
        from .onnx_graph.protoio import load_model

        self._model = load_model(path)
        self._tensors = {init.name: init for init in self._model.proto.graph.initializer}

    def __getitem__(self, name: str) -> np.ndarray:
        import onnx

        from .dtypes import numpy_dtype
        from .onnx_graph.protoio import read_initializer

        tensor = self._tensors[name]
        array = read_initializer(self._model, tensor)
        if tensor.data_type == onnx.TensorProto.BFLOAT16:
            array = array.view(numpy_dtype("bfloat16"))  # read_initializer gives uint16 bits
        return array

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def describe(self, name: str) -> tuple[tuple[int, ...], str]:
        import onnx

        tensor = self._tensors[name]
        if tensor.data_type == onnx.TensorProto.BFLOAT16:
            dtype = "bfloat16"
        else:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).name
        return tuple(int(d) for d in tensor.dims), dtype


def onnx_initializers(path: Path) -> Mapping[str, np.ndarray]:
    """The main graph's initializers as numpy arrays, read lazily one at a time."""
    return _LazyInitializers(path)


# --------------------------------------------------------------------------------------------
# Verification


ProgressCallback = Callable[[str, int, int], None]


def verify_onnx_against_torch(
    candidate: Path,
    module: torch.nn.Module,
    *,
    options: VerifyOptions,
    reference_weights: Mapping[str, torch.Tensor] | None = None,
    reference_info: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> VerificationReport:
    """Verify ``candidate`` (ONNX on each provider) against ``module`` run in PyTorch on CPU.

    ``module`` is the reference as the user built it (weight norm computed at run time when it
    has it). ``reference_weights`` (e.g. the checkpoint's state dict) are compared by name with
    the candidate's initializers.
    """
    with contextlib.suppress(NotImplementedError):  # programs from .pt2 refuse eval()
        module.eval()
    signature = _candidate_signature(candidate)
    reference = TorchRunner(module, input_names=[sig.name for sig in signature])
    weights = None
    if reference_weights is not None and options.weights != "off":
        ref_np = {k: torch_to_numpy(v) for k, v in reference_weights.items()}
        weights = compare_weights(onnx_initializers(candidate), ref_np, options=options)
    info = {"kind": "pytorch", **(reference_info or {})}
    return _verify(candidate, signature, reference, info, weights, options, progress)


def verify_onnx_against_onnx(
    candidate: Path,
    reference: Path,
    *,
    options: VerifyOptions,
    progress: ProgressCallback | None = None,
) -> VerificationReport:
    """Verify ``candidate`` on each provider against ``reference`` run on ONNX Runtime CPU.

    Inputs come from ``options`` or, by default, from the candidate's input shapes (symbolic
    axes get ``options.default_dim``, batch axes 1). Initializers with the same name on both
    sides are compared too; weight-norm ``g``/``v`` initializers are folded first, so a
    candidate whose weight norm was folded compares against the reference's pairs.
    """
    signature = _candidate_signature(candidate)
    ref_runner = OrtRunner(reference, _spec(CPU, cuda_tf32=False, explicit=True))
    ref_names = [sig.name for sig in ref_runner.inputs]
    if sorted(ref_names) != sorted(sig.name for sig in signature):
        raise InputError(
            f"{reference}: inputs {', '.join(ref_names)} differ from the candidate's "
            f"({', '.join(sig.name for sig in signature)}); compare models with the same inputs"
        )
    weights = None
    if options.weights != "off":
        weights = compare_weights(onnx_initializers(candidate), onnx_initializers(reference),
                                  options=options)
    info = {"kind": "onnx", "path": str(reference), "provider": CPU}
    return _verify(candidate, signature, ref_runner, info, weights, options, progress)


def _candidate_signature(candidate: Path) -> list[InputSignature]:
    # Read with onnx, not a session, so a model that ORT cannot load is reported per provider.
    import onnx

    if not candidate.exists():
        raise InputNotFound(f"{candidate}: no such file; check the path")
    try:
        model = onnx.load(str(candidate), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf/IO errors have many types
        raise InputError(f"{candidate}: cannot read as ONNX: {exc}") from None
    init_names = {init.name for init in model.graph.initializer}
    signature = []
    for value in model.graph.input:
        if value.name in init_names:
            continue  # old exporters list initializers as inputs too
        tensor_type = value.type.tensor_type
        elem = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type) \
            if tensor_type.elem_type != onnx.TensorProto.BFLOAT16 else "bfloat16"
        dims: list[int | str | None] = []
        for d in tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        signature.append(InputSignature(value.name, str(elem), tuple(dims)))
    return signature


def _verify(
    candidate: Path,
    signature: list[InputSignature],
    reference: Runner,
    reference_info: Mapping[str, Any],
    weights: WeightsReport | None,
    options: VerifyOptions,
    progress: ProgressCallback | None,
) -> VerificationReport:
    providers = resolve_providers(options.providers, cuda_tf32=options.cuda_tf32)
    cases = build_cases(signature, options)
    total = len(cases) * (1 + len(providers))
    done = 0
    ref_outputs = []
    for case in cases:
        try:
            ref_outputs.append(reference.run(case.feeds))
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's model may raise anything
            shapes = ", ".join(f"{n} {list(s)} {d}" for n, (s, d) in case.info.inputs.items())
            raise InputError(
                f"the reference model failed on inputs {shapes} ({case.info.label}): "
                f"{type(exc).__name__}: {exc}; check --input/--inputs"
            ) from None
        done += 1
        if progress:
            progress("reference", done, total)
    notes: list[str] = []
    results: list[ProviderResult] = []
    matching: Literal["name", "position"] = "name"
    for spec in providers:
        try:
            runner = OrtRunner(candidate, spec)
        except ProviderUnavailable as exc:
            notes.append(str(exc))
            total -= len(cases)
            continue
        mapping, matching = _match_outputs(runner.output_names, reference.output_names)
        per_output: dict[str, list[tuple[str, ArrayComparison]]] = {n: [] for n in mapping}
        error = None
        for case, ref in zip(cases, ref_outputs, strict=True):
            try:
                out = runner.run(case.feeds)
            except Exception as exc:  # noqa: BLE001 - an ORT failure is a failed check
                error = f"ONNX Runtime failed on {case.info.label}: {_first_line(exc)}"
                break
            for cand_name, ref_name in mapping.items():
                tol = options.tolerance_for(cand_name, dtype_name(ref[ref_name]))
                per_output[cand_name].append(
                    (case.info.label, compare_arrays(out[cand_name], ref[ref_name], tol))
                )
            done += 1
            if progress:
                progress(spec.name, done, total)
        outputs = tuple(
            OutputResult(name, mapping[name], tuple(items))
            for name, items in per_output.items() if items
        )
        results.append(ProviderResult(spec.name, spec.options, spec.notes, outputs, error))
    if options.inputs_file is not None and options.runs > 1:
        notes.append("--runs ignored: real inputs from --inputs are used once")
    return VerificationReport(
        candidate={"kind": "onnx", "path": str(candidate)},
        reference=dict(reference_info),
        cases=tuple(case.info for case in cases),
        providers=tuple(results),
        weights=weights,
        output_matching=matching,
        notes=tuple(notes),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _match_outputs(candidate: Sequence[str], reference: Sequence[str]
                   ) -> tuple[dict[str, str], Literal["name", "position"]]:
    """Candidate output -> reference output: by name when all match, else by position."""
    if set(candidate) <= set(reference) and candidate:
        return {name: name for name in candidate}, "name"
    if len(candidate) == len(reference):
        return dict(zip(candidate, reference, strict=True)), "position"
    raise InputError(
        f"the candidate's outputs ({', '.join(candidate)}) do not match the reference's "
        f"({', '.join(reference)}) by name or by count; verify against the model that was "
        "exported"
    )
