"""Polygraphy's data through the CLI (issue 20 §3): ``--load-inputs FILE.json``,
``--save-inputs``, ``--save-outputs``, ``--load-outputs`` with ``--runner``, both ways with the
real ``polygraphy`` (its files into wnconvert, wnconvert's into ``polygraphy run``)."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.verification.conftest import linear_model
from wnconvert.formats.polygraphy_json import load_feeds, load_run_results

WEIGHT = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
POLYGRAPHY = Path(sys.executable).with_name("polygraphy")


def _polygraphy(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(POLYGRAPHY), "run", *map(str, args)], capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    """A (the model), B (the same computation, another file) and a perturbed B; fixed sizes,
    so Polygraphy needs no input shapes."""
    return {"a": linear_model(tmp_path / "a.onnx", WEIGHT, time=5),
            "b": linear_model(tmp_path / "b.onnx", WEIGHT.copy(), time=5),
            "bad": linear_model(tmp_path / "bad.onnx", WEIGHT, bias=0.6, time=5)}


@pytest.fixture
def saved(cli, assert_ok, models, tmp_path: Path) -> tuple[Path, Path]:
    """Inputs and outputs wnconvert saved while verifying B against A (two random runs)."""
    inputs, outputs = tmp_path / "in.json", tmp_path / "out.json"
    assert_ok(cli("verify", models["b"], "--reference", models["a"], "--runs", 2,
                  "--save-inputs", inputs, "--save-outputs", outputs))
    return inputs, outputs


def test_saved_inputs_and_outputs_hold_every_run_and_runner(saved) -> None:
    feeds = load_feeds(saved[0])
    assert len(feeds) == 2 and feeds[0]["x"].shape == (1, 5, 3)
    runners = load_run_results(saved[1])
    assert [name for name, _ in runners] == ["wnconvert-reference",
                                             "wnconvert-onnxrt-CPUExecutionProvider"]
    reference = runners[0][1]
    expected = feeds[1]["x"] @ WEIGHT + 0.5
    np.testing.assert_allclose(reference[1]["y"], expected, rtol=1e-6)


def test_saved_files_verify_again_without_a_model(cli, assert_ok, saved, models) -> None:
    result = assert_ok(cli("verify", models["b"], "--load-inputs", saved[0], "--load-outputs",
                           saved[1], "--runner", "wnconvert-reference", "--json"))
    data = json.loads(result.stdout)
    assert data["passed"] is True
    assert data["verification"]["reference"] == {
        "kind": "polygraphy", "path": str(saved[1]), "runner": "wnconvert-reference"}
    assert [case["label"] for case in data["verification"]["cases"]] == ["feed 0", "feed 1"]


def test_perturbed_model_fails_against_saved_outputs(cli, saved, models) -> None:
    result = cli("verify", models["bad"], "--load-inputs", saved[0], "--load-outputs", saved[1],
                 "--runner", "wnconvert-reference")
    assert result.exit_code == 1, result.output


def test_polygraphy_inputs_drive_a_model_reference(cli, assert_ok, saved, models) -> None:
    # --load-inputs FILE.json with an ordinary reference: each feed is one run (the old
    # --inputs spelling takes it too).
    result = assert_ok(cli("verify", models["b"], "--inputs", saved[0], "--reference",
                           models["a"], "--json"))
    assert len(json.loads(result.stdout)["verification"]["cases"]) == 2


@pytest.mark.slow
def test_polygraphy_run_checks_our_files(saved, models) -> None:
    passed = _polygraphy(models["b"], "--onnxrt", "--load-inputs", saved[0], "--load-outputs",
                         saved[1])
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "wnconvert-reference" in passed.stdout + passed.stderr
    failed = _polygraphy(models["bad"], "--onnxrt", "--load-inputs", saved[0],
                         "--load-outputs", saved[1])
    assert failed.returncode != 0, failed.stdout + failed.stderr


@pytest.mark.slow
def test_outputs_saved_by_polygraphy_are_the_reference(cli, assert_ok, models,
                                                       tmp_path: Path) -> None:
    # The TensorRT flow: Polygraphy runs model A (here on ONNX Runtime) and saves its inputs
    # and outputs; wnconvert checks model B against them, with no reference model.
    inputs, outputs = tmp_path / "poly_in.json", tmp_path / "poly_out.json"
    ran = _polygraphy(models["a"], "--onnxrt", "--save-inputs", inputs, "--save-outputs",
                      outputs)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert_ok(cli("verify", models["b"], "--load-inputs", inputs, "--load-outputs", outputs))
    result = cli("verify", models["bad"], "--load-inputs", inputs, "--load-outputs", outputs)
    assert result.exit_code == 1, result.output


def _npy_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return base64.b64encode(buffer.getvalue()).decode()


def _feeds_file(tmp_path: Path, entry: dict[str, object]) -> Path:
    path = tmp_path / "bad_in.json"
    path.write_text(json.dumps([{"x": entry}]))
    return path


def _huge_header() -> str:
    from numpy.lib import format as npy

    buffer = io.BytesIO()
    npy.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                        "shape": (1, 10**12, 3)})
    return base64.b64encode(buffer.getvalue() + b"\0" * 60).decode()


@pytest.mark.parametrize(("entry", "message"), [
    ({"array": base64.b64encode(b"\x80\x04K\x01.").decode(), "polygraphy_class": "ndarray"},
     "not a plain numeric .npy array"),
    ({"array": _npy_b64(np.array([1, None], dtype=object)), "polygraphy_class": "ndarray"},
     "not a plain numeric type"),
    ({"array": _npy_b64(np.ones((1, 5, 3), np.float32)), "polygraphy_class": "torch.Tensor"},
     "polygraphy_class 'torch.Tensor'"),
    ({"array": _npy_b64(np.ones((1, 5, 3), np.float32))[:-8], "polygraphy_class": "ndarray"},
     "needs 60 bytes of data, the member holds"),
    ({"array": _huge_header(), "polygraphy_class": "ndarray"}, "needs 12000000000000 bytes"),
], ids=["pickle", "object", "unknown-class", "short", "huge"])
def test_bad_polygraphy_inputs_are_one_line(cli, assert_input_error, models, tmp_path: Path,
                                            entry: dict[str, object], message: str) -> None:
    path = _feeds_file(tmp_path, entry)
    line = assert_input_error(cli("verify", models["b"], "--reference", models["a"],
                                  "--load-inputs", path), path, message)
    assert "not a Polygraphy inputs file" in line


def test_feeds_must_fit_the_model(cli, assert_input_error, models, tmp_path: Path) -> None:
    path = _feeds_file(tmp_path, {"array": _npy_b64(np.ones((1, 4, 3), np.float32)),
                                  "polygraphy_class": "ndarray"})
    assert_input_error(cli("verify", models["b"], "--reference", models["a"], "--load-inputs",
                           path), path, "feed 0: array for input 'x' has shape [1, 4, 3]")


@pytest.mark.parametrize(("extra", "mentions"), [
    ((), ("out.json", "--runner NAME", "wnconvert-reference")),
    (("--runner", "trt"), ("--runner trt", "no such runner")),
    (("--reference", "{a}"), ("--load-outputs", "drop --reference/--model")),
    (("--runs", "3"), ("--runs/--seed",)),
])
def test_load_outputs_refusals(cli, assert_input_error, saved, models, extra,
                               mentions) -> None:
    args = [str(models["a"]) if a == "{a}" else a for a in extra]
    assert_input_error(cli("verify", models["b"], "--load-inputs", saved[0], "--load-outputs",
                           saved[1], *args), *mentions)


def test_load_outputs_needs_the_inputs(cli, assert_input_error, saved, models) -> None:
    assert_input_error(cli("verify", models["b"], "--load-outputs", saved[1]),
                       saved[1], "--load-inputs FILE.json")


def test_iterations_must_match_the_feeds(cli, assert_input_error, saved, models,
                                         tmp_path: Path) -> None:
    one = tmp_path / "one.json"
    one.write_text(json.dumps(json.loads(saved[0].read_text())[:1]))
    assert_input_error(cli("verify", models["b"], "--load-inputs", one, "--load-outputs",
                           saved[1], "--runner", "wnconvert-reference"),
                       "has 2 iteration(s) but --load-inputs gives 1 feed(s)")


def test_missing_outputs_are_reported(cli, assert_input_error, saved, models,
                                      tmp_path: Path) -> None:
    data = json.loads(saved[1].read_text())
    outputs = data["lst"][0][1][0]["outputs"]
    outputs["z"] = outputs["y"]
    for iteration in data["lst"][0][1][1:]:
        iteration["outputs"]["z"] = iteration["outputs"]["y"]
    more = tmp_path / "more.json"
    more.write_text(json.dumps({"lst": data["lst"][:1], "polygraphy_class": "RunResults"}))
    assert_input_error(cli("verify", models["b"], "--load-inputs", saved[0], "--load-outputs",
                           more), "the candidate lacks 1 of the reference's outputs (z")


def test_runner_needs_load_outputs(cli, assert_input_error, models) -> None:
    assert_input_error(cli("verify", models["b"], "--reference", models["a"], "--runner", "x"),
                       "--runner picks a runner of --load-outputs")


def test_nothing_to_verify_against(cli, assert_input_error, models) -> None:
    assert_input_error(cli("verify", models["b"]), "--reference", "--load-outputs")


@pytest.mark.parametrize("flag", ["--save-inputs", "--save-outputs"])
def test_save_paths_are_checked_first(cli, assert_input_error, models, tmp_path: Path,
                                      flag: str) -> None:
    assert_input_error(cli("verify", models["b"], "--reference", models["a"], flag,
                           tmp_path / "x.npz"), flag, "name the file .json")
    existing = tmp_path / "exists.json"
    existing.write_text("keep")
    assert_input_error(cli("verify", models["b"], "--reference", models["a"], flag, existing),
                       existing)
    assert existing.read_text() == "keep"
    assert_input_error(cli("verify", models["b"], "--reference", models["a"], flag,
                           models["a"].with_suffix(".json"), "--report",
                           models["a"].with_suffix(".json")), "another output of this job")


def test_save_flags_are_refused_where_nothing_verifies(cli, assert_input_error,
                                                       tmp_path: Path) -> None:
    from tests.onnx_graph.builders import save, weight_norm_model

    model, _, _ = weight_norm_model((6, 4, 3), 0, order="g/n*v")
    path = save(model, tmp_path / "wn.onnx")
    assert_input_error(cli("fold", path, "--no-verify", "--save-outputs", tmp_path / "o.json"),
                       "--save-outputs", "--no-verify turns verification off")


def test_fold_of_an_onnx_model_saves_its_verification(cli, assert_ok, tmp_path: Path) -> None:
    from tests.onnx_graph.builders import save, weight_norm_model

    model, _, _ = weight_norm_model((6, 4, 3), 0, order="g/n*v")
    path = save(model, tmp_path / "wn.onnx")
    inputs, outputs = tmp_path / "in.json", tmp_path / "out.json"
    assert_ok(cli("fold", path, "-o", tmp_path / "folded.onnx", "--save-inputs", inputs,
                  "--save-outputs", outputs))
    assert len(load_feeds(inputs)) == 1
    runners = load_run_results(outputs)
    assert [name for name, _ in runners] == ["wnconvert-reference",
                                             "wnconvert-onnxrt-CPUExecutionProvider"]


@pytest.mark.slow
def test_export_traces_and_verifies_polygraphy_feeds(cli, assert_ok, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from wnconvert.formats.polygraphy_json import write_feeds

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)
    rng = np.random.default_rng(1)
    feeds = tmp_path / "mel.json"
    write_feeds(feeds, [{"mel": rng.standard_normal((1, 16, n)).astype(np.float32)}
                        for n in (12, 20)])
    outputs = tmp_path / "out.json"
    result = assert_ok(cli("fold", repo / "fixtures" / "tiny_hifigan_parametrize.pt", "--to",
                           "onnx", "--model", "fixtures/models.py:build_generator",
                           "--model-kwargs", '{"weight_norm": "none"}', "--load-inputs", feeds,
                           "--dynamic", "0:2=time", "-o", tmp_path / "g.onnx",
                           "--save-outputs", outputs, "--json"))
    cases = json.loads(result.stdout)["verification"]["cases"]
    assert [(c["label"], c["inputs"]["mel"]["shape"]) for c in cases] == [
        ("feed 0", [1, 16, 12]), ("feed 1", [1, 16, 20])]
    assert [len(iterations) for _, iterations in load_run_results(outputs)] == [2, 2]
