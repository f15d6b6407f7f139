"""``wnconvert.fold_onnx(precision=...)`` (issue 20 §1): the folded model computes in float16
(bfloat16 where a provider runs it), its weight-norm weights rounded once from the float64 fold,
verified against the float32 original with the float16 row of the tolerance table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import wnconvert
from tests.onnx_graph.builders import initializer, save, weight_norm_model
from wnconvert.errors import InputError
from wnconvert.numerics import as_float64, fold, round_from_float64

CPU = wnconvert.VerifyOptions(providers=("cpu",))
SEED = 3  # a weight (64x16x3) where one value rounds differently through float32


def _io_types(path: Path) -> tuple[list[int], list[int]]:
    model = onnx.load(str(path))
    return ([v.type.tensor_type.elem_type for v in model.graph.input],
            [v.type.tensor_type.elem_type for v in model.graph.output])


def test_fp16_fold_rounds_the_float64_fold_once_and_verifies(tmp_path: Path) -> None:
    model, g, v = weight_norm_model((64, 16, 3), 0, seed=SEED)
    path = save(model, tmp_path / "m.onnx")
    w64 = fold(g, as_float64(v), 0)[0]
    once = round_from_float64(w64, "float16")
    assert (once != w64.astype(np.float32).astype(np.float16)).sum() == 1  # the trap is set
    result = wnconvert.fold_onnx(path, tmp_path / "f16.onnx", precision="fp16", options=CPU)
    assert result.passed, result.failure()
    np.testing.assert_array_equal(initializer(result.output, "layer.weight").view(np.uint16),
                                  once.view(np.uint16))
    data = result.to_dict()
    assert data["precision"]["dtype"] == "float16"
    assert data["precision"]["rounded_from_float64"] == 1
    assert data["precision"]["keep_io_types"] is True
    assert _io_types(result.output) == ([1], [1])  # float32 in and out
    assert result.report is not None
    assert ("tolerance: float16 row for float32 outputs, candidate computes in float16"
            in result.report.notes)
    (output,) = result.report.providers[0].outputs
    assert output.first.atol == 1e-3  # the float16 row, not float32's 1e-5


def test_no_keep_io_types_makes_inputs_and_outputs_float16(tmp_path: Path) -> None:
    model, _, _ = weight_norm_model((6, 4, 3), 0)
    result = wnconvert.fold_onnx(save(model, tmp_path / "m.onnx"), precision="fp16",
                                 keep_io_types=False, options=CPU)
    assert result.passed, result.failure()
    assert _io_types(result.output) == ([10], [10])


def test_a_perturbed_fp16_model_fails_verification(tmp_path: Path) -> None:
    model, _, _ = weight_norm_model((6, 4, 3), 0)
    original = save(model, tmp_path / "m.onnx")
    result = wnconvert.fold_onnx(original, tmp_path / "f16.onnx", precision="fp16",
                                 verify=False)
    folded = onnx.load(str(result.output))
    weight = onnx.numpy_helper.to_array(folded.graph.initializer[0]).copy()
    weight[0, 0, 0] += np.float16(0.05)  # far beyond float16 rounding
    folded.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(weight, "layer.weight"))
    onnx.save(folded, str(tmp_path / "bad.onnx"))
    report = wnconvert.verify(tmp_path / "bad.onnx", original,
                              options=wnconvert.VerifyOptions(providers=("cpu",),
                                                              weights="off"))
    assert not report.passed


def test_bf16_on_cpu_is_refused_naming_the_ops_and_writes_nothing(tmp_path: Path) -> None:
    model, _, _ = weight_norm_model((6, 4, 3), 0)
    path = save(model, tmp_path / "m.onnx")
    with pytest.raises(InputError, match="bf16: CPUExecutionProvider has no bfloat16 kernel "
                                         "for Add; use fp16"):
        wnconvert.fold_onnx(path, tmp_path / "b16.onnx", precision="bf16", options=CPU)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    # Without verification there is no provider to ask: written as asked.
    written = wnconvert.fold_onnx(path, tmp_path / "b16.onnx", precision="bf16", verify=False)
    assert written.passed and initializer(written.output, "layer.weight").dtype != np.float32


def test_bad_precision_options_are_refused(tmp_path: Path) -> None:
    model, _, _ = weight_norm_model((6, 4, 3), 0)
    path = save(model, tmp_path / "m.onnx")
    with pytest.raises(InputError, match="precision='fp8': use one of fp32, fp16, bf16"):
        wnconvert.fold_onnx(path, precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="keep_io_types=False applies to a reduced precision"):
        wnconvert.fold_onnx(path, keep_io_types=False)


def test_external_data_stays_external(tmp_path: Path) -> None:
    model, _, _ = weight_norm_model((64, 16, 3), 0)
    path = save(model, tmp_path / "m.onnx", external=True, threshold=1024)
    result = wnconvert.fold_onnx(path, tmp_path / "f16.onnx", precision="fp16", options=CPU)
    assert result.passed, result.failure()
    assert (tmp_path / "f16.onnx.data").is_file()
    assert initializer(result.output, "layer.weight").dtype == np.float16


def test_spectral_norm_is_rounded_once_too(tmp_path: Path) -> None:
    from tests.onnx_graph.builders import spectral_norm_model
    from wnconvert.numerics import spectral_sigma

    model, weight, u, v = spectral_norm_model((64, 16, 3), 0, seed=1)
    w64 = as_float64(weight) / spectral_sigma(weight, u, v, 0)
    twice = w64.astype(np.float32).astype(np.float16)
    assert (round_from_float64(w64, "float16") != twice).sum() == 1  # the trap is set
    path = save(model, tmp_path / "m.onnx")
    result = wnconvert.fold_onnx(path, tmp_path / "f16.onnx", precision="fp16", options=CPU)
    assert result.passed, result.failure()
    assert result.to_dict()["precision"]["rounded_from_float64"] == 1
    np.testing.assert_array_equal(initializer(result.output, "layer.weight"),
                                  round_from_float64(w64, "float16"))
