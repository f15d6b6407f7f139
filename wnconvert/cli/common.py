"""What every command shares: option types, the error-to-exit-code mapping, output paths.

Exit codes: 0 success, 1 a numerical check failed (:class:`CheckFailed`), 2 usage or input
error (:class:`InputError`, and typer's own usage errors).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import render
from ..errors import CheckFailed, InputError, InputNotFound, WeightNormWarning, WnConvertError
from .options import MAX_RUNS, WeightsChoice

if TYPE_CHECKING:
    from ..export import DynamicAxis, InputSpec
    from ..keys import PrefixChange
    from ..verify import VerificationReport, VerifyOptions

ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing output.")]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print only errors (and --json output).")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Output path (default: next to the input, new name)."),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        help="Where the state dict sits in a nested .pt container (e.g. state_dict, generator, "
        "model.ema). Found automatically when unambiguous.",
    ),
]


@dataclass
class VerifyCliOptions:
    """Verification options as typed on the command line; :func:`build_verify_options` turns
    them (with the input options) into the library's :class:`~wnconvert.verify.VerifyOptions`."""

    verify: bool = True
    providers: list[str] = field(default_factory=list)
    seed: int = 0
    runs: int = 1
    atol: float | None = None
    rtol: float | None = None
    output_tolerances: list[str] = field(default_factory=list)  # NAME=ATOL[:RTOL]
    reports: list[Path] = field(default_factory=list)  # .json or .xml
    weights: WeightsChoice | str = WeightsChoice.fail
    cuda_tf32: bool = False  # allow TF32 on CUDA/TensorRT (off so float32 compares)
    debug: bool = False  # let ONNX Runtime's logger speak


def build_verify_options(cli: VerifyCliOptions, *, input_specs: Sequence[InputSpec] = (),
                         inputs_file: Path | None = None,
                         dynamic_axes: Sequence[DynamicAxis] = ()) -> VerifyOptions:
    """The library's typed options from the command line's (InputError names the flag)."""
    from ..verify import VerifyOptions
    from .parse import parse_output_tolerances, parse_tolerance_flag

    try:
        weights = WeightsChoice(cli.weights).value
    except ValueError:
        raise InputError(f"--weights {cli.weights}: use one of "
                         f"{', '.join(c.value for c in WeightsChoice)}") from None
    if cli.seed < 0:
        raise InputError(f"--seed {cli.seed}: must be a non-negative integer")
    if not 1 <= cli.runs <= MAX_RUNS:
        raise InputError(f"--runs {cli.runs}: must be between 1 and {MAX_RUNS}")
    if inputs_file is not None and inputs_file.suffix.lower() != ".npz":
        raise InputError(f"--inputs {inputs_file}: expected an .npz archive (numpy.savez(path, "
                         "name=array, ...)), one array per model input")
    return VerifyOptions(
        providers=tuple(cli.providers),
        seed=cli.seed,
        runs=cli.runs,
        atol=parse_tolerance_flag("--atol", cli.atol),
        rtol=parse_tolerance_flag("--rtol", cli.rtol),
        output_tolerances=parse_output_tolerances(cli.output_tolerances),
        input_specs=tuple(input_specs),
        inputs_file=inputs_file,
        dynamic_axes=tuple(dynamic_axes),
        cuda_tf32=cli.cuda_tf32,
        weights=weights,  # type: ignore[arg-type]
        ort_logging=cli.debug,
    )


@dataclass
class ExportCliOptions:
    """Raw export options as typed on the command line (parsed by the export layer)."""

    model: str | None = None  # MODULE:CALLABLE or path/to/file.py:CALLABLE
    model_kwargs: str | None = None  # JSON object
    input_shapes: list[str] = field(default_factory=list)  # SHAPE[:DTYPE], one per input
    inputs_file: Path | None = None  # .npz with real inputs
    dynamic: list[str] = field(default_factory=list)
    opset: int | None = None
    exporter: str = "auto"  # auto | dynamo | legacy
    prefix: PrefixChange | None = None  # --strip-prefix / --add-prefix
    trust_program: bool = False  # --trust-program: a .pt2 may be loaded and run


@contextmanager
def command_context(*, debug: bool, quiet: bool = False) -> Iterator[None]:
    """Run a command body: route library warnings to stderr, map errors to exit codes.

    One line on stderr, no traceback (``--debug`` shows it for errors):

    * :class:`InputError` exits 2, :class:`CheckFailed` 1, :class:`ConversionNotPossible` 3;
    * Ctrl-C exits 130, SIGTERM 143 (SIGHUP 129): the writers removed their temp files and
      staging folders while the exception unwound. Whatever a signal turned into on its way
      (torch's writer makes Ctrl-C a RuntimeError) is reported as the signal;
    * an OSError (a full disk, no permission) exits 2 naming the file and the cause;
    * a stdout closed early that got past :class:`~.lifecycle.StdoutGuard` exits 141 (the
      command did not finish, so it cannot claim success);
    * anything unexpected exits 2 too, asking for a report.
    """
    from .lifecycle import Terminated, discard_stdout, received_signal, signal_name

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", WeightNormWarning)
        try:
            yield
        except typer.Exit:
            _flush_warnings(caught)
            raise
        except (Exception, KeyboardInterrupt, Terminated) as exc:  # noqa: BLE001 - one line each
            _flush_warnings(caught)
            signum = received_signal()
            if signum is None and isinstance(exc, Terminated):
                signum = exc.signum
            if signum is not None or isinstance(exc, KeyboardInterrupt):
                what = (
                    "interrupted" if signum is None or signum == signal.SIGINT
                    else f"terminated ({signal_name(signum)})"
                )
                render.error(f"{what}; no partial output was left behind")
                raise typer.Exit(128 + (signum or signal.SIGINT)) from None
            if debug:
                traceback.print_exc()
            if isinstance(exc, WnConvertError):
                render.error(in_flag_terms(str(exc)))
                raise typer.Exit(exc.exit_code) from None
            if isinstance(exc, BrokenPipeError):
                discard_stdout()
                raise typer.Exit(128 + 13) from None  # 141: what a shell shows for SIGPIPE
            if isinstance(exc, OSError):
                render.error(_os_error_line(exc))
                raise typer.Exit(2) from None
            render.error(
                f"unexpected {type(exc).__name__}: {exc} (run again with --debug for a traceback "
                "and report it)"
            )
            raise typer.Exit(2) from None
        _flush_warnings(caught)


def _os_error_line(exc: OSError) -> str:
    """Disk full, permission denied, ...: the environment, not a bug. Outputs are published
    only when complete, so nothing half-written is left behind (an old output is kept)."""
    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some space or write elsewhere with -o"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "check permissions or write elsewhere with -o"
    else:
        hint = "check space and permissions"
    return f"{where}{exc.strerror or exc}; no output was written ({hint})"


def protected_inputs(*paths: Path | None, model: str | None = None) -> list[Path]:
    """Every file a command reads, so that no output is one of them (even with --force).

    The given paths, the external data files of ``.onnx`` ones, and the source file of a
    ``--model path/to/file.py:CALLABLE``.
    """
    found: list[Path] = []
    for path in paths:
        if path is None:
            continue
        found.append(path)
        if path.suffix.lower() == ".onnx" and path.is_file():
            from ..errors import InputError
            from ..onnx_graph.protoio import load_model

            with suppress(InputError, OSError):  # unreadable: the command itself says why
                found.extend(load_model(path).data_files)
    target = (model or "").rpartition(":")[0]
    if target.endswith(".py") or "/" in target or os.sep in target:
        found.append(Path(target))
    return found


#: The library words errors in API terms (``model='x.py:build'``, ``dim=-1``,
#: ``force=True``, ``trust_program=True``); on the command line they name the flag the user
#: typed instead.
_API_TO_FLAG = {
    "model_kwargs": "--model-kwargs", "model": "--model", "key": "--key", "to": "--to",
    "style": "--style", "dim": "--dim", "include": "--include", "exclude": "--exclude",
    "report": "--report", "inputs": "--inputs", "input": "--input", "dynamic": "--dynamic",
    "opset": "--opset", "exporter": "--exporter", "atol": "--atol", "rtol": "--rtol",
    "seed": "--seed", "runs": "--runs", "weights": "--weights", "reference": "--reference",
}
_API_TERM = re.compile(r"(?<![\w.(\[])(" + "|".join(sorted(_API_TO_FLAG, key=len, reverse=True))
                       + r")=(?=(.?))")


def in_flag_terms(message: str) -> str:
    """``message`` with the library's ``name=value`` terms written as the CLI's flags."""
    message = re.sub(r"(?<![\w.(])force=True", "--force", message)
    message = re.sub(r"(?<![\w.(])trust_program=True", "--trust-program", message)

    def flag(match: re.Match[str]) -> str:
        after = match.group(2)
        value_follows = bool(after) and (after.isalnum() or after in "'\"-[{.~/")
        if after == "/":  # "include=/exclude=" lists terms; "report=/tmp/x" is a value
            value_follows = not _API_TERM.match(match.string, match.end() + 1)
        return _API_TO_FLAG[match.group(1)] + (" " if value_follows else "")

    return _API_TERM.sub(flag, message)


def _flush_warnings(caught: list[warnings.WarningMessage]) -> None:
    # Only data warnings are shown (even with --quiet); third-party chatter is dropped.
    for item in caught:
        if issubclass(item.category, WeightNormWarning):
            render.warning(str(item.message))
    caught.clear()


def emit_result(
    *,
    json_out: bool,
    quiet: bool,
    data: dict[str, Any],
    report: VerificationReport | None,
    print_summary: Callable[[], None] | None = None,
) -> None:
    """Results on stdout: ``data`` plus the verification as JSON with --json, else the summary
    and the verification tables (nothing with --quiet). What weakens the verdict (a tolerance
    too loose for the output, what ONNX Runtime printed) goes to stderr as warnings."""
    if report is not None:
        for line in report.warnings():
            render.warning(line)
    if json_out:
        render.print_json({
            **data,
            "verification": report.to_dict() if report is not None else None,
            "passed": report.passed if report is not None else None,
        })
        return
    if quiet:
        return
    if print_summary is not None:
        print_summary()
    if report is not None:
        from ..render.verify import print_report

        print_report(report)


def finish_verification(
    report: VerificationReport | None,
    reports: list[Path],
    *,
    force: bool,
    quiet: bool,
    json_out: bool = False,
    suffix: str = "",
) -> None:
    """Write the report files (listed on stdout), then exit 1 if any check failed.

    Reports are written whether the check passed or not: a CI job wants the failing one most.
    """
    if report is None:
        return
    from ..render.verify import print_reports_written
    from ..verify.report import write_reports

    written = write_reports(report, reports, force=force)
    if not quiet and not json_out:
        print_reports_written(written)
    if not report.passed:
        failures = report.failures()
        first = failures[0] if failures else "no provider could run the model"
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise CheckFailed(f"verification failed: {first}{more}{suffix}")


def names_program(path: Path | None, model: str | None = None) -> bool:
    """True when the job reads a ``.pt2`` program: ``path`` is one, or ``--model`` names one."""
    return ((path is not None and path.suffix.lower() == ".pt2")
            or (model or "").endswith(".pt2"))  # as prepare_model tells a program from code


def refuse_unused_trust(trust_program: bool, *, reads_program: bool) -> None:
    """``--trust-program`` on a job that reads no ``.pt2`` would be ignored: refused, so a
    user never believes it changed something."""
    if trust_program and not reads_program:
        raise InputError("--trust-program applies to a .pt2 program (the input, --reference or "
                         "--model), and this job reads none; drop it")


def require_exists(path: Path) -> Path:
    if not path.exists():
        raise InputNotFound(f"{path}: no such file or directory; check the path")
    return path
