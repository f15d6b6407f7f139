"""The verification table shows the shape of the case a FAIL is about."""

from __future__ import annotations

import numpy as np
import pytest

from wnconvert.render.verify import print_report
from wnconvert.verification import (
    CaseInfo,
    OutputResult,
    ProviderResult,
    Tolerance,
    VerificationReport,
    compare_arrays,
)


def test_a_failure_at_the_second_size_shows_that_size(capsys: pytest.CaptureFixture) -> None:
    tol = Tolerance(atol=1e-5, rtol=1e-4)
    ok = compare_arrays(np.ones((1, 8, 40), np.float32), np.ones((1, 8, 40), np.float32), tol)
    bad = compare_arrays(np.full((1, 8, 80), 2, np.float32), np.ones((1, 8, 80), np.float32), tol)
    out = OutputResult("y", "y", (("random 1", ok), ("second size", bad)))
    report = VerificationReport(
        candidate={"path": "m.onnx"}, reference={"kind": "onnx"},
        cases=(CaseInfo("random 1", "random", {}), CaseInfo("second size", "random", {})),
        providers=(ProviderResult("CPUExecutionProvider", {}, (), (out,)),), weights=None)
    print_report(report)
    row = next(line for line in capsys.readouterr().out.splitlines() if "FAIL" in line)
    assert "1x8x80" in row and "1x8x40" not in row
