"""Tolerances of the rule ``|candidate - reference| <= atol + rtol * |reference|``, and the
options that decide how a verification runs (:class:`VerifyOptions`).

Errors are worded in API terms (``atol=inf``); the CLI adds flag names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..choices import WEIGHTS_MODES, WeightsMode
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

#: Upper bound of ``runs``: every draw runs the reference and every provider; more than this is
#: a mistake (or a way to make a CI job run for days), not more confidence.
MAX_RUNS = 1000


def default_tolerance(dtype: str, *, tf32: bool = False) -> Tolerance:
    """The documented default for a reference of ``dtype`` (a numpy-style name); ``tf32``: the
    provider runs float32 matmul/conv in TF32 (:data:`TF32_TOLERANCE` for float32)."""
    if tf32 and dtype == "float32":
        return TF32_TOLERANCE
    return DEFAULT_TOLERANCES.get(dtype, EXACT)


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

    def tolerance_for(self, output: str, dtype: str, *, tf32: bool = False) -> Tolerance:
        """Per-output override, else ``atol``/``rtol``, else the dtype default (TF32-aware)."""
        base = default_tolerance(dtype, tf32=tf32)
        atol = base.atol if self.atol is None else self.atol
        rtol = base.rtol if self.rtol is None else self.rtol
        override = self.output_tolerances.get(output)
        if override is not None:
            atol = override.atol
            rtol = rtol if override.rtol is None else override.rtol
        return Tolerance(atol, rtol)
