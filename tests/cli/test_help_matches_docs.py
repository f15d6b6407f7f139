"""``--help`` and the documentation describe options the same way (issue 11 §5).

The reference moved from the README to docs/ (issue 17 §4)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from wnconvert.cli import app

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXPORT_PAGE = (DOCS / "export_verify.md").read_text()
ONNX_PAGE = (DOCS / "onnx_graphs.md").read_text()


@pytest.mark.parametrize("command", ["fold", "verify"])
def test_input_option_syntax_matches_the_docs(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "[NAME=]SHAPE[:DTYPE]" in " ".join(result.stdout.split())
    assert "--input [NAME=]SHAPE[:DTYPE]" in EXPORT_PAGE


def test_docs_state_the_opsets_their_exporter_claim_holds_for() -> None:
    text = " ".join(ONNX_PAGE.split())
    assert "keeps every chain at opset 18 and later" in text
