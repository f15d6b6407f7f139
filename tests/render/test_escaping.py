"""Names from files are data, never terminal commands or markup (issue 9 §5, issue 16 §5): a
name holding ESC sequences, bidi marks, line separators, invisible format or tag characters, a
lone surrogate or rich markup is printed with those characters made visible, on stdout and in
error and warning lines on stderr; so is a file name that is not UTF-8."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner, Result

from tests.onnx_graph import builders
from wnconvert.cli import app
from wnconvert.render import escape, visible

CLEAR_SCREEN = "\x1b[2J"
HOSTILE = f"dec{CLEAR_SCREEN}.\u202econv[bold]x[/bold]"

#: Each character a terminal does not show as itself, and how wnconvert shows it.
HIDDEN = {
    "\u2028": "\\u2028",  # LINE SEPARATOR (Zl)
    "\u2029": "\\u2029",  # PARAGRAPH SEPARATOR (Zp)
    "\u061c": "\\u061c",  # ARABIC LETTER MARK (Cf, bidi)
    "\u00ad": "\\u00ad",  # SOFT HYPHEN (Cf)
    "\u200e": "\\u200e",  # LEFT-TO-RIGHT MARK (Cf)
    "\u202e": "\\u202e",  # RIGHT-TO-LEFT OVERRIDE (Cf)
    "\U000e0041": "\\U000e0041",  # TAG LATIN CAPITAL LETTER A
    "\x1b": "\\x1b",  # ESC (Cc)
    "\x07": "\\x07",  # BEL (Cc)
    "\x9b": "\\u009b",  # CSI, a C1 control: a code point, not the byte 0x9B
    "\r": "\\x0d",  # CR rewrites the line
    "\ud800": "\\ud800",  # a lone surrogate (Cs): cannot even be encoded to UTF-8
}
hidden_chars = pytest.mark.parametrize("char", list(HIDDEN),
                                       ids=[f"U+{ord(c):04X}" for c in HIDDEN])
#: Without the lone surrogate, which neither an ONNX name (a protobuf string is UTF-8; a model
#: holding other bytes is refused, its error quoting them) nor a command-line argument can hold
#: (the OS gives Python bytes, so only the surrogates U+DC80-U+DCFF of undecodable bytes).
encodable_chars = pytest.mark.parametrize(
    "char", [c for c in HIDDEN if c != "\ud800"],
    ids=[f"U+{ord(c):04X}" for c in HIDDEN if c != "\ud800"])


def assert_shown_escaped(result: Result, char: str, name: str) -> None:
    """Neither stream holds ``char``; stdout shows ``name`` with it escaped."""
    for stream in (result.stdout, result.stderr):
        assert char not in stream
    assert name.replace(char, HIDDEN[char]) in result.stdout


def test_visible_writes_control_and_invisible_characters_as_escapes() -> None:
    assert visible("a\x1b[2Jb\x07\u202e\u200bc\td") == "a\\x1b[2Jb\\x07\\u202e\\u200bc\\x09d"
    assert visible("plain.name_0") == "plain.name_0"
    assert escape("[bold]x") == "\\[bold]x"


@hidden_chars
def test_visible_escapes_by_category(char: str) -> None:
    assert visible(f"a{char}b") == f"a{HIDDEN[char]}b"
    assert escape(f"[red]{char}") == f"\\[red]{HIDDEN[char]}"


def test_visible_keeps_what_a_terminal_shows() -> None:
    # Letters of any script, symbols, private use (a font's glyph) and backslashes stay as
    # they are (messages quote names with repr(), which has escaped the backslashes already).
    for text in ("Gewicht_ü.日本.ε", "a\ue000b", "C:\\models\\x", "a b"):
        assert visible(text) == text


def test_visible_writes_the_bytes_of_a_non_utf8_file_name() -> None:
    """Python hands an undecodable byte 0xNN of a file name over as U+DCNN (PEP 383); it is
    shown as that byte, and cannot be taken for the code point U+00NN."""
    name = os.fsdecode(b"bad\xff\x9bname")
    assert visible(name) == "bad\\xff\\x9bname"
    assert visible(name) != visible("bad\xff\x9bname")


def test_markup_in_a_name_is_printed_as_text() -> None:
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(f"[bold]{escape('x[/][red]y[b]z')}[/]")
    assert out.getvalue() == "x[/][red]y[b]z\n"


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


@pytest.fixture
def checkpoint_named(tmp_path: Path) -> Callable[[str], Path]:
    """A .pt checkpoint (a pickle: any string can be a key, a lone surrogate too) with one
    weight-norm pair named ``name``, one of whose rows has zero norm (a warning naming it)."""

    def save(name: str) -> Path:
        torch.manual_seed(0)
        v = torch.randn(3, 2, 4)
        v[1] = 0
        g = torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True)
        path = tmp_path / "model.pt"
        torch.save({f"{name}.weight_g": g, f"{name}.weight_v": v}, path)
        return path

    return save


@hidden_chars
def test_a_tensor_key_is_escaped_in_the_inspect_table(
        char: str, checkpoint_named: Callable[[str], Path]) -> None:
    name = f"dec{char}conv"
    result = CliRunner().invoke(app, ["inspect", str(checkpoint_named(name))])
    assert result.exit_code == 0, result.output
    assert_shown_escaped(result, char, name)


@hidden_chars
def test_a_tensor_key_is_escaped_in_the_fold_table_and_warning(
        char: str, checkpoint_named: Callable[[str], Path], tmp_path: Path) -> None:
    name = f"dec{char}conv"
    source = checkpoint_named(name)
    result = CliRunner().invoke(app, ["fold", str(source), "-o", str(tmp_path / "out.pt")])
    assert result.exit_code == 0, result.output
    assert_shown_escaped(result, char, name)
    shown = name.replace(char, HIDDEN[char])
    assert f"warning: {shown}.weight: 1 row(s) with zero norm" in result.stderr


@encodable_chars
def test_a_file_name_is_escaped_in_the_error_line(char: str, tmp_path: Path) -> None:
    path = tmp_path / f"missing{char}.pt"
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2
    assert char not in result.stderr
    assert f"missing{HIDDEN[char]}.pt: no such file or directory" in result.stderr


def _onnx_with_names(tmp_path: Path, char: str) -> Path:
    """A weight-normed weight whose g/v initializers and every node have ``char`` in their
    names."""
    model, _, _ = builders.weight_norm_model(
        (4, 3), 0, names=(f"la{char}yer.weight_g", f"la{char}yer.weight_v"))
    for node in model.graph.node:
        node.name = f"node{char}{node.name}"
    return builders.save(model, tmp_path / "model.onnx")


@encodable_chars
@pytest.mark.parametrize("command", [["inspect"], ["check"], ["fold", "--no-verify"]])
def test_onnx_initializer_and_node_names_are_escaped(char: str, command: list[str],
                                                     tmp_path: Path) -> None:
    path = _onnx_with_names(tmp_path, char)
    result = CliRunner().invoke(app, [command[0], str(path), *command[1:]])
    assert result.exit_code in (0, 1), result.output  # check: 1 = weight norm at run time
    assert_shown_escaped(result, char, f"la{char}yer")
    if command == ["check"]:
        assert_shown_escaped(result, char, f"node{char}")


@pytest.fixture
def non_utf8_checkpoint(tmp_path: Path) -> Path:
    """A safetensors file whose name holds the byte 0xFF (not UTF-8): made with a byte path,
    since safetensors cannot be given the surrogate-escaped str."""
    v = np.arange(24, dtype=np.float32).reshape(3, 2, 4) + 1
    g = np.linalg.norm(v.reshape(3, -1), axis=1).reshape(3, 1, 1)
    plain = tmp_path / "plain.safetensors"
    save_file({"a.weight_g": torch.from_numpy(g), "a.weight_v": torch.from_numpy(v)}, str(plain))
    target = os.fsencode(tmp_path) + b"/bad\xffname.safetensors"
    os.rename(os.fsencode(plain), target)
    return Path(os.fsdecode(target))


@pytest.mark.parametrize("command", ["inspect", "fold"])
def test_a_non_utf8_file_name_is_printed_as_its_bytes(command: str,
                                                      non_utf8_checkpoint: Path) -> None:
    result = CliRunner().invoke(app, [command, str(non_utf8_checkpoint)])
    assert result.exit_code == 0, result.output
    for stream in (result.stdout, result.stderr):
        assert "\ufffd" not in stream and "\\udcff" not in stream
    if command == "inspect":
        assert "bad\\xffname.safetensors" in result.stdout
    else:
        assert "wrote " in result.stdout and "bad\\xffname.folded.safetensors" in result.stdout
        assert os.path.exists(os.fsencode(non_utf8_checkpoint.parent)
                              + b"/bad\xffname.folded.safetensors")


def test_a_non_utf8_file_name_in_json_is_a_json_escape(non_utf8_checkpoint: Path) -> None:
    result = CliRunner().invoke(app, ["inspect", str(non_utf8_checkpoint), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["container"]["path"] == str(non_utf8_checkpoint)


def test_a_non_utf8_file_name_is_printed_as_its_bytes_in_error_lines(tmp_path: Path) -> None:
    missing = os.fsdecode(os.fsencode(tmp_path) + b"/gone\xff.pt")
    result = CliRunner().invoke(app, ["inspect", missing])
    assert result.exit_code == 2
    assert "gone\\xff.pt: no such file or directory" in result.stderr


def test_the_progress_bar_escapes_tensor_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the bar shows the tensor being written: a name, so escaped too."""
    from rich.console import Console

    from wnconvert import render

    out = io.StringIO()
    terminal = Console(file=out, force_terminal=True, color_system=None, width=200)
    monkeypatch.setattr(render, "stderr", lambda: terminal)
    with render.progress("folding → a\u2028b[bold].pt") as bar:
        assert bar is not None
        bar("dec\u202e[red]conv", 1, 2)
    shown = out.getvalue()
    assert "\u2028" not in shown and "\u202e" not in shown
    assert "folding → a\\u2028b[bold].pt" in shown and "dec\\u202e[red]conv" in shown
