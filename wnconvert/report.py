"""Verification reports for CI: JSON (schema ``wnconvert.verify/1``) and JUnit XML.

The file type follows the suffix: ``.json`` or ``.xml``. Every path is checked before anything
is written (an existing file needs ``force``), and each file is written atomically.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError
from .formats.atomic import atomic_file, check_output
from .verify import VerificationReport, describe

REPORT_SUFFIXES = (".json", ".xml")


def check_report_paths(paths: Sequence[Path], *, force: bool, inputs: Sequence[Path] = ()) -> None:
    """Raise :class:`InputError` for a bad suffix or an existing file without ``force``.

    Call it before long work (export, verification) so a bad path fails fast.
    """
    seen: set[Path] = set()
    for path in paths:
        if path.suffix.lower() not in REPORT_SUFFIXES:
            raise InputError(f"--report {path}: unknown report type; use a .json file or a .xml "
                             "file (JUnit)")
        resolved = path.resolve()
        if resolved in seen:
            raise InputError(f"--report {path}: given twice; name each report once")
        seen.add(resolved)
        check_output(path, force=force, inputs=inputs)


def write_reports(report: VerificationReport, paths: Sequence[Path], *, force: bool) -> list[Path]:
    """Write ``report`` to every path (``.json`` or ``.xml``); returns the paths written."""
    check_report_paths(paths, force=force)
    for path in paths:
        data = to_junit_xml(report) if path.suffix.lower() == ".xml" else to_json(report)
        with atomic_file(path, force=force) as handle:
            handle.write(data)
    return list(paths)


def to_json(report: VerificationReport) -> bytes:
    return (json.dumps(report.to_dict(), indent=2) + "\n").encode("utf-8")


def to_junit_xml(report: VerificationReport) -> bytes:
    """JUnit XML: one test suite per provider, one test case per output (plus weights).

    A failed tolerance check is a ``<failure>``; a provider that could not run the model is an
    ``<error>``. CI systems (GitHub, GitLab, Jenkins) show each output as a test.
    """
    root = ET.Element("testsuites", name="wnconvert verify")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    candidate = str(report.candidate.get("path", ""))
    for provider in report.providers:
        suite_name = f"wnconvert.verify.{provider.name}"
        suite = ET.SubElement(root, "testsuite", name=suite_name)
        props = ET.SubElement(suite, "properties")
        for name, value in (("candidate", candidate), ("reference", _ref_text(report)),
                            ("rule", report.rule), *(("note", n) for n in provider.notes)):
            ET.SubElement(props, "property", name=name, value=value)
        counts = {"tests": 0, "failures": 0, "errors": 0}
        if provider.error:
            case = ET.SubElement(suite, "testcase", classname=suite_name, name="session", time="0")
            ET.SubElement(case, "error", message=provider.error, type="RuntimeError").text = \
                provider.error
            counts["tests"] += 1
            counts["errors"] += 1
        for out in provider.outputs:
            case = ET.SubElement(suite, "testcase", classname=suite_name, name=out.name, time="0")
            counts["tests"] += 1
            first = out.first
            summary = (f"shape {list(first.shape)} {first.dtype}; atol {first.atol:g} rtol "
                       f"{first.rtol:g}; max_abs {out.max_abs:.3g} max_rel {out.max_rel:.3g} "
                       f"mean_abs {out.mean_abs:.3g} min_atol {out.min_atol:.3g}")
            if out.passed:
                ET.SubElement(case, "system-out").text = summary
                continue
            counts["failures"] += 1
            label, comp = out.worst_case
            message = f"output {out.name!r} ({label}): {describe(comp)}"
            ET.SubElement(case, "failure", message=message, type="ToleranceExceeded").text = \
                message + "\n" + summary
        _finish_suite(suite, counts, totals)
    if report.weights is not None:
        suite_name = "wnconvert.verify.weights"
        suite = ET.SubElement(root, "testsuite", name=suite_name)
        counts = {"tests": 0, "failures": 0, "errors": 0}
        for weight in report.weights.compared:
            case = ET.SubElement(suite, "testcase", classname=suite_name, name=weight.name,
                                 time="0")
            counts["tests"] += 1
            if not weight.passed and report.weights.mode == "fail":
                counts["failures"] += 1
                message = (f"weight {weight.name!r} differs: max_abs {weight.max_abs:.3g}, "
                           f"max_rel {weight.max_rel:.3g} (atol {weight.atol:g}, "
                           f"rtol {weight.rtol:g})")
                ET.SubElement(case, "failure", message=message, type="WeightMismatch").text = \
                    message
        _finish_suite(suite, counts, totals)
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _finish_suite(suite: ET.Element, counts: dict[str, int], totals: dict[str, int]) -> None:
    for key, value in counts.items():
        suite.set(key, str(value))
        totals[key] += value


def _ref_text(report: VerificationReport) -> str:
    ref = report.reference
    parts = [str(ref.get("kind", ""))]
    for key in ("path", "checkpoint", "model", "program"):
        if ref.get(key):
            parts.append(f"{key}={ref[key]}")
    return " ".join(parts)
