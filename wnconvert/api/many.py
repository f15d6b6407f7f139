"""Many ONNX models in one run (a model zoo in CI): :func:`onnx_files` expands folders, and
:func:`check_onnx_files` lints every file, a file that cannot be read being a row of the result
rather than the end of the run.

One process pays the start-up (Python, onnx, the graph analysis) once for all the files.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import CheckFailed, InputError, WnConvertError
from .progress import SILENT, Progress

if TYPE_CHECKING:
    from ..choices import Precision
    from ..onnx_graph import CheckResult
    from ..verification import VerifyOptions


@dataclass(frozen=True)
class SkippedFile:
    """A file a folder holds that is not checked, and why."""

    path: Path
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "reason": self.reason}


def _expand(paths: Iterable[Path | str]) -> tuple[list[Path], list[SkippedFile]]:
    """The files of :func:`onnx_files` and the symlinks it left out."""
    files: list[Path] = []
    skipped: list[SkippedFile] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append(path)

    for given in paths:
        path = Path(given)
        if not path.is_dir():
            add(path)  # a missing or unreadable file is the checker's to report, as one row
            continue
        root = path.resolve()
        found: list[Path] = []
        # followlinks=False: a symlinked folder is not entered (it could lead anywhere, or
        # back up into this folder forever).
        for folder, dirs, names in os.walk(path, followlinks=False):
            dirs.sort()
            for name in names:
                if name.lower().endswith(".onnx"):
                    found.append(Path(folder) / name)
        found.sort(key=lambda p: p.relative_to(path).parts)
        if not found:
            raise InputError(f"{path}: a folder with no .onnx file in it (searched every "
                             "subfolder); give the models' folder or the files themselves")
        for candidate in found:
            if candidate.is_symlink() and not candidate.resolve().is_relative_to(root):
                skipped.append(SkippedFile(candidate, f"a symlink to {candidate.resolve()}, "
                                                      f"outside {path}; give it by name to "
                                                      "check it"))
                continue
            add(candidate)
    return files, skipped


def onnx_files(paths: Iterable[Path | str]) -> list[Path]:
    """The ONNX models ``paths`` names: a file as it is; a folder as every ``*.onnx`` below it
    (any depth, sorted by path; symlinked folders are not entered, and a symlinked file that
    points outside the folder is skipped). The same file given twice is listed once, where it
    first appears. A folder with no ``.onnx`` raises :class:`wnconvert.InputError`."""
    return _expand(paths)[0]


@dataclass
class CheckedFile:
    """One file of a :class:`CheckBatch`: its lint result, or the error that stopped it."""

    path: Path
    result: CheckResult | None
    error: WnConvertError | OSError | None = None

    @property
    def failure(self) -> CheckFailed | None:
        """Why the file fails the lint (None when clean or unreadable)."""
        from .onnx_models import check_failure

        return check_failure(self.result) if self.result is not None else None

    @property
    def exit_code(self) -> int:
        """0 clean, 1 norm computed at run time, 2 the file could not be checked."""
        if self.error is not None:
            return self.error.exit_code if isinstance(self.error, WnConvertError) else 2
        return 1 if self.failure is not None else 0

    def message(self) -> str | None:
        """The one line saying what is wrong (API terms), or None when clean."""
        if self.error is not None:
            return _error_line(self.error)
        failure = self.failure
        return str(failure) if failure is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "exit_code": self.exit_code,
                "clean": self.result.clean if self.result is not None else None,
                "message": self.message(),
                "check": self.result.to_dict() if self.result is not None else None}


def _error_line(error: WnConvertError | OSError) -> str:
    if isinstance(error, WnConvertError):
        return str(error)
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}"


class _Batch:
    """What the many-file results share: the worst exit code, the counts and the JSON of the
    whole run. ``OK``: the word the counts use for a file that exited 0."""

    OK: ClassVar[str] = "ok"
    files: Sequence[CheckedFile | FileOutcome]
    skipped: list[SkippedFile]
    seconds: float

    @property
    def exit_code(self) -> int:
        """The worst of the files' exit codes: 2 (not done) > 1 (failed its check) > 0."""
        return max((entry.exit_code for entry in self.files), default=0)

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    def counts(self) -> dict[str, int]:
        codes = [entry.exit_code for entry in self.files]
        return {"files": len(codes), self.OK: codes.count(0), "failed": codes.count(1),
                "errors": sum(code >= 2 for code in codes)}

    def _batch_dict(self) -> dict[str, Any]:
        return {"files": [entry.to_dict() for entry in self.files],
                "exit_code": self.exit_code, "passed": self.passed, "summary": self.counts(),
                "skipped": [entry.to_dict() for entry in self.skipped],
                "seconds": round(self.seconds, 4)}


@dataclass
class CheckBatch(_Batch):
    """What :func:`check_onnx_files` found: one :class:`CheckedFile` per model, in order."""

    OK: ClassVar[str] = "clean"
    files: list[CheckedFile]
    skipped: list[SkippedFile] = field(default_factory=list)
    seconds: float = 0.0
    reports_written: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``wnconvert check A.onnx B.onnx --json`` (one document for all files)."""
        return self._batch_dict()


def check_onnx_files(paths: Sequence[Path | str], *, reports: Sequence[Path | str] = (),
                     force: bool = False, progress: Progress = SILENT) -> CheckBatch:
    """Lint every ONNX model ``paths`` names (files, and folders as :func:`onnx_files` expands
    them): where each still computes weight norm at run time.

    Every file is checked, whatever the others gave: one that cannot be read (missing, not
    ONNX, refused by ``onnx.checker``) is a :class:`CheckedFile` with its ``error``, and the
    batch's ``exit_code`` is the worst (2 > 1 > 0). ``reports`` (``.json``: ``to_dict()``;
    ``.xml``: JUnit, one test case per file; ``.md``: a Markdown table, one row per file) are
    checked before any model is read and written at the end (an existing one needs ``force``).
    """
    from ..verification.report import check_report_paths
    from .onnx_models import check_onnx

    files, skipped = _expand(paths)
    if not files:
        raise InputError("no ONNX model given; name .onnx files or folders holding them")
    report_paths = [Path(p) for p in reports]
    check_report_paths(report_paths, force=force, inputs=files)
    started = time.perf_counter()
    checked: list[CheckedFile] = []
    with progress.step(f"checking {len(files)} model(s)") as bar:
        for done, path in enumerate(files):
            try:
                checked.append(CheckedFile(path, check_onnx(path)))
            except (WnConvertError, OSError) as error:
                checked.append(CheckedFile(path, None, error))
            if bar is not None:
                bar(str(path), done + 1, len(files))
    batch = CheckBatch(checked, skipped, time.perf_counter() - started)
    batch.reports_written = _write_batch_reports(batch, report_paths, force=force)
    return batch


def _write_batch_reports(batch: CheckBatch, paths: Sequence[Path], *,
                         force: bool) -> list[Path]:
    from ..formats.atomic import atomic_file
    from ..verification.markdown import check_batch_markdown

    for path in paths:
        suffix = path.suffix.lower()
        if suffix == ".md":
            data = check_batch_markdown(batch.to_dict()).encode("utf-8")
        elif suffix == ".xml":
            data = check_junit_xml(batch)
        else:
            data = (json.dumps(batch.to_dict(), indent=2) + "\n").encode("utf-8")
        with atomic_file(path, force=force) as handle:
            handle.write(data)
    return list(paths)


def check_junit_xml(batch: CheckBatch) -> bytes:
    """JUnit XML of a batch: one test case per file; not clean is a ``<failure>``, a file that
    could not be checked an ``<error>``."""
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites", name="wnconvert check")
    suite = ET.SubElement(root, "testsuite", name="wnconvert.check")
    counts = {"tests": 0, "failures": 0, "errors": 0}
    for entry in batch.files:
        case = ET.SubElement(suite, "testcase", classname="wnconvert.check",
                             name=str(entry.path), time="0")
        counts["tests"] += 1
        message = entry.message() or ""
        if entry.exit_code == 1:
            counts["failures"] += 1
            ET.SubElement(case, "failure", message=message, type="NormAtRunTime").text = message
        elif entry.exit_code:
            counts["errors"] += 1
            ET.SubElement(case, "error", message=message, type="InputError").text = message
    for key, value in counts.items():
        suite.set(key, str(value))
        root.set(key, str(value))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


# --------------------------------------------------------------------------------------------
# inspect and fold of many files


@dataclass
class FileOutcome:
    """One file of a :class:`FileBatch`: the job's result (anything with ``to_dict()``), or the
    error that stopped it; ``exit_code`` is what a run on this file alone would exit with."""

    path: Path
    result: Any | None
    error: WnConvertError | OSError | None = None
    failure: WnConvertError | None = None  # a result that fails its check (exit 1)

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return self.error.exit_code if isinstance(self.error, WnConvertError) else 2
        return self.failure.exit_code if self.failure is not None else 0

    def message(self) -> str | None:
        """The one line saying what went wrong (API terms), or None."""
        if self.error is not None:
            return _error_line(self.error)
        return str(self.failure) if self.failure is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "exit_code": self.exit_code, "message": self.message(),
                "result": self.result.to_dict() if self.result is not None else None}


@dataclass
class FileBatch(_Batch):
    """What :func:`inspect_files` or :func:`fold_onnx_files` did, one :class:`FileOutcome` per
    file in order; ``exit_code`` is the worst of them."""

    job: str
    files: list[FileOutcome]
    skipped: list[SkippedFile] = field(default_factory=list)
    seconds: float = 0.0
    reports_written: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``wnconvert inspect A B --json`` / ``fold A.onnx B.onnx --json``."""
        return {"job": self.job, **self._batch_dict()}


def _run_each(job: str, files: list[Path], skipped: list[SkippedFile], progress: Progress,
              one: Any) -> FileBatch:
    """``one(path) -> (result, failure)`` on every file; errors are kept as data."""
    started = time.perf_counter()
    outcomes: list[FileOutcome] = []
    for path in files:
        progress.status(f"{job} {path}")
        try:
            result, failure = one(path)
            outcomes.append(FileOutcome(path, result, None, failure))
        except (WnConvertError, OSError) as error:
            outcomes.append(FileOutcome(path, None, error))
    return FileBatch(job, outcomes, skipped, time.perf_counter() - started)


def inspect_files(paths: Sequence[Path | str], *, key: str | None = None,
                  progress: Progress = SILENT) -> FileBatch:
    """:func:`inspect_onnx` or :func:`inspect_checkpoint` (by suffix) on every file ``paths``
    names; a folder stands for the ``.onnx`` models below it (:func:`onnx_files`). A file that
    cannot be read is an outcome with its error (exit code 2); the others are still inspected.
    ``key`` picks the state dict of every checkpoint."""
    from .checkpoints import inspect_checkpoint
    from .onnx_models import inspect_onnx

    files, skipped = _expand(paths)

    def one(path: Path) -> tuple[Any, None]:
        if path.suffix.lower() == ".onnx":
            return inspect_onnx(path), None
        return inspect_checkpoint(path, key=key, progress=progress), None

    return _run_each("inspect", files, skipped, progress, one)


def fold_onnx_files(paths: Sequence[Path | str], *, verify: bool = True,
                    options: VerifyOptions | None = None, reports: Sequence[Path | str] = (),
                    precision: Precision = "fp32", keep_io_types: bool = True,
                    force: bool = False, progress: Progress = SILENT) -> FileBatch:
    """:func:`fold_onnx` on every ONNX model ``paths`` names (folders: :func:`onnx_files`,
    leaving out the ``*.folded.onnx`` a previous run wrote), each written next to its input as
    ``<stem>.folded.onnx`` and verified on its own. A model that fails (unreadable: exit code 2;
    its verification failed: 1, nothing written for it) does not stop the others. ``reports``
    (``.json``: ``to_dict()``; ``.md``: a summary table, then each model's verification)
    cover every model. ``precision``/``keep_io_types``: as in :func:`fold_onnx`, for each."""
    from ..formats.atomic import atomic_file
    from ..onnx_graph.precision import check_precision
    from ..verification.report import check_report_paths
    from .onnx_models import fold_onnx

    check_precision(precision, keep_io_types=keep_io_types)  # once, not once per model
    files, skipped = _expand(paths)
    named = {Path(p) for p in paths}
    # What an earlier run wrote into the folder is not folded again.
    files = [path for path in files
             if path in named or not path.name.lower().endswith(".folded.onnx")]
    not_onnx = [path for path in files if path.suffix.lower() != ".onnx"]
    if not_onnx:
        raise InputError(f"{not_onnx[0]}: several inputs are folded as .onnx models only; fold "
                         "a checkpoint on its own")
    report_paths = [Path(p) for p in reports]
    for report in report_paths:
        if report.suffix.lower() not in (".json", ".md"):
            raise InputError.template("{-reports=path}: several models take a .json or a .md "
                                      "report (one covering them all)", path=report)
    check_report_paths(report_paths, force=force, inputs=files)

    def one(path: Path) -> tuple[Any, WnConvertError | None]:
        result = fold_onnx(path, verify=verify, options=options, precision=precision,
                           keep_io_types=keep_io_types, force=force, progress=progress)
        return result, result.failure()

    batch = _run_each("fold", files, skipped, progress, one)
    for report in report_paths:
        data = (fold_batch_markdown(batch) if report.suffix.lower() == ".md" else
                json.dumps(batch.to_dict(), indent=2) + "\n")
        with atomic_file(report, force=force) as handle:
            handle.write(data.encode("utf-8"))
    batch.reports_written = report_paths
    return batch


def fold_batch_markdown(batch: FileBatch) -> str:
    """The Markdown report of a many-model fold: one row per model, then each verification."""
    from ..verification.markdown import files_markdown, verification_markdown

    parts = [files_markdown(batch.to_dict(), job="wnconvert fold", done="folded",
                            failed="verification failed")]
    for entry in batch.files:
        report = getattr(entry.result, "report", None)
        if report is not None:
            parts.append(verification_markdown(report.to_dict(),
                                               title=f"{entry.path}: verification"))
    return "\n".join(parts)
