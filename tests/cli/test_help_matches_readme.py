"""``--help`` and the README describe options the same way (issue 11 §5)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from wnconvert.cli import app

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("command", ["fold", "verify"])
def test_input_option_syntax_matches_the_readme(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "[NAME=]SHAPE[:DTYPE]" in " ".join(result.stdout.split())
    assert "--input [NAME=]SHAPE[:DTYPE]" in README


def test_readme_states_the_opsets_its_exporter_claim_holds_for() -> None:
    text = " ".join(README.split())
    assert "keeps every chain at opset 18 and later" in text
