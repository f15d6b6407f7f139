"""GitHub-flavoured Markdown summaries (``--report FILE.md``), for a CI job summary
(``$GITHUB_STEP_SUMMARY``) or a pull-request comment.

Two documents, each made from the ``to_dict()`` form of a result, so that the Markdown shows the
same data as ``--json``: :func:`verification_markdown` (a verification report: the verdict, one
table per provider with the error figures and tolerance of each output, the weight check) and
:func:`check_batch_markdown` (``check`` of one or many models: one row per file; the table of
any many-file run is :func:`files_markdown`).

Output tables show every numeric figure the report has for an output, whatever its name, so a
figure added to the report later gets a column without a change here.
"""

from __future__ import annotations

import math
from typing import Any

PASS, FAIL, ERROR = "✅", "❌", "⚠️"

#: Output figures shown in their own columns, in this order; every other number of the output's
#: dict follows them (see :func:`_figures`).
_LEADING = ("max_abs", "max_rel", "mean_abs")
_TOLERANCE = ("atol", "rtol", "min_atol")
#: Numbers of an output's dict that are not error figures.
_NOT_FIGURES = frozenset({"mismatched", "shape", "reference_max_abs"})
_LABELS = {"min_atol": "min atol to pass", "max_abs": "max abs err", "max_rel": "max rel err",
           "mean_abs": "mean abs err"}


def cell(value: Any) -> str:
    """``value`` as the text of one table cell: ``|`` and backticks escaped (they would end the
    cell or start code), line breaks as spaces, ``<`` ``>`` ``&`` as entities (no HTML from a
    tensor or file name)."""
    text = "" if value is None else str(value)
    for old, new in (("\\", "\\\\"), ("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"),
                     ("|", "\\|"), ("`", "\\`"), ("\r\n", " "), ("\n", " "), ("\r", " ")):
        text = text.replace(old, new)
    return text


def number(value: Any) -> str:
    """A figure: 3 significant digits; None (a non-finite value in the JSON) as ``—``."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    return cell(value)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    aligns = ["---"] * len(headers)
    return ["| " + " | ".join(headers) + " |", "| " + " | ".join(aligns) + " |",
            *("| " + " | ".join(row) + " |" for row in rows)]


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _figures(outputs: list[dict[str, Any]]) -> list[str]:
    """The error figures of these outputs: the usual ones first, then any other number (or
    dict of numbers, as ``key.sub``) that an output's dict holds, in the order it holds them."""
    keys: list[str] = []
    for key in _LEADING:
        if any(key in out for out in outputs):
            keys.append(key)
    for out in outputs:
        for key, value in out.items():
            if key in keys or key in _TOLERANCE or key in _NOT_FIGURES:
                continue
            if isinstance(value, dict) and value and all(_is_number(v) for v in value.values()):
                keys.extend(f"{key}.{sub}" for sub in value if f"{key}.{sub}" not in keys)
            elif _is_number(value) and value is not None:
                keys.append(key)
    return keys


def _lookup(out: dict[str, Any], key: str) -> Any:
    head, dot, sub = key.partition(".")
    value = out.get(head)
    return value.get(sub) if dot and isinstance(value, dict) else value


def _label(key: str) -> str:
    return cell(_LABELS.get(key, key.replace("_", " ")))


def _shape(shape: Any) -> str:
    if not isinstance(shape, list):
        return "—"
    return "×".join(str(s) for s in shape) if shape else "scalar"


def verification_markdown(report: dict[str, Any], *, title: str = "wnconvert verify") -> str:
    """The Markdown summary of a verification report (its ``to_dict()``)."""
    passed = report.get("passed")
    lines = [f"## {PASS if passed else FAIL} {cell(title)}: {'passed' if passed else 'failed'}",
             ""]
    candidate = report.get("candidate") or {}
    reference = report.get("reference") or {}
    ref_parts = [str(reference.get("kind", ""))] + [
        str(reference[key]) for key in ("path", "checkpoint", "model", "program")
        if reference.get(key)]
    lines.append(f"**Candidate:** {cell(candidate.get('path', ''))}  ")
    lines.append(f"**Reference:** {cell(' '.join(p for p in ref_parts if p))}  ")
    if report.get("rule"):
        lines.append(f"**Rule:** {cell(report['rule'])}")
    lines.append("")
    for provider in report.get("providers", []):
        mark = PASS if provider.get("passed") else FAIL
        lines += [f"### {mark} {cell(provider.get('name'))}", ""]
        if provider.get("error"):
            lines += [f"{ERROR} could not run the model: {cell(provider['error'])}", ""]
        outputs = provider.get("outputs", [])
        if outputs:
            figures = _figures(outputs)
            headers = ["output", "result", "shape", "dtype", *map(_label, figures),
                       *map(_label, _TOLERANCE)]
            rows = [[cell(out.get("name")), PASS if out.get("passed") else FAIL,
                     _shape(out.get("shape")), cell(out.get("dtype")),
                     *(number(_lookup(out, key)) for key in figures),
                     *(number(out.get(key)) for key in _TOLERANCE)] for out in outputs]
            lines += [*_table(headers, rows), ""]
    for skipped in report.get("skipped_providers", []):
        lines += [f"{ERROR} {cell(skipped.get('name'))} skipped: {cell(skipped.get('reason'))}",
                  ""]
    lines += _weights_lines(report.get("weights"))
    for heading, items in (("Failures", report.get("failures", [])),
                           ("Warnings", report.get("warnings", []))):
        if items:
            lines += [f"### {heading}", "", *(f"- {cell(item)}" for item in items), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _weights_lines(weights: dict[str, Any] | None) -> list[str]:
    if weights is None:
        return ["### Weights", "", "not compared", ""]
    mark = PASS if weights.get("passed") else FAIL
    lines = [f"### {mark} Weights ({cell(weights.get('mode'))})", ""]
    compared = weights.get("compared", 0)
    worst = weights.get("worst")
    summary = f"{compared} tensor(s) compared"
    if worst:
        summary += (f"; largest difference {cell(worst.get('name'))}: max abs "
                    f"{number(worst.get('max_abs'))}, max rel {number(worst.get('max_rel'))}")
    lines.append(summary + ".")
    if weights.get("nothing_matched"):
        lines.append(f"{ERROR} no weight of the candidate matched one of the reference.")
    failed = weights.get("failed") or []
    if failed:
        shown = ", ".join(cell(name) for name in failed[:10])
        more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        lines.append(f"{FAIL} {len(failed)} differ: {shown}{more}.")
    return [*lines, ""]


def check_batch_markdown(batch: dict[str, Any]) -> str:
    """The Markdown summary of ``check`` over one or many models (a ``CheckBatch.to_dict()``):
    the verdict and one row per file."""
    return files_markdown(batch, job="wnconvert check", done="clean",
                          failed="norm computed at run time", detail="places found / error")


def files_markdown(batch: dict[str, Any], *, job: str, done: str, failed: str,
                   detail: str = "error") -> str:
    """The verdict and one row per file of a many-file run (``files``: ``path``,
    ``exit_code`` 0 = ``done``, 1 = ``failed``, 2+ = could not be done, and ``message``)."""
    files = batch.get("files", [])
    bad = sum(1 for entry in files if entry.get("exit_code"))
    verdict = (f"{PASS} {job}: {len(files)} file(s), all {done}" if not bad else
               f"{FAIL} {job}: {bad} of {len(files)} file(s) failed")
    rows = []
    for entry in files:
        code = entry.get("exit_code")
        if code == 0:
            status, text = f"{PASS} {done}", ""
        elif code == 1:
            status, text = f"{FAIL} {failed}", entry.get("message") or ""
        else:
            status, text = f"{ERROR} error", entry.get("message") or ""
        rows.append([cell(entry.get("path")), status, cell(text)])
    lines = [f"## {cell(verdict)}", "", *_table(["file", "verdict", cell(detail)], rows)]
    for skipped in batch.get("skipped", []):
        lines.append(f"\nskipped {cell(skipped.get('path'))}: {cell(skipped.get('reason'))}")
    return "\n".join(lines) + "\n"
