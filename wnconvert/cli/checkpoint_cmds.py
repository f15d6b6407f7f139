"""inspect / decompose / fold / restyle for checkpoints (fold and inspect also route ONNX).

(Why ~500 lines: typer needs each command's options spelled out in its signature; the option
types themselves are declared once in :mod:`.options`.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from . import app
from .common import (
    DebugOpt,
    ExportCliOptions,
    ForceOpt,
    JsonOpt,
    KeyOpt,
    OutputOpt,
    QuietOpt,
    VerifyCliOptions,
    command_context,
    names_program,
    refuse_unused_trust,
)
from .options import (
    AddPrefixOpt,
    AtolOpt,
    DynamicOpt,
    ExporterChoice,
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
    StyleChoice,
    Tf32Opt,
    TolOpt,
    TrustProgramOpt,
    VerifyFlagOpt,
    WeightsChoice,
    WeightsOpt,
)
from .parse import parse_dim, parse_prefix

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
    typer.Option("--style", help="Key style: parametrize (original0/original1) or legacy (_g/_v)."),
]


def _is_onnx(path: Path) -> bool:
    return path.suffix.lower() == ".onnx"


@contextmanager
def _about(path: Path) -> Iterator[None]:
    """Name the input file in input errors raised by the (path-agnostic) core."""
    from ..errors import InputError

    try:
        yield
    except InputError as exc:
        if str(path) in str(exc):
            raise
        raise InputError(f"{path}: {exc}") from None


@app.command(
    epilog="\b\nExample:\n  wnconvert inspect generator.pt --json > layout.json",
)
def inspect(
    path: PathArg,
    key: KeyOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show the container, every weight-norm pair (name, style, dim, shape, dtype, g range,
    zero-norm rows), what decompose would pick, and totals. Also takes an .onnx model."""
    with command_context(debug=debug, quiet=quiet):
        if _is_onnx(path):
            from .graph_cmds import inspect_onnx_command

            inspect_onnx_command(path=path, json_out=json_out, quiet=quiet)
            return
        from .. import render
        from ..formats import load_checkpoint
        from ..inspection import inspect_checkpoint
        from ..render.checkpoint import print_inspection

        checkpoint = load_checkpoint(path, key=key)
        with render.progress("inspecting", quiet=quiet) as bar, _about(path):
            report = inspect_checkpoint(checkpoint, on_pair=bar)
        if json_out:
            render.print_json(report)
        elif not quiet:
            print_inspection(report)


@app.command(
    epilog=(
        "\b\nExamples:\n"
        "  wnconvert decompose generator.pt\n"
        "  wnconvert decompose plain.safetensors --like template.pt -o wn.safetensors\n"
        "  wnconvert decompose enc.pt --include 'pos_conv.*.weight' --dim 2"
    ),
)
def decompose(
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
    style: StyleOpt = StyleChoice.parametrize,
    strip_prefix: StripPrefixOpt = None,
    add_prefix: AddPrefixOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Split plain weights into g (the norm, float64 rounded once) and v (the weight,
    bit for bit)."""
    with command_context(debug=debug, quiet=quiet):
        from ..convert import plan_decompose
        from ..errors import InputError
        from ..formats import load_checkpoint

        dim_value = parse_dim(dim)
        checkpoint = load_checkpoint(path, key=key)
        like_checkpoint = load_checkpoint(like) if like is not None else None
        template = like_checkpoint.state_dict if like_checkpoint is not None else None
        try:
            conversion = plan_decompose(
                checkpoint.state_dict,
                dim=dim_value,
                include=include or (),
                exclude=exclude or (),
                style=style.value,
                like=template,
                prefix=parse_prefix(strip_prefix, add_prefix),
            )
        except InputError as exc:
            where = f"{path} vs --like {like}" if like is not None else str(path)
            raise InputError(f"{where}: {exc}") from None
        if like is None and not conversion.pairs:
            raise InputError(
                f"{path}: nothing to decompose: no plain floating tensor matches "
                f"{', '.join(include or ['*weight (rank >= 2)'])}; adjust --include/--exclude"
            )
        _write(
            checkpoint,
            conversion,
            output=output,
            to=to,
            force=force,
            quiet=quiet,
            json_out=json_out,
            action="decomposed",
            inputs=like_checkpoint.input_files if like_checkpoint is not None else [],
        )


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
    path: Annotated[
        Path,
        typer.Argument(
            help="Checkpoint (.pt, .safetensors, sharded index), .onnx model, or .pt2 program "
            "(with --trust-program)."
        ),
    ],
    output: OutputOpt = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Output format: pt, safetensors or onnx (onnx needs --model or a trusted .pt2 "
            "input).",
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
    trust_program: TrustProgramOpt = False,
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
    ] = ExporterChoice.auto,
    # --- verification (--to onnx, and .onnx inputs): declared once in .options ---
    verify: VerifyFlagOpt = True,
    provider: ProviderOpt = None,
    seed: SeedOpt = 0,
    runs: RunsOpt = 1,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    output_tol: TolOpt = None,
    weights: WeightsOpt = WeightsChoice.fail,
    tf32: Tf32Opt = False,
    report: ReportOpt = None,
) -> None:
    """Fold every weight-norm pair into plain weights (w = g·v/‖v‖, float64, rounded once).

    From a checkpoint to a checkpoint; to ONNX with --to onnx --model; or inside an existing
    .onnx graph."""
    with command_context(debug=debug, quiet=quiet):
        from ..errors import InputError

        verify_opts = VerifyCliOptions(
            verify=verify,
            providers=list(provider or []),
            seed=seed,
            runs=runs,
            atol=atol,
            rtol=rtol,
            output_tolerances=list(output_tol or []),
            reports=list(report or []),
            weights=weights,
            cuda_tf32=tf32,
            debug=debug,
        )
        export_opts = ExportCliOptions(
            model=model,
            model_kwargs=model_kwargs,
            input_shapes=list(input_shapes or []),
            inputs_file=inputs_file,
            dynamic=list(dynamic or []),
            opset=opset,
            exporter=exporter.value,
            prefix=parse_prefix(strip_prefix, add_prefix),
            trust_program=trust_program,
        )
        refuse_unused_trust(trust_program, reads_program=names_program(path, model))
        if _is_onnx(path):
            if to not in (None, "onnx") or model is not None:
                raise InputError(f"{path}: an .onnx input folds to .onnx; drop --to/--model")
            if export_opts.prefix:
                raise InputError(f"{path}: --strip-prefix/--add-prefix rename checkpoint keys; "
                                 "an .onnx input has none (drop them)")
            from .graph_cmds import fold_onnx_command

            fold_onnx_command(
                path=path,
                output=output,
                force=force,
                quiet=quiet,
                json_out=json_out,
                verify=verify_opts,
                reference=reference,
                reference_key=key,
            )
            return
        if reference is not None:
            raise InputError("--reference names the initializers of an .onnx input; a "
                             "checkpoint keeps its names (drop --reference)")
        wants_onnx = (
            to == "onnx"
            or path.suffix.lower() == ".pt2"
            or (to is None and output is not None and output.suffix.lower() == ".onnx")
        )
        if wants_onnx:
            from .export_cmds import fold_to_onnx_command

            fold_to_onnx_command(
                path=path,
                output=output,
                key=key,
                force=force,
                quiet=quiet,
                json_out=json_out,
                export=export_opts,
                verify=verify_opts,
            )
            return
        used = (
            [
                name
                for name, value in (
                    ("--model", model),
                    ("--model-kwargs", model_kwargs),
                    ("--inputs", inputs_file),
                    ("--opset", opset),
                )
                if value is not None
            ]
            + (["--input"] if input_shapes else [])
            + (["--dynamic"] if dynamic else [])
            + (["--report"] if report else [])
        )
        if used:
            raise InputError(f"{', '.join(used)} apply to --to onnx; add --to onnx or drop them")

        from ..convert import plan_fold
        from ..formats import load_checkpoint

        checkpoint = load_checkpoint(path, key=key)
        with _about(path):
            conversion = plan_fold(checkpoint.state_dict, prefix=export_opts.prefix)
        if not conversion.pairs:
            raise InputError(
                f"{path}: no weight-norm pairs (*_g/*_v or parametrizations.*.original0/1) found; "
                "nothing to fold (is it already folded? see wnconvert inspect)"
            )
        _write(
            checkpoint,
            conversion,
            output=output,
            to=to,
            force=force,
            quiet=quiet,
            json_out=json_out,
            action="folded",
        )


@app.command(
    epilog="\b\nExample:\n  wnconvert restyle old_hifigan.pt --style parametrize -o new_keys.pt",
)
def restyle(
    path: PathArg,
    style: Annotated[
        StyleChoice,
        typer.Option(
            "--style", help="Target key style: parametrize or legacy.", show_default=False
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
    with command_context(debug=debug, quiet=quiet):
        from ..convert import plan_restyle
        from ..errors import InputError
        from ..formats import load_checkpoint

        checkpoint = load_checkpoint(path, key=key)
        with _about(path):
            conversion = plan_restyle(checkpoint.state_dict, style=style.value)
        if not conversion.pairs:
            raise InputError(
                f"{path}: no weight-norm pair needs renaming to the {style.value} style "
                "(none found, or all already in it)"
            )
        _write(
            checkpoint,
            conversion,
            output=output,
            to=to,
            force=force,
            quiet=quiet,
            json_out=json_out,
            action=style.value,
        )


def _write(
    checkpoint: Any,
    conversion: Any,
    *,
    output: Path | None,
    to: str | None,
    force: bool,
    quiet: bool,
    json_out: bool,
    action: str,
    inputs: list[Path] | None = None,
) -> None:
    """Write a planned conversion with a progress bar, then print the summary.

    ``inputs``: files read besides the checkpoint (``--like``), never to be overwritten."""
    from .. import render
    from ..formats import default_output, output_format, write_checkpoint

    started = time.perf_counter()
    fmt = output_format(output, to, checkpoint)
    target = output if output is not None else default_output(checkpoint, action, fmt)
    total = len(conversion.plan)
    with render.progress(f"{conversion.action} → {target.name}", quiet=quiet) as bar:
        done = 0

        def on_tensor(name: str) -> None:
            nonlocal done
            done += 1
            if bar:
                bar(name, done, total)

        written = write_checkpoint(
            checkpoint, conversion.plan, target, fmt=fmt, force=force, on_tensor=on_tensor,
            inputs=inputs or [],
        )
    source = checkpoint.source
    summary = {
        "action": conversion.action,
        "input": str(checkpoint.path),
        "output": str(target),
        "format": fmt,
        "pairs": [p.to_dict() for p in conversion.pairs],
        "unchanged": conversion.unchanged,
        # Tensor bytes on both sides (a file's size adds headers and padding: file_bytes).
        "bytes_in": sum(source.info(k).nbytes for k in source.keys()),
        "bytes_out": sum(item.info.nbytes for item in conversion.plan),
        "file_bytes": written,
        "seconds": round(time.perf_counter() - started, 4),
        "notes": conversion.notes,
    }
    if json_out:
        render.print_json(summary)
    elif not quiet:
        from ..render.checkpoint import print_conversion

        print_conversion(summary)
