"""``wnconvert check`` of many models in one run, and its reports (issue 21 §1, §4)."""

from __future__ import annotations

import json
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.onnx_graph.builders import save_clean_model, save_weight_norm_model

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def zoo(tmp_path: Path) -> Path:
    root = tmp_path / "zoo"
    save_clean_model(root / "a.onnx")
    save_weight_norm_model(root / "b.onnx")
    save_clean_model(root / "sub" / "c.onnx")
    return root


def test_several_files_one_line_each_and_a_summary(cli, zoo):
    result = cli("check", zoo / "a.onnx", zoo / "sub" / "c.onnx")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"clean: {zoo / 'a.onnx'}", f"clean: {zoo / 'sub' / 'c.onnx'}"]
    assert re.fullmatch(r"checked 2 model\(s\) in [\d.]+ s: 2 clean, 0 not clean, 0 could not "
                        r"be read", lines[2])
    assert result.stderr == ""


def test_a_folder_is_every_onnx_below_it_sorted(cli, zoo):
    result = cli("check", zoo)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[:3] == [
        f"clean: {zoo / 'a.onnx'}",
        f"not clean: {zoo / 'b.onnx'}: computes weight norm at run time in 1 place(s); fold it "
        f"with wnconvert fold {zoo / 'b.onnx'}",
        f"clean: {zoo / 'sub' / 'c.onnx'}"]
    assert result.stderr == ("error: 1 of 3 model(s) failed the check (not clean, or could not "
                             "be read)\n")


def test_every_file_is_checked_after_a_failure_and_the_worst_exit_code_wins(cli, zoo, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\xff\xff not protobuf")
    missing = tmp_path / "missing.onnx"
    result = cli("check", zoo / "b.onnx", broken, missing, zoo / "a.onnx")
    assert result.exit_code == 2
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == [
        "not clean", "unreadable", "unreadable", "clean"]
    assert str(broken) in lines[1] and str(missing) in lines[2]
    assert "1 clean, 1 not clean, 2 could not be read" in lines[4]
    # Not clean and clean only: 1.
    assert cli("check", zoo / "a.onnx", zoo / "b.onnx").exit_code == 1


def test_json_is_one_document_for_every_file(cli, zoo, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not protobuf")
    result = cli("check", zoo, broken, "--json")
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert [entry["path"] for entry in data["files"]] == [
        str(zoo / "a.onnx"), str(zoo / "b.onnx"), str(zoo / "sub" / "c.onnx"), str(broken)]
    assert [entry["exit_code"] for entry in data["files"]] == [0, 1, 0, 2]
    assert data["exit_code"] == 2 and data["passed"] is False
    assert data["summary"] == {"files": 4, "clean": 2, "failed": 1, "errors": 1}
    assert data["files"][3]["check"] is None and "broken.onnx" in data["files"][3]["message"]


def test_one_file_keeps_its_output_and_json(cli, zoo):
    dirty = cli("check", zoo / "b.onnx")
    assert dirty.exit_code == 1 and "checked" not in dirty.stdout
    assert dirty.stderr.startswith(f"error: {zoo / 'b.onnx'}: computes weight norm")
    data = json.loads(cli("check", zoo / "a.onnx", "--json").stdout)
    assert data["model"] == str(zoo / "a.onnx") and "files" not in data


def test_one_file_with_a_report_keeps_its_output(cli, zoo, tmp_path, assert_input_error):
    report = tmp_path / "lint.md"
    result = cli("check", zoo / "a.onnx", "--report", report)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [f"clean: {zoo / 'a.onnx'} computes no weight norm at "
                                          "run time", f"wrote report {report}"]
    assert "all clean" in report.read_text()
    assert_input_error(cli("check", zoo / "a.onnx", "--report", report), report)
    assert cli("check", zoo / "a.onnx", "--report", report, "--force").exit_code == 0
    missing = tmp_path / "missing.onnx"
    assert_input_error(cli("check", missing, "--report", tmp_path / "x.md"), missing)


def test_symlinks_out_of_a_folder_are_skipped_with_a_warning(cli, zoo, tmp_path):
    outside = save_weight_norm_model(tmp_path / "elsewhere" / "out.onnx")
    (zoo / "link.onnx").symlink_to(outside)
    result = cli("check", zoo, "--json")
    assert result.exit_code == 1  # b.onnx; the link is not checked
    data = json.loads(result.stdout)
    assert [s["path"] for s in data["skipped"]] == [str(zoo / "link.onnx")]
    assert f"warning: skipped {zoo / 'link.onnx'}: a symlink to" in result.stderr


def test_a_folder_without_models_is_an_input_error(cli, tmp_path, assert_input_error):
    (tmp_path / "empty").mkdir()
    assert_input_error(cli("check", tmp_path / "empty"), "no .onnx file")


def test_check_reports_markdown_json_and_junit(cli, zoo, tmp_path):
    md, js, xml = tmp_path / "lint.md", tmp_path / "lint.json", tmp_path / "lint.xml"
    result = cli("check", zoo, "--report", md, "--report", js, "--report", xml)
    assert result.exit_code == 1
    assert f"wrote report {md}" in result.stdout
    text = md.read_text()
    assert text.startswith("## ❌ wnconvert check: 1 of 3 file(s) failed")
    assert f"| {zoo / 'b.onnx'} | ❌ norm computed at run time |" in text
    assert json.loads(js.read_text())["exit_code"] == 1
    cases = ET.parse(xml).getroot().iter("testcase")
    assert [case.get("name") for case in cases] == [
        str(zoo / "a.onnx"), str(zoo / "b.onnx"), str(zoo / "sub" / "c.onnx")]


def _summary_step() -> str:
    """The shell line of the README's job-summary step."""
    [line] = [line.split("run:", 1)[1].strip() for line in README.read_text().splitlines()
              if "GITHUB_STEP_SUMMARY" in line and "run:" in line]
    return line


def test_the_readme_job_summary_step_appends_the_markdown(cli, zoo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_clean_model(tmp_path / "generator.onnx")
    assert cli("check", "generator.onnx", "--report", "lint.md").exit_code == 0
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    # verify.md is missing (its step failed): the summary step still appends what there is.
    subprocess.run(["bash", "-c", _summary_step()], cwd=tmp_path, check=True,
                   env={"GITHUB_STEP_SUMMARY": str(summary), "PATH": "/usr/bin:/bin"},
                   capture_output=True)
    text = summary.read_text()
    assert text.startswith("earlier step\n## ✅ wnconvert check: 1 file(s), all clean")
