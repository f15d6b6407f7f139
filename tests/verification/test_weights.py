"""Verification: weights compared by name, prefix and value."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wnconvert.verification import (
    VerifyOptions,
    compare_weights,
)


def test_compare_weights_folds_pairs_and_names_the_wrong_weight() -> None:
    rng = np.random.default_rng(1)
    v = rng.standard_normal((4, 3)).astype(np.float32)
    g = np.linalg.norm(v.astype(np.float64), axis=1, keepdims=True).astype(np.float32) * 2
    w = (g.astype(np.float64) * v / np.linalg.norm(v.astype(np.float64), axis=1,
                                                 keepdims=True)).astype(np.float32)
    reference = {"fc.parametrizations.weight.original0": g,
                 "fc.parametrizations.weight.original1": v,
                 "fc.bias": np.ones(4, np.float32), "step": np.array(3)}
    ok = compare_weights({"fc.weight": w, "fc.bias": np.ones(4, np.float32)}, reference,
                         options=VerifyOptions())
    assert [c.name for c in ok.compared] == ["fc.weight", "fc.bias"]
    assert ok.passed and ok.worst is not None and ok.worst.max_abs <= 1e-6
    assert ok.only_in_reference == () and ok.only_in_candidate == ()
    bad = compare_weights({"fc.weight": w * 1.01, "fc.bias": np.ones(4, np.float32)}, reference,
                          options=VerifyOptions())
    assert not bad.passed
    assert [f.name for f in bad.failed] == ["fc.weight"]
    report_only = compare_weights({"fc.weight": w * 1.01}, reference,
                                  options=VerifyOptions(weights="report"))
    assert report_only.passed and report_only.failed


def test_compare_weights_skips_same_name_with_another_shape() -> None:
    report = compare_weights({"w": np.zeros((2, 3), np.float32)},
                             {"w": np.zeros((3, 2), np.float32)}, options=VerifyOptions())
    assert report.compared == () and report.skipped[0][0] == "w"


# --------------------------------------------------------------------------- matching (issue 13.9)


def _linear(k: int = 4, n: int = 3, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)


def test_a_wrapper_prefix_is_detected_applied_and_reported(tmp_path: Path) -> None:
    from wnconvert.verification import verify_onnx_against_onnx

    from .conftest import linear_model

    w = _linear()
    ref = linear_model(tmp_path / "ref.onnx", w)
    cand = linear_model(tmp_path / "cand.onnx", w, names=("m.fc.weight", "m.fc.bias"))
    report = verify_onnx_against_onnx(cand, ref, options=VerifyOptions(providers=("cpu",)))
    assert report.passed, report.failures()
    assert report.weights is not None and report.weights.prefix == ("m.", "")
    assert {c.name for c in report.weights.compared} == {"m.fc.weight", "m.fc.bias"}
    assert report.to_dict()["weights"]["prefix"] == {"strip": "m.", "add": ""}
    scaled = linear_model(tmp_path / "scaled.onnx", w * np.float32(1.05),
                          names=("m.fc.weight", "m.fc.bias"))
    bad = verify_onnx_against_onnx(scaled, ref, options=VerifyOptions(providers=("cpu",)))
    assert not bad.passed
    assert any("weight 'm.fc.weight'" in line for line in bad.failures())


def test_exporter_renamed_initializers_are_matched_by_value() -> None:
    w = _linear(8, 8)
    other = _linear(8, 8, seed=2)
    reference = {"a.weight": w, "b.weight": other, "c.weight": _linear(5, 3)}
    candidate = {"onnx::MatMul_7": other.copy(), "mul_1": w.copy(), "onnx::Gemm_9": _linear(5, 3)}
    report = compare_weights(candidate, reference, options=VerifyOptions())
    assert sorted(report.matched_by_value) == [("mul_1", "a.weight"),
                                               ("onnx::Gemm_9", "c.weight"),
                                               ("onnx::MatMul_7", "b.weight")]
    assert report.passed and len(report.compared) == 3
    # The only tensor of its shape is paired whatever its values, so a change still fails.
    changed = compare_weights({**candidate, "onnx::Gemm_9": _linear(5, 3) * np.float32(1.05)},
                              reference, options=VerifyOptions())
    assert [w.reference_name for w in changed.failed] == ["c.weight"]


def test_a_weight_check_that_matched_nothing_fails() -> None:
    reference = {"conv_pre.weight": _linear(4, 3), "conv_pre.bias": np.ones(3, np.float32)}
    candidate = {"onnx::Conv_12": _linear(3, 5)}  # nothing fits by name, prefix or shape
    report = compare_weights(candidate, reference, options=VerifyOptions())
    assert report.compared == () and report.nothing_matched
    assert not report.passed
    reason = report.nothing_matched_reason()
    assert "conv_pre.weight" in reason and "weights check set to 'report'" in reason
    assert compare_weights(candidate, reference, options=VerifyOptions(weights="report")).passed
    empty = compare_weights(candidate, {}, options=VerifyOptions())
    assert empty.passed and not empty.nothing_matched  # no reference weights: nothing to miss
