"""Verification: weights compared by name, prefix and value."""


from __future__ import annotations

import numpy as np
import onnxruntime as ort

from wnconvert.verify import (
    VerifyOptions,
    compare_weights,
)

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()



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


