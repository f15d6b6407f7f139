"""Reduced precision: a float32 ONNX model converted to compute in float16 or bfloat16.

Done on the ``ModelProto`` here rather than with onnxconverter-common, whose
``convert_float_to_float16`` clamps weights into [1e-7, 1e4] (a 2e4 weight becomes 1e4; a
Python warning, no count in any result). Every float32
initializer (and ``Constant`` value) is rounded once, to nearest even
(:func:`~wnconvert.numerics.round_from_float64`), from its float64 value where the caller has
it (a weight folded in float64) and from its float32 value otherwise. A value past the target's
largest finite number is refused (it would become inf); values that flush to zero or to a
subnormal are counted and reported with the largest relative change they suffered.

Ops in :data:`BLOCK_LIST` keep computing in float32, with ``Cast`` nodes around them; with
``keep_io_types`` the graph's float32 inputs and outputs stay float32 (a ``Cast`` after each
input and before each output), as Polygraphy's ``convert --fp-to-fp16`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from ..choices import Precision

FLOAT, FLOAT16, BFLOAT16 = 1, 10, 16  # onnx.TensorProto codes
#: Precision option -> (onnx element type, numpy-style dtype name).
TARGETS: dict[str, tuple[int, str]] = {"fp16": (FLOAT16, "float16"),
                                       "bf16": (BFLOAT16, "bfloat16")}
#: Smallest normal and largest finite value of each target.
_RANGE = {"float16": (2.0**-14, 65504.0), "bfloat16": (2.0**-126, 3.3895313892515355e38)}

#: Ops kept in float32 (with Casts around them), and why. Sums, squares and exponentials of
#: float16 values overflow past 65504 while the rest of the network stays finite (the run-time
#: weight-norm chain ``Pow -> ReduceSum -> Sqrt`` is onnxruntime issue #31626); normalizations
#: sum over whole axes; Resize/Upsample take float32 scales and ROI by definition; ops with
#: subgraphs and ops outside the default domain are not converted inside.
BLOCK_LIST: dict[str, str] = {
    "Pow": "squares overflow float16 past 256",
    "ReduceSum": "a sum over an axis overflows float16",
    "ReduceSumSquare": "squares and sums overflow float16",
    "ReduceL1": "a sum over an axis overflows float16",
    "ReduceL2": "squares and sums overflow float16",
    "ReduceLogSumExp": "exponentials overflow float16",
    "ReduceMean": "accumulates a sum over an axis",
    "Sqrt": "reads the sums of norms (kept with them)",
    "Exp": "overflows float16 past 11.1",
    "Softmax": "exponentials and their sum",
    "LogSoftmax": "exponentials and their sum",
    "LayerNormalization": "variance over an axis",
    "InstanceNormalization": "variance over an axis",
    "GroupNormalization": "variance over an axis",
    "LpNormalization": "norms over an axis",
    "Resize": "scales and ROI are float32 inputs",
    "Upsample": "scales are a float32 input",
    "Range": "positions lose integers past 2048 in float16",
    "CumSum": "running sums overflow float16",
    "RandomNormal": "generated in float32", "RandomUniform": "generated in float32",
    "RandomNormalLike": "generated in float32", "RandomUniformLike": "generated in float32",
}


def check_precision(precision: str, *, keep_io_types: bool) -> str | None:
    """The numpy-style type a reduced ``precision`` rounds to (None for fp32); refuses an
    unknown precision and ``keep_io_types=False`` without one."""
    from ..choices import PRECISIONS

    if precision not in PRECISIONS:
        raise InputError.template("{-precision=precision}: use one of {choices}",
                                  precision=precision, choices=", ".join(PRECISIONS))
    if precision == "fp32":
        if not keep_io_types:
            raise InputError.template("{-no_keep_io_types} applies to a reduced precision; "
                                      "add {-precision} fp16 or bf16")
        return None
    return TARGETS[precision][1]


@dataclass
class PrecisionReport:
    """What the conversion did: the counts go into the job's JSON."""

    precision: str  # "fp16" or "bf16"
    keep_io_types: bool
    initializers: int = 0  # float32 initializers (and Constant values) rounded
    values: int = 0  # their elements
    from_float64: int = 0  # of the initializers, rounded from their float64 value
    underflow: int = 0  # nonzero values that became zero or subnormal
    underflow_max_rel_change: float = 0.0
    underflow_tensors: list[str] = field(default_factory=list)
    blocked: dict[str, int] = field(default_factory=dict)  # op -> nodes kept in float32
    casts_added: int = 0

    @property
    def dtype(self) -> str:
        return TARGETS[self.precision][1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision, "dtype": self.dtype, "keep_io_types": self.keep_io_types,
            "initializers": self.initializers, "values": self.values,
            "rounded_from_float64": self.from_float64,
            "underflow": {"count": self.underflow,
                          "max_rel_change": self.underflow_max_rel_change,
                          "tensors": self.underflow_tensors[:20]},
            "overflow": 0,  # an overflow is refused, never written
            "kept_float32": dict(sorted(self.blocked.items())),
            "casts_added": self.casts_added,
        }

    def notes(self) -> list[str]:
        """Lines for stderr: what was converted, and what the rounding changed beyond its
        half-ulp."""
        kept = ", ".join(f"{op} x{count}" if count > 1 else op
                         for op, count in sorted(self.blocked.items()))
        lines = [f"{self.dtype}: {self.initializers} weight tensor(s) rounded once "
                 f"({self.from_float64} from their float64 fold); kept in float32: "
                 f"{kept or 'none'}; inputs and outputs "
                 f"{'float32' if self.keep_io_types else self.dtype}"]
        if not self.underflow:
            return lines
        return [*lines, f"{self.dtype}: {self.underflow} nonzero weight value(s) in "
                f"{len(self.underflow_tensors)} tensor(s) became zero or subnormal (largest "
                f"relative change {self.underflow_max_rel_change:.3g}; first: "
                f"{self.underflow_tensors[0]})"]


def round_to(name: str, source: np.ndarray, dtype: str, report: PrecisionReport
             ) -> np.ndarray:
    """``source`` (float32, or float64 for a value folded in float64) rounded once to
    ``dtype``; an overflow raises :class:`InputError` naming ``name``, an underflow is counted."""
    import numpy as np

    from ..numerics import as_float64, round_from_float64

    x64 = as_float64(source)
    out = round_from_float64(x64, dtype)
    tiny, largest = _RANGE[dtype]
    finite = np.isfinite(x64)
    overflow = finite & ~np.isfinite(out.astype(np.float64))
    if overflow.any():
        worst = float(np.abs(x64[overflow]).max())
        raise InputError(f"{name}: {int(overflow.sum())} value(s) (up to {worst:.6g}) exceed "
                         f"{dtype}'s largest finite value {largest:g} and would become inf; "
                         f"keep this model in float32 or rescale the weights")
    lost = finite & (x64 != 0) & (np.abs(out.astype(np.float64)) < tiny)
    if lost.any():
        changed = np.abs(out.astype(np.float64)[lost] - x64[lost]) / np.abs(x64[lost])
        report.underflow += int(lost.sum())
        report.underflow_max_rel_change = max(report.underflow_max_rel_change,
                                              float(changed.max()))
        report.underflow_tensors.append(name)
    report.initializers += 1
    report.values += int(out.size)
    return out


def convert_model(model: onnx.ModelProto, precision: Precision, *, keep_io_types: bool = True,
                  float64: Mapping[str, np.ndarray] | None = None) -> PrecisionReport:
    """Convert ``model`` (float32) in place to compute in ``precision``.

    ``float64``: initializer name -> its float64 value (a folded weight), used instead of the
    float32 initializer when it rounds to exactly that float32 (so the value is the one the
    file holds, rounded once). Raises :class:`InputError` on a value that overflows.
    """
    import onnx

    elem, dtype = TARGETS[precision]
    report = PrecisionReport(precision, keep_io_types)
    graph = model.graph
    types = _value_types(model)
    init_names = {t.name for t in graph.initializer}
    graph_inputs = {v.name for v in graph.input if v.name not in init_names}
    graph_outputs = [v.name for v in graph.output]

    converted: list[bool] = []
    for node in graph.node:
        blocked = _blocked(node)
        converted.append(not blocked)
        if blocked and any(types.get(n) == FLOAT for n in [*node.input, *node.output]):
            report.blocked[node.op_type] = report.blocked.get(node.op_type, 0) + 1

    # The type each float32 value has after the conversion.
    new_type: dict[str, int] = {}
    for name in graph_inputs:
        if types.get(name) == FLOAT:
            new_type[name] = FLOAT if keep_io_types else elem
    wanted_inits = {name for node, conv in zip(graph.node, converted, strict=True) if conv
                    for name in node.input if name in init_names and types.get(name) == FLOAT}
    for name in wanted_inits:
        new_type[name] = elem
    for node, conv in zip(graph.node, converted, strict=True):
        for out in node.output:
            if types.get(out) == FLOAT:
                new_type[out] = elem if conv else FLOAT

    # Initializers and Constant values: rounded once.
    exact = dict(float64 or {})
    for tensor in graph.initializer:
        if tensor.name in wanted_inits:
            _convert_tensor(tensor, tensor.name, dtype, elem, report, exact.get(tensor.name))
    for node, conv in zip(graph.node, converted, strict=True):
        if not conv:
            continue
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
                attr.i = elem
            elif (attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR
                  and attr.t.data_type == FLOAT and node.op_type in ("Constant",
                                                                     "ConstantOfShape")):
                _convert_tensor(attr.t, node.output[0] or node.name, dtype, elem, report, None)
            elif node.op_type == "Constant" and attr.name in ("value_float", "value_floats"):
                raise InputError(f"{node.name or node.output[0]}: a Constant with {attr.name} "
                                 "cannot change type; keep this model in float32")

        if (node.op_type == "ConstantOfShape" and types.get(node.output[0]) == FLOAT
                and not any(attr.name == "value" for attr in node.attribute)):
            import numpy as np

            zero = onnx.numpy_helper.from_array(np.zeros(1, np.float32))
            _convert_tensor(zero, node.output[0], dtype, elem, report, None)
            node.attribute.append(onnx.helper.make_attribute("value", zero))

    # Casts where a value's new type is not what its reader computes in.
    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}
    taken = {n for node in graph.node for n in [*node.input, *node.output]} | init_names
    taken |= {v.name for v in graph.input} | set(graph_outputs)

    def cast(value: str, to: int) -> str:
        key = (value, to)
        if key not in casts:
            name = _fresh(f"{value}_{'fp32' if to == FLOAT else precision}", taken)
            new_nodes.append(onnx.helper.make_node("Cast", [value], [name], to=to,
                                                   name=_fresh(f"Cast_{name}", taken)))
            report.casts_added += 1
            casts[key] = name
        return casts[key]

    for node, conv in zip(graph.node, converted, strict=True):
        if not (conv and node.op_type == "Cast"):  # a Cast reads any type
            want = elem if conv else FLOAT
            for i, name in enumerate(node.input):
                have = new_type.get(name)
                if have is not None and have != want:
                    node.input[i] = cast(name, want)
        new_nodes.append(node)

    # Graph outputs: float32 (keep_io_types) or the target type.
    for value in graph.output:
        if types.get(value.name) != FLOAT:
            continue
        want = FLOAT if keep_io_types else elem
        have = new_type.get(value.name, FLOAT)
        if have != want:
            inner = _fresh(f"{value.name}_{'fp32' if have == FLOAT else precision}", taken)
            _rename_output(new_nodes, graph, value.name, inner)
            new_nodes.append(onnx.helper.make_node("Cast", [inner], [value.name], to=want,
                                                   name=_fresh(f"Cast_{value.name}", taken)))
            report.casts_added += 1
        value.type.tensor_type.elem_type = want
    for value in graph.input:
        if value.name in graph_inputs and types.get(value.name) == FLOAT:
            value.type.tensor_type.elem_type = new_type[value.name]
    del graph.node[:]
    graph.node.extend(new_nodes)
    # value_info is re-derived by shape inference (the float ones changed type).
    kept = [v for v in graph.value_info if types.get(v.name) != FLOAT]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return report


def check_converted(model: onnx.ModelProto) -> None:
    """``onnx.checker`` and strict shape inference on the converted model (raises if either
    refuses it: a bug in the conversion, not in the user's model)."""
    import onnx

    onnx.checker.check_model(model)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)


def apply_precision(model: onnx.ModelProto, precision: Precision, *, keep_io_types: bool,
                    float64: Mapping[str, np.ndarray] | None = None,
                    providers: list[str] | tuple[str, ...] = ()) -> PrecisionReport:
    """:func:`convert_model`, checked; for bfloat16, ``providers`` (those verification will
    run on) must have a kernel for every op, else :class:`InputError` naming them (ONNX
    Runtime's CPU provider implements few ops in bfloat16). No providers: nothing to ask."""
    report = convert_model(model, precision, keep_io_types=keep_io_types, float64=float64)
    check_converted(model)
    if precision == "bf16" and providers:
        missing = unsupported_ops(model, list(providers))
        if missing:
            what = "; ".join(f"{provider} has no bfloat16 kernel for {', '.join(ops)}"
                             for provider, ops in missing.items())
            raise InputError(f"bf16: {what}; use fp16 or a provider that runs bf16 (cuda)")
    return report


def convert_file(path: Path, precision: Precision, *, keep_io_types: bool,
                 providers: list[str] | tuple[str, ...] = ()) -> PrecisionReport:
    """Convert the (staged, private) model file ``path`` in place, external data included."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    locations = {entry.value for tensor in model.graph.initializer
                 for entry in tensor.external_data if entry.key == "location"}
    onnx.load_external_data_for_model(model, str(path.parent))
    report = apply_precision(model, precision, keep_io_types=keep_io_types, providers=providers)
    for location in locations:
        (path.parent / location).unlink()  # onnx.save appends to an existing data file
    if locations:
        onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=sorted(locations)[0], size_threshold=1024)
    else:
        onnx.save(model, path)
    return report


def file_computes_in(path: Path) -> str | None:
    """:func:`computes_in` of the ONNX file at ``path`` (tensor data not read)."""
    import onnx

    return computes_in(onnx.load(path, load_external_data=False))


def unsupported_ops(model: onnx.ModelProto, providers: list[str]) -> dict[str, list[str]]:
    """Provider -> op types of ``model`` it has no kernel for in the types they use, found by
    starting an ONNX Runtime session on each op alone (one node per op type)."""
    import onnxruntime as ort

    types = _value_types(model)
    init = {t.name: t for t in model.graph.initializer}
    samples: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        if node.op_type not in ("Constant",) and not node.domain:
            samples.setdefault(node.op_type, node)
    missing: dict[str, list[str]] = {}
    for provider in providers:
        for op, node in samples.items():
            single = _single_node_model(model, node, types, init)
            if single is None:
                continue
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            try:
                ort.InferenceSession(single.SerializeToString(), options, providers=[provider])
            except Exception as exc:  # noqa: BLE001 - ORT raises its own classes
                if "NOT_IMPLEMENTED" in str(exc) or "Could not find an implementation" in str(exc):
                    missing.setdefault(provider, []).append(op)
    return missing


def computes_in(model: onnx.ModelProto) -> str | None:
    """"float16" or "bfloat16" when the narrowest float type among ``model``'s float
    initializers is one of them (a reduced-precision model), else None."""
    kinds = {t.data_type for t in model.graph.initializer}
    if BFLOAT16 in kinds:
        return "bfloat16"
    if FLOAT16 in kinds:
        return "float16"
    return None


# --------------------------------------------------------------------------------------------


def _blocked(node: onnx.NodeProto) -> bool:
    import onnx

    if node.domain not in ("", "ai.onnx") or node.op_type in BLOCK_LIST:
        return True
    return any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for attr in node.attribute)


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value shape inference can type (initializers included)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - fall back to what the file declares
        inferred = model
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*graph.input, *graph.output, *graph.value_info]
             if v.type.HasField("tensor_type")}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    for node in model.graph.node:  # Constant outputs, when inference could not type them
        if node.op_type == "Constant" and node.output and node.output[0] not in types:
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def _convert_tensor(tensor: onnx.TensorProto, name: str, dtype: str, elem: int,
                    report: PrecisionReport, exact: np.ndarray | None) -> None:
    import numpy as np
    from onnx import numpy_helper

    current = numpy_helper.to_array(tensor)
    source: np.ndarray = current
    if exact is not None and exact.shape == current.shape and np.array_equal(
            exact.astype(np.float32).view(np.uint32), current.view(np.uint32)):
        source = exact
        report.from_float64 += 1
    out = round_to(name, source, dtype, report)
    bits = out.view(np.uint16) if dtype == "bfloat16" else out
    del tensor.float_data[:]
    tensor.ClearField("raw_data")
    tensor.data_type = elem
    tensor.raw_data = np.ascontiguousarray(bits).tobytes()


def _fresh(stem: str, taken: set[str]) -> str:
    name, count = stem, 0
    while name in taken:
        count += 1
        name = f"{stem}_{count}"
    taken.add(name)
    return name


def _rename_output(nodes: list[onnx.NodeProto], graph: onnx.GraphProto, old: str,
                   new: str) -> None:
    """Make the producer of graph output ``old`` write ``new``; its readers read ``new``."""
    for node in nodes:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    for tensor in graph.initializer:  # an output that is an initializer
        if tensor.name == old:
            tensor.name = new


def _single_node_model(model: onnx.ModelProto, node: onnx.NodeProto, types: Mapping[str, int],
                       init: Mapping[str, onnx.TensorProto]) -> onnx.ModelProto | None:
    import onnx
    from onnx import helper

    inputs, initializers = [], []
    for name in node.input:
        if not name:
            continue
        if name in init and init[name].data_type not in (FLOAT, FLOAT16, BFLOAT16):
            initializers.append(init[name])  # shapes and axes: the node needs their values
        elif name in types:
            inputs.append(helper.make_tensor_value_info(name, types[name], None))
        else:
            return None
    outputs = [helper.make_tensor_value_info(n, types.get(n, 0), None) for n in node.output if n]
    graph = helper.make_graph([node], "probe", inputs, outputs, initializers)
    probe = helper.make_model(graph, opset_imports=list(model.opset_import))
    probe.ir_version = model.ir_version
    return probe if isinstance(probe, onnx.ModelProto) else None


def round_onto_grid(x64: np.ndarray, stored: np.dtype, target: str) -> np.ndarray:
    """``x64`` rounded once onto ``target``'s values, stored in ``stored`` (float32, which holds
    every float16/bfloat16 value exactly), where the result is a normal ``target`` number; the
    rest (overflow, underflow) is rounded to ``stored`` so the conversion sees, counts and
    refuses it as for any other weight."""
    import numpy as np

    from ..numerics import round_from_float64

    snapped = round_from_float64(x64, target).astype(np.float64)
    tiny, _ = _RANGE[target]
    normal = np.isfinite(snapped) & ((np.abs(snapped) >= tiny) | (x64 == 0))
    return round_from_float64(np.where(normal, snapped, x64), stored)
