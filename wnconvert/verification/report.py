"""Verification reports: the JSON document (schema ``wnconvert.verify/1``), JUnit XML and a
Markdown summary (:mod:`.markdown`).

The file type follows the suffix: ``.json``, ``.xml`` or ``.md``. Every path is checked before
anything is written (an existing file needs ``force``), and each file is written atomically.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..errors import InputError
from ..formats.atomic import atomic_file, check_output
from .compare import (
    ArrayComparison,
    ErrorStats,
    describe,
    json_number,
    json_snr,
    stat_label,
)
from .tolerance import REPORT_SCHEMA

if TYPE_CHECKING:  # results.py imports this module to write its JSON form
    from .results import OutputResult, ProviderResult, VerificationReport, WeightsReport

REPORT_SUFFIXES = (".json", ".xml", ".md")


def report_dict(report: VerificationReport) -> dict[str, Any]:
    """The JSON report of ``report`` (strict JSON: non-finite numbers are null)."""
    return {
        "schema": REPORT_SCHEMA,
        "passed": report.passed,
        "tool": {"name": "wnconvert", "version": __version__},
        "rule": report.rule,
        "candidate": report.candidate,
        "reference": report.reference,
        "output_matching": report.output_matching,
        "cases": [
            {
                "label": case.label,
                "source": case.source,
                "seed": list(case.seed) if case.seed is not None else None,
                "inputs": {
                    name: {"shape": list(shape), "dtype": dtype}
                    for name, (shape, dtype) in case.inputs.items()
                },
            }
            for case in report.cases
        ],
        "providers": [_provider_dict(p) for p in report.providers],
        "skipped_providers": [{"name": name, "reason": why} for name, why in report.skipped],
        "weights": _weights_dict(report.weights) if report.weights is not None else None,
        "notes": list(report.notes),
        "warnings": report.warnings(),
        "failures": report.failures(),
    }

def _comparison_dict(comp: ArrayComparison) -> dict[str, Any]:
    return {
        "shape": list(comp.shape),
        "dtype": comp.dtype,
        "reference_shape": list(comp.reference_shape),
        "reference_dtype": comp.reference_dtype,
        "max_abs": json_number(comp.max_abs),
        "max_rel": json_number(comp.max_rel),
        "mean_abs": json_number(comp.mean_abs),
        "min_atol": json_number(comp.min_atol),
        "mismatched": comp.mismatched,
        "nonfinite_mismatch": comp.nonfinite_mismatch,
        "size": comp.size,
        "worst_index": list(comp.worst_index) if comp.worst_index is not None else None,
        "message": comp.message,
        "reference_max_abs": json_number(comp.ref_max_abs),
        "passed": comp.passed,
        **_budget_dict(comp.stats, comp),
    }


def _budget_dict(stats: ErrorStats | None, source: ArrayComparison | OutputResult
                 ) -> dict[str, Any]:
    """The error budget keys of an output or a case (none for a comparison without stats)."""
    if stats is None:
        return {}
    rule = source.cases[0][1].rule if not isinstance(source, ArrayComparison) else source.rule
    return {
        "check_error_stat": rule.stat,
        "error_quantile": rule.quantile,
        "min_snr": rule.min_snr,
        "min_rtol": json_number(source.min_rtol),
        "failed_rules": list(source.failed_rules),
        "errors": stats_dict(stats),
    }


def stats_dict(stats: ErrorStats) -> dict[str, Any]:
    """``{"abs": {"max", "mean", "median", "quantile"}, "rel": {...}, "quantile", "snr_db",
    "elements"}``: non-finite numbers are null, except the SNR (:func:`json_snr`)."""
    return {
        **{kind: {stat: json_number(stats.of(kind, stat))
                  for stat in ("max", "mean", "median", "quantile")} for kind in ("abs", "rel")},
        "quantile": stats.quantile,
        "snr_db": json_snr(stats.snr_db),
        "elements": stats.finite,
    }


def _junit_properties(stats: ErrorStats) -> list[tuple[str, str]]:
    """``abs_max``, ..., ``rel_p99``, ``snr_db`` as text (repr-exact numbers)."""
    props = [(f"{kind}_{stat_label(stat, stats.quantile) if stat == 'quantile' else stat}",
              repr(stats.of(kind, stat)))
             for kind in ("abs", "rel") for stat in ("max", "mean", "median", "quantile")]
    props.append(("snr_db", str(json_snr(stats.snr_db))))
    return props


def _output_dict(out: OutputResult) -> dict[str, Any]:
    first = out.first
    return {
        "name": out.name,
        "reference_name": out.reference_name,
        "passed": out.passed,
        "shape": list(first.shape),
        "dtype": first.dtype,
        "atol": first.atol,
        "rtol": first.rtol,
        "max_abs": json_number(out.max_abs),
        "max_rel": json_number(out.max_rel),
        "mean_abs": json_number(out.mean_abs),
        "min_atol": json_number(out.min_atol),
        "mismatched": out.mismatched,
        "failure": None if out.passed else describe(out.worst_case[1]),
        "reference_max_abs": json_number(out.ref_max_abs),
        "warning": out.weak_tolerance(),
        **_budget_dict(out.stats, out),
        "cases": [{"case": label, **_comparison_dict(comp)} for label, comp in out.cases],
    }


def _provider_dict(provider: ProviderResult) -> dict[str, Any]:
    return {
        "name": provider.name,
        "passed": provider.passed,
        "options": dict(provider.options),
        "chain": list(provider.chain),
        "tf32": provider.tf32,
        "notes": list(provider.notes),
        "messages": list(provider.messages),
        "error": provider.error,
        "outputs": [_output_dict(out) for out in provider.outputs],
    }


def _weights_dict(weights: WeightsReport) -> dict[str, Any]:
    worst = weights.worst
    return {
        "mode": weights.mode,
        "passed": weights.passed,
        "compared": len(weights.compared),
        "nothing_matched": weights.nothing_matched,
        "prefix": None if weights.prefix is None
        else {"strip": weights.prefix[0], "add": weights.prefix[1]},
        "matched_by_value": [{"candidate": c, "reference": r}
                             for c, r in weights.matched_by_value],
        "failed": [w.name for w in weights.failed],
        "worst": None
        if worst is None
        else {"name": worst.name, "max_abs": json_number(worst.max_abs),
              "max_rel": json_number(worst.max_rel)},
        "tensors": [
            {
                "name": w.name,
                "shape": list(w.shape),
                "dtype": w.dtype,
                "max_abs": json_number(w.max_abs),
                "max_rel": json_number(w.max_rel),
                "atol": w.atol,
                "rtol": w.rtol,
                "passed": w.passed,
            }
            for w in weights.compared
        ],
        "skipped": [{"name": name, "reason": why} for name, why in weights.skipped],
        "only_in_candidate": list(weights.only_in_candidate),
        "only_in_reference": list(weights.only_in_reference),
        "derived": [{"name": name, "compared": False, "note": note}
                    for name, note in weights.derived],
    }




def check_report_paths(paths: Sequence[Path], *, force: bool, inputs: Sequence[Path] = ()) -> None:
    """Raise :class:`InputError` for a bad suffix or an existing file without ``force``.

    Call it before long work (export, verification) so a bad path fails fast.
    """
    seen: set[Path] = set()
    for path in paths:
        if path.suffix.lower() not in REPORT_SUFFIXES:
            raise InputError.template("{-reports=path}: unknown report type; use a .json file, "
                                      "a .xml file (JUnit) or a .md file (Markdown)", path=path)
        resolved = path.resolve()
        if resolved in seen:
            raise InputError.template("{-reports=path}: given twice; name each report once",
                                      path=path)
        seen.add(resolved)
        check_output(path, force=force, inputs=inputs)


def write_reports(report: VerificationReport, paths: Sequence[Path], *, force: bool) -> list[Path]:
    """Write ``report`` to every path (``.json``, ``.xml`` or ``.md``); returns the paths
    written."""
    check_report_paths(paths, force=force)
    for path in paths:
        suffix = path.suffix.lower()
        data = (to_junit_xml(report) if suffix == ".xml" else to_markdown(report)
                if suffix == ".md" else to_json(report))
        with atomic_file(path, force=force) as handle:
            handle.write(data)
    return list(paths)


def to_markdown(report: VerificationReport) -> bytes:
    from .markdown import verification_markdown

    return verification_markdown(report.to_dict()).encode("utf-8")


def to_json(report: VerificationReport) -> bytes:
    return (json.dumps(report.to_dict(), indent=2) + "\n").encode("utf-8")


def to_junit_xml(report: VerificationReport) -> bytes:
    """JUnit XML: one test suite per provider, one test case per output (plus weights).

    A failed tolerance check is a ``<failure>``; a provider that could not run the model is an
    ``<error>``. CI systems (GitHub, GitLab, Jenkins) show each output as a test.
    """
    root = ET.Element("testsuites", name="wnconvert verify")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    candidate = str(report.candidate.get("path", ""))
    for provider in report.providers:
        suite_name = f"wnconvert.verify.{provider.name}"
        suite = ET.SubElement(root, "testsuite", name=suite_name)
        props = ET.SubElement(suite, "properties")
        options = ", ".join(f"{k}={v}" for k, v in provider.options.items())
        for name, value in (("candidate", candidate), ("reference", _ref_text(report)),
                            ("rule", report.rule), ("tf32", provider.tf32 or ""),
                            ("options", options), *(("note", n) for n in provider.notes),
                            *(("onnxruntime", m) for m in provider.messages)):
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
            if out.stats is not None:
                summary += (f"\nerrors ({out.rule_summary()}): {out.stats.summary()}; needs atol "
                            f">= {out.min_atol:.3g} or rtol >= {out.min_rtol:.3g}")
                # Per-testcase properties (Jenkins, GitLab and pytest's record_property read them).
                props = ET.SubElement(case, "properties")
                for key, value in [("check", out.rule_summary()), *_junit_properties(out.stats)]:
                    ET.SubElement(props, "property", name=key, value=value)
            weak = out.weak_tolerance()
            if weak:
                ET.SubElement(case, "system-err").text = f"warning: {weak}"
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
        for name, note in report.weights.derived:
            # Shown as skipped, not passed: no comparison was made.
            case = ET.SubElement(suite, "testcase", classname=suite_name, name=name, time="0")
            ET.SubElement(case, "skipped", message=f"derived by the exporter, not compared: "
                                                   f"{note}")
            counts["tests"] += 1
            counts["skipped"] = counts.get("skipped", 0) + 1
        if report.weights.nothing_matched:
            case = ET.SubElement(suite, "testcase", classname=suite_name, name="matching",
                                 time="0")
            counts["tests"] += 1
            message = report.weights.nothing_matched_reason()
            if report.weights.mode == "fail":
                counts["failures"] += 1
                ET.SubElement(case, "failure", message=message, type="NothingCompared").text = \
                    message
            else:
                ET.SubElement(case, "system-err").text = f"warning: {message}"
        _finish_suite(suite, counts, totals)
    for name, why in report.skipped:
        suite = ET.SubElement(root, "testsuite", name=f"wnconvert.verify.{name}")
        case = ET.SubElement(suite, "testcase", classname=f"wnconvert.verify.{name}",
                             name="session", time="0")
        ET.SubElement(case, "skipped", message=why)
        _finish_suite(suite, {"tests": 1, "failures": 0, "errors": 0, "skipped": 1}, totals)
    for key, total in totals.items():
        root.set(key, str(total))
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
