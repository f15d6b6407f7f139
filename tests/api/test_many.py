"""``onnx_files`` and ``check_onnx_files``: many ONNX models in one run (issue 21 §1)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import wnconvert
from tests.onnx_graph.builders import save_clean_model, save_weight_norm_model
from wnconvert.errors import InputError


@pytest.fixture
def zoo(tmp_path: Path) -> Path:
    """b/dirty.onnx, a.onnx (clean), c/deep/z.onnx (clean), broken.onnx, notes.txt."""
    root = tmp_path / "zoo"
    save_weight_norm_model(root / "b" / "dirty.onnx")
    save_clean_model(root / "a.onnx")
    save_clean_model(root / "c" / "deep" / "z.onnx")
    (root / "broken.onnx").write_bytes(b"\xff\xff not protobuf")
    (root / "notes.txt").write_text("not a model")
    return root


def test_onnx_files_expands_folders_sorted_and_recursive(zoo: Path) -> None:
    assert wnconvert.onnx_files([zoo]) == [
        zoo / "a.onnx", zoo / "b" / "dirty.onnx", zoo / "broken.onnx",
        zoo / "c" / "deep" / "z.onnx"]


def test_onnx_files_counts_a_file_given_twice_once(zoo: Path) -> None:
    files = wnconvert.onnx_files([zoo / "a.onnx", zoo, zoo / "a.onnx"])
    assert files[0] == zoo / "a.onnx" and len(files) == 4


def test_onnx_files_keeps_missing_files_for_the_checker(tmp_path: Path) -> None:
    assert wnconvert.onnx_files([tmp_path / "nope.onnx"]) == [tmp_path / "nope.onnx"]


def test_a_folder_without_onnx_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("")
    with pytest.raises(InputError, match="empty: a folder with no .onnx file"):
        wnconvert.onnx_files([tmp_path / "empty"])


def test_symlinks_out_of_the_folder_are_skipped(tmp_path: Path) -> None:
    outside = save_weight_norm_model(tmp_path / "elsewhere" / "secret.onnx")
    root = tmp_path / "zoo"
    save_clean_model(root / "a.onnx")
    (root / "link.onnx").symlink_to(outside)
    (root / "inside.onnx").symlink_to(root / "a.onnx")  # inside: kept, but it is a.onnx again
    (root / "linked_dir").symlink_to(outside.parent, target_is_directory=True)
    assert wnconvert.onnx_files([root]) == [root / "a.onnx"]
    batch = wnconvert.check_onnx_files([root])
    assert [str(s.path) for s in batch.skipped] == [str(root / "link.onnx")]
    assert "outside" in batch.skipped[0].reason
    assert batch.exit_code == 0
    # Named on the command line, the same link is checked.
    assert wnconvert.check_onnx_files([root / "link.onnx"]).exit_code == 1


def test_check_onnx_files_checks_every_file_and_keeps_the_worst_exit_code(zoo: Path) -> None:
    batch = wnconvert.check_onnx_files([zoo, zoo.parent / "missing.onnx"])
    assert [entry.exit_code for entry in batch.files] == [0, 1, 2, 0, 2]
    assert batch.exit_code == 2 and not batch.passed
    broken = batch.files[2]
    assert broken.result is None and "broken.onnx" in (broken.message() or "")
    data = batch.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["summary"] == {"files": 5, "clean": 2, "failed": 1, "errors": 2}
    assert data["files"][1]["check"]["weight_norm"][0]["parameter"] == "layer.weight"
    assert data["exit_code"] == 2


def test_worst_exit_code_is_one_without_unreadable_files(zoo: Path) -> None:
    batch = wnconvert.check_onnx_files([zoo / "a.onnx", zoo / "b" / "dirty.onnx"])
    assert batch.exit_code == 1
    assert wnconvert.check_onnx_files([zoo / "a.onnx"]).exit_code == 0


def test_batch_reports_by_suffix_atomic_and_never_clobbered(zoo: Path, tmp_path: Path) -> None:
    paths = [tmp_path / "lint.md", tmp_path / "lint.json", tmp_path / "lint.xml"]
    batch = wnconvert.check_onnx_files([zoo], reports=paths)
    assert batch.reports_written == paths
    markdown = paths[0].read_text()
    assert markdown.startswith("## ❌ wnconvert check: 2 of 4 file(s) failed")
    assert markdown.count("\n| ") == 2 + 4  # header, its rule, and one row per file
    assert json.loads(paths[1].read_text())["summary"]["failed"] == 1
    suite = ET.parse(paths[2]).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "1", "1")
    with pytest.raises(InputError, match="lint.md"):
        wnconvert.check_onnx_files([zoo], reports=[paths[0]])
    wnconvert.check_onnx_files([zoo / "a.onnx"], reports=[paths[0]], force=True)
    assert "all clean" in paths[0].read_text()


def test_bad_report_names_are_refused_before_any_model_is_read(
        zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wnconvert.api.onnx_models as onnx_models

    def never(path: Path) -> None:
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(onnx_models, "check_onnx", never)
    with pytest.raises(InputError, match="lint.txt: unknown report type"):
        wnconvert.check_onnx_files([zoo], reports=[tmp_path / "lint.txt"])
    with pytest.raises(InputError, match="given twice"):
        wnconvert.check_onnx_files([zoo], reports=[tmp_path / "a.md", tmp_path / "a.md"])
    (tmp_path / "old.md").write_text("keep")
    with pytest.raises(InputError, match="old.md"):
        wnconvert.check_onnx_files([zoo], reports=[tmp_path / "old.md"])
    assert (tmp_path / "old.md").read_text() == "keep"


def test_inspect_files_takes_models_and_checkpoints_and_keeps_errors(
        zoo: Path, tmp_path: Path, save_pt) -> None:
    import torch

    checkpoint = save_pt({"w": torch.ones(2, 2)}, "plain.pt")
    batch = wnconvert.inspect_files([zoo / "a.onnx", checkpoint, zoo / "broken.onnx"])
    assert [entry.exit_code for entry in batch.files] == [0, 0, 2]
    data = batch.to_dict()
    assert data["job"] == "inspect" and data["exit_code"] == 2
    assert data["files"][0]["result"]["model"] == str(zoo / "a.onnx")
    assert data["files"][1]["result"] is not None and data["files"][2]["result"] is None
    assert json.loads(json.dumps(data)) == data


def test_fold_onnx_files_folds_each_next_to_its_input(zoo: Path, tmp_path: Path) -> None:
    report = tmp_path / "fold.md"
    options = wnconvert.VerifyOptions(providers=("cpu",))
    batch = wnconvert.fold_onnx_files([zoo / "b", zoo / "a.onnx", zoo / "broken.onnx"],
                                      options=options, reports=[report])
    assert [entry.exit_code for entry in batch.files] == [0, 0, 2]
    assert (zoo / "b" / "dirty.folded.onnx").is_file() and (zoo / "a.folded.onnx").is_file()
    assert wnconvert.check_onnx(zoo / "b" / "dirty.folded.onnx").clean
    text = report.read_text()
    assert text.startswith("## ❌ wnconvert fold: 1 of 3 file(s) failed")
    assert text.count("verification: passed") == 2
    # A second run over the folder does not fold its own outputs again.
    again = wnconvert.fold_onnx_files([zoo / "b"], options=options, force=True)
    assert [entry.path for entry in again.files] == [zoo / "b" / "dirty.onnx"]


def test_fold_onnx_files_refuses_checkpoints_and_xml_reports(zoo: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="x.pt: several inputs are folded as .onnx models"):
        wnconvert.fold_onnx_files([zoo / "a.onnx", tmp_path / "x.pt"])
    with pytest.raises(InputError, match="a .json or a .md report"):
        wnconvert.fold_onnx_files([zoo / "a.onnx"], reports=[tmp_path / "r.xml"])
