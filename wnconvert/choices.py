"""The values of every enumerated option, declared once.

The library checks its parameters against these; the command line builds its choices from them
(so an unknown value is a usage error there, with the choices listed). Importing this module is
free: no torch, no numpy.
"""

from __future__ import annotations

from typing import Literal, get_args

#: Key style of a weight-norm pair: ``_g``/``_v`` (legacy) or ``parametrizations.*`` keys.
Style = Literal["parametrize", "legacy"]
STYLES: tuple[Style, ...] = get_args(Style)

#: The ONNX exporter: torch.export (dynamo), the TorchScript tracer (legacy), or dynamo with a
#: fallback to legacy (auto).
Exporter = Literal["auto", "dynamo", "legacy"]
EXPORTERS: tuple[Exporter, ...] = get_args(Exporter)

#: What a weight mismatch does in verification.
WeightsMode = Literal["fail", "report", "off"]
WEIGHTS_MODES: tuple[WeightsMode, ...] = get_args(WeightsMode)

#: The float type an exported or folded ONNX model computes in: float32 (as exported),
#: float16 or bfloat16 (weights folded in float64 and rounded once to it).
Precision = Literal["fp32", "fp16", "bf16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)

#: The error statistic an output's pass rule checks (Polygraphy's ``--check-error-stat``):
#: elemwise is ``|c - r| <= atol + rtol * |r|`` for every element; the others pass when that
#: statistic of the absolute error is <= atol or the one of the relative error is <= rtol.
ErrorStat = Literal["elemwise", "max", "mean", "median", "quantile"]
ERROR_STATS: tuple[ErrorStat, ...] = get_args(ErrorStat)
