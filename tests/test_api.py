"""The public API (issue 10 §3): one typed function per job, symmetric load/save."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import wnconvert
from tests.onnx_graph.builders import cycle_model, save, weight_norm_model

REPO = Path(__file__).resolve().parents[1]


def test_every_job_has_a_public_function() -> None:
    for name in ("load_checkpoint", "save_checkpoint", "fold_state_dict", "decompose_state_dict",
                 "restyle_state_dict", "fold_onnx", "check_onnx", "export_onnx", "verify",
                 "VerifyOptions", "InputSpec", "PrefixChange", "ConversionNotPossible"):
        assert name in wnconvert.__all__
        assert getattr(wnconvert, name) is not None


def test_save_accepts_what_load_returns(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tensors = {"a.weight": torch.randn(3, 4), "a.bias": torch.randn(3)}
    source = tmp_path / "in.safetensors"
    save_file(tensors, str(source), metadata={"note": "kept"})
    out = wnconvert.save_checkpoint(wnconvert.load_checkpoint(source), tmp_path / "out.safetensors")
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata() == {"note": "kept"}
        assert list(f.keys()) == sorted(tensors)
        for key, tensor in tensors.items():
            assert torch.equal(f.get_tensor(key), tensor)  # no arithmetic: bit for bit
    again = wnconvert.save_checkpoint(wnconvert.load_checkpoint(out), tmp_path / "again.pt")
    loaded = torch.load(again, weights_only=True)
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_errors_subclass_the_builtin_that_fits(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        wnconvert.load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError):
        wnconvert.verify(tmp_path / "x.onnx", {"w": torch.ones(1)})
    candidate = save(weight_norm_model((4, 3), 0)[0], tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="model="):
        wnconvert.verify(candidate, {"w": torch.ones(1)})
    assert issubclass(wnconvert.ConversionNotPossible, RuntimeError)


def test_verify_refuses_a_model_onnx_checker_refuses(tmp_path: Path) -> None:
    # The same files and message as check_onnx: a gate run on a broken file is no gate.
    good = save(weight_norm_model((2, 3), 0)[0], tmp_path / "good.onnx")
    broken = save(cycle_model(), tmp_path / "cycle.onnx")
    with pytest.raises(ValueError) as refused:
        wnconvert.check_onnx(broken)
    for candidate, reference in ((broken, good), (good, broken)):
        with pytest.raises(ValueError) as caught:
            wnconvert.verify(candidate, reference)
        assert str(caught.value) == str(refused.value)


def test_verify_is_one_thing_even_after_the_verification_package_is_imported() -> None:
    code = ("import wnconvert, wnconvert.verification, wnconvert.api; "
            "assert wnconvert.verify is wnconvert.api.verify and callable(wnconvert.verify)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_import_does_not_import_torch() -> None:
    code = "import sys, wnconvert; wnconvert.__all__; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --------------------------------------------------------------------------- .pt2 trust (issue 16)


@pytest.fixture
def program(tmp_path: Path) -> Path:
    from tests.export import programs

    return programs.save_program(programs.Linear(), tmp_path / "linear.pt2", torch.randn(2, 8))


@pytest.fixture
def no_program_load(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """torch.export.load, recording its calls and reading nothing."""
    calls: list[object] = []
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: calls.append(a))
    return calls


def test_api_refuses_an_untrusted_program_before_loading_it(
        program: Path, tmp_path: Path, no_program_load: list[object]) -> None:
    candidate = save(weight_norm_model((4, 3), 0)[0], tmp_path / "x.onnx")
    state = {"fc.weight": torch.zeros(4, 8), "fc.bias": torch.zeros(4)}
    attempts = [
        lambda: wnconvert.verify(candidate, program),
        lambda: wnconvert.verify(candidate, state, model=str(program)),
        lambda: wnconvert.export_onnx(state, tmp_path / "out.onnx", model=str(program),
                                      inputs=[wnconvert.InputSpec((2, 8))]),
    ]
    for attempt in attempts:
        with pytest.raises(wnconvert.InputError) as caught:
            attempt()
        assert str(program) in str(caught.value) and "trust_program=True" in str(caught.value)
    assert no_program_load == []
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.slow
def test_api_exports_and_verifies_a_trusted_program(program: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    state = {"fc.weight": torch.randn(4, 8), "fc.bias": torch.randn(4)}
    out = tmp_path / "out.onnx"
    wnconvert.export_onnx(state, out, model=str(program), inputs=[wnconvert.InputSpec((2, 8))],
                          trust_program=True)
    assert wnconvert.verify(out, state, model=str(program), trust_program=True).passed
    # The program's own weights differ from the exported ones: the check can fail.
    assert not wnconvert.verify(out, program, trust_program=True).passed
