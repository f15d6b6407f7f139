"""Names from files are data, never terminal commands or markup (issue 9 §5): a tensor named
with ESC sequences, bidi overrides or rich markup is printed with those characters made visible,
on stdout and in error lines on stderr."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from wnconvert.cli import app
from wnconvert.render import escape, visible

CLEAR_SCREEN = "\x1b[2J"
HOSTILE = f"dec{CLEAR_SCREEN}.\u202econv[bold]x[/bold]"


def test_visible_writes_control_and_invisible_characters_as_escapes() -> None:
    assert visible("a\x1b[2Jb\x07\u202e\u200bc\td") == "a\\x1b[2Jb\\x07\\u202e\\u200bc\\x09d"
    assert visible("plain.name_0") == "plain.name_0"
    assert escape("[bold]x") == "\\[bold]x"


@pytest.fixture
def hostile_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    v = torch.randn(3, 2, 4)
    g = torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True)
    path = tmp_path / "hostile.safetensors"
    save_file({f"{HOSTILE}.weight_g": g, f"{HOSTILE}.weight_v": v, "ok.bias": torch.ones(3)},
              str(path))
    return path


@pytest.mark.parametrize("command", [["inspect"], ["fold", "--force"]])
def test_names_are_printed_without_control_characters(command: list[str],
                                                      hostile_checkpoint: Path) -> None:
    result = CliRunner().invoke(app, [command[0], str(hostile_checkpoint), *command[1:]])
    assert result.exit_code == 0, result.output
    for stream in (result.stdout, result.stderr):
        assert "\x1b" not in stream and "\u202e" not in stream
    assert "\\x1b" in result.stdout  # the name is still shown, made visible


def test_error_lines_make_control_characters_visible(tmp_path: Path) -> None:
    path = tmp_path / f"missing{CLEAR_SCREEN}.pt"
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2
    assert "\x1b" not in result.stderr
    assert "missing\\x1b[2J.pt" in result.stderr
