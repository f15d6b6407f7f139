"""``wnconvert.verify`` with Polygraphy's data: saved outputs as the reference, and the
inputs and outputs of a check saved for ``polygraphy run`` (messages in API terms)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import wnconvert
from tests.verification.conftest import linear_model
from wnconvert.errors import InputError
from wnconvert.formats.polygraphy_json import load_run_results, write_feeds, write_run_results

WEIGHT = np.random.default_rng(2).standard_normal((3, 2)).astype(np.float32)


@pytest.fixture
def feeds(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = [{"x": rng.standard_normal((1, n, 3)).astype(np.float32)} for n in (4, 7)]
    return write_feeds(tmp_path / "in.json", arrays)


def test_saved_outputs_are_the_reference(tmp_path: Path, feeds: Path) -> None:
    model = linear_model(tmp_path / "m.onnx", WEIGHT)
    from wnconvert.formats.polygraphy_json import load_feeds

    expected = [{"y": f["x"] @ WEIGHT + np.float32(0.5)} for f in load_feeds(feeds)]
    outputs = write_run_results(tmp_path / "trt.json", [("trt-runner", expected)])
    options = wnconvert.VerifyOptions(inputs_file=feeds, providers=("cpu",))
    report = wnconvert.verify(model, reference_outputs=outputs, options=options)
    assert report.passed and report.reference["runner"] == "trt-runner"
    assert report.weights is None  # nothing to compare weights with
    shifted = [{"y": e["y"] + 1} for e in expected]
    bad = write_run_results(tmp_path / "bad.json", [("trt-runner", shifted)])
    assert not wnconvert.verify(model, reference_outputs=bad, options=options).passed


def test_verify_saves_what_it_ran(tmp_path: Path) -> None:
    cand = linear_model(tmp_path / "c.onnx", WEIGHT)
    ref = linear_model(tmp_path / "r.onnx", WEIGHT)
    out = tmp_path / "out.json"
    report = wnconvert.verify(cand, ref, options=wnconvert.VerifyOptions(providers=("cpu",)),
                              save_outputs=out)
    assert report.passed
    runners = load_run_results(out)
    # One random run and the second size of the dynamic time axis: two iterations each.
    assert [(name, len(its)) for name, its in runners] == [
        ("wnconvert-reference", 2), ("wnconvert-onnxrt-CPUExecutionProvider", 2)]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"reference_runner": "x"}, "reference_runner= picks a runner of reference_outputs="),
    ({"reference_outputs": "out.json"},
     "saved outputs need the inputs they were computed from; give them with inputs_file="),
    ({"save_inputs": "in.txt"}, "save_inputs=in.txt: Polygraphy data is JSON"),
    ({}, "nothing to verify against; give reference"),
])
def test_refusals_speak_api_terms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  kwargs: dict[str, str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    model = linear_model(tmp_path / "m.onnx", WEIGHT)
    write_run_results(tmp_path / "out.json", [("r", [{"y": np.ones((1, 4, 2), np.float32)}])])
    reference = model if "reference_runner" in kwargs or "save_inputs" in kwargs else None
    with pytest.raises(InputError) as info:
        wnconvert.verify(model, reference, **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert "--load" not in str(info.value) and "--runner" not in str(info.value)


def test_polygraphy_feeds_refuse_runs_seed_and_dynamic(feeds: Path) -> None:
    with pytest.raises(InputError, match="every feed of a Polygraphy inputs file is one run"):
        wnconvert.VerifyOptions(inputs_file=feeds, runs=2)
    with pytest.raises(InputError, match=r"no second size is added\); drop dynamic"):
        wnconvert.VerifyOptions(inputs_file=feeds, dynamic_axes=(wnconvert.DynamicAxis(1),))
