"""Verification: the tolerance rule, defaults and options."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wnconvert.cli.options import FLAGS
from wnconvert.cli.parse import parse_output_tolerance
from wnconvert.errors import InputError
from wnconvert.verification import (
    DEFAULT_TOLERANCES,
    Tolerance,
    ToleranceOverride,
    VerifyOptions,
    compare_arrays,
    default_tolerance,
)


def test_identical_arrays_pass_with_zero_errors() -> None:
    a = np.linspace(-1, 1, 10, dtype=np.float32)
    comp = compare_arrays(a, a.copy(), Tolerance(1e-5, 1e-4))
    assert comp.passed
    assert (comp.max_abs, comp.max_rel, comp.mean_abs, comp.min_atol) == (0, 0, 0, 0)


def test_rule_is_atol_plus_rtol_times_reference() -> None:
    ref = np.array([0.0, 1.0, 100.0], dtype=np.float64)
    tol = Tolerance(atol=0.1, rtol=0.01)
    # Allowed errors: 0.1, 0.11, 1.1 -> at (or just inside) the bound passes, over fails.
    assert compare_arrays(ref + [0.1, 0.1099, 1.0999], ref, tol).passed
    over = compare_arrays(ref + [0.0, 0.0, 1.2], ref, tol)
    assert not over.passed
    assert over.mismatched == 1
    assert over.worst_index == (2,)
    assert over.max_abs == pytest.approx(1.2)
    assert over.min_atol == pytest.approx(0.2)  # 1.2 - 0.01 * 100


def test_max_rel_on_a_zero_reference_is_infinite() -> None:
    comp = compare_arrays(np.array([1e-7]), np.array([0.0]), Tolerance(1e-5, 1e-4))
    assert comp.passed  # atol covers it
    assert math.isinf(comp.max_rel)


@pytest.mark.parametrize(
    ("cand", "ref", "ok"),
    [
        (np.nan, np.nan, True),
        (np.inf, np.inf, True),
        (-np.inf, -np.inf, True),
        (np.inf, -np.inf, False),
        (np.nan, 1.0, False),
        (1.0, np.nan, False),
        (np.inf, 1e30, False),
    ],
)
def test_nan_and_inf_pass_only_when_both_sides_agree(cand: float, ref: float, ok: bool) -> None:
    comp = compare_arrays(np.array([cand, 0.5]), np.array([ref, 0.5]), Tolerance(1e-5, 1e-4))
    assert comp.passed is ok
    assert comp.nonfinite_mismatch == (0 if ok else 1)
    if not ok:
        assert math.isinf(comp.min_atol)


@pytest.mark.parametrize("copy", [True, False], ids=["bit-identical", "element-wise"])
def test_agreeing_nan_and_inf_alone_compare_nothing_and_fail(copy: bool) -> None:
    # An output that is NaN/Inf everywhere on both sides (inputs outside the model's domain)
    # checks nothing: it may not pass. The bit-identical shortcut must say so too.
    ref = np.array([np.nan, np.inf, -np.inf, np.nan], dtype=np.float32)
    cand = ref.copy()
    if not copy:
        cand.view(np.uint32)[0] = 0x7FC0_0001  # another NaN payload: not the same bytes
    comp = compare_arrays(cand, ref, Tolerance(1e-5, 1e-4))
    assert not comp.passed and comp.mismatched == 0
    assert comp.message is not None and comp.message.startswith(
        "all 4 reference values are NaN or Inf, so nothing was compared")


def test_one_finite_value_is_a_comparison_and_empty_outputs_stay_neutral() -> None:
    ref = np.array([np.nan, np.nan, 0.25], dtype=np.float32)
    assert compare_arrays(ref.copy(), ref, Tolerance(1e-5, 1e-4)).passed
    assert compare_arrays(ref + np.float32(0), ref, Tolerance(1e-5, 1e-4)).passed
    empty = np.zeros((0, 3), dtype=np.float32)
    assert compare_arrays(empty, empty.copy(), Tolerance(1e-5, 1e-4)).passed


def test_shape_mismatch_fails_with_a_message() -> None:
    comp = compare_arrays(np.zeros((1, 4)), np.zeros((1, 5)), Tolerance(1, 1))
    assert not comp.passed
    assert "shape [1, 4]" in (comp.message or "")


def test_dtype_mismatch_fails_even_when_values_agree() -> None:
    comp = compare_arrays(np.zeros(3, np.float16), np.zeros(3, np.float32), Tolerance(1, 1))
    assert not comp.passed
    assert "dtype float16" in (comp.message or "")


def test_integer_outputs_must_match_exactly() -> None:
    assert default_tolerance("int64") == Tolerance(0.0, 0.0)
    comp = compare_arrays(np.array([1, 2]), np.array([1, 3]), default_tolerance("int64"))
    assert not comp.passed


@given(
    ref=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=20),
    noise=st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=20, max_size=20),
    rtol=st.sampled_from([0.0, 1e-4, 1e-2]),
)
def test_min_atol_is_the_smallest_atol_that_passes(ref: list[float], noise: list[float],
                                                   rtol: float) -> None:
    r = np.array(ref)
    c = r + np.array(noise[: len(ref)])
    need = compare_arrays(c, r, Tolerance(0.0, rtol)).min_atol
    assert compare_arrays(c, r, Tolerance(need, rtol)).passed
    if need > 1e-9:
        assert not compare_arrays(c, r, Tolerance(need * (1 - 1e-6) - 1e-12, rtol)).passed


def test_documented_defaults() -> None:
    assert DEFAULT_TOLERANCES["float32"] == Tolerance(1e-5, 1e-4)
    assert DEFAULT_TOLERANCES["float16"].atol > DEFAULT_TOLERANCES["float32"].atol
    assert DEFAULT_TOLERANCES["bfloat16"].rtol > DEFAULT_TOLERANCES["float16"].rtol


def test_tolerance_precedence_override_then_global_then_dtype() -> None:
    options = VerifyOptions(atol=1e-3, output_tolerances={"logits": ToleranceOverride(0.5)})
    assert options.tolerance_for("audio", "float32") == Tolerance(1e-3, 1e-4)
    assert options.tolerance_for("logits", "float32") == Tolerance(0.5, 1e-4)
    assert options.tolerance_for("audio", "float16") == Tolerance(1e-3, 1e-2)
    both = VerifyOptions(output_tolerances={"x": ToleranceOverride(0.1, 0.2)})
    assert both.tolerance_for("x", "float32") == Tolerance(0.1, 0.2)


def test_parse_output_tolerance() -> None:
    assert parse_output_tolerance("logits=1e-4:1e-3") == ("logits", ToleranceOverride(1e-4, 1e-3))
    assert parse_output_tolerance("a.b=0.5") == ("a.b", ToleranceOverride(0.5, None))
    for bad in ("logits", "=1", "x=abc", "x=-1", "x=1:y"):
        with pytest.raises(InputError) as info:
            parse_output_tolerance(bad)
        assert "--tol" in info.value.render(FLAGS)


def test_bad_options_are_input_errors() -> None:
    with pytest.raises(InputError, match="runs=0"):
        VerifyOptions(runs=0)
    with pytest.raises(InputError, match="atol=-1.0"):
        VerifyOptions(atol=-1.0)


