"""ONNX model jobs: inspect, check (the CI lint) and fold weight norm inside an ONNX graph.

``fold_onnx`` verifies the folded model on ONNX Runtime against the original before it is
moved into place: a model that fails the check is never written.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckFailed, InputError, WeightNormWarning
from .progress import SILENT, Progress

if TYPE_CHECKING:
    from ..choices import Precision
    from ..onnx_graph import CheckResult, FoldOutcome, Inspection, LazyModel
    from ..onnx_graph.precision import PrecisionReport
    from ..verification import Recording, VerificationReport, VerifyOptions
    from ..verification.background import ReferenceAhead


def inspect_onnx(path: Path | str) -> Inspection:
    """What the ONNX model at ``path`` holds: weight norm still computed at run time (where,
    foldable or not), g/v-like initializers, opsets, op counts, lost parameter names.
    ``.to_dict()`` is the JSON of ``wnconvert inspect MODEL.onnx --json``."""
    from ..formats.files import require_exists
    from ..onnx_graph import inspect_file

    return inspect_file(require_exists(path))


def check_onnx(path: Path | str) -> CheckResult:
    """Where the ONNX model at ``path`` still computes weight norm (``.clean`` when nowhere).
    Reads the graph only. A model that ``onnx.checker`` refuses raises
    :class:`wnconvert.InputError`; :meth:`CheckResult.failure` says why a model is not clean."""
    from ..formats.files import require_exists
    from ..onnx_graph import check_file

    return check_file(require_exists(path))


def check_failure(result: CheckResult) -> CheckFailed | None:
    """Why ``result`` fails the lint (as the error ``wnconvert check`` exits 1 with), or None."""
    model = result.path
    if result.unrecognized_pairs:
        names = ", ".join(pair.parameter for pair in result.unrecognized_pairs[:3])
        return CheckFailed(
            f"{model}: reads {len(result.unrecognized_pairs)} weight-norm g/v pair(s) at run "
            f"time in a way wnconvert cannot analyze ({names}); export the model with weight "
            "norm removed (wnconvert fold CHECKPOINT --to onnx)"
        )
    if result.unrecognized_spectral and not result.sites:
        names = ", ".join(result.unrecognized_spectral[:3])
        return CheckFailed(
            f"{model}: reads the spectral-norm weights and u of "
            f"{len(result.unrecognized_spectral)} parameter(s) at run time in a way wnconvert "
            f"cannot analyze ({names}); export the model with spectral norm removed"
        )
    if not result.clean:
        count = len(result.sites)
        stuck = sum(not site.foldable for site in result.sites)
        how = (f"fold it with wnconvert fold {model}" if not stuck else
               f"{stuck} of them cannot be folded, see wnconvert inspect {model}")
        return CheckFailed(f"{model}: computes {_kinds(result.sites)} at run time in {count} "
                           f"place(s); {how}")
    return None


def _kinds(sites: list[Any]) -> str:
    """"weight norm", "spectral norm" or both, as the sites found say."""
    kinds = {site.kind for site in sites}
    named = [text for kind, text in (("weight_norm", "weight norm"),
                                     ("spectral_norm", "spectral norm")) if kind in kinds]
    return " and ".join(named) or "weight norm"


@dataclass
class OnnxFoldResult:
    """What :func:`fold_onnx` did: the files written (None when verification failed and nothing
    was written) and the verification report (None with ``verify=False``)."""

    input: Path
    output: Path
    outcome: FoldOutcome | None
    report: VerificationReport | None
    seconds: float
    reports_written: list[Path] = field(default_factory=list)
    precision: PrecisionReport | None = None  # None: float32, as the input

    @property
    def passed(self) -> bool:
        """True when the output was written and, if verified, passed."""
        return self.outcome is not None and (self.report is None or self.report.passed)

    def failure(self) -> CheckFailed | None:
        """The error a failed verification means (None when it passed)."""
        if self.report is None or self.report.passed:
            return None
        return verification_failure(
            self.report, suffix="; nothing was written ({-no_verify} writes it unchecked)")

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``wnconvert fold MODEL.onnx --json``."""
        if self.outcome is not None:
            data = {"action": "fold", **self.outcome.to_dict(), "seconds": round(self.seconds, 4)}
        else:
            data = {"action": "fold", "input": str(self.input), "output": str(self.output),
                    "files": []}
        return {**data, "precision": self.precision.to_dict() if self.precision else None,
                "verification": self.report.to_dict() if self.report else None,
                "passed": self.report.passed if self.report else None}


def fold_onnx(source: Path | str, output: Path | str | None = None, *, verify: bool = True,
              options: VerifyOptions | None = None, reports: Sequence[Path | str] = (),
              reference: Path | str | None = None, reference_key: str | None = None,
              precision: Precision = "fp32", keep_io_types: bool = True,
              save_inputs: Path | str | None = None, save_outputs: Path | str | None = None,
              force: bool = False, progress: Progress = SILENT) -> OnnxFoldResult:
    """Fold every weight-norm computation in the ONNX model ``source`` into named initializers
    (float64, rounded once) and write ``output`` (default ``<stem>.folded.onnx``) atomically.

    With ``verify`` (the default) the folded model is checked on ONNX Runtime against
    ``source`` (``options``: providers, tolerances, inputs) *before* it is moved into place; a
    failed check writes nothing and returns a result with ``passed == False``. The original's
    reference outputs are computed in a background thread while the fold works, once the input
    passed ``onnx.checker`` (the call returns with that thread ended). ``reports``
    (``.json``, ``.xml``) get the verification report either way. ``reference`` is a
    checkpoint whose tensor names go to initializers of equal value (``reference_key`` picks
    its state dict). A graph with nothing to fold is "already clean": an unchanged copy is
    written. Weight norm that cannot be folded is left in place with a warning.

    ``precision="fp16"`` or ``"bf16"``: the folded model computes in that type (weights folded
    in float64 and rounded once to it; ops of the block list stay float32); with
    ``keep_io_types`` (the default) its inputs and outputs stay float32. A weight that would
    overflow is refused; values that flush to zero or subnormal are counted in
    ``.precision``. bf16 is refused when a verification provider has no bfloat16 kernel for
    an op of the model.

    ``save_inputs``/``save_outputs``: the verification's inputs and outputs as Polygraphy files
    (see :func:`wnconvert.verify`), written either way.
    """
    from ..formats.files import require_exists
    from ..onnx_graph import FoldJob, default_output
    from ..onnx_graph.precision import check_precision
    from ..verification import Recording, VerifyOptions, plan_providers
    from ..verification.report import check_report_paths, write_reports
    from .verification import check_save_paths, protected_inputs, write_recording

    path = require_exists(source)
    grid = check_precision(precision, keep_io_types=keep_io_types)
    if reference is not None:
        reference = require_exists(reference)
    elif reference_key is not None:
        raise InputError.template(
            "{path}: {-reference_key} picks the state dict of {-reference}; an .onnx input has "
            "none (drop {-reference_key} or add {-reference})", path=path)
    target = Path(output) if output is not None else default_output(path)
    if target.suffix.lower() != ".onnx":
        raise InputError.template("{target}: the folded model needs a .onnx name; choose "
                                  "another {-output}", target=target)
    report_paths = [Path(p) for p in reports]
    saving = save_inputs is not None or save_outputs is not None
    if not verify and (report_paths or options is not None or saving):
        what = ("{-reports}" if report_paths else "{-options}" if options is not None
                else "{-save_inputs}/{-save_outputs}")
        raise InputError.template(what + " need(s) verification, which {-no_verify} turns off; "
                                  "drop one of them")
    # The model's external data files are protected too, once FoldJob has read the model (it
    # is read once per job: the graph that is checked is the one folded and verified).
    protected = [path, *protected_inputs(reference, options.inputs_file if options is not None
                                         else None), target]
    check_report_paths(report_paths, force=force, inputs=protected)
    saves = check_save_paths(save_inputs, save_outputs, reports=report_paths, force=force,
                             inputs=protected)
    recording = Recording() if saving else None
    if verify:
        options = options if options is not None else VerifyOptions()
        # A provider that cannot start here fails before the model is read.
        plan_providers(options.providers, cuda_tf32=options.cuda_tf32)

    started = time.perf_counter()
    ahead: list[ReferenceAhead] = []
    # Ahead only where the verification feeds the original what the candidate gets: float32
    # (a narrow candidate may take other input types) and generated inputs (a user's inputs
    # file is read once, by the verification).
    early = verify and precision == "fp32" and options is not None \
        and options.inputs_file is None

    def run_reference_ahead(model: LazyModel) -> None:
        # The original's outputs do not depend on the fold: computed in the background while
        # it works, once the input passed onnx.checker (the context waits for the thread).
        from ..verification.background import ReferenceAhead, side_by_side_threads

        assert options is not None
        threads = side_by_side_threads(model.tensor_nbytes())
        ahead.append(background.enter_context(
            ReferenceAhead(model.path, options, intra_op_threads=threads)))

    with contextlib.ExitStack() as background, FoldJob(
            path, target, force=force, reference=reference, reference_key=reference_key,
            grid=grid, on_validated=run_reference_ahead if early else None) as job:
        assert job.original is not None
        check_report_paths(report_paths, force=force, inputs=job.original.data_files)
        check_save_paths(save_inputs, save_outputs, reports=report_paths, force=force,
                         inputs=job.original.data_files)
        if verify:
            from ..verification.orchestrate import check_inputs

            assert options is not None
            # Inputs that do not fit the model fail before anything is written (the folded
            # model has the inputs of the original).
            check_inputs(path, options, read=job.original)
        result = job.result
        unrecognized = [f"{name}: its g/v pair is read in a way wnconvert cannot analyze"
                        for name in result.unrecognized] + [
            f"{name}: its spectral-norm weight and u are read in a way wnconvert cannot analyze"
            for name in result.unrecognized_spectral]
        if not result.changed and (result.skipped or unrecognized):
            raise InputError(_nothing_to_fold(path, result.skipped, unrecognized))
        if not result.changed:
            progress.note(f"already clean: {path} computes no weight norm and its initializers "
                          f"have their names; writing an unchanged copy to {target}")
        for site in result.skipped:
            warnings.warn(f"{site.root}: weight norm left in place ({site.reason})",
                          WeightNormWarning, stacklevel=2)
        for name in result.unrecognized:
            warnings.warn(f"{name}: its g/v pair is read at run time in a way wnconvert cannot "
                          "analyze; left in place", WeightNormWarning, stacklevel=2)
        for name in result.unrecognized_spectral:
            warnings.warn(f"{name}: its spectral-norm weight and u are read at run time in a way "
                          "wnconvert cannot analyze; left in place", WeightNormWarning,
                          stacklevel=2)
        with progress.step(f"folding → {target.name}") as bar:
            staged = job.write(on_tensor=bar)
        converted = None
        if precision != "fp32":
            converted = _convert_staged(staged, precision, keep_io_types=keep_io_types,
                                        options=options if verify else None, progress=progress)
            converted.from_float64 = sum(1 for layer in result.layers if layer.grid)
        report = None
        if verify:
            assert options is not None
            report = _verify_staged(staged, job.original, options, final=target,
                                    progress=progress, recording=recording,
                                    ahead=ahead[0] if ahead else None)
            if recording is not None:
                write_recording(recording, *saves, force=force, progress=progress)
            if not report.passed:
                written = write_reports(report, report_paths, force=force)
                report.reports_written = written  # the CLI says which it wrote
                return OnnxFoldResult(path, target, None, report,
                                      time.perf_counter() - started, written, converted)
        outcome = job.commit()
    seconds = time.perf_counter() - started
    written = write_reports(report, report_paths, force=force) if report is not None else []
    if report is not None:
        report.reports_written = written  # the CLI says which it wrote
    return OnnxFoldResult(path, target, outcome, report, seconds, written, converted)


def _convert_staged(staged: Path, precision: Precision, *, keep_io_types: bool,
                    options: VerifyOptions | None, progress: Progress) -> PrecisionReport:
    """The staged (private) float32 model converted in place; with ``options`` (verification
    on), bf16 is checked against the providers it will run on."""
    from ..onnx_graph.precision import convert_file
    from ..verification import plan_providers

    providers: list[str] = []
    if options is not None:
        plan = plan_providers(options.providers, cuda_tf32=options.cuda_tf32)
        providers = [spec.session_providers[0][0] for spec in plan.specs]
    progress.status(f"converting to {precision}")
    converted = convert_file(staged, precision, keep_io_types=keep_io_types,
                             providers=providers)
    for note in converted.notes():
        progress.note(f"note: {note}")
    return converted


def verification_failure(report: VerificationReport, *, suffix: str = "") -> CheckFailed:
    """The one-line error of a failed verification: its first failure and how many more."""
    failures = report.failures()
    first = failures[0] if failures else "no provider could run the model"
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    return CheckFailed.template("verification failed: {first}{more}" + suffix,
                                first=first, more=more)


def _nothing_to_fold(path: Path, skipped: list[Any], unrecognized: list[str]) -> str:
    reasons = "; ".join(([f"{site.root}: {site.reason}" for site in skipped] + unrecognized)[:3])
    return (f"{path}: weight norm found but none can be folded ({reasons}); see "
            f"wnconvert inspect {path}")


def _verify_staged(staged: Path, original: LazyModel, options: VerifyOptions, *, final: Path,
                   progress: Progress, recording: Recording | None = None,
                   ahead: ReferenceAhead | None = None) -> VerificationReport:
    """``staged`` against the input model, read once by the fold: the input is not parsed
    again (ONNX Runtime loads both files), the staged output once, here."""
    from ..onnx_graph import load_model
    from ..verification import verify_onnx_against_onnx

    progress.note(f"verifying against {original.path} on ONNX Runtime")
    with progress.step("verifying") as callback:
        report = verify_onnx_against_onnx(staged, original.path, options=options,
                                          progress=callback, candidate_model=load_model(staged),
                                          reference_model=original, recording=recording,
                                          reference_ahead=ahead)
    # The staged file is moved to `final`; the report names the file the user gets.
    report.candidate["path"] = str(final)
    return report
