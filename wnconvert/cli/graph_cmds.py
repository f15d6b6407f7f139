"""Weight norm inside ONNX graphs: the ``check`` command, and ``fold``/``inspect`` of .onnx files.

``fold`` and ``inspect`` (in :mod:`.checkpoint_cmds`) call :func:`fold_onnx_command` and
:func:`inspect_onnx_command` for ``.onnx`` paths. onnx, numpy and onnxruntime are imported inside
the functions so ``wnconvert --help`` stays instant.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import render
from ..errors import CheckFailed, InputError
from . import app
from .common import (
    DebugOpt,
    JsonOpt,
    QuietOpt,
    VerifyCliOptions,
    build_verify_options,
    command_context,
    emit_result,
    finish_verification,
    protected_inputs,
    require_exists,
)

if TYPE_CHECKING:
    from ..onnx_graph import FoldOutcome
    from ..verify import VerificationReport, VerifyOptions


def fold_onnx_command(
    *,
    path: Path,
    output: Path | None,
    force: bool,
    quiet: bool,
    json_out: bool,
    verify: VerifyCliOptions,
    reference: Path | None = None,
    reference_key: str | None = None,
) -> None:
    """Fold the weight norm an ONNX graph computes from constants, give initializers their
    parameter names back; verify; write atomically.

    Runs inside the ``fold`` command's ``command_context``: raises InputError / CheckFailed.
    Verification runs on the complete output before it is moved into place, so a failed check
    (exit 1) leaves nothing written. A graph with nothing to fold or rename is "already clean"
    (exit 0, an unchanged copy written), so folding a folded model again succeeds.
    """
    from ..onnx_graph import FoldJob, default_output
    from ..verify.report import check_report_paths

    require_exists(path)
    if reference is not None:
        require_exists(reference)
    elif reference_key is not None:
        raise InputError(f"{path}: --key picks the state dict of --reference; an .onnx input "
                         "has none (drop --key or add --reference)")
    target = output if output is not None else default_output(path)
    if target.suffix.lower() != ".onnx":
        raise InputError(f"{target}: the folded model needs a .onnx name; choose another -o")
    if verify.reports and not verify.verify:
        raise InputError("--report needs verification; drop --no-verify or --report")
    check_report_paths(verify.reports, force=force,
                       inputs=[*protected_inputs(path, reference), target])
    # Every verification option (--tf32, --weights, tolerances...) reaches the check; bad
    # options and a provider that cannot start here fail before anything is written.
    options = build_verify_options(verify) if verify.verify else None
    if options is not None:
        from ..verify import plan_providers

        plan_providers(options.providers, cuda_tf32=options.cuda_tf32)

    started = time.perf_counter()
    with FoldJob(path, target, force=force, reference=reference,
                 reference_key=reference_key) as job:
        result = job.result
        if not result.changed and (result.skipped or result.unrecognized):
            raise InputError(_nothing_to_fold(path, result.skipped, result.unrecognized))
        if not result.changed:
            render.info(f"already clean: {path} computes no weight norm and its initializers "
                        f"have their names; writing an unchanged copy to {target}", quiet=quiet)
        for site in result.skipped:
            render.warning(f"{site.root}: weight norm left in place ({site.reason})")
        for name in result.unrecognized:
            render.warning(f"{name}: its g/v pair is read at run time in a way wnconvert cannot "
                           "analyze; left in place")
        with render.progress(f"folding → {target.name}", quiet=quiet) as bar:
            staged = job.write(on_tensor=bar)
        report = None
        if options is not None:
            report = _verify(staged, path, options, final=target, quiet=quiet)
            if not report.passed:
                _emit_fold(json_out, quiet, None, report, path=path, target=target)
                finish_verification(
                    report, verify.reports, force=force, quiet=quiet, json_out=json_out,
                    suffix="; nothing was written (--no-verify writes it unchecked)",
                )
        outcome = job.commit()
    seconds = time.perf_counter() - started
    _emit_fold(json_out, quiet, outcome, report, path=path, target=target, seconds=seconds)
    finish_verification(report, verify.reports, force=force, quiet=quiet, json_out=json_out)


def _nothing_to_fold(path: Path, skipped: list[Any], unrecognized: list[str]) -> str:
    reasons = "; ".join([f"{site.root}: {site.reason}" for site in skipped] + [
        f"{name}: its g/v pair is read in a way wnconvert cannot analyze"
        for name in unrecognized][:3])
    return (f"{path}: weight norm found but none can be folded ({reasons}); see "
            f"wnconvert inspect {path}")


def _verify(staged: Path, reference: Path, options: VerifyOptions, *, final: Path,
            quiet: bool) -> VerificationReport:
    from ..verify import verify_onnx_against_onnx

    render.info(f"verifying against {reference} on ONNX Runtime", quiet=quiet)
    with render.progress("verifying", quiet=quiet) as callback:
        report = verify_onnx_against_onnx(staged, reference, options=options, progress=callback)
    # The staged file is moved to `final`; the report names the file the user gets.
    report.candidate["path"] = str(final)
    return report


def _emit_fold(json_out: bool, quiet: bool, outcome: FoldOutcome | None,
               report: VerificationReport | None, *, path: Path, target: Path,
               seconds: float | None = None) -> None:
    from ..render.graph import print_fold

    summary = None
    if outcome is not None:
        summary = {"action": "fold", **outcome.to_dict(),
                   "seconds": round(seconds, 4) if seconds is not None else None}
    emit_result(
        json_out=json_out, quiet=quiet, report=report,
        data=summary or {"action": "fold", "input": str(path), "output": str(target),
                         "files": []},
        print_summary=(lambda: print_fold(summary)) if summary is not None else None,
    )


def inspect_onnx_command(*, path: Path, json_out: bool, quiet: bool) -> None:
    """``inspect MODEL.onnx``: weight norm still computed, g/v-like initializers, op counts."""
    from ..onnx_graph import inspect_file

    require_exists(path)
    info = inspect_file(path).to_dict()
    if json_out:
        render.print_json(info)
    elif not quiet:
        from ..render.graph import print_inspection

        print_inspection(info)


@app.command(
    epilog=(
        "\b\nExamples (exit 0 clean, 1 weight norm still computed at run time, 2 unreadable "
        "or invalid model, i.e. one onnx.checker refuses):\n"
        "  wnconvert check model.onnx\n"
        "  wnconvert check model.onnx --json > lint.json"
    ),
)
def check(
    model: Annotated[Path, typer.Argument(metavar="MODEL.onnx", help="The ONNX model to lint.")],
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """CI lint: fail if an ONNX graph still computes weight norm at run time.

    Names each place (parameter, shape, ops, nodes). Refuses (exit 2) a model onnx.checker
    refuses, as inspect and fold do. Reads the graph only, not the weights, so it is fast on
    models of any size. Fix a failure with: wnconvert fold MODEL.onnx."""
    with command_context(debug=debug, quiet=quiet):
        from ..onnx_graph import check_file

        require_exists(model)
        result = check_file(model)
        if json_out:
            render.print_json(result.to_dict())
        elif not quiet:
            from ..render.graph import print_check

            print_check(result.to_dict())
        if result.unrecognized_pairs:
            names = ", ".join(pair.parameter for pair in result.unrecognized_pairs[:3])
            raise CheckFailed(
                f"{model}: reads {len(result.unrecognized_pairs)} weight-norm g/v pair(s) at run "
                f"time in a way wnconvert cannot analyze ({names}); export the model with "
                "weight norm removed (wnconvert fold CHECKPOINT --to onnx)"
            )
        if not result.clean:
            count = len(result.sites)
            stuck = sum(not site.foldable for site in result.sites)
            how = (f"fold it with wnconvert fold {model}" if not stuck else
                   f"{stuck} of them cannot be folded, see wnconvert inspect {model}")
            raise CheckFailed(
                f"{model}: computes weight norm at run time in {count} place(s); {how}"
            )
