"""The ``verify`` command: the CI gate, mapped onto :func:`wnconvert.verify`.

(``fold --to onnx`` is the ``fold`` command's export job, in :mod:`.checkpoint_cmds`.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app
from .common import CliProgress, command_context, emit_result, verify_options
from .options import (
    AddPrefixOpt,
    AtolOpt,
    CheckErrorStatOpt,
    DebugOpt,
    DynamicOpt,
    ErrorQuantileOpt,
    ForceOpt,
    InputOpt,
    InputsOpt,
    JsonOpt,
    KeyOpt,
    MinSnrOpt,
    ModelKwargsOpt,
    ModelOpt,
    ProviderOpt,
    QuietOpt,
    ReportOpt,
    RtolOpt,
    RunsOpt,
    SaveInputsOpt,
    SaveOutputsOpt,
    SeedOpt,
    StripPrefixOpt,
    Tf32Opt,
    TolOpt,
    TrustProgramOpt,
    WeightsChoice,
    WeightsOpt,
    chosen,
    refuse_unused,
)
from .parse import parse_dynamic_axis, parse_input_spec, parse_model_kwargs, parse_prefix


@app.command(
    epilog=(
        "\b\nExamples:\n"
        "  wnconvert verify model.onnx --reference generator.pt --model models.py:build \\\n"
        "      --input 1x80x200 --report verify.json\n"
        "  wnconvert verify folded.onnx --reference original.onnx \\\n"
        "      --provider cpu --provider cuda --report junit.xml\n"
        "  wnconvert verify model.onnx --load-inputs in.json --load-outputs trt_out.json"
    ),
)
def verify(
    ctx: typer.Context,
    model_path: Annotated[Path, typer.Argument(metavar="MODEL.onnx",
                                               help="The ONNX model to check.")],
    reference: Annotated[
        Path | None,
        typer.Option("--reference", "-r", help="Checkpoint (with --model), .pt2 program, or "
                     "another .onnx model (run on ONNX Runtime CPU)."),
    ] = None,
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
    check_error_stat: CheckErrorStatOpt = None,
    error_quantile: ErrorQuantileOpt = None,
    min_snr: MinSnrOpt = None,
    weights: WeightsOpt = WeightsChoice("fail"),
    tf32: Tf32Opt = False,
    report: ReportOpt = None,
    save_inputs: SaveInputsOpt = None,
    save_outputs: SaveOutputsOpt = None,
    reference_outputs: Annotated[
        Path | None,
        typer.Option("--load-outputs", help="Outputs saved by Polygraphy (polygraphy run "
                     "--save-outputs, e.g. from TensorRT) as the reference, instead of "
                     "--reference; needs --load-inputs FILE.json, the inputs they came from."),
    ] = None,
    reference_runner: Annotated[
        str | None,
        typer.Option("--runner", help="The runner of --load-outputs to use as the reference "
                     "(needed when the file holds several)."),
    ] = None,
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
    from .. import api

    with command_context(debug=debug, quiet=quiet):
        refuse_unused(ctx, "verify", verifying=True)
        specs = [parse_input_spec(text) for text in input_shapes or []]
        options = verify_options(
            providers=provider or [], seed=seed, runs=runs, atol=atol, rtol=rtol,
            output_tol=output_tol or [], weights=chosen(weights), tf32=tf32, debug=debug,
            check_error_stat=check_error_stat or [], error_quantile=error_quantile or [],
            min_snr=min_snr or [],
            input_shapes=specs, inputs_file=inputs_file,
            dynamic=[parse_dynamic_axis(text) for text in dynamic or []])
        result = api.verify(model_path, reference, model=model,
                            model_kwargs=parse_model_kwargs(model_kwargs), key=key,
                            options=options, reports=report or [],
                            prefix=parse_prefix(strip_prefix, add_prefix),
                            trust_program=trust_program, force=force,
                            reference_outputs=reference_outputs,
                            reference_runner=reference_runner, save_inputs=save_inputs,
                            save_outputs=save_outputs, progress=CliProgress(quiet=quiet))
        emit_result(json_out=json_out, quiet=quiet,
                    data={"verification": result.to_dict(), "passed": result.passed},
                    report=result)
        if not result.passed:
            raise api.verification_failure(result)
