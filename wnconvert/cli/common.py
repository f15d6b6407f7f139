"""What every command shares: the error-to-exit-code mapping, progress on the terminal, and
turning verification flags into the library's options.

Exit codes: 0 success, 1 a numerical check failed (:class:`CheckFailed`), 2 usage or input
error (:class:`InputError`, and typer's own usage errors), 3 the exporter cannot convert.
"""

from __future__ import annotations

import errno
import signal
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from .. import render
from ..errors import WeightNormWarning, WnConvertError
from .options import FLAGS

if TYPE_CHECKING:
    from .. import DynamicAxis, InputSpec, VerificationReport, VerifyOptions
    from ..api import StepCallback


class CliProgress:
    """The library's progress protocol on the terminal: stages as status lines and bars on
    stderr only when it is a terminal; notes on stderr unless ``--quiet``."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet

    def status(self, message: str) -> None:
        if not self.quiet and render.stderr().is_terminal:
            render.info(message)

    def note(self, message: str) -> None:
        render.info(message, quiet=self.quiet)

    def step(self, description: str) -> AbstractContextManager[StepCallback | None]:
        return render.progress(description, quiet=self.quiet)


def verify_options(*, providers: Sequence[str] = (), seed: int = 0, runs: int = 1,
                   atol: float | None = None, rtol: float | None = None,
                   output_tol: Sequence[str] = (), weights: str = "fail",
                   tf32: bool = False, debug: bool = False,
                   input_shapes: Sequence[InputSpec] = (), inputs_file: Path | None = None,
                   dynamic: Sequence[DynamicAxis] = (), check_error_stat: Sequence[str] = (),
                   error_quantile: Sequence[str] = (), min_snr: Sequence[str] = ()
                   ) -> VerifyOptions:
    """The library's options from the verification flags (the library validates them)."""
    from .. import VerifyOptions
    from .parse import parse_named_values, parse_output_tolerances

    stat, stats = parse_named_values("--check-error-stat", check_error_stat, number=False)
    quantile, quantiles = parse_named_values("--error-quantile", error_quantile, number=True)
    snr, snrs = parse_named_values("--min-snr", min_snr, number=True)
    budget: dict[str, Any] = {"output_error_stats": stats, "output_error_quantiles": quantiles,
                              "min_snr": snr, "output_min_snrs": snrs}
    if stat is not None:
        budget["check_error_stat"] = stat
    if quantile is not None:
        budget["error_quantile"] = quantile

    return VerifyOptions(
        providers=tuple(providers), seed=seed, runs=runs, atol=atol, rtol=rtol,
        output_tolerances=parse_output_tolerances(output_tol),
        input_specs=tuple(input_shapes), inputs_file=inputs_file,
        dynamic_axes=tuple(dynamic), cuda_tf32=tf32,
        weights=weights,  # type: ignore[arg-type]  # checked by VerifyOptions
        ort_logging=debug, **budget,
    )


@contextmanager
def command_context(*, debug: bool, quiet: bool = False) -> Iterator[None]:
    """Run a command body: route library warnings to stderr, map errors to exit codes.

    One line on stderr, no traceback (``--debug`` shows it for errors):

    * :class:`InputError` exits 2, :class:`CheckFailed` 1, :class:`ConversionNotPossible` 3,
      the message rendered in flag terms (:data:`.options.FLAGS`);
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
                render.error(exc.render(FLAGS))
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


def _flush_warnings(caught: list[warnings.WarningMessage]) -> None:
    # Only data warnings are shown (even with --quiet); third-party chatter is dropped.
    for item in caught:
        if issubclass(item.category, WeightNormWarning):
            render.warning(str(item.message))
    caught.clear()


def emit_result(*, json_out: bool, quiet: bool, data: dict[str, Any],
                report: VerificationReport | None,
                print_summary: Callable[[], None] | None = None) -> None:
    """Results on stdout: ``data`` (the result's ``to_dict()``) with --json, else the summary
    and the verification tables (nothing with --quiet), then the report files written. What
    weakens the verdict (a tolerance too loose for the output, what ONNX Runtime printed) goes
    to stderr as warnings."""
    if report is not None:
        for line in report.warnings():
            render.warning(line)
    if json_out:
        render.print_json(data)
        return
    if quiet:
        return
    if print_summary is not None:
        print_summary()
    if report is not None:
        from ..render.verify import print_report, print_reports_written

        print_report(report)
        print_reports_written(report.reports_written)
