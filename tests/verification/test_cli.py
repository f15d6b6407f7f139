"""The verification options through the CLI: typed choices declared once, tolerances that can
fail, checks that compared nothing, bounded runs, and options that reach the check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner, Result

from wnconvert.cli import app

from .conftest import linear_model

REPO = Path(__file__).resolve().parents[2]
CKPT = REPO / "fixtures" / "tiny_hifigan_parametrize.pt"
MODEL = "fixtures/models.py:build_generator"


def run(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result: Result, *mentions: str) -> str:
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for mention in mentions:
        assert mention in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    w = np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32)
    return linear_model(tmp_path / "cand.onnx", w), linear_model(tmp_path / "ref.onnx", w)


@pytest.fixture
def wn_onnx(tmp_path: Path) -> Path:
    """An ONNX model that computes weight norm from constants (something to fold)."""
    from tests.onnx_graph.builders import save, weight_norm_model
    model, _, _ = weight_norm_model((6, 4, 3), 0, order="g/n*v")
    return save(model, tmp_path / "wn.onnx")


@pytest.mark.parametrize(
    "command",
    [
        ("verify", "{cand}", "--reference", "{ref}"),
        ("fold", "{wn}"),
        ("fold", str(CKPT), "--to", "onnx", "--model", MODEL, "--input", "1x16x12"),
    ],
    ids=["verify", "fold-onnx", "fold-to-onnx"],
)
def test_unknown_weights_mode_is_refused_by_every_command(command, pair, wn_onnx,
                                                          tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    args = [a.format(cand=pair[0], ref=pair[1], wn=wn_onnx) for a in command]
    result = run(*args, "-o" if args[0] == "fold" else "--json",
                 *([tmp_path / "o.onnx"] if args[0] == "fold" else []), "--weights", "bogus")
    one_line_error(result, "--weights", "bogus")
    assert not (tmp_path / "o.onnx").exists()


def test_shared_options_have_the_same_help_everywhere() -> None:
    import typer

    from wnconvert.cli import app

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]

    def option_help(command: str) -> dict[str, tuple[str | None, object]]:
        return {opt: (param.help, param.type.name) for param in commands[command].params
                for opt in getattr(param, "opts", ()) if opt in SHARED}

    fold, verify = option_help("fold"), option_help("verify")
    assert set(fold) == set(verify) == set(SHARED)
    assert fold == verify


SHARED = ("--tf32", "--weights", "--provider", "--runs", "--seed", "--atol", "--rtol", "--tol",
          "--report", "--model", "--model-kwargs", "--input", "--inputs", "--load-inputs",
          "--save-inputs", "--save-outputs", "--dynamic",
          "--strip-prefix", "--add-prefix", "--key", "--check-error-stat", "--error-quantile",
          "--min-snr")


@pytest.mark.parametrize("flag", ["--atol", "--rtol"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "-1e-3"])
def test_non_finite_or_negative_tolerances_are_refused(pair, flag: str, value: str) -> None:
    one_line_error(run("verify", pair[0], "--reference", pair[1], flag, value), flag)


@pytest.mark.parametrize("tol", ["y=inf", "y=1e-3:nan", "y=-1"])
def test_non_finite_per_output_tolerance_is_refused(pair, tol: str) -> None:
    one_line_error(run("verify", pair[0], "--reference", pair[1], "--tol", tol), "--tol")


def test_fold_refuses_infinite_tolerances_too(wn_onnx: Path, tmp_path: Path) -> None:
    one_line_error(run("fold", wn_onnx, "-o", tmp_path / "o.onnx", "--rtol", "inf"), "--rtol")
    assert not (tmp_path / "o.onnx").exists()


def test_zero_element_input_is_an_input_error_never_a_pass(pair, tmp_path: Path) -> None:
    one_line_error(run("verify", pair[0], "--reference", pair[1], "--input", "1x0x4"),
                   "no elements")
    # A model whose fixed input shape has no elements: refused from the model's own shape.
    w = np.ones((4, 3), np.float32)
    empty = linear_model(tmp_path / "empty.onnx", w, time=0)
    one_line_error(run("verify", empty, "--reference", empty), "no elements")


def test_runs_are_bounded_and_seeds_non_negative(pair) -> None:
    one_line_error(run("verify", pair[0], "--reference", pair[1], "--runs", "100000000"), "--runs")
    one_line_error(run("verify", pair[0], "--reference", pair[1], "--runs", "0"), "--runs")
    one_line_error(run("verify", pair[0], "--reference", pair[1], "--seed", "-5"), "--seed")


def test_inputs_must_be_an_npz_archive(pair, tmp_path: Path) -> None:
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((1, 16, 4), np.float32))
    one_line_error(run("verify", pair[0], "--reference", pair[1], "--inputs", npy), "x.npy",
                   ".npz")


def test_weight_check_that_matched_nothing_fails_with_the_names_and_a_hint(tmp_path: Path
                                                                           ) -> None:
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    ref = linear_model(tmp_path / "ref.onnx", w)
    # The candidate stores the weight transposed under an exporter name: nothing matches.
    model = onnx.load(linear_model(tmp_path / "c.onnx", w.T.copy(), names=("wT", "b0")))
    graph = model.graph
    graph.node.insert(0, onnx.helper.make_node("Transpose", ["wT"], ["w_t"], perm=[1, 0]))
    graph.node[1].input[1] = "w_t"
    del graph.output[:]
    graph.output.extend([onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT,
                                                            [1, "time", 3])])
    graph.node[1].input[0] = "x"
    graph.input[0].type.tensor_type.shape.dim[2].dim_value = 4
    init = [i for i in graph.initializer if i.name == "b0"][0]
    init.CopyFrom(numpy_helper.from_array(np.full(3, 0.5, np.float32), "b0"))
    cand = tmp_path / "cand.onnx"
    onnx.save(model, cand)
    result = run("verify", cand, "--reference", ref, "--json")
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)["verification"]
    assert data["providers"][0]["passed"] is True  # the outputs agree...
    assert data["weights"]["nothing_matched"] is True  # ...but the weight check saw nothing
    assert "fc.weight" in result.stderr and "weights check set to 'report'" in result.stderr
    assert run("verify", cand, "--reference", ref, "--weights", "report").exit_code == 0


def test_a_tolerance_as_large_as_the_outputs_warns_with_a_meaningful_one(tmp_path: Path
                                                                         ) -> None:
    w = (np.random.default_rng(0).standard_normal((4, 3)) * 1e-6).astype(np.float32)
    ref = linear_model(tmp_path / "ref.onnx", w, bias=0.0)
    cand = linear_model(tmp_path / "cand.onnx", w * np.float32(1.05), bias=0.0)
    result = run("verify", cand, "--reference", ref, "--json", "--weights", "off")
    assert result.exit_code == 0, result.output  # a 5 % error passes at atol 1e-5...
    out = json.loads(result.stdout)["verification"]["providers"][0]["outputs"][0]
    assert "100% error could pass" in out["warning"] and "atol <=" in out["warning"]
    assert "warning:" in result.stderr and "output 'y'" in result.stderr
    need = float(out["warning"].split("atol <= ")[1].split(" ")[0])
    # ...and the suggested tolerance makes the same 5 % error fail.
    assert run("verify", cand, "--reference", ref, "--weights", "off", "--atol",
               str(need)).exit_code == 1


def test_fold_onnx_passes_tf32_and_weights_to_the_check(wn_onnx: Path, tmp_path: Path,
                                                        monkeypatch) -> None:
    import wnconvert.verification as verify

    seen = []
    real = verify.verify_onnx_against_onnx

    def spy(candidate, reference, *, options, **rest):
        seen.append(options)
        return real(candidate, reference, options=options, **rest)

    monkeypatch.setattr(verify, "verify_onnx_against_onnx", spy)
    result = run("fold", wn_onnx, "-o", tmp_path / "o.onnx", "--tf32", "--weights", "report",
                 "--json")
    assert result.exit_code == 0, result.output
    [options] = seen
    assert options.cuda_tf32 is True and options.weights == "report"
    assert json.loads(result.stdout)["verification"]["weights"]["mode"] == "report"
