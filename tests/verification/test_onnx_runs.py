"""Verification: ONNX-vs-ONNX runs end to end (hand-built models, fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from wnconvert.errors import InputError
from wnconvert.verification import (
    ToleranceOverride,
    VerifyOptions,
    verify_onnx_against_onnx,
)

from .conftest import cuda_unusable

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def linear_model(path: Path, weight: np.ndarray, *, bias_name: str = "fc.bias",
                 time: str | int = "time") -> Path:
    """y = x @ W + b with W named fc.weight, input x [1, time, 4] float32."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "fc.weight"], ["xw"]),
         helper.make_node("Add", ["xw", bias_name], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, time, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, time, 3])],
        [numpy_helper.from_array(weight, "fc.weight"),
         numpy_helper.from_array(np.full(3, 0.5, np.float32), bias_name)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def weight() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)


def test_onnx_against_itself_passes_at_two_sizes(tmp_path: Path, weight: np.ndarray) -> None:
    ref = linear_model(tmp_path / "ref.onnx", weight)
    cand = linear_model(tmp_path / "cand.onnx", weight.copy())
    report = verify_onnx_against_onnx(cand, ref, options=VerifyOptions(providers=("cpu",)))
    assert report.passed, report.failures()
    assert [c.label for c in report.cases] == ["run 0", "second size time=32"]
    [provider] = report.providers
    assert provider.name == "CPUExecutionProvider"
    [out] = provider.outputs
    assert out.name == "y" and out.max_abs == 0.0
    assert report.weights is not None and {w.name for w in report.weights.compared} == {
        "fc.weight", "fc.bias"}


def test_perturbed_weight_fails_and_is_named(tmp_path: Path, weight: np.ndarray) -> None:
    ref = linear_model(tmp_path / "ref.onnx", weight)
    cand = linear_model(tmp_path / "cand.onnx", weight * np.float32(1.01))
    report = verify_onnx_against_onnx(cand, ref, options=VerifyOptions(providers=("cpu",)))
    assert not report.passed
    failures = report.failures()
    assert any("output 'y'" in line for line in failures)
    assert any("weight 'fc.weight'" in line for line in failures)
    data = report.to_dict()
    assert data["passed"] is False
    assert data["providers"][0]["outputs"][0]["passed"] is False
    assert data["weights"]["failed"] == ["fc.weight"]


def test_looser_tolerance_makes_the_same_difference_pass(tmp_path: Path,
                                                         weight: np.ndarray) -> None:
    ref = linear_model(tmp_path / "ref.onnx", weight)
    cand = linear_model(tmp_path / "cand.onnx", weight * np.float32(1.01))
    first = verify_onnx_against_onnx(cand, ref, options=VerifyOptions(providers=("cpu",),
                                                                     weights="off"))
    need = first.providers[0].outputs[0].min_atol
    loose = VerifyOptions(providers=("cpu",), weights="off",
                          output_tolerances={"y": ToleranceOverride(need * 1.001)})
    assert verify_onnx_against_onnx(cand, ref, options=loose).passed


def test_models_with_different_inputs_are_an_input_error(tmp_path: Path,
                                                         weight: np.ndarray) -> None:
    ref = linear_model(tmp_path / "ref.onnx", weight)
    model = onnx.load(ref)
    model.graph.input[0].name = "z"
    model.graph.node[0].input[0] = "z"
    other = tmp_path / "other.onnx"
    onnx.save(model, other)
    with pytest.raises(InputError, match="inputs x differ"):
        verify_onnx_against_onnx(other, ref, options=VerifyOptions(providers=("cpu",)))


def test_unreadable_candidate_is_an_input_error(tmp_path: Path, weight: np.ndarray) -> None:
    ref = linear_model(tmp_path / "ref.onnx", weight)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match="junk.onnx"):
        verify_onnx_against_onnx(junk, ref, options=VerifyOptions(providers=("cpu",)))


def test_compare_arrays_over_many_chunks_matches_a_direct_computation() -> None:
    from wnconvert.verification import compare as v

    rng = np.random.default_rng(7)
    ref = rng.standard_normal(3 * v._COMPARE_CHUNK + 123).astype(np.float32).reshape(-1, 1)
    cand = ref.copy()
    cand[5] += 1e-3  # one bad element early, the worst one in a later chunk
    cand[2 * v._COMPARE_CHUNK + 7] += 5e-2
    tol = v.Tolerance(atol=1e-5, rtol=1e-4)
    comp = v.compare_arrays(cand, ref, tol)
    diff = np.abs(cand.astype(np.float64) - ref.astype(np.float64))
    assert comp.max_abs == pytest.approx(diff.max())
    assert comp.mean_abs == pytest.approx(diff.mean())
    assert comp.mismatched == 2
    assert comp.worst_index == (2 * v._COMPARE_CHUNK + 7, 0)
    excess = diff - 1e-4 * np.abs(ref.astype(np.float64))
    assert comp.min_atol == pytest.approx(excess.max())


def test_compare_arrays_bit_identical_with_nan_passes_without_arithmetic() -> None:
    from wnconvert.verification import compare as v

    ref = np.array([1.0, np.nan, -np.inf, 0.0], dtype=np.float32)
    comp = v.compare_arrays(ref.copy(), ref, v.Tolerance(atol=0.0, rtol=0.0))
    assert comp.passed and comp.max_abs == 0.0 and comp.mismatched == 0
    flipped = ref.copy()
    flipped[2] = np.inf  # same shape, different bytes: the element-wise rule applies
    assert not v.compare_arrays(flipped, ref, v.Tolerance(atol=0.0, rtol=0.0)).passed


# --------------------------------------------------------------------------- the reference


def test_torch_reference_runs_with_tf32_off_and_restores_the_flags() -> None:
    import torch

    from wnconvert.verification import TorchRunner

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
            return x * 2

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        TorchRunner(Probe(), input_names=["x"]).run({"x": np.ones(3, np.float32)})
        assert seen == [(False, False)]
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_verification_runs_case_by_case_without_holding_every_draw(tmp_path: Path,
                                                                   weight: np.ndarray) -> None:
    from wnconvert.verification import CasePlan, InputSignature

    plan = CasePlan([InputSignature("x", "float32", (1, "time", 4))], VerifyOptions(runs=1000))
    assert len(plan) == 1001  # nothing generated yet
    first = next(iter(plan))
    assert first.info.label == "run 0" and first.feeds["x"].shape == (1, 16, 4)
    ref = linear_model(tmp_path / "ref.onnx", weight)
    order = []
    verify_onnx_against_onnx(ref, ref, options=VerifyOptions(providers=("cpu",), runs=3),
                             progress=lambda who, done, total: order.append(who))
    assert order == ["reference", "CPUExecutionProvider"] * 4  # 3 draws + second size


@pytest.mark.cuda
@pytest.mark.skipif(cuda_unusable() is not None, reason=cuda_unusable() or "")
def test_cuda_provider_runs_with_tf32_off(tmp_path: Path, weight: np.ndarray) -> None:
    ref = linear_model(tmp_path / "ref.onnx", weight)
    cand = linear_model(tmp_path / "cand.onnx", weight)
    report = verify_onnx_against_onnx(cand, ref,
                                      options=VerifyOptions(providers=("cpu", "cuda")))
    assert report.passed, report.failures()
    names = [p.name for p in report.providers]
    assert names == ["CPUExecutionProvider", "CUDAExecutionProvider"]
    assert report.providers[1].options["use_tf32"] == "0"  # as ORT applied it
    assert "TF32 off" in report.providers[1].notes[0]


def test_the_onnx_reference_runs_alongside_the_candidate(tmp_path: Path, weight: np.ndarray,
                                                         monkeypatch) -> None:
    """ONNX Runtime releases the GIL: the reference runs in a thread while the candidate runs,
    each case, without a stdout capture of its own (one covers both: a capture redirects the
    process's file descriptor, which two threads cannot each do)."""
    import threading

    from wnconvert.verification import runners

    threads: dict[str, set[int]] = {}
    real = runners.OrtRunner.run_uncaptured

    def spy(self, feeds):
        threads.setdefault(str(self.path), set()).add(threading.get_ident())
        return real(self, feeds)

    monkeypatch.setattr(runners.OrtRunner, "run_uncaptured", spy)
    monkeypatch.setattr(runners.OrtRunner, "run", None)  # every run goes through the spy
    ref = linear_model(tmp_path / "ref.onnx", weight)
    cand = linear_model(tmp_path / "cand.onnx", weight.copy())
    report = verify_onnx_against_onnx(cand, ref, options=VerifyOptions(providers=("cpu",)))
    assert report.passed, report.failures()
    assert len(report.cases) == 2
    assert set(threads) == {str(ref), str(cand)}
    assert threads[str(cand)] == {threading.get_ident()}
    assert threading.get_ident() not in threads[str(ref)]


def test_a_pytorch_reference_runs_alongside_the_candidate_and_its_prints_are_kept(
        tmp_path: Path, weight: np.ndarray, capfd) -> None:
    """The PyTorch reference runs in a thread too; what it prints stays off our stdout and is
    noted in the report."""
    import threading

    import torch

    from wnconvert.verification import verify_onnx_against_torch

    threads: set[int] = set()

    class Linear(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            threads.add(threading.get_ident())
            print("hello from the model")
            return x @ torch.from_numpy(weight) + 0.5

    cand = linear_model(tmp_path / "cand.onnx", weight.copy())
    report = verify_onnx_against_torch(cand, Linear(), options=VerifyOptions(providers=("cpu",)))
    assert report.passed, report.failures()
    assert threads and threading.get_ident() not in threads
    assert any("the reference printed" in note for note in report.notes)
    assert "hello" not in capfd.readouterr().out
