"""Tables for inspect / fold / decompose / restyle of checkpoints."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from . import escape, format_bytes, stdout, visible

_MAX_ROWS = 60  # beyond this a summary table lists the first rows and counts the rest


def _dim(dim: int | None) -> str:
    return "none" if dim is None else str(dim)


def _shape(shape: list[int]) -> str:
    return "×".join(str(s) for s in shape) if shape else "scalar"


def print_inspection(report: dict[str, Any]) -> None:
    console = stdout()
    c = report["container"]
    where = (
        f" → state dict at [bold]{escape(c['state_dict_key'])}[/]" if c["state_dict_key"] else ""
    )
    console.print(f"[bold]{escape(c['path'])}[/] ({c['format']}){where}")
    if c.get("detected"):
        console.print(f"  detected: {c['detected']}", markup=False)
    if c.get("members"):
        console.print(f"  archive members: {visible(', '.join(c['members']))}", markup=False)
    for entry in c["entries"]:
        mark = "▶" if entry["selected"] else " "
        inside = entry.get("not_loaded", [])
        # A placeholder entry's kind already names its class; a container says what it holds.
        held = (f"; not loaded inside: {', '.join(inside)}"
                if inside and not entry["kind"].endswith("(not loaded)") else "")
        console.print(f"  {mark} {visible(entry['key'])}: {visible(entry['kind'] + held)}",
                      markup=False)
    if c["shards"]:
        console.print(f"  shards: {visible(', '.join(c['shards']))}", markup=False)
    if c["metadata"]:
        console.print(f"  metadata: {visible(str(c['metadata']))}", markup=False)

    if report["pairs"]:
        table = Table(title="weight-norm pairs", title_justify="left")
        for col in ("name", "style", "dim", "shape", "dtype", "g min", "g max", "zero-norm rows"):
            table.add_column(col, justify="right" if col.startswith(("g ", "zero")) else "left")
        for p in report["pairs"][:_MAX_ROWS]:
            zero = str(p["zero_norm_rows"])
            table.add_row(
                escape(p["name"]),
                p["style"],
                _dim(p["dim"]),
                _shape(p["shape"]),
                p["dtype"],
                _num(p["g_min"]),
                _num(p["g_max"]),
                f"[red]{zero}[/]" if p["zero_norm_rows"] else zero,
            )
        _more(table, len(report["pairs"]))
        console.print(table)
    else:
        console.print("no weight-norm pairs")
    spectral = report.get("spectral_norm", [])
    if spectral:
        table = Table(title="spectral norm", title_justify="left")
        for col in ("name", "style", "dim", "shape", "dtype", "σ"):
            table.add_column(col, justify="right" if col == "σ" else "left")
        for site in spectral[:_MAX_ROWS]:
            if site["v_key"] is None:
                dim = "— (no v: stored weight kept)"
            elif site["dim"] is None:
                dim = " or ".join(str(d) for d in site["dims"]) + " (ambiguous)"
            else:
                dim = str(site["dim"])
            table.add_row(escape(site["name"]), site["style"], dim, _shape(site["shape"]),
                          site["dtype"], _num(site["sigma"]))
        _more(table, len(spectral))
        console.print(table)
    cands = report["decompose_candidates"]
    if cands:
        names = visible(", ".join(c["name"] for c in cands[:12]))
        more = f", ... ({len(cands) - 12} more)" if len(cands) > 12 else ""
        console.print(
            f"decompose would pick {len(cands)} plain tensor(s): {names}{more}", markup=False
        )
    t = report["totals"]
    console.print(
        f"{t['tensors']} tensors, {t['parameters']:,} parameters, {format_bytes(t['bytes'])}; "
        f"{t['pairs']} pairs ({t['pairs_by_style']['parametrize']} parametrize, "
        f"{t['pairs_by_style']['legacy']} legacy); {t['zero_norm_rows']} zero-norm rows"
        + (f"; {t['spectral_norm']} spectral norm" if t.get("spectral_norm") else ""),
        markup=False,
    )


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _more(table: Table, total: int) -> None:
    if total > _MAX_ROWS:
        table.add_row(
            f"... {total - _MAX_ROWS} more (use --json for all)", *[""] * (len(table.columns) - 1)
        )


def print_conversion(summary: dict[str, Any]) -> None:
    console = stdout()
    verb = {"fold": "folded", "decompose": "decomposed", "restyle": "restyled"}[summary["action"]]
    pairs = summary["pairs"]
    kinds = any("kind" in p for p in pairs)
    if pairs:
        table = Table(title=f"{verb} {len(pairs)} parameter(s)", title_justify="left")
        for col in ("name", *(("kind",) if kinds else ()), "style", "dim", "shape", "dtype"):
            table.add_column(col)
        for p in pairs[:_MAX_ROWS]:
            kind = (p.get("kind", "weight_norm").replace("_", " "),) if kinds else ()
            table.add_row(
                escape(p["name"]), *kind, p["style"], _dim(p["dim"]), _shape(p["shape"]),
                p["dtype"]
            )
        _more(table, len(pairs))
        console.print(table)
    dims = sorted({_dim(p["dim"]) for p in pairs})
    dtypes = sorted({p["dtype"] for p in pairs})
    console.print(
        f"{verb} {len(pairs)} {'parameter' if kinds else 'pair'}(s) (dims "
        f"{', '.join(dims) or '—'}; dtypes "
        f"{', '.join(dtypes) or '—'}), {summary['unchanged']} tensor(s) unchanged; "
        f"{format_bytes(summary['bytes_in'])} → {format_bytes(summary['bytes_out'])} "
        f"in {summary['seconds']:.2f} s",
        markup=False,
    )
    for note in summary.get("notes", []):
        console.print(f"note: {visible(note)}", markup=False)
    console.print(f"wrote {visible(str(summary['output']))}", markup=False)
