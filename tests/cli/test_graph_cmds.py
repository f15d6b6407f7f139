"""``wnconvert check`` / ``fold MODEL.onnx`` / ``inspect MODEL.onnx`` (in-process, CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.onnx_graph.builders import (
    Graph,
    cycle_model,
    expected,
    external_location_model,
    initializer,
    misfit_pair_model,
    prefolded_model,
    run,
    save,
    truncate_external_length,
    truncated_model,
    undefined_input_model,
    weight_norm_model,
    wn_arrays,
    wrong_type_model,
)


@pytest.fixture
def wn_model(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    model, g, v = weight_norm_model((6, 4, 3), 0, order="g/n*v")
    return save(model, tmp_path / "model.onnx"), g, v


@pytest.fixture
def clean_model(tmp_path: Path) -> Path:
    b = Graph()
    b.init("w", np.ones((2, 3), dtype=np.float32))
    return save(b.model("w", (2, 3)), tmp_path / "clean.onnx")


# -- check -----------------------------------------------------------------------------------


def test_check_exit_codes(cli, wn_model, clean_model, tmp_path, assert_ok, assert_input_error):
    dirty = cli("check", wn_model[0])
    assert dirty.exit_code == 1
    assert "layer.weight" in dirty.stdout and "ReduceL2" in dirty.stdout
    assert dirty.stderr.startswith("error:") and "wnconvert fold" in dirty.stderr
    assert "clean" in assert_ok(cli("check", clean_model)).stdout
    missing = tmp_path / "nope.onnx"
    assert_input_error(cli("check", missing), missing)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\xff\xff\xff not protobuf")
    assert_input_error(cli("check", garbage), garbage)


def test_check_json_schema(cli, wn_model, clean_model):
    result = cli("check", wn_model[0], "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert set(data) == {"model", "clean", "weight_norm", "unrecognized_pairs",
                         "unrecognized_spectral_norm", "inlined_functions"}
    assert data["clean"] is False and data["inlined_functions"] == []
    [site] = data["weight_norm"]
    assert set(site) == {"kind", "value", "parameter", "v", "g", "shape", "dim", "dtype", "nodes",
                         "ops", "foldable", "reason"}
    assert site["kind"] == "weight_norm"
    assert (site["parameter"], site["shape"], site["dim"], site["dtype"]) == (
        "layer.weight", [6, 4, 3], 0, "float32")
    assert sorted(site["ops"]) == ["Div", "Mul", "ReduceL2"]
    assert len(site["nodes"]) == 3 and site["foldable"] is True
    ok = cli("check", clean_model, "--json")
    assert ok.exit_code == 0
    assert json.loads(ok.stdout) == {"model": str(clean_model), "clean": True, "weight_norm": [],
                                     "unrecognized_pairs": [], "unrecognized_spectral_norm": [],
                                     "inlined_functions": []}


def test_check_quiet_prints_only_the_error(cli, wn_model):
    result = cli("check", wn_model[0], "--quiet")
    assert result.exit_code == 1 and result.stdout == ""


# -- fold ------------------------------------------------------------------------------------


def test_fold_onnx_through_the_cli(cli, wn_model, assert_ok, no_temp_files):
    path, g, v = wn_model
    result = assert_ok(cli("fold", path))
    out = path.with_name("model.folded.onnx")
    np.testing.assert_array_equal(initializer(out, "layer.weight"), expected(g, v, 0))
    for text in ("layer.weight", "nodes removed", "ReduceL2", "verification PASSED"):
        assert text in result.stdout
    no_temp_files(path.parent)


def test_fold_onnx_json_no_verify_and_force(cli, wn_model, assert_ok, assert_input_error):
    path, _, _ = wn_model
    out = path.with_name("clean.onnx")
    data = json.loads(assert_ok(cli("fold", path, "-o", out, "--no-verify", "--json")).stdout)
    assert data["verification"] is None and data["passed"] is None
    assert data["output"] == str(out) and data["files"] == [str(out)]
    [layer] = data["layers"]
    assert (layer["name"], layer["replaces"], layer["nodes_removed"]) == (
        "layer.weight", "mul_6", 3)
    assert data["op_counts"]["before"]["ReduceL2"] == 1
    assert "ReduceL2" not in data["op_counts"]["after"]
    assert_input_error(cli("fold", path, "-o", out, "--no-verify"), out)
    assert_ok(cli("fold", path, "-o", out, "--no-verify", "--force"))


def test_fold_onnx_verification_failure_writes_nothing(cli, tmp_path, no_temp_files):
    """A zero row of v: the graph computes NaN there, the fold zeros -> verification fails."""
    model, g, v = weight_norm_model((4, 3), 0)
    v[2] = 0
    model.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(v, "layer.parametrizations"
                                                                        ".weight.original1"))
    path = save(model, tmp_path / "zero.onnx")
    report = tmp_path / "report.json"
    result = cli("fold", path, "--report", report)
    assert result.exit_code == 1, result.output
    assert "zero norm" in result.stderr and "verification failed" in result.stderr
    assert "nothing was written" in result.stderr
    assert not path.with_name("zero.folded.onnx").exists()
    assert json.loads(report.read_text())["passed"] is False
    no_temp_files(tmp_path)


def test_fold_onnx_already_clean_exits_0(cli, clean_model, assert_ok):
    """Nothing to fold or rename: exit 0, "already clean", an unchanged copy (pipelines)."""
    out = clean_model.with_name("clean.folded.onnx")
    result = assert_ok(cli("fold", clean_model, "--no-verify"))
    assert "already clean" in result.stdout and "already clean" in result.stderr
    assert onnx.load(str(out)) == onnx.load(str(clean_model))
    data = json.loads(assert_ok(cli("fold", clean_model, "-o", out, "--force", "--json")).stdout)
    assert data["changed"] is False and data["layers"] == [] and data["renamed"] == []
    assert data["passed"] is True


def test_fold_onnx_twice_is_idempotent(cli, wn_model, assert_ok):
    path, g, v = wn_model
    once = path.with_name("once.onnx")
    assert_ok(cli("fold", path, "-o", once, "--no-verify"))
    twice = path.with_name("twice.onnx")
    assert "already clean" in assert_ok(cli("fold", once, "-o", twice, "--no-verify")).stdout
    assert onnx.load(str(twice)) == onnx.load(str(once))


def test_fold_onnx_rejects_non_onnx_output(cli, wn_model, assert_input_error):
    path, _, _ = wn_model
    assert_input_error(cli("fold", path, "-o", path.with_name("x.pt")), "x.pt")


# -- inspect -----------------------------------------------------------------------------------


def test_inspect_onnx_through_the_cli(cli, tmp_path, assert_ok):
    g, v = wn_arrays((5, 4), 0)
    b = Graph()
    v_name, g_name = b.init("fc.weight_v", v), b.init("fc.weight_g", g)
    b.init("idle.weight_v", v)  # a g/v pair nothing computes with
    b.init("idle.weight_g", g)
    n = b.reduce("ReduceL2", v_name, [1])
    path = save(b.model(b.op("Mul", b.op("Div", v_name, n), g_name), v.shape),
                tmp_path / "m.onnx")
    result = assert_ok(cli("inspect", path))
    for text in ("weight norm computed at run time: 1", "fc.weight", "idle.weight",
                 "initializers named like g/v pairs", "ReduceL2"):
        assert text in result.stdout, text
    data = json.loads(assert_ok(cli("inspect", path, "--json")).stdout)
    assert set(data) >= {"model", "weight_norm", "pairs", "folded_with_lost_names", "op_counts"}
    assert [(p["parameter"], p["computed_by"] is not None) for p in data["pairs"]] == [
        ("fc.weight", True), ("idle.weight", False)]


def test_help_has_examples(cli):
    result = cli("check", "--help")
    assert result.exit_code == 0 and "wnconvert check model.onnx" in result.stdout


# -- refused inputs: check, inspect and fold agree ---------------------------------------------


def _bad_models(folder: Path) -> list[Path]:
    model, _, _ = weight_norm_model((64, 32, 16), 0)
    external = save(model, folder / "trunc_ext.onnx", external=True)
    truncate_external_length(external, "layer.parametrizations.weight.original1")
    return [
        save(cycle_model(), folder / "cycle.onnx"),
        save(undefined_input_model(), folder / "undefined.onnx"),
        save(truncated_model(), folder / "truncated.onnx"),
        save(truncated_model(large=True), folder / "truncated_large.onnx"),
        external,
        save(misfit_pair_model(), folder / "misfit.onnx"),
        save(wrong_type_model(), folder / "wrong_type.onnx"),
        save(external_location_model("w\0.bin"), folder / "nul.onnx"),
    ]


def test_check_inspect_fold_and_verify_refuse_the_same_files(cli, tmp_path, assert_input_error,
                                                             no_temp_files, clean_model):
    for path in _bad_models(tmp_path):
        lines = {assert_input_error(cli(command, *args), path)
                 for command, args in (("check", (path,)), ("inspect", (path,)),
                                       ("fold", (path, "--no-verify")),
                                       ("verify", (path, "--reference", clean_model)),
                                       ("verify", (clean_model, "--reference", path)))}
        assert len(lines) == 1, lines  # the same one line from every command
        assert "unexpected" not in lines.pop()
        assert not path.with_name(f"{path.stem}.folded.onnx").exists()
    no_temp_files(tmp_path)


def test_check_and_fold_agree_on_good_files(cli, wn_model, clean_model):
    """dirty: check 1, fold 0 (and the folded output checks clean); clean: 0 and 0."""
    dirty = wn_model[0]
    assert (cli("check", dirty).exit_code, cli("fold", dirty, "--no-verify").exit_code) == (1, 0)
    assert cli("check", dirty.with_name("model.folded.onnx")).exit_code == 0
    assert (cli("check", clean_model).exit_code,
            cli("fold", clean_model, "--no-verify").exit_code) == (0, 0)


# -- names back ----------------------------------------------------------------------------------


def test_fold_renames_initializers_the_exporter_folded(cli, tmp_path, assert_ok):
    model, _ = prefolded_model()
    path = save(model, tmp_path / "prefolded.onnx")
    assert cli("check", path).exit_code == 0  # nothing computed at run time
    out = tmp_path / "named.onnx"
    data = json.loads(assert_ok(cli("fold", path, "-o", out, "--json")).stdout)
    assert data["changed"] is True and data["layers"] == [] and data["passed"] is True
    assert {(r["from"], r["to"], r["how"]) for r in data["renamed"]} == {
        ("mul", "conv_pre.weight", "folded_from"), ("mul_5", "upsampler.1.weight", "folded_from")}
    folded = onnx.load(str(out))
    names = {t.name for t in folded.graph.initializer}
    assert {"conv_pre.weight", "upsampler.1.weight"} <= names and not {"mul", "mul_5"} & names
    used = [i for n in folded.graph.node for i in n.input]
    branch_inputs = [i for n in folded.graph.node if n.op_type == "If"
                     for a in n.attribute for sub in [a.g] for m in sub.node for i in m.input]
    assert "mul" not in used and "mul_5" not in used
    assert set(branch_inputs) == {"upsampler.1.weight", "conv_pre.weight"}
    assert {v.name for v in folded.graph.value_info} == {"conv_pre.weight", "upsampler.1.weight"}
    onnx.checker.check_model(folded, full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(run(out, {"x": x})[0], run(path, {"x": x})[0])
    # The table, and idempotence: the named output is already clean.
    table = assert_ok(cli("fold", path, "-o", out, "--force", "--no-verify")).stdout
    assert "given their names back" in table and "upsampler.1.weight" in table
    again = assert_ok(cli("fold", out, "-o", tmp_path / "again.onnx", "--no-verify"))
    assert "already clean" in again.stdout
    info = json.loads(assert_ok(cli("inspect", out, "--json")).stdout)
    assert info["folded_with_lost_names"] == []


def test_fold_reference_names_initializers_by_value(cli, tmp_path, assert_ok,
                                                    assert_input_error):
    """No exporter metadata: --reference CKPT names initializers equal to its (folded) tensors;
    a tensor with no equal stays as it is."""
    import torch

    model, state = prefolded_model(metadata=False)
    path = save(model, tmp_path / "bare.onnx")
    assert "already clean" in assert_ok(
        cli("fold", path, "-o", tmp_path / "bare_out.onnx", "--no-verify")).stdout
    ckpt = tmp_path / "generator.pt"
    state = {k: torch.from_numpy(v) for k, v in state.items()}
    state["unrelated.weight"] = torch.ones(2, 3)
    torch.save(state, ckpt)
    out = tmp_path / "named.onnx"
    data = json.loads(assert_ok(cli("fold", path, "-o", out, "--reference", ckpt, "--no-verify",
                                    "--json")).stdout)
    assert {(r["from"], r["to"], r["how"]) for r in data["renamed"]} == {
        ("mul", "conv_pre.weight", "reference"), ("mul_5", "upsampler.1.weight", "reference")}
    assert {t.name for t in onnx.load(str(out)).graph.initializer} == {
        "conv_pre.weight", "upsampler.1.weight", "flag"}
    assert_input_error(cli("fold", path, "--reference", tmp_path / "nope.pt"), "nope.pt")
    assert_input_error(cli("fold", path, "-o", ckpt, "--reference", ckpt), ckpt)
    assert_input_error(cli("fold", path, "--key", "model"), "--key")
    bad = tmp_path / "bad_pairs.pt"
    torch.save({"x.weight_g": torch.ones(3, 1), "x.weight_v": torch.ones(5, 4)}, bad)
    assert_input_error(cli("fold", path, "--reference", bad, "--no-verify"), bad, "x.weight")


def test_fold_reference_matches_the_exporters_float32_fold(tmp_path):
    """The exporter folds in float32, a few ULP from the float64 fold: still matched (and only
    when exactly one initializer fits)."""
    import torch

    from wnconvert.onnx_graph import fold_file

    model, state = prefolded_model(metadata=False)
    for tensor in model.graph.initializer:
        if tensor.name == "mul_5":
            array = onnx.numpy_helper.to_array(tensor).copy()
            array[0, 0] = np.nextafter(array[0, 0], np.float32(np.inf))  # one ULP off
            tensor.CopyFrom(onnx.numpy_helper.from_array(array, "mul_5"))
    path = save(model, tmp_path / "f32.onnx")
    ckpt = tmp_path / "ref.pt"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, ckpt)
    outcome = fold_file(path, tmp_path / "out.onnx", force=False, reference=ckpt)
    assert {(r.old, r.new, r.how) for r in outcome.result.renamed} == {
        ("mul", "conv_pre.weight", "reference"),
        ("mul_5", "upsampler.1.weight", "reference-fold")}


def test_reference_is_for_onnx_inputs_only(cli, tmp_path, assert_input_error):
    import torch

    ckpt = tmp_path / "a.pt"
    torch.save({"w": torch.ones(2)}, ckpt)
    assert_input_error(cli("fold", ckpt, "--reference", ckpt), "--reference")


@pytest.mark.parametrize("command", ["check", "inspect", "fold"])
def test_a_fifo_is_refused_without_blocking(command: str, tmp_path: Path) -> None:
    """Issue 9 §3: opening a FIFO for reading blocks until a writer comes; refuse it first."""
    import os

    from typer.testing import CliRunner

    from wnconvert.cli import app

    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    result = CliRunner().invoke(app, [command, str(fifo)])
    assert result.exit_code == 2
    assert "FIFO" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_fold_onnx_verifies_on_the_inputs_given(cli, wn_model, assert_ok, assert_input_error):
    # --input/--dynamic/--inputs reach the verification of an .onnx fold (they were ignored).
    path, _, _ = wn_model
    data = json.loads(assert_ok(cli("fold", path, "--input", "x=6x4x3", "--json")).stdout)
    case = data["verification"]["cases"][0]
    assert case["source"] and case["inputs"] == {"x": {"shape": [6, 4, 3], "dtype": "float32"}}
    text = assert_input_error(cli("fold", path, "-o", path.with_name("b.onnx"), "--input",
                                  "x=6x4x5"), "--input x=6x4x5")
    assert "fixed size 3 on axis 2" in text
    assert_input_error(cli("fold", path, "-o", path.with_name("c.onnx"), "--no-verify",
                           "--input", "6x4x3"), "--no-verify turns verification off")
