"""``fold --to onnx`` (called by the ``fold`` command) and the ``verify`` command.

torch, onnx and onnxruntime are imported inside the functions so ``wnconvert --help`` is instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from .. import render
from ..errors import InputError, InputNotFound
from . import app
from .common import (
    DebugOpt,
    ExportCliOptions,
    ForceOpt,
    JsonOpt,
    KeyOpt,
    QuietOpt,
    VerifyCliOptions,
    build_verify_options,
    command_context,
    emit_result,
    finish_verification,
    names_program,
    protected_inputs,
    refuse_unused_trust,
)
from .options import (
    AddPrefixOpt,
    AtolOpt,
    DynamicOpt,
    InputOpt,
    InputsOpt,
    ModelKwargsOpt,
    ModelOpt,
    ProviderOpt,
    ReportOpt,
    RtolOpt,
    RunsOpt,
    SeedOpt,
    StripPrefixOpt,
    Tf32Opt,
    TolOpt,
    TrustProgramOpt,
    WeightsChoice,
    WeightsOpt,
)
from .parse import parse_dynamic_axis, parse_input_spec, parse_model_kwargs, parse_prefix

if TYPE_CHECKING:
    from ..export import InputSpec, PreparedModel
    from ..keys import PrefixChange
    from ..verify import VerificationReport, VerifyOptions


def _status(message: str, *, quiet: bool) -> None:
    """A progress line on stderr, only on a terminal (an input error stays one line)."""
    if not quiet and render.stderr().is_terminal:
        render.info(message)


# --------------------------------------------------------------------------------------------
# fold --to onnx


def fold_to_onnx_command(
    *,
    path: Path,
    output: Path | None,
    key: str | None,
    force: bool,
    quiet: bool,
    json_out: bool,
    export: ExportCliOptions,
    verify: VerifyCliOptions,
) -> None:
    """Export a checkpoint (with ``--model``) or a ``.pt2`` program to ONNX, then verify it.

    Runs inside the ``fold`` command's ``command_context``: raises InputError / CheckFailed.
    """
    from .. import export as ex
    from ..formats import check_output
    from ..formats.atomic import check_not_input
    from ..verify.report import check_report_paths

    is_program = path.suffix.lower() == ".pt2"
    if not path.exists():
        raise InputNotFound(f"{path}: no such file or directory; check the path")
    if not is_program and not export.model:
        raise InputError(f"{path}: --to onnx needs --model MODULE:CALLABLE (or path/to/file.py:"
                         "CALLABLE) that builds the network, or a .pt2 program as input")
    if is_program and key is not None:
        raise InputError(f"{path}: --key applies to checkpoints, not to .pt2 programs; drop it")
    _require_trust(path, export)
    if export.input_shapes and export.inputs_file is not None:
        raise InputError("--input and --inputs both given; use shapes (random data) or a .npz "
                         "file (real data), not both")
    if verify.reports and not verify.verify:
        raise InputError("--report needs verification; drop --no-verify or --report")
    output = output or path.with_suffix(".onnx")
    if output.suffix.lower() != ".onnx":
        raise InputError(f"{output}: ONNX output needs a .onnx name; choose another -o")
    # Fail fast on outputs that exist, before the slow export.
    inputs = protected_inputs(path, export.inputs_file, model=export.model)
    check_output(output, force=force, inputs=inputs)
    check_not_input(output.with_name(output.name + ".data"), inputs)  # external data, if any
    check_report_paths(verify.reports, force=force, inputs=[*inputs, output])
    from ..export.onnx_export import DEFAULT_OPSET, check_opset

    check_opset(export.opset if export.opset is not None else DEFAULT_OPSET,
                exporter=export.exporter)  # before the slow load and export
    specs = [parse_input_spec(text) for text in export.input_shapes]
    dynamic = [parse_dynamic_axis(text) for text in export.dynamic]
    kwargs = parse_model_kwargs(export.model_kwargs)
    options = build_verify_options(verify, input_specs=specs, inputs_file=export.inputs_file,
                                   dynamic_axes=dynamic)
    if verify.verify:
        from ..verify import plan_providers

        # The same probe verification uses: a provider that cannot start here fails (exit 2)
        # before the export writes anything.
        plan_providers(options.providers, cuda_tf32=options.cuda_tf32)

    _status(f"loading {path}", quiet=quiet)
    if is_program:
        if export.model:
            raise InputError(f"{path}: a .pt2 program is the model itself; drop --model")
        prepared = ex.prepare_program(path, trust_program=export.trust_program)
    else:
        prepared = _prepare_from_checkpoint(path, key=key, model=export.model or "",
                                            kwargs=kwargs, need_plain=True,
                                            prefix=export.prefix,
                                            trust_program=export.trust_program)
    if prepared.key_change:
        render.info(f"note: {prepared.key_change}", quiet=quiet)
    args, input_names = _export_inputs(prepared, specs, export.inputs_file, seed=verify.seed)
    if not dynamic and prepared.dynamic_axes:
        dynamic = list(prepared.dynamic_axes)
    # Typed by the CLI (ExporterChoice), so only the exporter names reach this point.
    exporter = cast("ex.Exporter", export.exporter or "auto")
    _status(f"exporting to {output} (torch.onnx, opset {export.opset or ex.DEFAULT_OPSET})",
                quiet=quiet)
    result = ex.export_onnx(
        prepared.plain, args, output=output, input_names=input_names, dynamic=dynamic,
        opset=export.opset, exporter=exporter, force=force,
    )
    for note in result.notes:
        render.warning(note)
    report = None
    if verify.verify:
        if not specs and export.inputs_file is None:
            # Verify on the shapes the model was exported with (a .pt2's example inputs).
            options = _with_specs(options, args, input_names)
        report = _run_verification(output, prepared, options, quiet=quiet)
    _emit(json_out, quiet, export_result=result, report=report)
    finish_verification(report, verify.reports, force=force, quiet=quiet, json_out=json_out)


def _require_trust(path: Path, export: ExportCliOptions) -> None:
    """Refuse an untrusted ``.pt2`` (``path`` or ``--model``) before anything else is done: the
    load would refuse it too, but only after the checks on outputs and providers."""
    from ..export.program import require_trust

    programs = [path] if names_program(path) else []
    if names_program(None, export.model):
        programs.append(Path(export.model or ""))
    for program in programs:
        require_trust(program, trust_program=export.trust_program)


def _with_specs(options: VerifyOptions, args: list[Any], names: list[str]) -> VerifyOptions:
    import dataclasses

    from ..dtypes import name_of_torch
    from ..export import InputSpec

    specs = tuple(InputSpec(tuple(a.shape), name_of_torch(a.dtype), name, name)
                  for a, name in zip(args, names, strict=True))
    return dataclasses.replace(options, input_specs=specs)


def _prepare_from_checkpoint(path: Path, *, key: str | None, model: str, kwargs: dict[str, Any],
                             need_plain: bool, prefix: PrefixChange | None = None,
                             trust_program: bool = False) -> PreparedModel:
    from ..export import prepare_model
    from ..formats import load_checkpoint

    checkpoint = load_checkpoint(path, key=key)
    state_dict = checkpoint.materialize()
    return prepare_model(state_dict, model=model, model_kwargs=kwargs, source=str(path),
                         need_plain=need_plain, prefix=prefix, trust_program=trust_program)


def _export_inputs(prepared: PreparedModel, specs: list[InputSpec], inputs_file: Path | None,
                   *, seed: int) -> tuple[list[Any], list[str]]:
    """Example tensors for tracing and the ONNX input names."""
    from ..dtypes import numpy_to_tensor
    from ..export import example_inputs, forward_input_names, load_inputs_npz

    if inputs_file is not None:
        arrays = load_inputs_npz(inputs_file)
        args = [numpy_to_tensor(a) for a in arrays.values()]
        names = list(arrays)
        if all(n.startswith("arr_") for n in names):
            names = []  # positional np.savez: name inputs after forward()'s parameters
    elif specs:
        args = example_inputs(specs, seed=seed)
        names = [s.name or "" for s in specs] if all(s.name for s in specs) else []
    elif prepared.example_inputs is not None:
        args = list(prepared.example_inputs)
        names = []
    else:
        raise InputError("no inputs to export with: give --input SHAPE[:DTYPE] once per "
                         "positional input (e.g. --input 1x80x200) or --inputs FILE.npz")
    names = names or prepared.input_names or forward_input_names(prepared.plain, len(args))
    if len(names) != len(args):
        names = forward_input_names(prepared.plain, len(args))
    return args, names


def _run_verification(output: Path, prepared: PreparedModel, options: VerifyOptions, *,
                      quiet: bool) -> VerificationReport:
    from ..verify import verify_onnx_against_torch

    _status("verifying on ONNX Runtime", quiet=quiet)
    with render.progress("verifying", quiet=quiet) as callback:
        return verify_onnx_against_torch(
            output, prepared.reference, options=options, reference_weights=prepared.weights,
            reference_info=prepared.description, progress=callback,
        )


def _emit(json_out: bool, quiet: bool, *, export_result: Any = None,
          report: VerificationReport | None = None) -> None:
    from ..render.verify import print_export_summary

    emit_result(
        json_out=json_out, quiet=quiet, report=report,
        data={"export": export_result.to_dict()} if export_result is not None else {},
        print_summary=(lambda: print_export_summary(export_result))
        if export_result is not None else None,
    )


# --------------------------------------------------------------------------------------------
# verify


@app.command(
    epilog=(
        "\b\nExamples:\n"
        "  wnconvert verify model.onnx --reference generator.pt --model models.py:build \\\n"
        "      --input 1x80x200 --report verify.json\n"
        "  wnconvert verify folded.onnx --reference original.onnx \\\n"
        "      --provider cpu --provider cuda --report junit.xml"
    ),
)
def verify(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL.onnx",
                                               help="The ONNX model to check.")],
    reference: Annotated[
        Path,
        typer.Option("--reference", "-r", help="Checkpoint (with --model), .pt2 program (with "
                     "--trust-program), or another .onnx model (run on ONNX Runtime CPU)."),
    ],
    model: ModelOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    key: KeyOpt = None,
    input_shapes: InputOpt = None,
    inputs_file: InputsOpt = None,
    dynamic: DynamicOpt = None,
    provider: ProviderOpt = None,
    seed: SeedOpt = 0,
    runs: RunsOpt = 1,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    output_tol: TolOpt = None,
    weights: WeightsOpt = WeightsChoice.fail,
    tf32: Tf32Opt = False,
    report: ReportOpt = None,
    strip_prefix: StripPrefixOpt = None,
    add_prefix: AddPrefixOpt = None,
    trust_program: TrustProgramOpt = False,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Check an exported ONNX model against its reference: the CI gate.

    Rule: |onnx - ref| <= atol + rtol * |ref| element-wise for every output, on every provider;
    NaN/Inf must agree. Exit 0 when everything passes, 1 when any check fails, 2 on bad input.
    """
    with command_context(debug=debug, quiet=quiet):
        cli = VerifyCliOptions(
            verify=True, providers=list(provider or []), seed=seed, runs=runs, atol=atol,
            rtol=rtol, output_tolerances=list(output_tol or []), reports=list(report or []),
            weights=weights, cuda_tf32=tf32, debug=debug,
        )
        export = ExportCliOptions(model=model, model_kwargs=model_kwargs,
                                  input_shapes=list(input_shapes or []), inputs_file=inputs_file,
                                  dynamic=list(dynamic or []),
                                  prefix=parse_prefix(strip_prefix, add_prefix),
                                  trust_program=trust_program)
        verify_command(candidate=model_path, reference=reference, key=key, force=force,
                       quiet=quiet, json_out=json_out, export=export, verify=cli)


def verify_command(*, candidate: Path, reference: Path, key: str | None, force: bool,
                   quiet: bool, json_out: bool, export: ExportCliOptions,
                   verify: VerifyCliOptions) -> None:
    """The body of ``wnconvert verify`` (raises InputError / CheckFailed)."""
    from ..api import check_candidate, load_reference
    from ..verify import plan_providers, verify_onnx_against_onnx, verify_onnx_against_torch
    from ..verify.report import check_report_paths

    check_candidate(candidate)
    if not reference.exists():
        raise InputNotFound(f"{reference}: no such file or directory; check the path")
    refuse_unused_trust(export.trust_program,
                        reads_program=names_program(reference, export.model))
    _require_trust(reference, export)
    if export.input_shapes and export.inputs_file is not None:
        raise InputError("--input and --inputs both given; use one of them")
    check_report_paths(verify.reports, force=force, inputs=protected_inputs(
        candidate, reference, export.inputs_file, model=export.model))
    options = build_verify_options(
        verify, input_specs=[parse_input_spec(text) for text in export.input_shapes],
        inputs_file=export.inputs_file,
        dynamic_axes=[parse_dynamic_axis(text) for text in export.dynamic])
    plan_providers(options.providers, cuda_tf32=options.cuda_tf32)  # fail before loading
    prepared = load_reference(reference, model=export.model,
                              model_kwargs=parse_model_kwargs(export.model_kwargs), key=key,
                              prefix=export.prefix, trust_program=export.trust_program)
    if prepared is None:
        _status(f"verifying {candidate} against {reference} (ONNX Runtime CPU)", quiet=quiet)
        with render.progress("verifying", quiet=quiet) as callback:
            report = verify_onnx_against_onnx(candidate, reference, options=options,
                                              progress=callback)
    else:
        if prepared.key_change:
            render.info(f"note: {prepared.key_change}", quiet=quiet)
        _status(f"verifying {candidate} against {reference} (PyTorch CPU)", quiet=quiet)
        with render.progress("verifying", quiet=quiet) as callback:
            report = verify_onnx_against_torch(
                candidate, prepared.reference, options=options,
                reference_weights=prepared.weights, reference_info=prepared.description,
                progress=callback,
            )
    _emit(json_out, quiet, report=report)
    finish_verification(report, verify.reports, force=force, quiet=quiet, json_out=json_out)
