"""The ``check`` command (CI lint), mapped onto :func:`wnconvert.check_onnx`.

(``fold`` and ``inspect`` of ``.onnx`` files are jobs of those commands, in
:mod:`.checkpoint_cmds`.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import render
from .app import app
from .common import command_context
from .options import DebugOpt, JsonOpt, QuietOpt


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
    from .. import api

    with command_context(debug=debug, quiet=quiet):
        result = api.check_onnx(model)
        if json_out:
            render.print_json(result.to_dict())
        elif not quiet:
            from ..render.graph import print_check

            print_check(result.to_dict())
        failure = api.check_failure(result)
        if failure is not None:
            raise failure
