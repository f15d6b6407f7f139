"""``--report FILE.md`` of the verifying jobs through the CLI (issue 21 §4)."""

from __future__ import annotations

from pathlib import Path

from tests.onnx_graph.builders import save, weight_norm_model


def test_fold_onnx_writes_a_markdown_summary(cli, tmp_path: Path, assert_ok, assert_input_error):
    model = save(weight_norm_model((6, 4, 3), 0, order="g/n*v")[0], tmp_path / "model.onnx")
    report = tmp_path / "verify.md"
    assert_ok(cli("fold", model, "--report", report, "--report", tmp_path / "v.json"))
    text = report.read_text()
    assert text.startswith("## ✅ wnconvert verify: passed\n")
    assert f"**Candidate:** {tmp_path / 'model.folded.onnx'}" in text
    assert "### ✅ CPUExecutionProvider" in text
    assert "| output | result | shape | dtype | max abs err |" in text
    # Written like the other reports: never over an existing file without --force.
    assert_input_error(cli("fold", model, "-o", tmp_path / "x.onnx", "--report", report), report)


def test_a_report_flag_on_a_checkpoint_fold_is_refused(cli, tmp_path: Path, save_pt,
                                                       assert_input_error):
    import torch

    checkpoint = save_pt({"w": torch.ones(2, 2)}, "c.pt")
    line = assert_input_error(cli("fold", checkpoint, "--report", tmp_path / "r.md"), "--report")
    assert "the report file (check;" in line
