"""The ``check`` command (CI lint), mapped onto :func:`wnconvert.check_onnx`.

(``fold`` and ``inspect`` of ``.onnx`` files are jobs of those commands, in
:mod:`.checkpoint_cmds`.)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .. import render
from .app import app
from .common import CliProgress, command_context
from .options import CheckReportOpt, DebugOpt, ForceOpt, JsonOpt, QuietOpt, refuse_unused

if TYPE_CHECKING:
    from .. import CheckResult


@app.command(
    epilog=(
        "\b\nExamples (exit 0 clean, 1 weight norm still computed at run time, 2 unreadable "
        "or invalid model, i.e. one onnx.checker refuses; with several models, the worst):\n"
        "  wnconvert check model.onnx\n"
        "  wnconvert check model.onnx --json > lint.json\n"
        "  wnconvert check exports/ extra.onnx --report lint.md"
    ),
)
def check(
    ctx: typer.Context,
    models: Annotated[list[Path], typer.Argument(
        metavar="MODEL.onnx...",
        help="The ONNX models to lint: files, and folders (every .onnx below them, sorted; "
        "symlinked folders are not entered, symlinks to files outside the folder are skipped).")],
    report: CheckReportOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """CI lint: fail if an ONNX graph still computes weight norm at run time.

    Names each place (parameter, shape, ops, nodes). Refuses (exit 2) a model onnx.checker
    refuses, as inspect and fold do. Reads the graph only, not the weights, so it is fast on
    models of any size. Fix a failure with: wnconvert fold MODEL.onnx.

    Several models (or folders) in one run: one line per model and a summary; every model is
    checked whatever the others gave; the exit code is the worst (2 > 1 > 0); --json prints one
    document covering them all."""
    from .. import api

    with command_context(debug=debug, quiet=quiet):
        refuse_unused(ctx, "check", verifying=False)
        single = len(models) == 1 and not models[0].is_dir()
        if single and not report:
            _print_one(api.check_onnx(models[0]), json_out=json_out, quiet=quiet)
            return
        batch = api.check_onnx_files(models, reports=report or [], force=force,
                                     progress=CliProgress(quiet=quiet))
        if single:
            # One file keeps the one-file output, and its error is the command's error.
            [entry] = batch.files
            if entry.error is not None:
                raise entry.error
            assert entry.result is not None
            _print_one(entry.result, json_out=json_out, quiet=quiet,
                       reports=batch.reports_written)
            return
        for skipped in batch.skipped:
            render.warning(f"skipped {skipped.path}: {skipped.reason}")
        if json_out:
            render.print_json(batch.to_dict())
        elif not quiet:
            from ..render.graph import print_check_batch
            from ..render.verify import print_reports_written

            print_check_batch(batch.to_dict())
            print_reports_written(batch.reports_written)
        counts = batch.counts()
        if batch.exit_code:
            render.error(f"{counts['files'] - counts['clean']} of {counts['files']} model(s) "
                         "failed the check (not clean, or could not be read)")
            raise typer.Exit(batch.exit_code)


def _print_one(result: CheckResult, *, json_out: bool, quiet: bool,
               reports: list[Path] | None = None) -> None:
    """One model: its result as ``check`` always printed it; exits 1 when not clean."""
    from .. import api

    if json_out:
        render.print_json(result.to_dict())
    elif not quiet:
        from ..render.graph import print_check
        from ..render.verify import print_reports_written

        print_check(result.to_dict())
        print_reports_written(reports or [])
    failure = api.check_failure(result)
    if failure is not None:
        raise failure
