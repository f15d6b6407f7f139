"""Sessions without silent fallback, clean stdout, provider probing, TF32 per provider.

ONNX Runtime's session layer is substituted (``fake_gpu`` in conftest) to raise what the CUDA
provider raises: ``EPFail`` at run, ``RuntimeError`` and ``Fail`` at load. Each test asserts the
verdict, the exit code and that ``--json`` is valid JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from wnconvert.cli import app
from wnconvert.verification import VerifyOptions, verify_onnx_against_onnx

from .conftest import CPU, CUDA, TRT, FakeGpu, linear_model


def run(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path]:
    weight = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    return (linear_model(tmp_path / "cand.onnx", weight),
            linear_model(tmp_path / "ref.onnx", weight.copy()))


def verify_json(models: tuple[Path, Path], *extra: object) -> tuple[Result, dict]:
    cand, ref = models
    result = run("verify", cand, "--reference", ref, "--json", *extra)
    return result, json.loads(result.stdout)  # valid JSON on every path


def test_a_working_gpu_provider_passes_with_fallback_off(fake_gpu: FakeGpu, models) -> None:
    result, data = verify_json(models, "--provider", "cpu", "--provider", "cuda")
    assert result.exit_code == 0, result.output
    assert [p["name"] for p in data["verification"]["providers"]] == [CPU, CUDA]
    made = [c for c in fake_gpu.created if not c["probe"]]
    assert made and all(c["fallback"] == 0 for c in made)


def test_epfail_at_run_is_a_failed_provider_not_a_cpu_pass(fake_gpu: FakeGpu, models) -> None:
    fake_gpu.fault = "run-epfail"
    result, data = verify_json(models, "--provider", "cpu", "--provider", "cuda")
    assert result.exit_code == 1, result.output
    cpu, cuda = data["verification"]["providers"]
    assert cpu["passed"] is True and cpu["outputs"]  # the other provider's result is kept
    assert cuda["passed"] is False
    assert "EP_FAIL" in cuda["error"] and "cuDNN frontend plan failed" in cuda["error"]
    assert data["passed"] is False
    assert "CUDAExecutionProvider" in result.stderr


def test_epfail_in_a_default_run_fails_too(fake_gpu: FakeGpu, models) -> None:
    fake_gpu.fault = "run-epfail"
    result, data = verify_json(models)
    assert result.exit_code == 1, result.output
    assert [p["name"] for p in data["verification"]["providers"]] == [CPU, CUDA]
    assert data["verification"]["providers"][1]["error"]


@pytest.mark.parametrize("fault", ["load-runtime", "load-fail"])
def test_a_load_failure_on_the_gpu_is_that_providers_failure(fake_gpu: FakeGpu, models,
                                                             fault: str) -> None:
    fake_gpu.fault = fault
    result, data = verify_json(models, "--provider", "cpu", "--provider", "cuda")
    assert result.exit_code == 1, result.output
    cpu, cuda = data["verification"]["providers"]
    assert cpu["passed"] is True
    assert cuda["passed"] is False and cuda["outputs"] == []
    expected = "CUDNN_STATUS_INTERNAL_ERROR" if fault == "load-runtime" else "out of memory"
    assert expected in cuda["error"]
    assert "could not create a session on CUDAExecutionProvider" in cuda["error"]


def test_a_session_that_ends_on_cpu_after_a_run_fails(fake_gpu: FakeGpu, models) -> None:
    fake_gpu.fault = "moved"
    result, data = verify_json(models, "--provider", "cuda")
    assert result.exit_code == 1, result.output
    [cuda] = data["verification"]["providers"]
    assert "instead of CUDAExecutionProvider" in cuda["error"]


def test_what_ort_prints_never_reaches_stdout(fake_gpu: FakeGpu, models,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    fake_gpu.fault = "stdout"
    result, data = verify_json(models, "--provider", "cpu", "--provider", "cuda")
    assert result.exit_code == 0, result.output
    out, _ = capfd.readouterr()
    assert "C++" not in out and "python print" not in out  # fd 1 stayed clean too
    cuda = data["verification"]["providers"][1]
    assert any("C++ log line" in m for m in cuda["messages"])
    assert any("python print from ORT" in m for m in cuda["messages"])
    assert "ONNX Runtime printed" in result.stderr


def test_provider_that_cannot_start_is_skipped_by_default_and_refused_by_name(
        fake_gpu: FakeGpu, models) -> None:
    fake_gpu.fault = "probe"
    result, data = verify_json(models)
    assert result.exit_code == 0, result.output
    [skipped] = data["verification"]["skipped_providers"]
    assert skipped["name"] == CUDA and "no CUDA-capable device" in skipped["reason"]
    assert [p["name"] for p in data["verification"]["providers"]] == [CPU]
    text = run("verify", models[0], "--reference", models[1])
    assert "skipped CUDAExecutionProvider" in " ".join(text.stdout.split())
    refused = run("verify", models[0], "--reference", models[1], "--provider", "cuda")
    assert refused.exit_code == 2 and refused.stdout == ""
    assert "CUDAExecutionProvider cannot start" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(CUDA in __import__("onnxruntime").get_available_providers(),
                    reason="CUDA is installed here")
def test_a_default_run_without_cuda_says_so(models) -> None:
    result, data = verify_json(models)
    assert result.exit_code == 0, result.output
    [skipped] = data["verification"]["skipped_providers"]
    assert skipped["name"] == CUDA and "not installed" in skipped["reason"]
    assert "wnconvert[gpu]" in skipped["reason"]


def test_tf32_off_by_default_with_applied_options_and_env(fake_gpu: FakeGpu, models) -> None:
    assert "NVIDIA_TF32_OVERRIDE" not in os.environ
    result, data = verify_json(models, "--provider", "cpu", "--provider", "cuda")
    assert result.exit_code == 0, result.output
    cpu, cuda = data["verification"]["providers"]
    assert cuda["options"]["use_tf32"] == "0" and cuda["options"]["device_id"] == "0"
    assert "TF32 off" in cuda["tf32"] and "no TF32" in cpu["tf32"]
    assert cuda["chain"] == [CUDA, CPU]
    assert fake_gpu.ran_env and set(fake_gpu.ran_env) == {"0"}
    assert {c["env"] for c in fake_gpu.created} == {"0"}
    assert "NVIDIA_TF32_OVERRIDE" not in os.environ  # restored after the session
    assert cuda["outputs"][0]["atol"] == 1e-5


def test_tf32_flag_turns_it_on_with_tf32_tolerances_for_that_provider(fake_gpu: FakeGpu,
                                                                      models) -> None:
    result, data = verify_json(models, "--provider", "cpu", "--provider", "cuda", "--tf32")
    assert result.exit_code == 0, result.output
    cpu, cuda = data["verification"]["providers"]
    assert cuda["options"]["use_tf32"] == "1"
    assert "TF32 allowed" in cuda["tf32"]
    assert (cuda["outputs"][0]["atol"], cuda["outputs"][0]["rtol"]) == (1e-2, 1e-2)
    assert (cpu["outputs"][0]["atol"], cpu["outputs"][0]["rtol"]) == (1e-5, 1e-4)
    assert set(fake_gpu.ran_env) == {None}  # no override: TF32 really allowed


def test_tensorrt_is_chained_with_cuda_and_our_options(fake_gpu: FakeGpu, models) -> None:
    result, data = verify_json(models, "--provider", "tensorrt")
    assert result.exit_code == 0, result.output
    [trt] = data["verification"]["providers"]
    assert trt["chain"] == [TRT, CUDA, CPU]
    made = [c for c in fake_gpu.created if not c["probe"]]
    assert made[0]["chain"] == [(TRT, {}), (CUDA, {"use_tf32": "0"}), (CPU, {})]
    assert made[0]["env"] == "0" and "NVIDIA_TF32_OVERRIDE=0" in trt["tf32"]


def test_library_keeps_other_providers_when_one_fails(fake_gpu: FakeGpu, models) -> None:
    fake_gpu.fault = "run-epfail"
    report = verify_onnx_against_onnx(*models, options=VerifyOptions(providers=("cpu", "cuda")))
    assert not report.passed
    assert report.providers[0].passed and report.providers[1].error
    assert any(line.startswith("CUDAExecutionProvider: ONNX Runtime failed on run 0")
               for line in report.failures())


def test_fold_refuses_a_provider_that_cannot_start_before_writing(fake_gpu: FakeGpu,
                                                                  tmp_path: Path) -> None:
    from tests.onnx_graph.builders import save, weight_norm_model
    fake_gpu.fault = "probe"
    model, _, _ = weight_norm_model((6, 4, 3), 0, order="g/n*v")
    source = save(model, tmp_path / "wn.onnx")
    out = tmp_path / "folded.onnx"
    result = run("fold", source, "-o", out, "--provider", "cuda")
    assert result.exit_code == 2, result.output
    assert "CUDAExecutionProvider cannot start" in result.stderr and not out.exists()
    repo = Path(__file__).resolve().parents[2]
    onnx_out = tmp_path / "g.onnx"
    result = run("fold", repo / "fixtures" / "tiny_hifigan_parametrize.pt", "--to", "onnx",
                 "--model", str(repo / "fixtures" / "models.py") + ":build_generator",
                 "--input", "1x16x12", "-o", onnx_out, "--provider", "cuda")
    assert result.exit_code == 2, result.output
    assert "CUDAExecutionProvider cannot start" in result.stderr and not onnx_out.exists()


def test_what_the_reference_prints_stays_off_stdout(tmp_path: Path, models) -> None:
    import torch

    from wnconvert.verification import verify_onnx_against_torch

    class Chatty(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            print("hello from the user's forward()")
            return x @ torch.from_numpy(np.zeros((4, 3), np.float32))

    report = verify_onnx_against_torch(models[0], Chatty(),
                                       options=VerifyOptions(providers=("cpu",), weights="off"))
    assert any("hello from the user's forward()" in note for note in report.notes)


def test_applied_options_are_reported_even_when_a_run_fails(fake_gpu: FakeGpu, models) -> None:
    fake_gpu.fault = "run-epfail"
    _, data = verify_json(models, "--provider", "cuda")
    [cuda] = data["verification"]["providers"]
    assert cuda["options"]["device_id"] == "0" and cuda["options"]["use_tf32"] == "0"


def test_the_tf32_note_follows_what_ort_applied() -> None:
    from wnconvert.verification.providers import _spec, tf32_state

    spec = _spec(CUDA, cuda_tf32=False, explicit=True)
    assert "TF32 off" in tf32_state(spec, {"use_tf32": "0"})
    assert "applied use_tf32=1" in tf32_state(spec, {"use_tf32": "1"})
    assert "no use_tf32 option" in tf32_state(spec, {"device_id": "0"})
