"""``inspect``, ``decompose``, ``fold`` and ``restyle``: flags mapped onto the library's jobs.

``fold`` runs one of three jobs, chosen from its input and ``--to``: a checkpoint fold
(:func:`wnconvert.fold_checkpoint`), an export (:func:`wnconvert.export_onnx`, ``--to onnx``
or a ``.pt2`` input) or an ONNX graph fold (:func:`wnconvert.fold_onnx`, an ``.onnx`` input).
``inspect`` takes checkpoints and ``.onnx`` models. A flag the chosen job would ignore is
refused (:func:`.options.refuse_unused`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import render
from .app import app
from .common import CliProgress, command_context, emit_result, verify_options
from .options import (
    AddPrefixOpt,
    AtolOpt,
    CheckErrorStatOpt,
    DebugOpt,
    DynamicOpt,
    ErrorQuantileOpt,
    ExporterChoice,
    ForceOpt,
    InputOpt,
    InputsOpt,
    JsonOpt,
    KeepIoTypesOpt,
    KeyOpt,
    MinSnrOpt,
    ModelKwargsOpt,
    ModelOpt,
    OutputOpt,
    PrecisionChoice,
    PrecisionOpt,
    ProviderOpt,
    QuietOpt,
    ReportOpt,
    RtolOpt,
    RunsOpt,
    SaveInputsOpt,
    SaveOutputsOpt,
    SeedOpt,
    StripPrefixOpt,
    StyleChoice,
    Tf32Opt,
    TolOpt,
    TrustProgramOpt,
    VerifyFlagOpt,
    WeightsChoice,
    WeightsOpt,
    chosen,
    refuse_unused,
)
from .parse import (
    parse_dim,
    parse_dynamic_axis,
    parse_input_spec,
    parse_model_kwargs,
    parse_prefix,
)

if TYPE_CHECKING:
    from .. import ConversionResult, VerifyOptions
    from ..api import FileBatch

PathArg = Annotated[
    Path,
    typer.Argument(help="Checkpoint: .pt/.pth/.bin/.ckpt, .safetensors, *.safetensors.index.json"),
]
ToOpt = Annotated[
    str | None,
    typer.Option(
        "--to", help="Output format: pt or safetensors (default: from -o, else the input's)."
    ),
]
StyleOpt = Annotated[
    StyleChoice,
    typer.Option("--style",
                 help="Key style: parametrize (original0/original1) or legacy (_g/_v)."),
]


def _is_onnx(path: Path) -> bool:
    return path.suffix.lower() == ".onnx"


@app.command(
    epilog="\b\nExamples:\n  wnconvert inspect generator.pt --json > layout.json\n"
    "  wnconvert inspect exports/ generator.pt",
)
def inspect(
    ctx: typer.Context,
    paths: Annotated[
        list[Path],
        typer.Argument(metavar="PATH...",
                       help="Checkpoint: .pt/.pth/.bin/.ckpt, .safetensors, "
                       "*.safetensors.index.json; or an .onnx model. Several paths, and folders "
                       "(every .onnx below them), in one run: one section per file."),
    ],
    key: KeyOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show the container, every weight-norm pair (name, style, dim, shape, dtype, g range,
    zero-norm rows), what decompose would pick, and totals. Also takes an .onnx model."""
    from .. import api

    with command_context(debug=debug, quiet=quiet):
        single = len(paths) == 1 and not paths[0].is_dir()
        onnx_only = all(_is_onnx(path) or path.is_dir() for path in paths)
        refuse_unused(ctx, "inspect-onnx" if onnx_only else "inspect", verifying=False)
        if not single:
            batch = api.inspect_files(paths, key=key, progress=CliProgress(quiet=quiet))
            _print_batch(batch, json_out=json_out, quiet=quiet, show=_print_inspection)
            return
        [path] = paths
        if _is_onnx(path):
            info = api.inspect_onnx(path).to_dict()
            if json_out:
                render.print_json(info)
            elif not quiet:
                _print_inspection(path, info)
            return
        report = api.inspect_checkpoint(path, key=key, progress=CliProgress(quiet=quiet))
        if json_out:
            render.print_json(report.to_dict())
        elif not quiet:
            _print_inspection(path, report.to_dict())


def _print_inspection(path: Path, info: dict[str, Any]) -> None:
    if _is_onnx(path):
        from ..render.graph import print_inspection

        print_inspection(info)
    else:
        from ..render.checkpoint import print_inspection as print_checkpoint

        print_checkpoint(info)


def _print_batch(batch: FileBatch, *, json_out: bool, quiet: bool,
                 show: Callable[[Path, dict[str, Any]], None]) -> None:
    """Several files: each one's result (or its error) under its name, a summary line, and the
    worst exit code."""
    for skipped in batch.skipped:
        render.warning(f"skipped {skipped.path}: {skipped.reason}")
    if json_out:
        render.print_json(batch.to_dict())
    elif not quiet:
        from ..render.graph import print_batch_entry, print_batch_summary

        for entry in batch.files:
            print_batch_entry(entry.to_dict())
            if entry.result is not None and entry.exit_code == 0:
                show(entry.path, entry.result.to_dict())
        print_batch_summary(batch.to_dict())
    if batch.exit_code:
        counts = batch.counts()
        render.error(f"{counts['files'] - counts['ok']} of {counts['files']} file(s) failed "
                     f"({counts['failed']} failed their check, {counts['errors']} could not be "
                     "done)")
        raise typer.Exit(batch.exit_code)


@app.command(
    epilog=(
        "\b\nExamples:\n"
        "  wnconvert decompose generator.pt\n"
        "  wnconvert decompose plain.safetensors --like template.pt -o wn.safetensors\n"
        "  wnconvert decompose enc.pt --include 'pos_conv.*.weight' --dim 2"
    ),
)
def decompose(
    ctx: typer.Context,
    path: PathArg,
    output: OutputOpt = None,
    to: ToOpt = None,
    key: KeyOpt = None,
    dim: Annotated[
        str,
        typer.Option(
            "--dim",
            help="Axis weight norm keeps (an integer, or 'none' for one "
            "norm over the whole tensor). Ignored with --like.",
        ),
    ] = "0",
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include",
            help="Glob of keys to decompose (repeatable; default: every "
            "floating '*weight' of rank >= 2).",
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", help="Glob of keys to leave alone (repeatable)."),
    ] = None,
    like: Annotated[
        Path | None,
        typer.Option(
            "--like",
            help="State dict of the target model with weight norm applied "
            "(torch.save(model.state_dict())): decompose exactly its pairs, with its "
            "dims and key style, so the result loads with strict=True.",
        ),
    ] = None,
    style: StyleOpt = StyleChoice("parametrize"),
    strip_prefix: StripPrefixOpt = None,
    add_prefix: AddPrefixOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Split plain weights into g (the norm, float64 rounded once) and v (the weight,
    bit for bit)."""
    from .. import api

    with command_context(debug=debug, quiet=quiet):
        refuse_unused(ctx, "decompose", verifying=False)
        result = api.decompose_checkpoint(
            path, output, key=key, to=to, dim=parse_dim(dim), include=include or (),  # type: ignore[arg-type]
            exclude=exclude or (), like=like,
            style=chosen(style),  # type: ignore[arg-type]  # one of STYLES
            prefix=parse_prefix(strip_prefix, add_prefix), force=force,
            progress=CliProgress(quiet=quiet))
        _print_conversion(result, json_out=json_out, quiet=quiet)


@app.command(
    epilog=(
        "\b\nExamples:\n"
        "  wnconvert fold generator.pt\n"
        "  wnconvert fold model.safetensors.index.json\n"
        "  wnconvert fold g.pt --to onnx --model models.py:build --input 1x80x200 --dynamic 0:2\n"
        "  wnconvert fold model.onnx -o clean.onnx"
    ),
)
def fold(
    ctx: typer.Context,
    paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="PATH...",
            help="Checkpoint (.pt, .safetensors, sharded index, .nemo), .onnx model, or .pt2 "
            "program. Several .onnx models (and folders: every .onnx below them) in one run: "
            "each written next to its input as <stem>.folded.onnx and verified on its own."
        ),
    ],
    output: OutputOpt = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Output format: pt, safetensors or onnx (onnx needs --model or a .pt2 input).",
        ),
    ] = None,
    key: KeyOpt = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            help="[.onnx input] Checkpoint whose tensor names go to initializers of equal value "
            "(g/v pairs folded first); --key picks its state dict.",
        ),
    ] = None,
    strip_prefix: StripPrefixOpt = None,
    add_prefix: AddPrefixOpt = None,
    sn_dim: Annotated[
        int | None,
        typer.Option(
            "--sn-dim",
            help="Spectral norm's dim where its u/v fit several axes of a square weight (0 for "
            "Conv/Linear, 1 for ConvTranspose); read from u/v elsewhere.",
        ),
    ] = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    json_out: JsonOpt = False,
    # --- export (--to onnx); model and input options declared once in .options ---
    model: ModelOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    input_shapes: InputOpt = None,
    inputs_file: InputsOpt = None,
    dynamic: DynamicOpt = None,
    opset: Annotated[
        int | None,
        typer.Option("--opset", help="[onnx] ONNX opset to export with."),
    ] = None,
    exporter: Annotated[
        ExporterChoice,
        typer.Option(
            "--exporter",
            help="[onnx] auto (torch.export, falling back to the TorchScript tracer when the model "
            "cannot be captured), dynamo or legacy.",
        ),
    ] = ExporterChoice("auto"),
    trust_program: TrustProgramOpt = False,
    precision: PrecisionOpt = PrecisionChoice("fp32"),
    keep_io_types: KeepIoTypesOpt = True,
    # --- verification (--to onnx, and .onnx inputs): declared once in .options ---
    verify: VerifyFlagOpt = True,
    provider: ProviderOpt = None,
    seed: SeedOpt = 0,
    runs: RunsOpt = 1,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    output_tol: TolOpt = None,
    check_error_stat: CheckErrorStatOpt = None,
    error_quantile: ErrorQuantileOpt = None,
    min_snr: MinSnrOpt = None,
    weights: WeightsOpt = WeightsChoice("fail"),
    tf32: Tf32Opt = False,
    report: ReportOpt = None,
    save_inputs: SaveInputsOpt = None,
    save_outputs: SaveOutputsOpt = None,
) -> None:
    """Fold every weight-norm pair and spectral norm into plain weights (w = g·v/‖v‖, W/σ;
    float64, rounded once).

    From a checkpoint to a checkpoint; to ONNX with --to onnx --model; or inside an existing
    .onnx graph."""
    from .. import api

    with command_context(debug=debug, quiet=quiet):
        progress = CliProgress(quiet=quiet)
        if len(paths) > 1 or paths[0].is_dir():
            refuse_unused(ctx, "fold-onnx", verifying=verify)
            if save_inputs is not None or save_outputs is not None:
                from ..errors import InputError

                raise InputError("--save-inputs/--save-outputs name one file; with several "
                                 "models fold each on its own to save its data")
            _fold_many(paths, output=output, to=to, reference=reference, verify=verify,
                       options=verify_options(
                           providers=provider or [], seed=seed, runs=runs, atol=atol,
                           rtol=rtol, output_tol=output_tol or [], weights=chosen(weights),
                           tf32=tf32, debug=debug,
                           check_error_stat=check_error_stat or [],
                           error_quantile=error_quantile or [], min_snr=min_snr or [],
                           input_shapes=[parse_input_spec(t) for t in input_shapes or []],
                           inputs_file=inputs_file,
                           dynamic=[parse_dynamic_axis(t) for t in dynamic or []],
                       ) if verify else None,
                       reports=report or [], force=force, json_out=json_out, quiet=quiet,
                       precision=chosen(precision), keep_io_types=keep_io_types,
                       progress=progress)
            return
        [path] = paths
        if _is_onnx(path):
            job = "fold-onnx"
        elif (to == "onnx" or path.suffix.lower() == ".pt2"
              or (to is None and output is not None and output.suffix.lower() == ".onnx")):
            job = "export"
        else:
            job = "fold"
        refuse_unused(ctx, job, verifying=verify)
        if job == "fold":
            result = api.fold_checkpoint(path, output, key=key, to=to,  # type: ignore[arg-type]
                                         prefix=parse_prefix(strip_prefix, add_prefix),
                                         sn_dim=sn_dim, force=force, progress=progress)
            _print_conversion(result, json_out=json_out, quiet=quiet)
            return
        specs = [parse_input_spec(text) for text in input_shapes or []]
        axes = [parse_dynamic_axis(text) for text in dynamic or []]
        options = verify_options(
            providers=provider or [], seed=seed, runs=runs, atol=atol, rtol=rtol,
            output_tol=output_tol or [], weights=chosen(weights), tf32=tf32, debug=debug,
            check_error_stat=check_error_stat or [], error_quantile=error_quantile or [],
            min_snr=min_snr or [],
            # An .onnx fold verifies on these; an export takes them as its own parameters.
            input_shapes=specs if job == "fold-onnx" else (),
            inputs_file=inputs_file if job == "fold-onnx" else None,
            dynamic=axes if job == "fold-onnx" else (),
        ) if verify else None
        if job == "fold-onnx":
            if to not in (None, "onnx"):
                from ..errors import InputError

                raise InputError(f"{path}: an .onnx input folds to .onnx; drop --to")
            folded = api.fold_onnx(path, output, verify=verify, options=options,
                                   reports=report or [], reference=reference,
                                   reference_key=key, save_inputs=save_inputs,
                                   save_outputs=save_outputs, force=force, progress=progress,
                                   precision=chosen(precision),  # type: ignore[arg-type]
                                   keep_io_types=keep_io_types)
            from ..render.graph import print_fold

            summary = folded.to_dict()
            emit_result(json_out=json_out, quiet=quiet, data=summary, report=folded.report,
                        print_summary=(lambda: print_fold(summary))
                        if folded.outcome is not None else None)
            _raise_failure(folded.failure())
            return
        exported = api.export_onnx(
            path, output, model=model, model_kwargs=parse_model_kwargs(model_kwargs), key=key,
            inputs=specs, inputs_file=inputs_file, dynamic=axes, opset=opset,
            exporter=chosen(exporter),  # type: ignore[arg-type]  # one of EXPORTERS
            prefix=parse_prefix(strip_prefix, add_prefix), verify=verify,
            options=options, reports=report or [],
            save_inputs=save_inputs, save_outputs=save_outputs,
            trust_program=trust_program, force=force, progress=progress,
            precision=chosen(precision),  # type: ignore[arg-type]  # one of PRECISIONS
            keep_io_types=keep_io_types)
        from ..render.verify import print_export_summary

        emit_result(json_out=json_out, quiet=quiet, data=exported.to_dict(),
                    report=exported.report,
                    print_summary=lambda: print_export_summary(exported.export))
        _raise_failure(exported.failure())


@app.command(
    epilog="\b\nExample:\n  wnconvert restyle old_hifigan.pt --style parametrize -o new_keys.pt",
)
def restyle(
    ctx: typer.Context,
    path: PathArg,
    style: Annotated[
        StyleChoice,
        typer.Option(
            "--style", help="Target key style: parametrize or legacy.",
            show_default=False,
        ),
    ],
    output: OutputOpt = None,
    to: ToOpt = None,
    key: KeyOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Rename weight-norm keys between the legacy (_g/_v) and parametrize (original0/1) styles;
    tensors are copied bit for bit."""
    from .. import api

    with command_context(debug=debug, quiet=quiet):
        refuse_unused(ctx, "restyle", verifying=False)
        result = api.restyle_checkpoint(path, output,
                                        style=chosen(style),  # type: ignore[arg-type]
                                        key=key, to=to,  # type: ignore[arg-type]
                                        force=force, progress=CliProgress(quiet=quiet))
        _print_conversion(result, json_out=json_out, quiet=quiet)


def _fold_many(paths: list[Path], *, output: Path | None, to: str | None,
               reference: Path | None, verify: bool, options: VerifyOptions | None,
               reports: list[Path], force: bool, json_out: bool, quiet: bool,
               precision: str, keep_io_types: bool, progress: CliProgress) -> None:
    """``fold A.onnx B.onnx`` / ``fold exports/``: every model folded next to its input."""
    from .. import api
    from ..errors import InputError

    if output is not None:
        raise InputError("-o names one output; with several models each is written next to its "
                         "input as <stem>.folded.onnx (drop -o)")
    if reference is not None:
        raise InputError("--reference names the initializers of one model; fold that model on "
                         "its own")
    if to not in (None, "onnx"):
        raise InputError("several inputs are .onnx models, which fold to .onnx; drop --to")
    batch = api.fold_onnx_files(paths, verify=verify, options=options, reports=reports,
                                precision=precision,  # type: ignore[arg-type]  # PRECISIONS
                                keep_io_types=keep_io_types, force=force, progress=progress)

    def show(path: Path, summary: dict[str, Any]) -> None:
        from ..render.graph import print_fold_line

        print_fold_line(summary)

    _print_batch(batch, json_out=json_out, quiet=quiet, show=show)
    if not json_out and not quiet:
        from ..render.verify import print_reports_written

        print_reports_written(batch.reports_written)


def _print_conversion(result: ConversionResult, *, json_out: bool, quiet: bool) -> None:
    summary = result.to_dict()
    if json_out:
        render.print_json(summary)
    elif not quiet:
        from ..render.checkpoint import print_conversion

        print_conversion(summary)


def _raise_failure(failure: Exception | None) -> None:
    if failure is not None:
        raise failure
