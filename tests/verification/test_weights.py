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


def test_value_matching_pairs_only_tensors_whose_values_agree() -> None:
    """Issue 16: the only tensor of its shape on both sides was paired whatever its values, so
    a convolution weight with a BatchNorm folded in (legacy exporter: ``onnx::Conv_14``) was
    compared with the checkpoint's unfused weight and a correct export failed."""
    w = _linear(8, 3)
    scale = np.linspace(0.5, 1.5, 8, dtype=np.float32)[:, None]
    report = compare_weights({"onnx::Conv_14": w * scale}, {"dw.weight": w, "bn.weight": scale},
                             options=VerifyOptions())
    assert report.matched_by_value == () and report.failed == ()
    assert report.only_in_candidate == ("onnx::Conv_14",)
    assert "dw.weight" in report.only_in_reference


class _Marked(dict):
    """Initializers as ``onnx_initializers`` gives them, some marked derived by the exporter."""

    def __init__(self, tensors: dict[str, np.ndarray], notes: dict[str, str]) -> None:
        super().__init__(tensors)
        self.notes = notes

    def derivation(self, name: str) -> str | None:
        return self.notes.get(name)


def test_an_initializer_the_exporter_marked_derived_is_listed_not_compared(
        tmp_path: Path) -> None:
    from wnconvert.onnx_graph.names import DERIVED_KEY
    from wnconvert.verification import onnx_initializers

    w = _linear()
    note = "BatchNorm 'bn' folded by the exporter into the convolution weight 'fc.weight'"
    candidate = _Marked({"fc.weight": w, "fc.weight+bn": w * np.float32(2)},
                        {"fc.weight+bn": note})
    report = compare_weights(candidate, {"fc.weight": w, "bn.weight": np.ones(4, np.float32)},
                             options=VerifyOptions())
    assert report.passed and [c.name for c in report.compared] == ["fc.weight"]
    assert report.derived == (("fc.weight+bn", note),) and report.only_in_candidate == ()
    # A name that matches is compared whatever the mark says: a mark cannot hide a weight.
    marked = _Marked({"fc.weight": w * np.float32(1.05)}, {"fc.weight": note})
    assert not compare_weights(marked, {"fc.weight": w}, options=VerifyOptions()).passed
    # The mark is the initializer's metadata in the ONNX file.
    path = linear_model_with_note(tmp_path / "m.onnx", w, DERIVED_KEY, note)
    assert onnx_initializers(path).derivation("fc.weight") == note  # type: ignore[attr-defined]
    assert onnx_initializers(path).derivation("fc.bias") is None  # type: ignore[attr-defined]


def linear_model_with_note(path: Path, w: np.ndarray, key: str, note: str) -> Path:
    import onnx

    from .conftest import linear_model

    linear_model(path, w)
    model = onnx.load(path)
    entry = model.graph.initializer[0].metadata_props.add()
    entry.key, entry.value = key, note
    onnx.save(model, path)
    return path


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
