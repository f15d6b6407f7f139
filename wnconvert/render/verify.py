"""Tables for export and verification results (stdout: they are results, not progress)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.table import Table

from . import escape, format_bytes, stdout

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from ..export import ExportResult
    from ..verification import VerificationReport


def _num(value: float) -> str:
    if math.isinf(value):
        return "inf"
    if math.isnan(value):
        return "nan"
    return "0" if value == 0 else f"{value:.3g}"


def print_export_summary(result: ExportResult) -> None:
    """What was written: file, exporter, opset, inputs/outputs, parameter names."""
    console = stdout()
    size = format_bytes(result.size_bytes)
    console.print(f"[bold]wrote[/] {escape(str(result.path))} ({size}, opset {result.opset}, "
                  f"{result.exporter} exporter)")
    if result.external_data is not None:
        console.print(f"  weights in external data: {escape(str(result.external_data))}")
    inputs = ", ".join(
        f"{name} [{', '.join(str(d) for d in result.input_shapes.get(name, []))}]"
        for name in result.input_names
    )
    console.print(f"  inputs: {escape(inputs)}")
    console.print(f"  outputs: {escape(', '.join(result.output_names))}")
    named = (f"  parameters: {result.parameters_named}/{result.parameters_total} stored under "
             "their own names")
    extra = []
    if result.renamed:
        extra.append(f"{len(result.renamed)} renamed back from the exporter's names")
    if result.untransposed:
        extra.append(f"{len(result.untransposed)} restored from a pre-transposed copy")
    if extra:
        named += f" ({'; '.join(extra)})"
    console.print(named)
    for name, note in list(result.derivations.items())[:_LISTED]:
        console.print(f"  derived, not a parameter: {escape(name)} ({escape(note)})")
    if len(result.derivations) > _LISTED:
        console.print(f"  ...and {len(result.derivations) - _LISTED} more derived tensors "
                      "explained in the ONNX file's initializer metadata")
    others = len(result.derived) - len(result.derivations)
    if others:
        console.print(f"  {others} other initializers are derived from parameters or constants "
                      "(e.g. LSTM gate packing) and keep the exporter's names")
    wn = ("none" if not result.runtime_weight_norm
          else f"{len(result.runtime_weight_norm)} norm nodes on weights remain")
    console.print(f"  weight norm computed at run time: {wn}")


def print_report(report: VerificationReport) -> None:
    """The per-provider, per-output table, the rule and tolerances, weights and failures."""
    console = stdout()
    table = Table(title="Verification", title_justify="left", show_lines=False)
    for header, justify in (("provider", "left"), ("output", "left"), ("shape", "left"),
                            ("dtype", "left"), ("max abs", "right"), ("max rel", "right"),
                            ("mean abs", "right"), ("atol used", "right"),
                            ("rtol used", "right"), ("min atol to pass", "right"),
                            ("result", "left")):
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    for provider in report.providers:
        if provider.error:
            table.add_row(escape(provider.name), "-", "", "", "", "", "", "", "", "",
                          "[bold red]ERROR[/]")
        for out in provider.outputs:
            # The case that failed worst (the first when all pass): its shape and tolerance
            # are the ones the FAIL is about, e.g. the second size of a dynamic axis.
            _, case = out.worst_case
            result = "[green]pass[/]" if out.passed else "[bold red]FAIL[/]"
            table.add_row(
                escape(provider.name), escape(out.name), "x".join(map(str, case.shape)) or "()",
                case.dtype, _num(out.max_abs), _num(out.max_rel), _num(out.mean_abs),
                f"{case.atol:g}", f"{case.rtol:g}", _num(out.min_atol), result,
            )
    console.print(table)
    # The error budget: one line per output (the worst case's figures over runs and sizes).
    for provider in report.providers:
        for out in provider.outputs:
            if out.stats is not None:
                console.print(f"errors {escape(provider.name)} {escape(out.name)} "
                              f"({escape(out.rule_summary())}): {escape(out.stats.summary())}")
    console.print(f"rule: {escape(report.rule)}")
    cases = "; ".join(
        f"{case.label}: " + ", ".join(f"{name} {'x'.join(map(str, shape))} {dtype}"
                                      for name, (shape, dtype) in case.inputs.items())
        for case in report.cases
    )
    console.print(f"inputs: {escape(cases)}")
    weight_norm = report.reference.get("weight_norm")
    if weight_norm == "applied":
        console.print("reference: the PyTorch model with weight norm applied where the "
                      "checkpoint has g/v pairs (computed at run time from the original g, v)")
    elif weight_norm == "as built":
        console.print("reference: the PyTorch model as built, weight norm computed at run time")
    if report.reference.get("kind") == "polygraphy":
        console.print(escape(f"reference: runner {report.reference.get('runner')} of "
                             f"{report.reference.get('path')} (outputs saved by Polygraphy)"))
    if report.output_matching == "position":
        console.print("outputs matched to the reference by position (names differ)")
    for provider in report.providers:
        if provider.tf32:
            console.print(f"{escape(provider.name)}: {escape(provider.tf32)}")
        for note in provider.notes:
            if note != provider.tf32:
                console.print(f"{escape(provider.name)}: {escape(note)}")
        shown = {k: v for k, v in provider.options.items() if k in _SHOWN_OPTIONS}
        if shown:
            console.print(f"{escape(provider.name)}: options applied by ONNX Runtime: "
                          + escape(", ".join(f"{k}={v}" for k, v in shown.items())))
    for name, why in report.skipped:
        console.print(f"[yellow]skipped[/] {escape(name)}: {escape(why)}")
    for note in report.notes:
        if not any(note.startswith(f"{name} skipped") for name, _ in report.skipped):
            console.print(f"note: {escape(note)}")
    weights = report.weights
    if weights is not None:
        worst = weights.worst
        line = f"weights compared: {len(weights.compared)}"
        if worst is not None:
            line += f"; largest difference {_num(worst.max_abs)} in {escape(worst.name)}"
        if weights.failed:
            line += (f"; [bold red]{len(weights.failed)} differ[/]: "
                     f"{escape(', '.join(w.name for w in weights.failed[:5]))}")
            if weights.mode == "report":
                line += " (reported only)"
        console.print(line)
        if weights.prefix is not None:
            strip, add = weights.prefix
            console.print(f"  names matched after a common prefix change: strip "
                          f"{escape(repr(strip))}, add {escape(repr(add))}")
        if weights.matched_by_value:
            console.print(f"  {len(weights.matched_by_value)} renamed initializers matched by "
                          "value (same shape and dtype)")
        if weights.derived:
            console.print(f"  {len(weights.derived)} initializers derived by the exporter from "
                          "several parameters, not compared:")
            for name, note in weights.derived[:_LISTED]:
                console.print(f"    {escape(name)}: {escape(note)}")
            if len(weights.derived) > _LISTED:
                console.print(f"    ...and {len(weights.derived) - _LISTED} more (see the JSON "
                              "report)")
        if weights.only_in_reference:
            console.print(f"  {len(weights.only_in_reference)} reference tensors have no "
                          "matching initializer in the ONNX model")
        if weights.skipped:
            console.print(f"  {len(weights.skipped)} skipped (same name, other shape)")
    for failure in report.failures():
        console.print(f"[bold red]FAIL[/] {escape(failure)}")
    verdict = "[bold green]PASSED[/]" if report.passed else "[bold red]FAILED[/]"
    console.print(f"verification {verdict}")


#: Derived tensors listed one per line; the rest are counted (the JSON report has them all).
_LISTED = 5

#: Provider options worth a line in the text output (the JSON report has them all).
_SHOWN_OPTIONS = ("use_tf32", "device_id", "trt_fp16_enable")


def print_reports_written(paths: Sequence[Path]) -> None:
    console = stdout()
    for path in paths:
        console.print(f"wrote report {escape(str(path))}")
