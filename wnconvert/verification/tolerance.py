"""Tolerances of the rule ``|candidate - reference| <= atol + rtol * |reference|``, and the
options that decide how a verification runs (:class:`VerifyOptions`).

Errors are worded in API terms (``atol=inf``); the CLI adds flag names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..choices import ERROR_STATS, WEIGHTS_MODES, ErrorStat, WeightsMode
from ..errors import InputError

if TYPE_CHECKING:
    from ..export import DynamicAxis, InputSpec

RULE = "|candidate - reference| <= atol + rtol * |reference| (element-wise; NaN/Inf must agree)"
REPORT_SCHEMA = "wnconvert.verify/1"


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

#: Default for float32 outputs of a provider that runs with TF32 allowed (``cuda_tf32=True``).
#: TF32 rounds the inputs of every matmul/conv to float16's 10-bit significand (unit roundoff
#: 2**-11, about 4.9e-4), and the error grows with the reduction length: a K=1024 product of
#: unit-scale values is off by about 1e-2 absolute. float32 tolerances would fail on every
#: Ampere-or-newer GPU; these are float16-class ones.
TF32_TOLERANCE = Tolerance(atol=1e-2, rtol=1e-2)

#: The quantile reported (and checked by the ``quantile`` statistic) unless told otherwise.
DEFAULT_QUANTILE = 0.99


@dataclass(frozen=True)
class PassRule:
    """How one output passes, besides its :class:`Tolerance`: the error statistic checked
    (``elemwise``: every element within ``atol + rtol * |ref|``; ``max``/``mean``/``median``/
    ``quantile``: that statistic of the absolute error <= atol, or of the relative error <=
    rtol, as Polygraphy's ``check_error_stat``), the quantile reported (and checked by
    ``quantile``), and an optional floor on the signal-to-noise ratio in dB."""

    stat: ErrorStat = "elemwise"
    quantile: float = DEFAULT_QUANTILE
    min_snr: float | None = None


def check_quantile(label: str, value: float, *, shown: object = None) -> float:
    """``value`` if it is a quantile in (0, 1], else :class:`InputError` naming ``label``."""
    if not (isinstance(value, int | float) and 0 < value <= 1):
        raise InputError.template(
            "{-" + label + "=shown}: a quantile is a number in (0, 1], e.g. 0.99 for the 99th "
            "percentile", shown=value if shown is None else shown)
    return float(value)


def check_stat_value(label: str, value: object, *, shown: object = None) -> ErrorStat:
    """``value`` if it is one of :data:`ERROR_STATS`, else :class:`InputError`."""
    if value not in ERROR_STATS:
        raise InputError.template("{-" + label + "=shown}: use one of {choices}",
                                  shown=value if shown is None else shown,
                                  choices=", ".join(ERROR_STATS))
    return value  # type: ignore[return-value]  # one of ERROR_STATS


def check_min_snr(label: str, value: float, *, shown: object = None) -> float:
    """``value`` if it is a finite number of dB, else :class:`InputError`."""
    if not (isinstance(value, int | float) and math.isfinite(value)):
        raise InputError.template(
            "{-" + label + "=shown}: a signal-to-noise ratio floor is a finite number of dB "
            "(e.g. 60)", shown=value if shown is None else shown)
    return float(value)


#: Upper bound of ``runs``: every draw runs the reference and every provider; more than this is
#: a mistake (or a way to make a CI job run for days), not more confidence.
MAX_RUNS = 1000


def default_tolerance(dtype: str, *, tf32: bool = False) -> Tolerance:
    """The documented default for a reference of ``dtype`` (a numpy-style name); ``tf32``: the
    provider runs float32 matmul/conv in TF32 (:data:`TF32_TOLERANCE` for float32)."""
    if tf32 and dtype == "float32":
        return TF32_TOLERANCE
    return DEFAULT_TOLERANCES.get(dtype, EXACT)


def candidate_tolerance(dtype: str, computes_in: str | None, *, tf32: bool = False
                        ) -> Tolerance:
    """The default for a ``dtype`` output of a candidate whose weights are ``computes_in``
    (``"float16"``/``"bfloat16"``, None for as exported): a reduced-precision candidate is
    judged by its own precision's row even where its outputs are float32 (kept I/O types), since
    every layer inside rounds to it."""
    if computes_in in ("float16", "bfloat16") and dtype == "float32":
        return DEFAULT_TOLERANCES[computes_in]
    return default_tolerance(dtype, tf32=tf32)


def check_tolerance_value(label: str, value: float, *, shown: object = None) -> float:
    """``value`` if it is a finite, non-negative number, else :class:`InputError` naming the
    parameter ``label`` (shown with ``shown``, default ``value``).

    An infinite or NaN tolerance makes every comparison pass (or none): a check that cannot fail.
    """
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise InputError.template(
            "{-" + label + "=shown}: a tolerance must be a finite, non-negative number (an "
            "infinite one makes the check pass whatever the result)",
            shown=value if shown is None else shown)
    return float(value)


@dataclass(frozen=True)
class ToleranceOverride:
    """A per-output tolerance: ``rtol=None`` keeps the global/default rtol. ``output`` (the
    output's name) only serves messages."""

    atol: float
    rtol: float | None = None
    output: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        shown = f"{self.output}={self.atol}" + (f":{self.rtol}" if self.rtol is not None else "")
        label = "output_tolerances" if self.output else "atol"
        check_tolerance_value(label, self.atol, shown=shown if self.output else None)
        if self.rtol is not None:
            check_tolerance_value(label if self.output else "rtol", self.rtol,
                                  shown=shown if self.output else None)




@dataclass(frozen=True)
class VerifyOptions:
    """Everything that decides how verification runs.

    ``providers``: ONNX Runtime provider names or aliases (``cpu``, ``cuda``, ``tensorrt`` or the
    full ``CUDAExecutionProvider``); empty means CPU plus CUDA when usable.
    ``input_specs`` / ``inputs_file``: the inputs (shapes for random data, or real data in an
    ``.npz``, or the feeds of a Polygraphy inputs ``.json``, one case each); with neither,
    shapes come from the candidate model (symbolic axes get ``default_dim``).
    ``dynamic_axes``: axes to re-verify at a second size (symbolic axes of the candidate's
    inputs are added automatically).
    ``weights``: compare weights by name; ``"fail"`` makes a mismatch (or nothing matched) fail
    the check, ``"report"`` only reports it.
    ``cuda_tf32``: let CUDA/TensorRT use TF32 (float32 outputs there get :data:`TF32_TOLERANCE`
    unless ``atol``/``rtol`` are given). ``ort_logging``: let ONNX Runtime's own logger print
    warnings (quiet otherwise).
    ``check_error_stat``: the error statistic the pass rule checks (:data:`ERROR_STATS`, see
    :class:`PassRule`); ``error_quantile``: the quantile reported and checked by ``quantile``;
    ``min_snr``: outputs whose SNR (dB) is below it fail. The ``output_*`` mappings set them per
    output name (names the candidate does not have are refused when it is loaded).
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
    ort_logging: bool = False
    check_error_stat: ErrorStat = "elemwise"
    output_error_stats: Mapping[str, ErrorStat] = field(default_factory=dict)
    error_quantile: float = DEFAULT_QUANTILE
    output_error_quantiles: Mapping[str, float] = field(default_factory=dict)
    min_snr: float | None = None
    output_min_snrs: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.runs <= MAX_RUNS:
            raise InputError.template("{-runs=runs}: must be between 1 and {limit}",
                                      runs=self.runs, limit=MAX_RUNS)
        if self.seed < 0 or self.seed >= 2**63:
            raise InputError.template("{-seed=seed}: must be a non-negative integer below 2**63",
                                      seed=self.seed)
        for label, value in (("atol", self.atol), ("rtol", self.rtol)):
            if value is not None:
                check_tolerance_value(label, value)
        if self.default_dim < 1:
            raise InputError.template("{-default_dim=value}: must be >= 1", value=self.default_dim)
        if self.weights not in WEIGHTS_MODES:
            raise InputError.template("{-weights=weights}: use one of {choices}",
                                      weights=self.weights, choices=", ".join(WEIGHTS_MODES))
        check_stat_value("check_error_stat", self.check_error_stat)
        check_quantile("error_quantile", self.error_quantile)
        if self.min_snr is not None:
            check_min_snr("min_snr", self.min_snr)
        checks: tuple[tuple[str, Mapping[str, Any], Callable[..., object]], ...] = (
            ("output_error_stats", self.output_error_stats, check_stat_value),
            ("output_error_quantiles", self.output_error_quantiles, check_quantile),
            ("output_min_snrs", self.output_min_snrs, check_min_snr))
        for label, mapping, check in checks:
            for name, value in mapping.items():
                if not name:
                    raise InputError.template("{-" + label + "=shown}: name the output",
                                              shown=f":{value}")
                check(label, value, shown=f"{name}:{value}")
        if self.input_specs and self.inputs_file is not None:
            raise InputError.template("{-input_specs} and {-inputs_file} both given; use shapes "
                                      "(random data) or a .npz file (real data), not both")
        suffix = self.inputs_file.suffix.lower() if self.inputs_file is not None else None
        if suffix not in (None, ".npz", ".json"):
            raise InputError(
                f"{self.inputs_file}: inputs must be an .npz archive (numpy.savez(path, "
                "name=array, ...)), one array per model input, or a Polygraphy inputs file "
                "(.json); save it as one of them"
            )
        if suffix == ".json" and (self.runs != 1 or self.seed != 0):
            # Each feed of a Polygraphy file is one run: draws and their seed would be ignored.
            raise InputError.template(
                "{path}: every feed of a Polygraphy inputs file is one run; drop {-runs}/{-seed}",
                path=self.inputs_file)
        if suffix == ".json" and self.dynamic_axes:
            raise InputError.template(
                "{path}: the feeds of a Polygraphy inputs file are the runs, at their own sizes "
                "(no second size is added); drop {-dynamic}", path=self.inputs_file)

    def tolerance_for(self, output: str, dtype: str, *, tf32: bool = False,
                      computes_in: str | None = None) -> Tolerance:
        """Per-output override, else ``atol``/``rtol``, else the dtype default (TF32-aware).
        ``computes_in``: the candidate's weights are float16/bfloat16 (a reduced-precision
        export), so a float32 output gets that type's row (:func:`candidate_tolerance`)."""
        base = candidate_tolerance(dtype, computes_in, tf32=tf32)
        atol = base.atol if self.atol is None else self.atol
        rtol = base.rtol if self.rtol is None else self.rtol
        override = self.output_tolerances.get(output)
        if override is not None:
            atol = override.atol
            rtol = rtol if override.rtol is None else override.rtol
        return Tolerance(atol, rtol)

    def rule_for(self, output: str) -> PassRule:
        """The pass rule of ``output``: its own stat/quantile/SNR floor, else the global ones."""
        return PassRule(
            stat=self.output_error_stats.get(output, self.check_error_stat),
            quantile=self.output_error_quantiles.get(output, self.error_quantile),
            min_snr=self.output_min_snrs.get(output, self.min_snr),
        )

    def rule_text(self) -> str:
        """The rule in words, for the report: :data:`RULE` unless a statistic or an SNR floor
        is asked for (globally or for some outputs)."""
        stat = self.check_error_stat
        if stat == "elemwise":
            text = RULE
        else:
            what = f"{self.error_quantile:g}-quantile" if stat == "quantile" else stat
            text = (f"{what} of |candidate - reference| <= atol, or {what} of |candidate - "
                    "reference| / |reference| <= rtol (Polygraphy's check_error_stat; NaN/Inf "
                    "must agree)")
        overrides = {**self.output_error_stats,
                     **{n: f"{self.output_error_stats.get(n, stat)} q={q:g}"
                        for n, q in self.output_error_quantiles.items()}}
        if overrides:
            text += "; per output: " + ", ".join(f"{n}: {v}" for n, v in overrides.items())
        if self.min_snr is not None:
            text += f"; and SNR >= {self.min_snr:g} dB"
        if self.output_min_snrs:
            text += "; SNR floors: " + ", ".join(f"{n} >= {v:g} dB"
                                                  for n, v in self.output_min_snrs.items())
        return text

    def check_output_names(self, outputs: Sequence[str]) -> None:
        """Refuse per-output rules naming an output that ``outputs`` (the candidate's) lacks:
        a rule that never applies would leave the output it meant on the default."""
        for label, mapping in (("output_error_stats", self.output_error_stats),
                               ("output_error_quantiles", self.output_error_quantiles),
                               ("output_min_snrs", self.output_min_snrs)):
            for name, value in mapping.items():
                if name not in outputs:
                    raise InputError.template(
                        "{-" + label + "=shown}: the model has no output {name!r}; its outputs "
                        "are {outputs}", shown=f"{name}:{value}", name=name,
                        outputs=", ".join(outputs))
