"""``--precision`` / ``--keep-io-types`` on the command line (issue 20 §1): an .onnx fold to
float16 with its counts in the JSON, a note on stderr for values that flush, bf16 refused with
exit 2 where the provider cannot run it, the flags refused by jobs that do not use them."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from tests.onnx_graph.builders import save, weight_norm_model


def _model(tmp_path: Path, *, tiny_row: bool = False) -> Path:
    model, g, v = weight_norm_model((6, 4, 3), 0)
    if tiny_row:  # one row folds to about 1e-9: zero in float16
        g = g.copy()
        g.reshape(-1)[0] = 1e-9
        model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(
            g, model.graph.initializer[0].name))
    return save(model, tmp_path / "m.onnx")


def test_fold_onnx_to_fp16_json(cli, tmp_path, assert_ok):
    path = _model(tmp_path)
    out = tmp_path / "f16.onnx"
    data = json.loads(assert_ok(cli("fold", path, "-o", out, "--precision", "fp16",
                                    "--provider", "cpu", "--json")).stdout)
    assert data["passed"] is True
    assert data["precision"]["dtype"] == "float16" and data["precision"]["keep_io_types"]
    assert data["precision"]["rounded_from_float64"] == 1
    assert onnx.load(str(out)).graph.initializer[0].data_type == onnx.TensorProto.FLOAT16


def test_underflow_is_noted_on_stderr(cli, tmp_path, assert_ok):
    result = assert_ok(cli("fold", _model(tmp_path, tiny_row=True), "--precision", "fp16",
                           "--no-keep-io-types", "--provider", "cpu", "--weights", "report"))
    assert "note: float16: 12 nonzero weight value(s) in 1 tensor(s) became zero" in (
        result.stderr)


def test_bf16_where_the_provider_cannot_run_it_exits_2(cli, tmp_path, assert_input_error):
    path = _model(tmp_path)
    line = assert_input_error(cli("fold", path, "--precision", "bf16", "--provider", "cpu"),
                              "bf16", "CPUExecutionProvider", "Add")
    assert line.endswith("use fp16 or a provider that runs bf16 (cuda)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_the_flags_are_refused_where_they_do_nothing(cli, tmp_path, assert_input_error,
                                                     fixtures_dir):
    checkpoint = fixtures_dir / "tiny_hifigan_parametrize.pt"
    line = assert_input_error(cli("fold", checkpoint, "-o", tmp_path / "x.pt", "--precision",
                                  "fp16"), "--precision")
    assert "does not use it" in line
    assert_input_error(cli("fold", checkpoint, "-o", tmp_path / "x.pt", "--no-keep-io-types"),
                       "--keep-io-types", "does not use it")
    line = assert_input_error(cli("fold", _model(tmp_path), "--no-keep-io-types"),
                              "--no-keep-io-types")
    assert "applies to a reduced precision; add --precision fp16 or bf16" in line
    result = cli("fold", _model(tmp_path), "--precision", "fp8")
    assert result.exit_code == 2 and "fp8" in result.output
