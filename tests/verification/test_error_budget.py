"""The error budget (issue 20 §2): error statistics against hand-computed numpy values, the
pass rules built on them (Polygraphy's check_error_stat, the quantile, the SNR floor), their
options, and what the JSON and JUnit reports carry."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from wnconvert.errors import InputError
from wnconvert.verification import (
    REL_EPSILON,
    CaseInfo,
    OutputResult,
    PassRule,
    ProviderResult,
    Tolerance,
    VerificationReport,
    VerifyOptions,
    compare_arrays,
    describe,
)
from wnconvert.verification.compare import _COMPARE_CHUNK, json_snr, quantile_label
from wnconvert.verification.report import to_junit_xml

TOL = Tolerance(atol=1e-3, rtol=1e-3)


def budget(cand: np.ndarray, ref: np.ndarray, stat: str = "elemwise", *,
           quantile: float = 0.99, min_snr: float | None = None, tol: Tolerance = TOL):
    return compare_arrays(cand, ref, tol, PassRule(stat, quantile, min_snr))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# The statistics


def test_statistics_match_numpy_computed_by_hand() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(1000)
    ref[:3] = 0.0  # relative error divides by REL_EPSILON there
    cand = ref + rng.standard_normal(1000) * 1e-4
    stats = budget(cand, ref).stats
    assert stats is not None
    err = np.abs(cand - ref)
    rel = err / np.where(ref == 0, REL_EPSILON, np.abs(ref))
    expected = {
        ("abs", "max"): err.max(), ("abs", "mean"): err.mean(),
        ("abs", "median"): np.median(err), ("abs", "quantile"): np.quantile(err, 0.99),
        ("rel", "max"): rel.max(), ("rel", "mean"): rel.mean(),
        ("rel", "median"): np.median(rel), ("rel", "quantile"): np.quantile(rel, 0.99),
    }
    for (kind, stat), value in expected.items():
        assert stats.of(kind, stat) == pytest.approx(value, rel=1e-12), (kind, stat)
    snr = 10 * np.log10(np.sum(ref**2) / np.sum((cand - ref) ** 2))
    assert stats.snr_db == pytest.approx(snr, rel=1e-12)
    assert stats.finite == 1000


def test_statistics_are_exact_across_chunks() -> None:
    # Larger than one chunk of the streaming comparison: the median and the quantile still see
    # every error at once.
    n = _COMPARE_CHUNK + 1001
    ref = np.linspace(-3, 3, n, dtype=np.float32)
    cand = ref + np.float32(1e-3) * np.sin(np.arange(n, dtype=np.float32))
    stats = budget(cand, ref, quantile=0.9).stats
    assert stats is not None
    err = np.abs(cand.astype(np.float64) - ref.astype(np.float64))
    assert stats.abs_median == pytest.approx(np.median(err), rel=1e-12)
    assert stats.abs_quantile == pytest.approx(np.quantile(err, 0.9), rel=1e-12)
    assert stats.abs_mean == pytest.approx(err.mean(), rel=1e-9)


def test_quantile_is_numpys_linear_interpolation() -> None:
    ref = np.zeros(4) + 1.0
    cand = ref + [0.0, 1.0, 2.0, 3.0]
    # Sorted errors 0, 1, 2, 3: the 0.9-quantile is 2 + 0.7 * (3 - 2) (linear, numpy's default).
    assert budget(cand, ref, quantile=0.9).stats.abs_quantile == pytest.approx(2.7)
    assert budget(cand, ref, quantile=0.5).stats.abs_quantile == pytest.approx(1.5)  # median
    assert budget(cand, ref, quantile=1.0).stats.abs_quantile == 3.0  # max
    assert [quantile_label(q) for q in (0.99, 0.999, 0.5, 1.0)] == ["p99", "p99.9", "p50",
                                                                    "p100"]


def test_identical_outputs_have_infinite_snr_written_as_the_string_inf() -> None:
    ref = np.linspace(-1, 1, 10, dtype=np.float32)
    for cand in (ref.copy(), ref.astype(np.float64)):  # bit-identical shortcut, and the pass
        comp = budget(cand, ref, min_snr=200.0)
        assert comp.stats is not None and comp.stats.snr_db == math.inf
        assert comp.stats.abs_max == comp.stats.rel_max == 0.0
        assert json_snr(comp.stats.snr_db) == "inf"
        assert "min_snr" not in comp.failed_rules  # +inf passes any floor
    zero = budget(np.array([1e-3, 0.0]), np.zeros(2)).stats
    assert zero is not None and zero.snr_db == -math.inf and json_snr(zero.snr_db) == "-inf"
    assert zero.rel_max == pytest.approx(1e-3 / REL_EPSILON)  # finite, as Polygraphy's


def test_snr_of_a_relative_error_of_one_in_a_thousand_is_60_db() -> None:
    ref = np.random.default_rng(1).standard_normal(500)
    comp = budget(ref * (1 + 1e-3), ref, min_snr=59.0, tol=Tolerance(1.0, 0.0))
    assert comp.stats.snr_db == pytest.approx(60.0)
    assert comp.passed
    low = budget(ref * (1 + 1e-3), ref, min_snr=61.0, tol=Tolerance(1.0, 0.0))
    assert not low.passed and low.failed_rules == ("min_snr",)
    assert "SNR 60.0 dB < min_snr 61 dB (passes with min_snr <= 60.0 dB)" in describe(low)


def test_agreeing_nan_is_left_out_of_the_statistics_and_disagreeing_nan_fails_every_rule(
) -> None:
    ref = np.array([1.0, 2.0, np.nan, 4.0])
    agree = budget(np.array([1.0, 2.0, np.nan, 4.0 + 1e-6]), ref, "mean")
    assert agree.passed and agree.stats.finite == 3
    assert agree.stats.abs_max == pytest.approx(1e-6)
    for stat in ("elemwise", "max", "mean", "median", "quantile"):
        bad = budget(np.array([1.0, 2.0, 3.0, 4.0]), ref, stat, min_snr=-100.0)
        assert not bad.passed, stat
        assert bad.failed_rules == (stat, "min_snr")
        assert math.isinf(bad.min_atol) and math.isinf(bad.min_rtol)
        assert "1 NaN/Inf disagree" in describe(bad)


# --------------------------------------------------------------------------------------------
# The pass rules


def test_errors_within_atol_plus_rtol_pass_elemwise_but_fail_the_mean() -> None:
    # Elemwise allows atol + rtol * |ref| = 2e-3 per element; a statistic needs the absolute
    # error <= atol (1e-3) or the relative one <= rtol (1e-3): 1.8e-3 everywhere is neither.
    ref = np.ones(100)
    cand = ref + 1.8e-3
    assert budget(cand, ref, "elemwise").passed
    mean = budget(cand, ref, "mean")
    assert not mean.passed and mean.failed_rules == ("mean",)
    assert mean.min_atol == pytest.approx(1.8e-3) and mean.min_rtol == pytest.approx(1.8e-3)
    assert ("mean abs error 0.0018 > atol 0.001 and mean rel error 0.0018 > rtol 0.001 "
            "(needs atol >= 0.0018 or rtol >= 0.0018)") in describe(mean)


def test_one_outlier_fails_elemwise_and_max_but_passes_mean_median_and_p99() -> None:
    ref = np.linspace(1, 2, 1000)
    cand = ref.copy()
    cand[500] += 0.5
    assert not budget(cand, ref, "elemwise").passed
    assert not budget(cand, ref, "max").passed
    for stat in ("mean", "median", "quantile"):
        assert budget(cand, ref, stat).passed, stat


def test_quantile_rule_follows_the_quantile_asked_for() -> None:
    ref = np.ones(1000)
    cand = ref.copy()
    cand[:20] += 0.1  # 2 % of the elements far off
    p99 = budget(cand, ref, "quantile", quantile=0.99)
    assert not p99.passed and p99.failed_rules == ("quantile",)
    assert "p99 abs error 0.1 > atol 0.001" in describe(p99)
    assert budget(cand, ref, "quantile", quantile=0.95).passed


def test_either_the_absolute_or_the_relative_statistic_is_enough() -> None:
    ref = np.full(10, 1000.0)
    cand = ref + 0.5  # abs 0.5 > atol, rel 5e-4 <= rtol
    assert budget(cand, ref, "max").passed
    small = np.full(10, 1e-4)
    assert budget(small + 1e-4, small, "max").passed  # abs 1e-4 <= atol, rel 1 > rtol


@pytest.mark.parametrize("stat", ["max", "mean", "median", "quantile"])
@pytest.mark.parametrize("scale", [1e-5, 3e-4, 1e-3, 3e-3, 1e-2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pass_fail_agrees_with_polygraphys_comparator(stat: str, scale: float,
                                                      seed: int) -> None:
    from polygraphy.comparator import IterationResult
    from polygraphy.comparator.compare import SimpleCompareFunc

    rng = np.random.default_rng(seed)
    ref = rng.standard_normal(4000).astype(np.float32)
    noise = rng.standard_normal(4000).astype(np.float32) * np.float32(scale)
    noise[rng.integers(0, 4000, 40)] *= 50  # heavy tail: the statistics disagree
    cand = ref + noise
    atol, rtol, quantile = 1e-3, 5e-3, 0.95
    theirs = SimpleCompareFunc(check_error_stat=stat, atol=atol, rtol=rtol,
                               error_quantile=quantile)(
        IterationResult({"y": cand}, runner_name="onnx"),
        IterationResult({"y": ref}, runner_name="reference"))["y"]
    ours = budget(cand, ref, stat, quantile=quantile, tol=Tolerance(atol, rtol))
    assert ours.passed == bool(theirs)
    # Polygraphy computes the mean in float32; the rest agree to float64 rounding.
    assert ours.stats.of("abs", stat) == pytest.approx(
        getattr(theirs, f"{stat}_absdiff"), rel=1e-5)
    assert ours.stats.of("rel", stat) == pytest.approx(
        getattr(theirs, f"{stat}_reldiff"), rel=1e-5)


# --------------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize(("kwargs", "mention"), [
    ({"check_error_stat": "p99"}, "check_error_stat='p99': use one of elemwise, max, mean"),
    ({"error_quantile": 0.0}, "error_quantile=0.0: a quantile is a number in (0, 1]"),
    ({"error_quantile": 1.5}, "error_quantile=1.5"),
    ({"error_quantile": math.nan}, "error_quantile=nan"),
    ({"min_snr": math.inf}, "min_snr=inf: a signal-to-noise ratio floor is a finite number"),
    ({"output_error_stats": {"y": "worst"}}, "output_error_stats='y:worst'"),
    ({"output_error_quantiles": {"y": 2.0}}, "output_error_quantiles='y:2.0'"),
    ({"output_min_snrs": {"y": math.nan}}, "output_min_snrs='y:nan'"),
    ({"output_error_stats": {"": "max"}}, "name the output"),
])
def test_bad_rule_options_are_refused(kwargs: dict, mention: str) -> None:
    with pytest.raises(InputError) as info:
        VerifyOptions(**kwargs)
    assert mention in str(info.value)


def test_per_output_rules_override_the_global_ones_and_unknown_names_are_refused() -> None:
    options = VerifyOptions(check_error_stat="mean", error_quantile=0.9, min_snr=40.0,
                            output_error_stats={"logits": "quantile"},
                            output_error_quantiles={"logits": 0.999},
                            output_min_snrs={"audio": 80.0})
    assert options.rule_for("logits") == PassRule("quantile", 0.999, 40.0)
    assert options.rule_for("audio") == PassRule("mean", 0.9, 80.0)
    assert VerifyOptions().rule_for("x") == PassRule("elemwise", 0.99, None)
    options.check_output_names(["logits", "audio"])
    with pytest.raises(InputError) as info:
        options.check_output_names(["logits", "wave"])
    assert str(info.value) == ("output_min_snrs='audio:80.0': the model has no output 'audio'; "
                               "its outputs are logits, wave")
    assert "mean of |candidate - reference| <= atol" in options.rule_text()
    assert "and SNR >= 40 dB" in options.rule_text()


# --------------------------------------------------------------------------------------------
# Reports


def _report(rule: PassRule) -> VerificationReport:
    ref = np.linspace(1, 2, 100).astype(np.float32)
    far = ref.copy()
    far[0] += np.float32(0.5)
    cases = (("run 0", compare_arrays(ref + np.float32(1e-6), ref, TOL, rule)),
             ("run 1", compare_arrays(far, ref, TOL, rule)))
    provider = ProviderResult("CPUExecutionProvider", {}, (),
                              (OutputResult("y", "y", cases),))
    return VerificationReport(
        candidate={"kind": "onnx", "path": "m.onnx"}, reference={"kind": "onnx"},
        cases=(CaseInfo("run 0", "random", {"x": ((100,), "float32")}, (0, 0)),),
        providers=(provider,), weights=None)


def test_json_carries_the_budget_per_output_and_per_case_as_valid_json() -> None:
    report = _report(PassRule("median", 0.99, 20.0))
    out = json.loads(json.dumps(report.to_dict(), allow_nan=False))["providers"][0]["outputs"][0]
    assert out["passed"] is True  # median passes in both runs despite the outlier
    assert out["check_error_stat"] == "median" and out["min_snr"] == 20.0
    assert out["failed_rules"] == []
    errors = out["errors"]
    assert set(errors) == {"abs", "rel", "quantile", "snr_db", "elements"}
    assert set(errors["abs"]) == {"max", "mean", "median", "quantile"}
    # Over both runs: the worst of each figure (the outlier's max, the smaller SNR).
    assert errors["abs"]["max"] == pytest.approx(0.5)
    run1 = out["cases"][1]["errors"]
    assert errors["snr_db"] == run1["snr_db"] < out["cases"][0]["errors"]["snr_db"]
    assert errors["elements"] == 200
    assert out["max_abs"] == pytest.approx(0.5)  # the keys that were there stay


def test_a_failed_snr_floor_is_named_in_the_failures() -> None:
    report = _report(PassRule("median", 0.99, 60.0))
    assert not report.passed
    data = report.to_dict()
    assert data["providers"][0]["outputs"][0]["failed_rules"] == ["min_snr"]
    assert "SNR" in data["failures"][0] and "< min_snr 60 dB" in data["failures"][0]


def test_junit_carries_the_statistics_as_properties_and_text() -> None:
    root = ET.fromstring(to_junit_xml(_report(PassRule("max", 0.9, None))))
    case = root.find(".//testcase[@name='y']")
    assert case is not None
    props = {p.get("name"): p.get("value") for p in case.findall("properties/property")}
    assert props["check"] == "check max"
    assert set(props) >= {"abs_max", "abs_mean", "abs_median", "abs_p90", "rel_max",
                          "rel_p90", "snr_db"}
    assert float(props["abs_max"]) == pytest.approx(0.5)
    failure = case.find("failure")
    assert failure is not None and "max abs error 0.5 > atol 0.001" in failure.get("message", "")
    assert "errors (check max): abs max 0.5" in (failure.text or "")
