"""JSON and JUnit XML reports: schema, failures named, no clobbering, atomic writes."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from wnconvert.errors import InputError
from wnconvert.verification import (
    CaseInfo,
    OutputResult,
    ProviderResult,
    Tolerance,
    VerificationReport,
    WeightComparison,
    WeightsReport,
    compare_arrays,
)
from wnconvert.verification.report import check_report_paths, to_junit_xml, write_reports

TOL = Tolerance(1e-5, 1e-4)


def make_report(*, fail_output: bool = False, fail_weight: bool = False,
                provider_error: str | None = None) -> VerificationReport:
    ref = np.linspace(-1, 1, 12, dtype=np.float32).reshape(1, 1, 12)
    good = compare_arrays(ref + np.float32(1e-7), ref, TOL)
    audio = compare_arrays(ref * np.float32(1.01) if fail_output else ref.copy(), ref, TOL)
    outputs = (
        OutputResult("audio", "audio", (("run 0", audio), ("second size time=24", audio))),
        OutputResult("state", "state", (("run 0", good),)),
    )
    providers = (
        ProviderResult("CPUExecutionProvider", {}, (), outputs),
        ProviderResult("CUDAExecutionProvider", {"use_tf32": "0"}, ("TF32 off (use_tf32=0)",),
                       () if provider_error else outputs, provider_error),
    )
    weight = WeightComparison("conv_pre.weight", (4, 2, 3), "float32",
                              0.02 if fail_weight else 0.0, 0.01 if fail_weight else 0.0,
                              1e-5, 1e-4, not fail_weight)
    weights = WeightsReport("fail", (weight,), (), (), ("lstm.weight_ih_l0",))
    cases = (CaseInfo("run 0", "random", {"mel": ((1, 16, 12), "float32")}, (0, 0)),)
    return VerificationReport(
        candidate={"kind": "onnx", "path": "g.onnx"},
        reference={"kind": "pytorch", "checkpoint": "g.pt", "model": "models.py:build"},
        cases=cases, providers=providers, weights=weights,
    )


def test_json_schema_of_a_passing_report() -> None:
    data = make_report().to_dict()
    assert data["schema"] == "wnconvert.verify/1"
    assert data["passed"] is True
    assert data["failures"] == []
    assert "atol + rtol" in data["rule"]
    assert [p["name"] for p in data["providers"]] == ["CPUExecutionProvider",
                                                      "CUDAExecutionProvider"]
    assert data["providers"][1]["options"] == {"use_tf32": "0"}
    out = data["providers"][0]["outputs"][0]
    assert out["name"] == "audio" and out["passed"] is True
    for key in ("shape", "dtype", "atol", "rtol", "max_abs", "max_rel", "mean_abs", "min_atol"):
        assert key in out
    assert out["shape"] == [1, 1, 12] and out["dtype"] == "float32"
    assert [c["case"] for c in out["cases"]] == ["run 0", "second size time=24"]
    assert data["cases"][0]["inputs"] == {"mel": {"shape": [1, 16, 12], "dtype": "float32"}}
    assert data["weights"]["worst"]["name"] == "conv_pre.weight"
    assert data["weights"]["only_in_reference"] == ["lstm.weight_ih_l0"]
    json.dumps(data, allow_nan=False)  # strict JSON: no NaN/Infinity anywhere


def test_json_report_names_the_failing_output_and_weight() -> None:
    data = make_report(fail_output=True, fail_weight=True).to_dict()
    assert data["passed"] is False
    audio = data["providers"][0]["outputs"][0]
    assert audio["passed"] is False and audio["mismatched"] > 0
    assert audio["max_abs"] == pytest.approx(0.01, rel=1e-3)
    assert "outside atol" in audio["failure"]
    assert data["providers"][0]["outputs"][1]["passed"] is True
    assert any(f.startswith("CPUExecutionProvider: output 'audio'") for f in data["failures"])
    assert any("weight 'conv_pre.weight'" in f for f in data["failures"])
    assert data["weights"]["failed"] == ["conv_pre.weight"]


def test_infinite_errors_are_null_in_json() -> None:
    comp = compare_arrays(np.array([np.nan], np.float32), np.array([1.0], np.float32), TOL)
    assert math.isinf(comp.min_atol)
    report = make_report()
    report.providers = (ProviderResult("CPUExecutionProvider", {}, (),
                                       (OutputResult("y", "y", (("run 0", comp),)),)),)
    data = report.to_dict()
    out = data["providers"][0]["outputs"][0]
    assert out["min_atol"] is None and out["passed"] is False
    assert out["cases"][0]["nonfinite_mismatch"] == 1
    json.dumps(data, allow_nan=False)


def test_a_report_with_no_provider_never_passes() -> None:
    report = make_report()
    report.providers = ()
    assert report.passed is False


def test_junit_xml_has_a_testcase_per_output_and_provider() -> None:
    root = ET.fromstring(to_junit_xml(make_report(fail_output=True, fail_weight=True)))
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"wnconvert.verify.CPUExecutionProvider",
                           "wnconvert.verify.CUDAExecutionProvider", "wnconvert.verify.weights"}
    cpu = suites["wnconvert.verify.CPUExecutionProvider"]
    assert (cpu.get("tests"), cpu.get("failures"), cpu.get("errors")) == ("2", "1", "0")
    audio = cpu.find("testcase[@name='audio']")
    assert audio is not None
    failure = audio.find("failure")
    assert failure is not None and "output 'audio'" in (failure.get("message") or "")
    assert cpu.find("testcase[@name='state']/failure") is None
    weights = suites["wnconvert.verify.weights"]
    assert weights.find("testcase[@name='conv_pre.weight']/failure") is not None
    assert (root.get("tests"), root.get("failures")) == ("5", "3")


def test_junit_provider_error_is_an_error_element() -> None:
    root = ET.fromstring(to_junit_xml(make_report(provider_error="ONNX Runtime failed")))
    cuda = root.find("testsuite[@name='wnconvert.verify.CUDAExecutionProvider']")
    assert cuda is not None and cuda.get("errors") == "1"
    assert cuda.find("testcase[@name='session']/error") is not None


def test_write_reports_by_suffix_and_refuses_to_clobber(tmp_path: Path) -> None:
    report = make_report()
    paths = [tmp_path / "r.json", tmp_path / "r.xml"]
    assert write_reports(report, paths, force=False) == paths
    assert json.loads(paths[0].read_text())["passed"] is True
    assert ET.parse(paths[1]).getroot().tag == "testsuites"
    before = paths[0].read_bytes()
    with pytest.raises(InputError, match="already exists; use force=True"):
        write_reports(make_report(fail_output=True), paths, force=False)
    assert paths[0].read_bytes() == before
    write_reports(make_report(fail_output=True), paths, force=True)
    assert json.loads(paths[0].read_text())["passed"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.xml"]  # no temp files


def test_report_paths_are_checked_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="r.txt: unknown report type"):
        check_report_paths([tmp_path / "r.txt"], force=False)
    with pytest.raises(InputError, match="given twice"):
        check_report_paths([tmp_path / "a.json", tmp_path / "a.json"], force=True)
    with pytest.raises(InputError, match="does not exist"):
        check_report_paths([tmp_path / "missing" / "r.json"], force=False)
    reference = tmp_path / "reference.json"
    reference.write_text("{}")
    with pytest.raises(InputError, match="input file"):
        check_report_paths([reference], force=True, inputs=[reference])


def test_junit_lists_skipped_providers_and_a_weight_check_that_matched_nothing() -> None:
    report = make_report()
    report.skipped = (("CUDAExecutionProvider", "not installed in this onnxruntime"),)
    report.providers = report.providers[:1]
    report.weights = WeightsReport("fail", (), (), ("onnx::Conv_1",), ("conv_pre.weight",))
    assert report.passed is False
    root = ET.fromstring(to_junit_xml(report))
    skipped = root.find("testsuite[@name='wnconvert.verify.CUDAExecutionProvider']"
                        "/testcase/skipped")
    assert skipped is not None and "not installed" in (skipped.get("message") or "")
    failure = root.find("testsuite[@name='wnconvert.verify.weights']/testcase[@name='matching']"
                        "/failure")
    assert failure is not None and "conv_pre.weight" in (failure.get("message") or "")
    data = report.to_dict()
    assert data["skipped_providers"] == [{"name": "CUDAExecutionProvider",
                                          "reason": "not installed in this onnxruntime"}]
    assert data["weights"]["nothing_matched"] is True
    json.dumps(data, allow_nan=False)
