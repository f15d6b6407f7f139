"""Tables for fold / inspect / check of ONNX models (stdout: they are results).

Each function takes the ``to_dict()`` form of the library's result, so what the tables show and
what ``--json`` prints are the same data.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from . import escape, format_bytes, stdout

_MAX_ROWS = 60  # beyond this a table lists the first rows and counts the rest (--json has all)


def _shape(shape: list[int]) -> str:
    return "×".join(str(s) for s in shape) if shape else "scalar"


def _dim(dim: int | None) -> str:
    return "none" if dim is None else str(dim)


def _more(table: Table, total: int) -> None:
    if total > _MAX_ROWS:
        table.add_row(
            f"... {total - _MAX_ROWS} more (use --json for all)", *[""] * (len(table.columns) - 1)
        )


def _ops_table(title: str, before: dict[str, int], after: dict[str, int] | None) -> Table:
    """Op counts; with ``after``, a before/after/change table of every op type."""
    table = Table(title=title, title_justify="left")
    table.add_column("op")
    if after is None:
        table.add_column("count", justify="right")
        for op, count in before.items():
            table.add_row(escape(op), str(count))
        return table
    for header in ("before", "after", "change"):
        table.add_column(header, justify="right")
    ops = list(before) + [op for op in after if op not in before]
    for op in ops:
        old, new = before.get(op, 0), after.get(op, 0)
        change = "" if old == new else f"[green]{new - old:+d}[/]"
        table.add_row(escape(op), str(old), str(new), change)
    table.add_row(
        "[bold]total[/]", str(sum(before.values())), str(sum(after.values())),
        f"[green]{sum(after.values()) - sum(before.values()):+d}[/]"
        if sum(after.values()) != sum(before.values()) else "",
    )
    return table


def _sites_table(title: str, sites: list[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    # g and v names are in the pairs table (and --json); they would make this one too wide.
    for col in ("value", "parameter", "shape", "dim", "dtype", "ops", "foldable"):
        table.add_column(col)
    for site in sites[:_MAX_ROWS]:
        foldable = "yes" if site["foldable"] else f"[yellow]no[/]: {escape(site['reason'] or '')}"
        table.add_row(
            escape(site["value"]), escape(site["parameter"] or "—"), _shape(site["shape"]),
            _dim(site["dim"]), site["dtype"], escape(" → ".join(site["ops"])), foldable,
        )
    _more(table, len(sites))
    return table


def print_fold(summary: dict[str, Any]) -> None:
    """What ``fold MODEL.onnx`` did: one row per folded layer, op counts, files written."""
    console = stdout()
    layers = summary["layers"]
    if not summary.get("changed", True):
        console.print(f"[green]already clean[/]: {escape(summary['input'])} computes no weight "
                      "norm and its initializers have their names; nothing folded or renamed")
    _print_inlined(console, summary, "into the graph to fold it")
    if layers:
        _print_layers(console, layers)
    renamed = summary.get("renamed", [])
    if renamed:
        console.print(_renamed_table(renamed))
    for site in summary["skipped"]:
        console.print(
            f"[yellow]left in place[/]: {escape(site['value'])} ({escape(site['reason'] or '')})"
        )
    counts = summary["op_counts"]
    if layers:
        console.print(_ops_table("op counts", counts["before"], counts["after"]))
        removed = len(summary["initializers_removed"])
        console.print(f"removed {removed} initializer(s) no longer used")
    for path in summary["files"]:
        console.print(f"[bold]wrote[/] {escape(path)}")
    if summary.get("seconds") is not None:
        console.print(f"in {summary['seconds']:.2f} s")


_HOW = {
    "folded_from": "exporter metadata (folded from its g/v pair)",
    "reference": "equal to the reference tensor",
    "reference-fold": "equal to the reference's g/v fold (up to the exporter's rounding)",
}


def _renamed_table(renamed: list[dict[str, Any]]) -> Table:
    table = Table(title=f"initializers given their names back: {len(renamed)}",
                  title_justify="left")
    for col in ("initializer", "name", "because"):
        table.add_column(col)
    for entry in renamed[:_MAX_ROWS]:
        table.add_row(escape(entry["from"]), escape(entry["to"]),
                      escape(_HOW.get(entry["how"], entry["how"])))
    _more(table, len(renamed))
    return table


def _fold_kinds(layers: list[dict[str, Any]]) -> str:
    """"weight-norm", "spectral-norm" or both (weight norm alone reads as it always did)."""
    kinds = {layer.get("kind", "weight_norm") for layer in layers}
    if kinds == {"spectral_norm"}:
        return "spectral-norm"
    return "weight-norm and spectral-norm" if "spectral_norm" in kinds else "weight-norm"


def _print_layers(console: Any, layers: list[dict[str, Any]]) -> None:
    table = Table(
        title=f"folded {len(layers)} {_fold_kinds(layers)} computation(s)", title_justify="left"
    )
    for col, justify in (("name", "left"), ("replaces", "left"), ("shape", "left"),
                         ("dim", "left"), ("dtype", "left"), ("nodes removed", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for layer in layers[:_MAX_ROWS]:
        zero = layer["zero_norm_rows"]
        name = escape(layer["name"]) + (f" [red]({zero} zero-norm rows)[/]" if zero else "")
        table.add_row(
            name, escape(layer["replaces"]), _shape(layer["shape"]), _dim(layer["dim"]),
            layer["dtype"], str(layer["nodes_removed"]),
        )
    _more(table, len(layers))
    console.print(table)


def print_inspection(info: dict[str, Any]) -> None:
    """``inspect MODEL.onnx``: weight norm still computed, g/v-like pairs, nameless folds."""
    console = stdout()
    opsets = ", ".join(f"{domain} {version}" for domain, version in info["opsets"].items())
    layout = "external data" if info["external_data"] else "inline"
    console.print(
        f"[bold]{escape(info['model'])}[/] (IR {info['ir_version']}, opset {escape(opsets)}, "
        f"{escape(info['producer'] or 'unknown producer')}; "
        f"{format_bytes(info['tensor_bytes'])} of tensors, {layout})"
    )
    _print_inlined(console, info, "to find it")
    found = info["weight_norm"]
    sites = [site for site in found if site.get("kind") != "spectral_norm"]
    spectral = [site for site in found if site.get("kind") == "spectral_norm"]
    if sites:
        console.print(_sites_table(
            f"weight norm computed at run time: {len(sites)}", sites))
    elif not spectral:
        console.print("weight norm computed at run time: none")
    if spectral:
        console.print(_sites_table(
            f"spectral norm computed at run time: {len(spectral)}", spectral))
    pairs = info["pairs"]
    if pairs:
        table = Table(title="initializers named like g/v pairs", title_justify="left")
        for col in ("parameter", "g", "v", "v shape", "dim", "used by"):
            table.add_column(col)
        for pair in pairs[:_MAX_ROWS]:
            dim = _dim(pair["dim"]) if pair["shapes_fit"] else "[red]shapes do not fit[/]"
            used = (escape(pair["computed_by"]) if pair["computed_by"] else
                    "[red]read at run time, not recognized[/]" if pair.get("read_unrecognized")
                    else "—")
            table.add_row(
                escape(pair["parameter"]), escape(pair["g"]), escape(pair["v"]),
                _shape(pair["v_shape"]), dim, used,
            )
        _more(table, len(pairs))
        console.print(table)
    lost = info["folded_with_lost_names"]
    if lost:
        table = Table(
            title="weight-norm weights the exporter folded under op names", title_justify="left"
        )
        for col in ("initializer", "parameter", "shape"):
            table.add_column(col)
        for entry in lost[:_MAX_ROWS]:
            table.add_row(
                escape(entry["initializer"]), escape(entry["parameter"]), _shape(entry["shape"])
            )
        _more(table, len(lost))
        console.print(table)
    console.print(_ops_table("op counts", info["op_counts"], None))


def _print_inlined(console: Any, info: dict[str, Any], purpose: str) -> None:
    names = info.get("inlined_functions") or []
    if names:
        console.print(f"[yellow]note[/]: weight norm is computed inside model-local function(s) "
                      f"{escape(', '.join(names))}; inlined {purpose}")


def print_check(result: dict[str, Any]) -> None:
    """``check``: one line per place that still computes weight norm, or a clean verdict."""
    console = stdout()
    _print_inlined(console, result, "to find it")
    sites = result["weight_norm"]
    for pair in result.get("unrecognized_pairs", []):
        console.print(
            f"[red]g/v pair read at run time[/]: {escape(pair['parameter'])} "
            f"({escape(pair['g'])}, {escape(pair['v'])}) is used by the graph in a way wnconvert "
            "does not recognize as weight norm (e.g. through a Transpose); it likely computes "
            "weight norm at run time"
        )
    for name in result.get("unrecognized_spectral_norm", []):
        console.print(
            f"[red]spectral-norm weight read at run time[/]: {escape(name)} (its original weight "
            "and u) is used by the graph in a way wnconvert does not recognize as spectral norm; "
            "it likely computes spectral norm at run time"
        )
    if not sites and not result.get("unrecognized_pairs") and not result.get(
            "unrecognized_spectral_norm"):
        console.print(f"[green]clean[/]: {escape(result['model'])} computes no weight norm at "
                      "run time")
        return
    for site in sites:
        label = site["parameter"] or site["value"]
        kind = "spectral norm" if site.get("kind") == "spectral_norm" else "weight norm"
        console.print(
            f"[red]{kind} at run time[/]: {escape(label)} "
            f"({_shape(site['shape'])}, dim {_dim(site['dim'])}): "
            f"{escape(' → '.join(site['ops']))} "
            f"[dim]nodes {escape(', '.join(site['nodes']))}[/]"
        )


def print_check_batch(batch: dict[str, Any]) -> None:
    """``check`` of several models: one line per model, then a summary line."""
    console = stdout()
    for entry in batch["files"]:
        console.print(_entry_line(entry, "[green]clean[/]: {}", "[red]not clean[/]: {}",
                                  "[red]unreadable[/]: {}"))
    counts = batch["summary"]
    console.print(
        f"checked {counts['files']} model(s) in {batch['seconds']:.2f} s: {counts['clean']} "
        f"clean, {counts['failed']} not clean, {counts['errors']} could not be read"
    )


def print_batch_entry(entry: dict[str, Any]) -> None:
    """The line naming one file of a many-file run, with its error when it failed."""
    stdout().print(_entry_line(entry, "[bold]== {}[/]", "[red]failed[/]: {}",
                               "[red]not done[/]: {}"))


def _entry_line(entry: dict[str, Any], passed: str, failed: str, error: str) -> str:
    """One file of a many-file run: its path in ``passed`` (exit code 0), else its message
    (which names the file) in ``failed`` (exit code 1) or ``error`` (any other)."""
    code = entry["exit_code"]
    if code == 0:
        return passed.format(escape(entry["path"]))
    return (failed if code == 1 else error).format(escape(entry["message"] or entry["path"]))


def print_batch_summary(batch: dict[str, Any]) -> None:
    counts = batch["summary"]
    stdout().print(
        f"{batch['job']}: {counts['files']} file(s) in {batch['seconds']:.2f} s: "
        f"{counts['ok']} done, {counts['failed']} failed their check, {counts['errors']} could "
        "not be done"
    )


def print_fold_line(summary: dict[str, Any]) -> None:
    """One model of a many-model fold: what was folded and where it went."""
    layers = summary.get("layers") or []
    verdict = "verification PASSED" if summary.get("passed") else (
        "not verified" if summary.get("passed") is None else "verification FAILED")
    stdout().print(f"folded {len(layers)} computation(s) → {escape(summary['output'])} "
                   f"({verdict})")
