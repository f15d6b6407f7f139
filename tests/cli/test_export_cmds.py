"""``wnconvert fold --to onnx`` and ``wnconvert verify`` through the CLI (in-process).

One export of the shipped fixture is shared by the module; verify runs are fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner, Result

from tests.export import programs
from tests.onnx_graph.builders import save, scaled_copy, weight_norm_model
from wnconvert.cli import app

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures"
MODEL = "fixtures/models.py:build_generator"
PLAIN = '{"weight_norm": "none"}'
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def run(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    # --model fixtures/models.py:... is relative to the repository, as in the README.
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``fold --to onnx`` of the shipped parametrize checkpoint into a plain module, with
    a dynamic time axis and both report types."""
    out = tmp_path_factory.mktemp("cli_export")
    paths = {"onnx": out / "generator.onnx", "json": out / "report.json",
             "xml": out / "report.xml", "dir": out}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        result = run("fold", FIXTURES / "tiny_hifigan_parametrize.pt", "--to", "onnx",
                     "--model", MODEL, "--model-kwargs", PLAIN, "--input", "1x16x12",
                     "--dynamic", "0:2=time", "-o", paths["onnx"], "--report", paths["json"],
                     "--report", paths["xml"])
    assert result.exit_code == 0, result.output
    paths["stdout"] = result.stdout  # type: ignore[assignment]
    return paths


@pytest.mark.slow
def test_fold_to_onnx_exports_verifies_and_reports(exported: dict[str, Path]) -> None:
    stdout = str(exported["stdout"])
    assert "wrote" in stdout and "generator.onnx" in stdout
    assert "parameters: 16/16 stored under their own names" in stdout
    assert "weight norm computed at run time: none" in stdout
    assert "CPUExecutionProvider" in stdout and "verification PASSED" in stdout
    assert "min atol to pass" in stdout and "atol used" in stdout
    data = json.loads(exported["json"].read_text())
    assert data["passed"] is True
    assert data["reference"]["kind"] == "pytorch"
    assert [c["label"] for c in data["cases"]] == ["run 0", "second size time=24"]
    out = data["providers"][0]["outputs"][0]
    assert out["name"] == "output" and out["max_abs"] < 1e-5
    assert data["weights"]["compared"] == 16 and data["weights"]["worst"]["max_abs"] == 0.0
    root = ET.parse(exported["xml"]).getroot()
    assert root.get("failures") == "0" and int(root.get("tests") or 0) >= 1
    model = onnx.load(exported["onnx"])
    assert "conv_pre.weight" in {i.name for i in model.graph.initializer}
    assert not {n.op_type for n in model.graph.node} & {"ReduceL2", "Div", "Sqrt"}


@pytest.mark.slow
def test_verify_against_the_checkpoint_passes(exported: dict[str, Path], tmp_path: Path) -> None:
    report = tmp_path / "v.json"
    result = run("verify", exported["onnx"], "--reference", FIXTURES / "tiny_hifigan_legacy.pt",
                 "--model", MODEL, "--input", "1x16x12", "--report", report, "--runs", "2")
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["passed"] is True
    assert [c["label"] for c in data["cases"]] == ["run 0", "run 1", "second size time=24"]
    assert data["reference"]["checkpoint"].endswith("tiny_hifigan_legacy.pt")


@pytest.mark.slow
def test_verify_against_another_onnx_model_with_json_output(exported: dict[str, Path]) -> None:
    result = run("verify", exported["onnx"], "--reference", exported["onnx"], "--json",
                 "--provider", "cpu")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] is True
    assert data["verification"]["reference"] == {"kind": "onnx", "path": str(exported["onnx"]),
                                                 "provider": "CPUExecutionProvider"}
    # Shapes come from the model: time is symbolic, so 16 and then 32 frames.
    shapes = [c["inputs"]["mel"]["shape"] for c in data["verification"]["cases"]]
    assert shapes == [[1, 16, 16], [1, 16, 32]]


@pytest.mark.slow
def test_real_inputs_from_npz(exported: dict[str, Path], tmp_path: Path) -> None:
    npz = tmp_path / "mel.npz"
    np.savez(npz, mel=np.random.default_rng(0).standard_normal((1, 16, 20)).astype(np.float32))
    result = run("verify", exported["onnx"], "--reference", FIXTURES / "tiny_hifigan_legacy.pt",
                 "--model", MODEL, "--inputs", npz, "--json")
    assert result.exit_code == 0, result.output
    cases = json.loads(result.stdout)["verification"]["cases"]
    assert [(c["label"], c["inputs"]["mel"]["shape"]) for c in cases] == [
        ("inputs file", [1, 16, 20]), ("second size time=10", [1, 16, 10])]


@pytest.fixture(scope="module")
def perturbed(exported: dict[str, Path]) -> Path:
    """The exported model with conv_pre.weight scaled by 1.01."""
    return scaled_copy(exported["onnx"], exported["dir"] / "perturbed.onnx", "conv_pre.weight",
                       1.01)


@pytest.mark.slow
def test_perturbed_weight_fails_with_exit_1_and_a_report_naming_it(perturbed: Path,
                                                                   tmp_path: Path) -> None:
    report, junit = tmp_path / "bad.json", tmp_path / "bad.xml"
    result = run("verify", perturbed, "--reference", FIXTURES / "tiny_hifigan_parametrize.pt",
                 "--model", MODEL, "--input", "1x16x12", "--report", report, "--report", junit)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "FAIL" in result.stdout and "verification FAILED" in result.stdout
    assert result.stderr.startswith("error: verification failed: CPUExecutionProvider: output "
                                    "'output'")
    data = json.loads(report.read_text())
    assert data["passed"] is False
    [out] = data["providers"][0]["outputs"]
    assert out["name"] == "output" and out["passed"] is False and out["min_atol"] > 1e-5
    assert data["weights"]["failed"] == ["conv_pre.weight"]
    root = ET.parse(junit).getroot()
    assert root.find(".//testcase[@name='output']/failure") is not None


@pytest.mark.slow
def test_tolerances_are_overridable(perturbed: Path) -> None:
    base = ("verify", perturbed, "--reference", FIXTURES / "tiny_hifigan_parametrize.pt",
            "--model", MODEL, "--input", "1x16x12", "--json")
    failing = json.loads(run(*base).stdout)["verification"]
    need = failing["providers"][0]["outputs"][0]["min_atol"]
    # The weight check still names conv_pre.weight unless it is only reported.
    assert run(*base, "--tol", f"output={need * 1.01}").exit_code == 1
    passing = run(*base, "--tol", f"output={need * 1.01}", "--weights", "report")
    assert passing.exit_code == 0, passing.output
    assert run(*base, "--atol", str(need * 1.01), "--weights", "off").exit_code == 0


@pytest.mark.slow
@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here")
def test_unavailable_provider_is_exit_2_listing_available_ones(
        exported: dict[str, Path], assert_input_error: Callable[..., str]) -> None:
    result = run("verify", exported["onnx"], "--reference", exported["onnx"], "--provider", "cuda")
    line = assert_input_error(result, "CUDAExecutionProvider", "CPUExecutionProvider")
    assert "available" in line


def test_unavailable_provider_fails_fold_before_exporting(
        tmp_path: Path, assert_input_error: Callable[..., str]) -> None:
    out = tmp_path / "never.onnx"
    result = run("fold", FIXTURES / "tiny_hifigan_parametrize.pt", "--to", "onnx", "--model",
                 MODEL, "--input", "1x16x12", "-o", out, "--provider", "warp-drive")
    assert_input_error(result, "warp-drive")
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "mention"),
    [
        (("--to", "onnx", "--input", "1x16x12"), "--model"),
        (("--to", "onnx", "--model", MODEL), "--input"),
        (("--to", "onnx", "--model", MODEL, "--input", "1x16"), "check --input"),
        (("--to", "onnx", "--model", "fixtures/nope.py:build", "--input", "1x16x12"), "nope.py"),
        (("--to", "onnx", "--model", MODEL, "--model-kwargs", '{"channels": 8}', "--input",
          "1x16x12"), "does not fit"),
        (("--to", "onnx", "--model", MODEL, "--input", "1x16x12", "--no-verify", "--report",
          "r.json"), "--report"),
        (("--to", "onnx", "--model", MODEL, "--input", "1x16x12", "--dynamic", "0:5"), "axes"),
    ],
)
def test_fold_input_errors_are_one_line_exit_2(
        args: tuple[str, ...], mention: str, tmp_path: Path,
        assert_input_error: Callable[..., str]) -> None:
    result = run("fold", FIXTURES / "tiny_hifigan_parametrize.pt", "-o", tmp_path / "x.onnx",
                 *args)
    assert_input_error(result, mention)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_existing_outputs_are_refused_without_force(
        exported: dict[str, Path], tmp_path: Path,
        assert_input_error: Callable[..., str]) -> None:
    base = ("fold", FIXTURES / "tiny_hifigan_parametrize.pt", "--to", "onnx", "--model", MODEL,
            "--input", "1x16x12")
    out = tmp_path / "g.onnx"
    out.write_bytes(b"keep me")
    assert_input_error(run(*base, "-o", out), "g.onnx", "--force")
    assert out.read_bytes() == b"keep me"
    report = tmp_path / "r.json"
    report.write_text("keep")
    assert_input_error(run(*base, "-o", tmp_path / "new.onnx", "--report", report), "r.json")
    assert report.read_text() == "keep" and not (tmp_path / "new.onnx").exists()
    assert_input_error(run("verify", exported["onnx"], "--reference", exported["onnx"],
                           "--report", report), "r.json")
    assert report.read_text() == "keep"


@pytest.mark.slow
def test_verify_input_errors(exported: dict[str, Path], tmp_path: Path,
                             assert_input_error: Callable[..., str]) -> None:
    ckpt = FIXTURES / "tiny_hifigan_parametrize.pt"
    assert_input_error(run("verify", exported["onnx"], "--reference", ckpt), "--model")
    assert_input_error(run("verify", tmp_path / "none.onnx", "--reference", ckpt), "none.onnx")
    assert_input_error(run("verify", exported["onnx"], "--reference", ckpt, "--model", MODEL,
                           "--weights", "maybe"), "--weights")
    assert_input_error(run("verify", exported["onnx"], "--reference", exported["onnx"],
                           "--tol", "output"), "--tol")


# torch.export's own note about the legacy weight-norm hook setting .weight during tracing.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The tensor attributes .* were assigned during export")
def test_fold_of_a_pt2_program(tmp_path: Path, fixture_models: object) -> None:
    with pytest.warns(FutureWarning, match="weight_norm"):  # the legacy API is deprecated
        model = fixture_models.build_generator(weight_norm="legacy", seed=3)  # type: ignore[attr-defined]
    program = torch.export.export(model, (torch.randn(1, 16, 10),),
                                  dynamic_shapes=({2: torch.export.Dim("frames")},))
    pt2 = tmp_path / "gen.pt2"
    torch.export.save(program, str(pt2))
    result = run("fold", pt2, "--trust-program", "--json", "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] is True
    assert data["export"]["path"] == str(tmp_path / "gen.onnx")  # default: next to the input
    assert data["export"]["parameters_named"] == 16
    assert data["export"]["input_shapes"] == {"mel": [1, 16, "mel_dim2"]}
    assert len(data["verification"]["cases"]) == 2


def _cuda_starts() -> bool:
    # A probe session decides, not get_available_providers() (it lists CUDA where it cannot
    # start).
    from wnconvert.verification.providers import _spec, probe_provider

    return HAS_CUDA and probe_provider(_spec("CUDAExecutionProvider", cuda_tf32=False,
                                             explicit=True)) is None


@pytest.mark.slow
@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_starts(), reason="needs onnxruntime-gpu and a CUDA device")
def test_verify_on_cuda_with_tf32_off(exported: dict[str, Path]) -> None:
    result = run("verify", exported["onnx"], "--reference", FIXTURES / "tiny_hifigan_legacy.pt",
                 "--model", MODEL, "--input", "1x16x12", "--provider", "cpu", "--provider",
                 "cuda", "--json")
    assert result.exit_code == 0, result.output
    providers = json.loads(result.stdout)["verification"]["providers"]
    assert [p["name"] for p in providers] == ["CPUExecutionProvider", "CUDAExecutionProvider"]
    assert providers[1]["options"]["use_tf32"] == "0"  # as ORT applied it


def test_help_does_not_import_torch_onnx_or_onnxruntime() -> None:
    code = ("import sys; from wnconvert.cli import app; import wnconvert.cli.export_cmds; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_verify_help_has_an_example() -> None:
    result = run("verify", "--help")
    assert result.exit_code == 0
    assert "wnconvert verify model.onnx --reference" in " ".join(result.stdout.split())


# --------------------------------------------------------------------------- .pt2 trust (issue 16)


@pytest.fixture
def evil_program(tmp_path: Path) -> tuple[Path, Path]:
    """A .pt2 whose graph maps ``victim`` (outside its folder) writable, and the victim."""
    victim = tmp_path / "outside" / "victim.bin"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    (tmp_path / "in").mkdir()
    program = programs.save_program(programs.Ones(), tmp_path / "in" / "m.pt2", torch.randn(4),
                                    edit=programs.reads_file(victim))
    return program, victim


@pytest.fixture
def candidate(tmp_path: Path) -> Path:
    return save(weight_norm_model((4, 3), 0)[0], tmp_path / "candidate.onnx")


def test_an_untrusted_program_is_refused_before_torch_loads_it(
        evil_program: tuple[Path, Path], candidate: Path, tmp_path: Path,
        assert_input_error: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The reported runs: `fold m.pt2` (exit 0, nothing said) and `verify --reference m.pt2`
    ran the program's code. Without --trust-program torch never sees the file."""
    program, victim = evil_program
    loads: list[object] = []
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: loads.append(a))
    out = tmp_path / "in" / "m.onnx"
    for args in (["fold", program], ["fold", program, "--to", "onnx", "-o", out],
                 ["verify", candidate, "--reference", program]):
        line = assert_input_error(run(*args), program, "--trust-program")
        assert "a .pt2 is a program" in line and "evaluates code from the file" in line
        assert "trust_program" not in line
    checkpoint = tmp_path / "w.pt"
    torch.save({"fc.weight": torch.zeros(4, 8)}, checkpoint)
    assert_input_error(run("fold", checkpoint, "--to", "onnx", "--model", program, "-o", out),
                       program, "--trust-program")
    assert_input_error(run("verify", candidate, "--reference", checkpoint, "--model", program),
                       program, "--trust-program")
    assert loads == []
    assert not out.exists() and victim.read_bytes() == b"precious"
    assert sorted(p.name for p in program.parent.iterdir()) == ["m.pt2"]


def test_a_trusted_program_that_touches_files_is_refused(
        evil_program: tuple[Path, Path], candidate: Path,
        assert_input_error: Callable[..., str]) -> None:
    program, victim = evil_program
    for args in (["fold", program, "--trust-program", "--no-verify"],
                 ["verify", candidate, "--reference", program, "--trust-program"]):
        line = assert_input_error(run(*args), program, "aten.from_file.default")
        assert "even with --trust-program" in line
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in program.parent.iterdir()) == ["m.pt2"]


def test_trust_program_is_refused_where_no_program_is_read(
        candidate: Path, tmp_path: Path, assert_input_error: Callable[..., str]) -> None:
    """A flag the job would ignore is refused: the user must not believe it changed anything."""
    checkpoint = tmp_path / "w.safetensors"
    save_file({"a_g": torch.ones(2, 1), "a_v": torch.ones(2, 3)}, str(checkpoint))
    for args in (["fold", checkpoint, "--trust-program"],
                 ["fold", candidate, "--trust-program", "--no-verify"],
                 ["fold", checkpoint, "--to", "onnx", "--model", MODEL, "--trust-program"],
                 ["verify", candidate, "--reference", candidate, "--trust-program"]):
        assert_input_error(run(*args), "--trust-program", "drop it")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["candidate.onnx", "w.safetensors"]


@pytest.mark.slow
def test_a_trusted_clean_program_folds_and_verifies(tmp_path: Path) -> None:
    program = programs.save_program(programs.Linear(), tmp_path / "linear.pt2", torch.randn(2, 8))
    result = run("fold", program, "--trust-program", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"] is True
    verified = run("verify", tmp_path / "linear.onnx", "--reference", program,
                   "--trust-program", "--json")
    assert verified.exit_code == 0, verified.output
