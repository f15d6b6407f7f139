"""``wnconvert.inspect_onnx`` / ``check_onnx`` / ``fold_onnx``: the ONNX jobs as library calls
(verification before the output is written; nothing printed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import wnconvert
from tests.onnx_graph.builders import expected, initializer, save, weight_norm_model
from wnconvert.errors import CheckFailed, InputError, InputNotFound


@pytest.fixture
def wn_model(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    model, g, v = weight_norm_model((6, 4, 3), 0, order="g/n*v")
    return save(model, tmp_path / "model.onnx"), g, v


def test_fold_onnx_verifies_then_writes(wn_model, tmp_path, capsys):
    path, g, v = wn_model
    out = tmp_path / "direct.onnx"
    result = wnconvert.fold_onnx(path, out)
    assert result.passed and result.report is not None and result.report.passed
    assert result.to_dict()["passed"] is True
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""  # the library prints nothing
    np.testing.assert_array_equal(initializer(out, "layer.weight"), expected(g, v, 0))
    with pytest.raises(InputError, match="already exists; use force=True"):
        wnconvert.fold_onnx(path, out, verify=False)
    with pytest.raises(InputError, match=r"reports= need\(s\) verification, which verify=False"):
        wnconvert.fold_onnx(path, tmp_path / "o.onnx", verify=False,
                            reports=[tmp_path / "r.json"])


def test_a_failed_verification_writes_nothing_but_the_reports(tmp_path):
    model, g, v = weight_norm_model((4, 3), 0)
    v[0] = 0  # PyTorch's formula gives NaN for that row, wnconvert's fold zeros
    model.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(
        v, "layer.parametrizations.weight.original1"))
    path = save(model, tmp_path / "m.onnx")
    report = tmp_path / "r.json"
    with pytest.warns(UserWarning, match="zero norm"):
        result = wnconvert.fold_onnx(path, reports=[report])
    assert not result.passed and result.outcome is None
    assert not (tmp_path / "m.folded.onnx").exists()
    assert result.reports_written == [report] and report.is_file()
    failure = result.failure()
    assert isinstance(failure, CheckFailed)
    assert "nothing was written (verify=False writes it unchecked)" in str(failure)


def test_inspect_and_check(wn_model):
    info = wnconvert.inspect_onnx(wn_model[0])
    assert info.to_dict()["weight_norm"][0]["parameter"] == "layer.weight"
    result = wnconvert.check_onnx(wn_model[0])
    assert not result.clean
    with pytest.raises(InputNotFound):
        wnconvert.inspect_onnx(wn_model[0].with_name("missing.onnx"))


def test_fold_onnx_parses_the_input_once(wn_model, tmp_path, model_reads):
    """The graph that is checked is the one folded and verified against: the input model is
    parsed by Python once per fold (ONNX Runtime still loads the file for its session)."""
    path = wn_model[0]
    result = wnconvert.fold_onnx(path, tmp_path / "out.onnx", reports=[tmp_path / "r.json"])
    assert result.passed and result.report is not None and result.report.weights is not None
    assert model_reads.count(path) == 1
    # The output is read once too, from the staging folder, before it is moved into place.
    assert len(model_reads) == 2


def test_fold_onnx_does_not_import_torch(wn_model, tmp_path):
    """torch costs more than a second to import; folding and verifying an ONNX model needs
    ONNX Runtime only."""
    import subprocess
    import sys

    code = ("import sys, wnconvert; r = wnconvert.fold_onnx(sys.argv[1], sys.argv[2]); "
            "assert r.passed; print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(wn_model[0]),
                           str(tmp_path / "out.onnx")], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"
