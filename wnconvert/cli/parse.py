"""Every flag string the command line accepts is parsed here, into the library's typed values.

The library never sees ``1x80x200:fp16`` or ``mel:2=time``: it takes :class:`InputSpec`,
:class:`DynamicAxis`, dicts and ints. Errors name the flag, since the user typed it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:
    from .. import DynamicAxis, InputSpec, PrefixChange, ToleranceOverride

#: Short dtype names accepted by ``--input`` (``mel=1x80x200:fp16``).
DTYPE_ALIASES = {"float": "float32", "half": "float16", "double": "float64", "long": "int64",
                 "int": "int64", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def parse_input_spec(text: str) -> InputSpec:
    """``--input [NAME=]SHAPE[:DTYPE]``; SHAPE is sizes joined by ``x`` (``1x80x200``).
    The syntax is checked here; the values (sizes, dtype) by :class:`InputSpec`."""
    from .. import InputSpec

    name, eq, rest = text.partition("=")
    if not eq:
        name, rest = "", text
    shape_text, _, dtype_text = rest.partition(":")
    dtype = DTYPE_ALIASES.get(dtype_text.lower(), dtype_text.lower()) or "float32"
    try:
        shape = tuple(int(part) for part in shape_text.lower().split("x"))
    except ValueError:
        raise InputError(
            f"--input {text!r}: expected [NAME=]SHAPE[:DTYPE] with sizes joined by 'x', e.g. "
            "--input 1x80x200 or --input mel=1x80x200:float16"
        ) from None
    return InputSpec(shape, dtype, name.strip() or None, text)


def parse_dynamic_axis(text: str) -> DynamicAxis:
    """``--dynamic [INPUT:]AXIS[=NAME]`` (``2``, ``mel:2=time``, ``1:0=batch``)."""
    from .. import DynamicAxis

    head, _, dim_text = text.partition("=")
    input_text, colon, axis_text = head.rpartition(":")
    if not colon:
        input_text, axis_text = "", head
    try:
        axis = int(axis_text)
    except ValueError:
        raise InputError(
            f"--dynamic {text!r}: expected [INPUT:]AXIS[=NAME], e.g. --dynamic 2=time (axis 2 of "
            "the first input) or --dynamic mel:2=time"
        ) from None
    dim_name = dim_text.strip() or None
    source: int | str = 0
    if input_text:
        source = int(input_text) if input_text.isdigit() else input_text
    return DynamicAxis(axis, source, dim_name, text)


def parse_model_kwargs(text: str | None) -> dict[str, Any]:
    """``--model-kwargs`` JSON object (``{"weight_norm": "none"}``)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) \
            else "nested too deeply"
        raise InputError(f"--model-kwargs: not valid JSON ({detail}); write an object like "
                         "'{\"channels\": 512}'") from None
    if not isinstance(value, dict):
        raise InputError("--model-kwargs: must be a JSON object like '{\"channels\": 512}'")
    return value


def parse_dim(text: str) -> int | None:
    """``--dim``: an integer axis, or ``none`` for one norm over the whole tensor."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        raise InputError(
            f"--dim {text!r}: give an integer axis (0, 1, -1...) or 'none' for one norm over "
            "the whole tensor"
        ) from None


# --------------------------------------------------------------------------------------------
# Verification flags (--tol)


def parse_output_tolerance(text: str) -> tuple[str, ToleranceOverride]:
    """``--tol NAME=ATOL[:RTOL]`` (e.g. ``logits=1e-4:1e-3``); finite, non-negative values."""
    from .. import ToleranceOverride

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
    return name, ToleranceOverride(atol, rtol, output=name)


def parse_output_tolerances(texts: Sequence[str]) -> dict[str, ToleranceOverride]:
    """Every ``--tol``; the last one given for an output wins."""
    return dict(parse_output_tolerance(text) for text in texts)


def parse_named_values(flag: str, texts: Sequence[str], *, number: bool
                       ) -> tuple[Any, dict[str, Any]]:
    """``--check-error-stat``/``--error-quantile``/``--min-snr``: ``VALUE`` (every output) or
    ``NAME:VALUE`` (one output), repeatable; the last given wins. Returns (default or None,
    per-output values); ``number`` values become floats (their range is the library's)."""
    default: Any = None
    named: dict[str, Any] = {}
    for text in texts:
        name, colon, value_text = text.rpartition(":")
        value: Any = value_text.strip()
        if number:
            try:
                value = float(value)
            except ValueError:
                raise InputError(f"{flag} {text!r}: expected a number or NAME:NUMBER (e.g. "
                                 f"{flag} 0.99 or {flag} logits:0.999)") from None
        if not colon:
            default = value
        elif not name:
            raise InputError(f"{flag} {text!r}: name the output before the colon (NAME:VALUE), "
                             "or give the value alone for every output")
        else:
            named[name] = value
    return default, named


def parse_prefix(strip: str | None, add: str | None) -> PrefixChange | None:
    """``--strip-prefix`` / ``--add-prefix`` as one key change (None when neither is given)."""
    from .. import PrefixChange

    if strip is None and add is None:
        return None
    if strip == "" or add == "":
        raise InputError("--strip-prefix/--add-prefix: give a non-empty prefix such as 'model.'")
    return PrefixChange(strip or "", add or "")
