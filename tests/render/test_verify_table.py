"""The verification table shows the shape of the case a FAIL is about."""

from __future__ import annotations

import numpy as np
import pytest

from wnconvert.render import visible
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


@pytest.mark.parametrize("char", ["\u2028", "\u00ad", "\U000e0041", "\x1b"])
def test_output_names_from_the_model_are_escaped(char: str,
                                                 capsys: pytest.CaptureFixture) -> None:
    """Output names come from the ONNX file: the table and the failure lines show hidden
    characters as escapes (and markup in a name as text)."""
    tol = Tolerance(atol=1e-5, rtol=1e-4)
    bad = compare_arrays(np.full((2,), 2, np.float32), np.ones((2,), np.float32), tol)
    name = f"out{char}[bold]put"
    out = OutputResult(name, name, (("random 1", bad),))
    report = VerificationReport(
        candidate={"path": "m.onnx"}, reference={"kind": "onnx"},
        cases=(CaseInfo("random 1", "random", {name: ((2,), "float32")}),),
        providers=(ProviderResult("CPUExecutionProvider", {}, (), (out,)),), weights=None)
    print_report(report)
    printed = capsys.readouterr().out
    assert char not in printed
    assert f"out{visible(char)}[bold]put" in printed
