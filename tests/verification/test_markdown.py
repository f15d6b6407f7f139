"""The Markdown summary (``--report FILE.md``, issue 21 §4): verdict, a table per provider and
output, the weight check, one row per file for ``check``; cells escaped."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.verification.test_report import make_report
from wnconvert.errors import InputError
from wnconvert.verification.markdown import (
    cell,
    check_batch_markdown,
    number,
    verification_markdown,
)
from wnconvert.verification.report import check_report_paths, write_reports


def _rows(text: str) -> list[list[str]]:
    """The cells of every table row (escaped pipes kept inside their cell)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            rows.append([c.strip() for c in
                         line[2:-2].replace("\\|", "\0").split(" | ")])
    return [[c.replace("\0", "\\|") for c in row] for row in rows]


def test_cells_escape_pipes_backticks_html_and_line_breaks() -> None:
    assert cell("a|b`c`") == "a\\|b\\`c\\`"
    assert cell("<img src=x>&") == "&lt;img src=x&gt;&amp;"
    assert cell("two\nlines\r\n") == "two lines "
    assert cell("back\\slash|") == "back\\\\slash\\|"
    assert cell(None) == ""


def test_numbers_have_three_digits_and_missing_ones_a_dash() -> None:
    assert (number(1.23456e-7), number(None), number(3), number(True)) == (
        "1.23e-07", "—", "3", "yes")


def test_a_passing_report_has_a_verdict_and_a_table_per_provider() -> None:
    text = verification_markdown(make_report().to_dict())
    assert text.startswith("## ✅ wnconvert verify: passed\n")
    assert "**Candidate:** g.onnx" in text
    assert "### ✅ CPUExecutionProvider" in text and "### ✅ CUDAExecutionProvider" in text
    rows = _rows(text)
    header = rows[0]
    assert header[:4] == ["output", "result", "shape", "dtype"]
    assert header[4:7] == ["max abs err", "max rel err", "mean abs err"]
    assert header[-3:] == ["atol", "rtol", "min atol to pass"]
    audio = rows[1]
    assert audio[:4] == ["audio", "✅", "1×1×12", "float32"]
    assert audio[-3:-1] == ["1e-05", "0.0001"]
    assert "### ✅ Weights (fail)" in text and "1 tensor(s) compared" in text
    assert "### Failures" not in text


def test_a_failed_report_names_the_failures_and_the_provider_error() -> None:
    data = make_report(fail_output=True, fail_weight=True,
                       provider_error="CUDA failed to start").to_dict()
    text = verification_markdown(data)
    assert text.startswith("## ❌ wnconvert verify: failed\n")
    assert "### ❌ CUDAExecutionProvider" in text
    assert "could not run the model: CUDA failed to start" in text
    assert "❌ 1 differ: conv_pre.weight." in text
    assert text.count("\n- ") == len(data["failures"]) + len(data["warnings"])


def test_figures_a_report_adds_get_their_own_columns() -> None:
    # Error statistics added to the output dicts later appear without a change here.
    data = make_report().to_dict()
    for provider in data["providers"]:
        for out in provider["outputs"]:
            out["p99_abs"] = 2.5e-6
            out["stats"] = {"median_abs": 1e-7, "snr_db": 120.5}
    rows = _rows(verification_markdown(data))
    header = rows[0]
    for column in ("p99 abs", "stats.median abs", "stats.snr db"):
        assert column in header
    audio = rows[1]
    assert audio[header.index("p99 abs")] == "2.5e-06"
    assert audio[header.index("stats.snr db")] == "120"


def test_names_with_markdown_in_them_stay_in_their_cell() -> None:
    data = make_report().to_dict()
    data["providers"][0]["outputs"][0]["name"] = "out|put`x`"
    rows = _rows(verification_markdown(data))
    assert rows[1][0] == "out\\|put\\`x\\`"
    assert len(rows[1]) == len(rows[0])


def test_check_batch_has_one_row_per_file() -> None:
    batch = {"files": [
        {"path": "a.onnx", "exit_code": 0, "message": None, "check": {"weight_norm": []}},
        {"path": "b|c.onnx", "exit_code": 1, "message": "b|c.onnx: computes weight norm",
         "check": {"weight_norm": [{}]}},
        {"path": "bad.onnx", "exit_code": 2, "message": "bad.onnx: not a valid ONNX model",
         "check": None}], "skipped": [{"path": "link.onnx", "reason": "outside"}]}
    text = check_batch_markdown(batch)
    assert text.startswith("## ❌ wnconvert check: 2 of 3 file(s) failed\n")
    assert _rows(text) == [
        ["file", "verdict", "places found / error"],
        ["a.onnx", "✅ clean", ""],
        ["b\\|c.onnx", "❌ norm computed at run time", "b\\|c.onnx: computes weight norm"],
        ["bad.onnx", "⚠️ error", "bad.onnx: not a valid ONNX model"]]
    assert "skipped link.onnx: outside" in text


def test_md_reports_are_written_beside_json_and_xml(tmp_path: Path) -> None:
    paths = [tmp_path / "r.md", tmp_path / "r.json", tmp_path / "r.xml"]
    assert write_reports(make_report(), paths, force=False) == paths
    assert paths[0].read_text().startswith("## ✅ wnconvert verify: passed")
    with pytest.raises(InputError, match="r.md"):
        write_reports(make_report(), paths[:1], force=False)
    with pytest.raises(InputError, match=r"or a \.md file \(Markdown\)"):
        check_report_paths([tmp_path / "r.txt"], force=False)
