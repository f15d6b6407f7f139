"""Export options are what they say (issue 9 §5) and exporter failures have their own exit
code (issue 11 §1–2): an unknown exporter or an opset no exporter can write is refused before
anything runs, user code that exits is an error naming the callable, a model that caches a tensor
on its first forward exports, and an unsupported operator exits 3 naming it."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from typer.testing import CliRunner, Result

from wnconvert.cli import app
from wnconvert.errors import ConversionNotPossible, InputError
from wnconvert.export import export_onnx
from wnconvert.export.onnx_export import check_opset, unsupported_operators

MODELS = '''
import sys
import torch


class Cached(torch.nn.Module):
    """Builds a table on its first forward and keeps it (as position tables do)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.table = None

    def forward(self, x):
        if self.table is None:
            self.table = torch.arange(4, dtype=x.dtype) * 0.5
        return self.proj(x) + self.table


class Eig(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)  # same checkpoint as Cached

    def forward(self, x):
        return torch.linalg.eigvals(self.proj(x)).real


class ExitsInForward(Eig):
    def forward(self, x):
        sys.exit(0)


def cached():
    return Cached()


def eig():
    return Eig()


def exits():
    sys.exit(0)


def exits_in_forward():
    return ExitsInForward()
'''


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "user_models.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _fold(workspace: Path, model: str, *extra: str, shape: str = "1x4") -> tuple[Result, Path]:
    """``fold --to onnx`` of a model whose state dict we save first (an empty-ish checkpoint
    is enough: these models have no weight norm)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_models_for_test",
                                                  workspace / "user_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ckpt = workspace / "ckpt.pt"
    if not ckpt.exists():
        torch.save(module.Cached().state_dict(), ckpt)
    out = workspace / "out.onnx"
    result = CliRunner().invoke(app, ["fold", str(ckpt), "--to", "onnx", "--model",
                                      f"user_models.py:{model}", "--input", shape, "-o",
                                      str(out), "--no-verify", *extra])
    return result, out


@pytest.mark.parametrize("opset", ["999", "1", "-3", "0"])
def test_an_opset_no_exporter_writes_is_refused_before_export(workspace: Path,
                                                              opset: str) -> None:
    result, out = _fold(workspace, "cached", "--opset", opset)
    assert result.exit_code == 2, result.output
    assert "opset" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_legacy_exporter_stops_at_its_own_max_opset() -> None:
    assert check_opset(20, exporter="legacy") == 20
    with pytest.raises(InputError, match="legacy exporter writes opsets 7 to 20"):
        check_opset(21, exporter="legacy")
    with pytest.raises(ValueError, match="unknown exporter"):  # InputError is a ValueError
        check_opset(18, exporter="magic")


def test_an_unknown_exporter_is_a_usage_error(workspace: Path) -> None:
    result, out = _fold(workspace, "cached", "--exporter", "magic")
    assert result.exit_code == 2
    assert "magic" in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_a_requested_opset_is_honoured(workspace: Path) -> None:
    result, out = _fold(workspace, "cached", "--opset", "17")
    assert result.exit_code == 0, result.output
    opsets = {o.domain: o.version for o in onnx.load(out).opset_import}
    assert opsets[""] == 17


@pytest.mark.parametrize("callable_name", ["exits", "exits_in_forward"])
def test_user_code_that_exits_is_an_error_naming_the_callable(workspace: Path,
                                                              callable_name: str) -> None:
    result, out = _fold(workspace, callable_name)
    assert result.exit_code == 2, result.output
    assert "SystemExit" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["legacy", "auto"])
def test_a_model_that_caches_a_tensor_exports(workspace: Path, exporter: str) -> None:
    result, out = _fold(workspace, "cached", "--exporter", exporter)
    assert result.exit_code == 0, result.output
    assert out.exists()


@pytest.mark.slow
def test_an_unsupported_operator_exits_3_naming_it(workspace: Path) -> None:
    result, out = _fold(workspace, "eig", shape="1x4x4")
    assert result.exit_code == 3, result.output
    assert "unsupported operator aten::linalg_eig" in result.stderr
    # Each exporter reports its own failure.
    assert "torch.export-based exporter failed" in result.stderr
    assert "legacy TorchScript exporter failed" in result.stderr
    assert not out.exists()


def test_conversion_not_possible_is_a_runtime_error(tmp_path: Path) -> None:
    class Eig(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.eigvals(x).real

    with pytest.raises(RuntimeError) as info:
        export_onnx(Eig(), [torch.randn(1, 4, 4)], output=tmp_path / "e.onnx", exporter="legacy")
    assert isinstance(info.value, ConversionNotPossible)
    assert "try exporter='dynamo'" in str(info.value)


def test_unsupported_operators_are_read_from_both_exporters_messages() -> None:
    text = ("DispatchError: No ONNX function found for <OpOverload(op='aten.diff', "
            "overload='default')>; UnsupportedOperatorError: Exporting the operator "
            "'aten::diff' to ONNX opset version 18 is not supported")
    assert unsupported_operators(text) == ["aten::diff"]


@pytest.mark.parametrize("shape", ["100000x100000x1000", "0x4", "4x0"])
def test_inputs_with_no_elements_or_too_many_are_refused(workspace: Path, shape: str) -> None:
    """Issue 9 §3/§5: a huge --input is a clear input error (not a MemoryError), and an input
    with no elements would make every check compare nothing."""
    result, out = _fold(workspace, "cached", shape=shape)
    assert result.exit_code == 2, result.output
    assert ("GiB" in result.stderr) if shape.startswith("1") else ("no elements" in result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
