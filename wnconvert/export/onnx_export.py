"""Export a module with no weight norm to ONNX (torch.export-based exporter, with the legacy
TorchScript exporter as fallback), name its initializers after the parameters, and save it
atomically (external data over 2 GB).

Why fold before exporting: ``torch.onnx.export`` (dynamo) constant-folds small weight-norm chains
into initializers named ``mul``/``mul_1`` and leaves ``ReduceL2 -> Div -> Mul`` chains computed at
run time for large ones; the legacy exporter folds into ``onnx::Conv_123``. Exporting a plain
module avoids both; names the exporter still loses are restored afterwards
(:func:`wnconvert.export.names.restore_parameter_names`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..choices import EXPORTERS, Exporter
from ..errors import ConversionNotPossible, InputError, WeightNormWarning
from .inputs import DynamicAxis, flatten_outputs, output_names
from .names import WRAPPER_ATTR, find_runtime_weight_norm, restore_parameter_names
from .torch_model import _few, forward_input_names

if TYPE_CHECKING:
    import onnx
    import onnx_ir as ir
    import torch

#: Opset 18 is the dynamo exporter's native opset (its op library is written for it) and is
#: supported by ONNX Runtime >= 1.14 and TensorRT >= 8.6; ``opset`` overrides it.
DEFAULT_OPSET = 18
#: Protobuf cannot serialize a message over 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2


@dataclass
class _SeenOutputs:
    """What the wrapped module returned the last time its forward ran (while it was traced).

    Kept outside the wrapper's ``__dict__``: torch.export puts a module's attributes back as
    they were once it has traced, which would erase a record kept there.
    """

    names: list[str] | None = None  # flattened output names (flatten_outputs)


def _make_flat_wrapper(module: torch.nn.Module,
                       seen: _SeenOutputs | None = None) -> torch.nn.Module:
    import torch
    from torch import nn

    class FlatOutputs(nn.Module):
        """Returns the wrapped module's outputs as a flat tuple (the exported output order), a
        single tensor as it is (the graph of the module itself)."""

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            setattr(self, WRAPPER_ATTR, inner)

        def forward(self, *args: Any) -> Any:
            result = getattr(self, WRAPPER_ATTR)(*args)
            flat = flatten_outputs(result)
            if seen is not None:
                seen.names = [name for name, _ in flat]
            return result if isinstance(result, torch.Tensor) else tuple(t for _, t in flat)

    wrapper = FlatOutputs(module)
    # Its own flag only: eval() would recurse into the wrapped module, whose mode is the
    # caller's (and a program from a .pt2 refuses train()/eval()).
    wrapper.training = False
    return wrapper


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and how."""

    path: Path
    exporter: str  # "dynamo" or "legacy"
    opset: int
    input_names: list[str]
    input_shapes: dict[str, list[int | str]]  # sizes, or the symbol of a dynamic axis
    output_names: list[str]
    dynamic: dict[str, list[int]]  # input -> dynamic axes
    renamed: dict[str, str]  # exporter's initializer name -> parameter name
    untransposed: list[str]  # parameters restored from a pre-transposed initializer
    derived: list[str]  # initializers that are not a single parameter (e.g. LSTM gate packing)
    derivations: dict[str, str]  # derived initializer -> where it came from, where known
    parameters_named: int
    parameters_total: int
    external_data: Path | None
    size_bytes: int
    runtime_weight_norm: list[str]  # nodes that still compute a norm of a weight (should be [])
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["path"] = str(self.path)
        data["external_data"] = str(self.external_data) if self.external_data else None
        return data


class ExportFailed(Exception):
    """The exporter itself failed (message is the exporter's first line)."""


#: Opsets each exporter can write: torch.export's exporter builds opset 18 graphs and converts
#: them down to 7 or up to what the installed onnx knows; the TorchScript exporter stops at 20.
MIN_OPSET = 7
LEGACY_MAX_OPSET = 20


def max_opset() -> int:
    """The newest default-domain opset the installed onnx package defines."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def check_opset(opset: int, *, exporter: str) -> int:
    """``opset`` if ``exporter`` can write it, else an :class:`InputError` saying which can."""
    if exporter not in EXPORTERS:
        raise InputError.template("{-exporter=exporter}: unknown exporter; use one of "
                                  "{choices}", exporter=exporter, choices=", ".join(EXPORTERS))
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise InputError.template("{-opset=opset}: must be an integer", opset=opset)
    top = LEGACY_MAX_OPSET if exporter == "legacy" else max_opset()
    if not MIN_OPSET <= opset <= top:
        raise InputError.template("{-opset=opset}: the {exporter} exporter writes opsets {low} "
                                  "to {top}; pick one in that range (default {default})",
                                  opset=opset, exporter=exporter, low=MIN_OPSET, top=top,
                                  default=DEFAULT_OPSET)
    return opset


def _written_opset(model: ir.Model) -> int:
    return int(model.opset_imports.get("", DEFAULT_OPSET))


def export_onnx(
    module: torch.nn.Module,
    args: Sequence[torch.Tensor],
    *,
    output: Path,
    input_names: Sequence[str] | None = None,
    dynamic: Sequence[DynamicAxis] = (),
    opset: int | None = None,
    exporter: Exporter = "auto",
    parameters: Mapping[str, torch.Tensor] | None = None,
    force: bool = False,
    convert: Callable[[onnx.ModelProto], None] | None = None,
) -> ExportResult:
    """Export ``module`` (which must have no weight norm) to ``output`` atomically.

    ``exporter="auto"`` uses ``torch.export`` (dynamo) and falls back to the legacy TorchScript
    exporter when the model cannot be captured (data-dependent control flow), with a note.
    ``parameters`` are the tensors whose names initializers get back (default: the module's
    state dict). Over 2 GB of weights are saved as external data in ``<output>.data``.
    ``convert`` changes the finished graph in place before it is saved (reduced precision:
    :func:`wnconvert.onnx_graph.precision.apply_precision`); what it raises, nothing is written.
    """
    import torch

    from ..formats import check_output

    opset = check_opset(DEFAULT_OPSET if opset is None else opset, exporter=exporter)
    external = output.with_name(output.name + ".data")
    check_output(output, force=force)
    args = tuple(args)
    input_names = list(input_names or forward_input_names(module, len(args)))
    if len(input_names) != len(args):
        raise InputError(f"{len(input_names)} input names ({', '.join(input_names)}) for "
                         f"{len(args)} inputs; give one name per input")
    dyn = _dynamic_by_input(dynamic, input_names, args)
    parameters = dict(parameters if parameters is not None else module.state_dict())
    notes: list[str] = []
    failures: list[str] = []  # each exporter's own failure, in the order tried
    model = None
    used = exporter
    out_names: list[str] = []
    sample: Any = None  # the model's outputs from an eager forward, once one ran
    if exporter in ("auto", "dynamo"):
        # No eager forward first: the trace itself tells the outputs' structure (the wrapper
        # records it), and the model runs eagerly only when the export fails, to tell a model
        # that fails on its inputs (InputError) from one the exporter cannot convert.
        seen = _SeenOutputs()
        try:
            model = _export_dynamo(_make_flat_wrapper(module, seen), args,
                                   input_names=input_names, dynamic=dyn, opset=opset)
            used = "dynamo"
            flat_names = seen.names if seen.names is not None else _eager_output_names(module,
                                                                                      args)
            if not flat_names:
                raise InputError("the model returns no tensors; nothing to export")
            out_names = output_names([(name, None) for name in flat_names], input_names)
            _rename_outputs(model, out_names)
            problem = _fails_at_second_size(model, args, input_names, dyn) if dyn else None
            if problem is not None:
                raise ExportFailed(f"its graph fails when a dynamic axis changes size: {problem}")
        except ExportFailed as exc:
            model = None
            sample = _eager_outputs(module, args)  # InputError when the model itself fails
            failures.append(f"the torch.export-based exporter failed: {exc}")
            if exporter == "auto":
                notes.append(
                    f"the torch.export-based exporter failed ({exc}); used the legacy "
                    "TorchScript exporter, which traces the path the example inputs take "
                    "through Python control flow"
                )
    if model is None and exporter in ("auto", "legacy"):
        # The TorchScript exporter takes the output names before it traces: learn them from
        # one eager forward (which also refuses a model that fails on its inputs).
        if sample is None:
            sample = _eager_outputs(module, args)
        out_names = output_names(flatten_outputs(sample), input_names)
        export_module = (module if isinstance(sample, torch.Tensor)
                         else _make_flat_wrapper(module))
        try:
            model = _export_legacy(export_module, args, input_names=input_names,
                                   output_names=out_names, dynamic=dyn, opset=opset)
            used = "legacy"
        except ExportFailed as exc:
            failures.append(f"the legacy TorchScript exporter failed: {exc}")
    if model is None:
        other = {"dynamo": "legacy", "legacy": "dynamo"}.get(exporter)
        ops = unsupported_operators(" ".join(failures))
        lead = f"unsupported operator {', '.join(ops)}: " if ops else ""
        raise ConversionNotPossible.template(
            "{failures}" + ("; try {-exporter=other}" if other else ""),
            failures=lead + "; ".join(failures), other=other)
    written = _written_opset(model)
    if written != opset:
        raise ConversionNotPossible(
            f"the {used} exporter wrote opset {written}, not the requested {opset} (it could not "
            f"convert the graph); use opset {written} or another exporter")
    rename = restore_parameter_names(model, parameters, batchnorm_eps=_eval_batchnorms(module))
    leftover = find_runtime_weight_norm(model)
    if leftover:
        warnings.warn(
            f"{output}: {len(leftover)} nodes still compute a norm of a weight at run time "
            f"({_few(leftover)}); the model may normalize weights itself",
            WeightNormWarning, stacklevel=2,
        )
    if convert is not None:
        import onnx_ir as ir

        proto = ir.serde.serialize_model(model)
        convert(proto)
        model = ir.serde.deserialize_model(proto)
    total = sum(_tensor_nbytes(v) for v in model.graph.initializers.values())
    use_external = total > EXTERNAL_DATA_THRESHOLD
    if use_external:
        check_output(external, force=force)
    _save_atomic(model, output, external if use_external else None, force=force)
    size = output.stat().st_size + (external.stat().st_size if use_external else 0)
    return ExportResult(
        path=output, exporter=used, opset=opset, input_names=input_names,
        input_shapes={
            value.name or "": [d if isinstance(d, int) else str(d) for d in (value.shape or [])]
            for value in model.graph.inputs
        },
        output_names=out_names,
        dynamic={name: sorted(axes) for name, axes in dyn.items()},
        renamed=rename.renamed, untransposed=rename.untransposed, derived=rename.derived,
        derivations=rename.derivations,
        parameters_named=rename.named, parameters_total=rename.total,
        external_data=external if use_external else None, size_bytes=size,
        runtime_weight_norm=leftover, notes=notes,
    )


def _eager_outputs(module: torch.nn.Module, args: Sequence[torch.Tensor]) -> Any:
    """One forward of ``module`` on ``args``; InputError (naming the inputs) when it fails, or
    when it returns no tensors or something that cannot be an ONNX output."""
    import torch

    try:
        # no_grad, not inference_mode: a model that caches a tensor on its first forward (a
        # position table) would keep an inference tensor that the tracer cannot save.
        with torch.no_grad():
            sample = module(*args)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's model may raise anything
        shapes = ", ".join(f"{list(a.shape)} {str(a.dtype).removeprefix('torch.')}" for a in args)
        raise InputError.template(
            "the model fails on example inputs {shapes}: {error}; check {-inputs}",
            shapes=shapes,
            error=f"{type(exc).__name__}: {_exporter_message(exc).partition(': ')[2]}",
        ) from None
    if not flatten_outputs(sample):
        raise InputError("the model returns no tensors; nothing to export")
    return sample


def _eager_output_names(module: torch.nn.Module, args: Sequence[torch.Tensor]) -> list[str]:
    return [name for name, _ in flatten_outputs(_eager_outputs(module, args))]


def _rename_outputs(model: ir.Model, names: Sequence[str]) -> None:
    """Name the graph's outputs ``names``, as torch.onnx.export does with ``output_names``."""
    for value, name in zip(model.graph.outputs, names, strict=False):
        value.metadata_props["pkg.torch.onnx.original_node_name"] = str(value.name)
        value.name = name


def _eval_batchnorms(module: torch.nn.Module) -> dict[str, float]:
    """Module name -> eps of each BatchNorm that normalizes with its running statistics (eval
    mode): the ones an exporter folds into the convolution before it."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return {name: float(sub.eps) for name, sub in module.named_modules()
            if isinstance(sub, _BatchNorm) and not sub.training
            and sub.running_mean is not None and sub.running_var is not None}


def _fails_at_second_size(model: ir.Model, args: Sequence[torch.Tensor],
                          input_names: Sequence[str],
                          dyn: Mapping[str, Mapping[int, str]]) -> str | None:
    """Run the exported graph once on ONNX Runtime with every dynamic axis doubled.

    torch.export can mark an input axis dynamic yet bake its example size into a Reshape deep in
    the graph (seen with nn.LSTM): the graph then fails at any other size. Returns ONNX
    Runtime's complaint, or None when the graph runs. Models too large to serialize in memory
    are not checked here (verification still runs at a second size).
    """
    import numpy as np
    import onnxruntime as ort
    import torch
    from onnx_ir import serde

    total = sum(_tensor_nbytes(v) for v in model.graph.initializers.values())
    if total > EXTERNAL_DATA_THRESHOLD or any(a.dtype == torch.bfloat16 for a in args):
        return None  # too big for memory / no numpy feed for bfloat16: verification covers it
    feeds = {}
    for name, arg in zip(input_names, args, strict=True):
        shape = [size * 2 if axis in dyn.get(name, {}) else size
                 for axis, size in enumerate(arg.shape)]
        array = arg.detach().cpu().numpy()
        feeds[name] = np.resize(array, shape).astype(array.dtype)  # same values, repeated
    options = ort.SessionOptions()
    options.log_severity_level = 4  # wnconvert reports the failure itself
    try:
        session = ort.InferenceSession(serde.serialize_model(model).SerializeToString(),
                                       sess_options=options, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - any ORT failure means the axis is not dynamic
        return str(exc).splitlines()[0][:200]
    return None


def _dynamic_by_input(dynamic: Sequence[DynamicAxis], names: Sequence[str],
                      args: Sequence[torch.Tensor]) -> dict[str, dict[int, str]]:
    out: dict[str, dict[int, str]] = {}
    for dyn in dynamic:
        name = dyn.input_name(names)
        rank = args[names.index(name)].dim()
        if dyn.axis >= rank:
            raise InputError.template("{-dynamic=text}: input {name!r} has {rank} axes "
                                      "(0..{last}); pick one of them", text=dyn.text, name=name,
                                      rank=rank, last=rank - 1)
        out.setdefault(name, {})[dyn.axis] = dyn.symbol(names)
    return out


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters: their prints (Python and C++), log records and warnings.

    Their chatter (progress lines, graph dumps of failed captures, missing torchvision ops)
    would mix with results on stdout and bury wnconvert's one-line messages on stderr; what
    matters from a failure is in the exception, which is reported.
    """
    from ..capture import captured_output

    # torch configures levels per logger, so each torch logger is raised, not just the root.
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name == "torch" or name.startswith(("torch.", "onnxscript"))]
    loggers.append(logging.getLogger("torch"))
    levels = [(logger, logger.level) for logger in loggers]
    for logger, _ in levels:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), captured_output():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in levels:
            logger.setLevel(level)


def _export_dynamo(module: torch.nn.Module, args: tuple[torch.Tensor, ...], *,
                   input_names: Sequence[str], dynamic: Mapping[str, Mapping[int, str]],
                   opset: int) -> ir.Model:
    """``module`` (the flat-output wrapper, which takes ``*args``) exported by torch.export;
    its outputs keep torch's names (the caller names them once the trace told their
    structure)."""
    import torch

    dims: dict[str, Any] = {}
    specs = []
    for name in input_names:
        axes = dynamic.get(name, {})
        # One Dim object per symbolic name, so axes sharing a name must have equal sizes.
        specs.append({axis: dims.setdefault(sym, torch.export.Dim(sym)) for axis, sym in
                      axes.items()} or None)
    dynamic_shapes: Any = None
    if dynamic:
        # The flat-output wrapper takes *args, which torch.export sees as one tuple argument.
        dynamic_shapes = (tuple(specs),)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module, args, dynamo=True, verbose=False, opset_version=opset,
                input_names=list(input_names), dynamic_shapes=dynamic_shapes,
                optimize=True, report=False,
            )
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - torch.export raises many types;
        # the traced forward is the user's code, which may exit (reported like an eager one)
        raise ExportFailed(_exporter_message(exc)) from None
    if program is None:
        raise ExportFailed("torch.onnx.export returned no program")
    model = program.model
    # When torch.export finds that the code specializes a dynamic axis, torch.onnx retries with
    # the axis made constant (its "suggested fix"): a static graph the user did not ask for.
    static = _specialized_axes(model, dynamic)
    if static:
        raise ExportFailed(f"torch.export made dynamic axes constant: {', '.join(static)}")
    return model


def _specialized_axes(model: ir.Model, dynamic: Mapping[str, Mapping[int, str]]) -> list[str]:
    """Requested dynamic axes that are fixed sizes in the exported graph's inputs."""
    found = []
    for value in model.graph.inputs:
        for axis, symbol in dynamic.get(value.name or "", {}).items():
            dims = list(value.shape) if value.shape is not None else []
            if axis < len(dims) and isinstance(dims[axis], int):
                found.append(f"{value.name} axis {axis} ({symbol}) = {dims[axis]}")
    return found


_UNSUPPORTED_OP = re.compile(
    r"operator '(?P<legacy>[\w:.]+)'|OpOverload\(op='(?P<dynamo>[\w.]+)'|"
    r"Unsupported FX nodes: \{'(?P<fx>[\w.:]+)'")


def unsupported_operators(text: str) -> list[str]:
    """Operator names (``aten::diff``) that an exporter's failure message says it lacks."""
    found: list[str] = []
    for match in _UNSUPPORTED_OP.finditer(text):
        name = next(g for g in match.groups() if g).replace("aten.", "aten::", 1)
        name = name.removesuffix(".default")
        if name not in found:
            found.append(name)
    return found


#: Characters of an exporter's error kept in wnconvert's one-line message.
MESSAGE_LIMIT = 400


def _exporter_message(exc: BaseException) -> str:
    """The first lines of the innermost error, on one line (the exporters wrap the cause)."""
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = " ".join(str(cause).split())
    # torch.export appends links and generic advice after the specific part.
    for marker in (" For more information", " The error above", " Refer to http"):
        text = text.split(marker)[0]
    if len(text) > MESSAGE_LIMIT:  # say it is cut, not end mid-word as if that were all
        text = text[:MESSAGE_LIMIT].rstrip() + "..."
    return f"{type(cause).__name__}: {text}"


def _export_legacy(module: torch.nn.Module, args: tuple[torch.Tensor, ...], *,
                   input_names: Sequence[str], output_names: Sequence[str],
                   dynamic: Mapping[str, Mapping[int, str]], opset: int) -> ir.Model:
    import onnx_ir as ir
    import torch

    dynamic_axes = {name: dict(axes) for name, axes in dynamic.items()} or None
    with tempfile.TemporaryDirectory(prefix="wnconvert-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            with _quiet_exporter():
                torch.onnx.export(
                    module, args, str(path), dynamo=False, opset_version=opset,
                    input_names=list(input_names), output_names=list(output_names),
                    dynamic_axes=dynamic_axes, do_constant_folding=True,
                )
        except Exception as exc:  # noqa: BLE001 - the tracer raises many error types
            raise ExportFailed(_exporter_message(exc)) from None
        model = ir.load(path)
        # Read external tensors now: the temporary folder goes away.
        for value in model.graph.initializers.values():
            if value.const_value is not None:
                value.const_value = ir.tensor(value.const_value.numpy(), name=value.name)
    return model


def _tensor_nbytes(value: ir.Value) -> int:
    tensor = value.const_value
    return int(getattr(tensor, "nbytes", 0) or 0) if tensor is not None else 0


def _save_atomic(model: ir.Model, output: Path, external: Path | None, *,
                 force: bool = False) -> None:
    """Write into a staging folder next to ``output``, then publish (data file first).

    Without ``force``, a file that appeared at either path since the start is kept and
    InputError raised, with nothing published.
    """
    import onnx_ir as ir

    from ..formats.atomic import Staging
    from ..onnx_graph.protowrite import OnnxLayout

    outputs = [external, output] if external is not None else [output]
    with Staging(outputs, force=force, layout=OnnxLayout()) as staging:
        if external is not None:
            ir.save(model, staging.path(output), external_data=external.name,
                    size_threshold_bytes=1024)
        else:
            ir.save(model, staging.path(output))
        staging.publish()
