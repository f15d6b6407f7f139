"""Finding weight norm (and spectral norm) that an ONNX graph computes from constant tensors.

(Why one module of ~1,100 lines: it is one algebra. The op handlers, the term/factor
representation and the classifier only make sense together, and splitting them would export the
private representation across files.)

Rather than matching a fixed list of node patterns, every constant-valued expression built from
the ops weight norm is written with is described as a product of *factors* with rational
exponents, each factor either a constant leaf (an initializer or Constant output, possibly passed
through Cast/Identity/Reshape/Unsqueeze/Squeeze/Flatten/Expand) or the sum of squares of a leaf
over groups of its elements (ReduceSumSquare, ReduceL2 = ss^(1/2), ReduceSum(Pow(x, 2)),
ReduceSum(Mul(x, x)), LpNormalization = x * ss^(-1/2)). An expression is weight norm when it is
exactly ``v^1 * g^1 * ss(v)^(-1/2)`` with the norm taken over every axis but one (or all axes)
and ``g`` broadcast along that one axis: ``ReduceL2 -> Div -> Mul`` in any operand order,
``g / ||v|| * v``, ``Sqrt(ReduceSumSquare)``, ``Pow/ReduceSum/Sqrt``, ``Reciprocal``, ... all
reduce to the same description.

Spectral norm is the same algebra with one more factor: ``MatMul(M, v)`` of a constant matrix
(a leaf, possibly through one ``Transpose`` that moves an axis first, as PyTorch's ``permute``
does, and a ``Reshape`` to 2-D) and a constant vector, then ``MatMul(u, ·)`` with a constant
vector, is the scalar ``σ = uᵀ·M·v`` (a ``sigma`` factor). An expression is spectral norm when
it is exactly ``W^1 * σ^(-1)`` with ``W`` the weight ``M`` is a view of (or a copy of it of the
same size, as the TorchScript exporter's constant folding leaves).

Layouts are tracked without touching tensor data: all the shape ops allowed keep the flat
(C-order) element order, so "which element of the source sits at flat position q" is always
``(q // stride) % size`` for some (size, stride) (:class:`Keyed`), updated through broadcasting.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from ..dtypes import FLOATING, from_onnx_code, onnx_code
from ..keys import pair_keys
from ..numerics import infer_dim
from .walk import defined_names, iter_nodes, outer_references

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from .protoio import LazyModel

# onnx.TensorProto element types of the float formats weight norm can be folded in (from the one
# dtype registry), and their precision order for choosing the narrowest of several casts.
FLOAT_TYPES = {code: name for name in FLOATING if (code := onnx_code(name)) is not None}
FLOAT, FLOAT16, DOUBLE, BFLOAT16 = 1, 10, 11, 16  # TensorProto codes, as in dtypes.REGISTRY
_PRECISION = {DOUBLE: 3, FLOAT: 2, FLOAT16: 1, BFLOAT16: 1}

# Op types whose chains the analysis understands (default ONNX domain).
ROOT_OPS = {"Mul", "Div", "LpNormalization"}
# Ops read only as shapes of constants (:meth:`_Analyzer.const_ints`), never as terms.
_SHAPE_OPS = {"Concat"}
_SMALL_CONSTANT = 4096  # elements: larger constants are never read during analysis
_MAX_DEPTH = 64


def dtype_name(elem_type: int) -> str:
    import onnx

    return from_onnx_code(elem_type) or onnx.TensorProto.DataType.Name(elem_type).lower()


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _suffix(shape: tuple[int, ...], axis: int) -> int:
    return _numel(shape[axis + 1 :])


@dataclass(frozen=True)
class Keyed:
    """Element at flat position ``q`` of a frame is element ``(q // stride) % size`` of a base."""

    size: int
    stride: int

    @staticmethod
    def of(size: int, stride: int) -> Keyed:
        return Keyed(1, 1) if size == 1 else Keyed(size, stride)


@dataclass(frozen=True)
class Bilinear:
    """The rest of a spectral-norm product ``uᵀ·M·v`` (``source`` of the factor is ``M``)."""

    matrix_dim: int  # axis of M that is the matrix's rows (moved first, the rest flattened)
    v: str
    v_casts: tuple[int, ...]
    u: str = ""  # empty for the matrix-vector product ``M·v`` before the dot with u
    u_casts: tuple[int, ...] = ()


@dataclass(frozen=True)
class Factor:
    """One factor of a product: a constant leaf, a leaf's sum of squares over groups, or
    (spectral norm) a matrix-vector product ``M·v`` and the scalar ``uᵀ·M·v``."""

    kind: str  # "leaf", "ss", "mv" or "sigma"
    source: str  # name of the constant (initializer or Constant output)
    exponent: Fraction
    layout: Keyed  # which element of the base (leaf, or the per-group sums) sits where
    group: Keyed | None = None  # ss: elements of the source sharing one sum, as a partition
    casts: tuple[int, ...] = ()  # float types the leaf is cast to before any arithmetic
    # leaf: the source seen through a Transpose (its flat order is no longer the source's:
    # only a MatMul may use it); mv/sigma: the vectors of the product.
    perm: tuple[int, ...] = ()
    bilinear: Bilinear | None = None

    def merge_key(self) -> tuple:
        return (self.kind, self.source, self.layout, self.group, self.casts, self.perm,
                self.bilinear)


@dataclass(frozen=True)
class Term:
    """What a constant-valued expression computes, as a product of factors."""

    shape: tuple[int, ...]
    dtype: int
    factors: tuple[Factor, ...]
    nodes: frozenset[int]
    leaf: bool  # a bare constant (through shape ops and casts), no arithmetic yet
    arith_dtypes: frozenset[int] = frozenset()  # types of values arithmetic produced

    @property
    def numel(self) -> int:
        return _numel(self.shape)


@dataclass(frozen=True)
class WeightNormSite:
    """One place where the graph computes ``w = g * v / ||v||`` from constants at run time."""

    root: str  # the value the computation produces (what the rest of the graph consumes)
    v: str
    g: str
    shape: tuple[int, ...]  # of the computed weight (root)
    v_shape: tuple[int, ...]
    g_shape: tuple[int, ...]
    group: Keyed  # partition of v's elements into norm groups
    dim: int | None  # axis of v the norm keeps (None: one norm over the whole tensor)
    dtype: int  # element type of the root
    round_dtype: int  # type the fold rounds to once (narrowest type the graph computes in)
    v_casts: tuple[int, ...]
    g_casts: tuple[int, ...]
    node_indices: tuple[int, ...]  # every node of the computation, in graph order
    node_names: tuple[str, ...]
    op_types: tuple[str, ...]
    parameter: str | None  # parameter name read from g/v names (m.parametrizations.weight...)
    foldable: bool = True
    reason: str | None = None
    # Spectral norm (``w = v / σ``, ``v`` being the original weight, ``g`` empty): how σ is
    # computed. None for weight norm.
    spectral: SpectralParts | None = None

    @property
    def kind(self) -> str:
        return "weight_norm" if self.spectral is None else "spectral_norm"

    @property
    def dim_label(self) -> str:
        if self.dim is not None:
            return str(self.dim)
        if self.spectral is not None:
            return "unknown"
        if self.group.size == 1:
            return "all"
        return f"groups of {self.group.size}x{self.group.stride}"

    def to_dict(self) -> dict:
        leaves: dict[str, str | None] = {"v": self.v, "g": self.g}
        if self.spectral is not None:
            leaves = {"original": self.v, "matrix": self.spectral.matrix, "u": self.spectral.u,
                      "v": self.spectral.vector, "g": None}
        return {
            "kind": self.kind,
            "value": self.root,
            "parameter": self.parameter,
            **leaves,
            "shape": list(self.shape),
            "dim": self.dim,
            "dtype": dtype_name(self.dtype),
            "nodes": list(self.node_names),
            "ops": list(self.op_types),
            "foldable": self.foldable,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class SpectralParts:
    """Where a spectral-norm site's ``σ = uᵀ·M·v`` comes from."""

    matrix: str  # M: the original weight itself, or a same-sized copy of it
    matrix_dim: int  # the axis of M moved first before flattening it to a matrix
    matrix_casts: tuple[int, ...]
    u: str
    u_casts: tuple[int, ...]
    vector: str
    vector_casts: tuple[int, ...]


@dataclass
class GraphIndex:
    """Producers, consumers and constants of a main graph (subgraph uses count as uses)."""

    model: LazyModel
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    producer: dict[str, int] = field(default_factory=dict)
    consumers: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    initializers: dict[str, onnx.TensorProto] = field(default_factory=dict)
    constants: dict[str, int] = field(default_factory=dict)  # Constant output -> node index
    graph_outputs: set[str] = field(default_factory=set)
    # Values computable from constants by ops the analysis understands (graph order is
    # topological, so one pass finds them all); analysis never looks past them.
    constant_values: set[str] = field(default_factory=set)
    # For a subgraph: its own initializers (complete in the proto, unlike the main graph's,
    # whose bytes are read through ``model.sources``) and what its node labels start with.
    own_initializers: set[str] = field(default_factory=set)
    label_prefix: str = ""

    @classmethod
    def build(cls, model: LazyModel, graph: onnx.GraphProto | None = None,
              label_prefix: str = "") -> GraphIndex:
        """The index of the main graph, or of ``graph`` (a subgraph of it), which also sees
        the main graph's initializers unless it defines the name itself."""
        main = model.proto.graph
        index = cls(model=model, label_prefix=label_prefix)
        if graph is None:
            graph = main
        else:
            shadowed = defined_names(graph)
            index.initializers = {t.name: t for t in main.initializer if t.name not in shadowed}
            index.own_initializers = {t.name for t in graph.initializer}
        index.nodes = list(graph.node)
        index.initializers.update({t.name: t for t in graph.initializer})
        index.graph_outputs = {o.name for o in graph.output}
        for position, node in enumerate(index.nodes):
            for name in node.output:
                if name:
                    index.producer[name] = position
            for name in node.input:
                if name:
                    index.consumers[name].append(position)
            for name in outer_references(node):
                index.consumers[name].append(position)
            if (
                node.op_type == "Constant"
                and node.domain in ("", "ai.onnx")
                and node.output
                and _constant_attr(node) is not None
            ):
                index.constants[node.output[0]] = position
        index.constant_values = set(index.initializers) | set(index.constants)
        for node in index.nodes:
            if (
                node.domain in ("", "ai.onnx")
                and (node.op_type in _HANDLERS or node.op_type in _SHAPE_OPS)
                and all(not name or name in index.constant_values for name in node.input)
            ):
                index.constant_values.update(name for name in node.output if name)
        return index

    def node_label(self, position: int) -> str:
        node = self.nodes[position]
        return self.label_prefix + (node.name or f"{node.op_type}#{position}")

    # -- constants ------------------------------------------------------------------------

    def constant_info(self, name: str) -> tuple[tuple[int, ...], int] | None:
        """(shape, element type) of an initializer or Constant output; None for others."""
        if name in self.initializers:
            tensor = self.initializers[name]
            return tuple(tensor.dims), tensor.data_type
        if name in self.constants:
            attr = _constant_attr(self.nodes[self.constants[name]])
            if attr is None:
                return None
            if attr.name == "value":
                return tuple(attr.t.dims), attr.t.data_type
            if attr.name == "value_float":
                return (), FLOAT
            if attr.name == "value_floats":
                return (len(attr.floats),), FLOAT
            if attr.name == "value_int":
                return (), 7
            if attr.name == "value_ints":
                return (len(attr.ints),), 7
        return None

    def constant_array(
        self, name: str, *, limit: int | None = _SMALL_CONSTANT
    ) -> np.ndarray | None:
        """The value of a constant (None if not constant or larger than ``limit`` elements)."""
        import numpy as np
        from onnx import numpy_helper

        from .protoio import read_initializer

        info = self.constant_info(name)
        if info is None or (limit is not None and _numel(info[0]) > limit):
            return None
        if name in self.own_initializers:
            return numpy_helper.to_array(self.initializers[name])
        if name in self.initializers:
            return read_initializer(self.model, self.initializers[name])
        attr = _constant_attr(self.nodes[self.constants[name]])
        assert attr is not None
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        return np.array(list(attr.ints), dtype=np.int64)


def _constant_attr(node: onnx.NodeProto) -> onnx.AttributeProto | None:
    for attr in node.attribute:
        if attr.name in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            return attr
    return None  # sparse_value, value_string(s): not a dense numeric constant


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


# ------------------------------------------------------------------------------------------
# Term analysis


class _Analyzer:
    def __init__(self, index: GraphIndex) -> None:
        self.index = index
        self.memo: dict[str, Term | None] = {}

    def term(self, name: str, depth: int = 0) -> Term | None:
        if name in self.memo:
            return self.memo[name]
        result = None if depth > _MAX_DEPTH else self._compute(name, depth)
        self.memo[name] = result
        return result

    def _compute(self, name: str, depth: int) -> Term | None:
        index = self.index
        if name not in index.constant_values:
            return None
        if name in index.initializers or name in index.constants:
            info = index.constant_info(name)
            if info is None:
                return None
            shape, dtype = info
            nodes = frozenset({index.constants[name]}) if name in index.constants else frozenset()
            factor = Factor("leaf", name, Fraction(1), Keyed.of(_numel(shape), 1))
            return Term(shape, dtype, (factor,), nodes, leaf=True)
        position = index.producer.get(name)
        if position is None:
            return None
        node = index.nodes[position]
        if node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            return None
        handler = _HANDLERS.get(node.op_type)
        if handler is None:
            return None
        inputs = [self.term(i, depth + 1) if i else None for i in node.input]
        main = inputs[0] if inputs else None
        if main is None:
            return None
        result = handler(self, node, inputs)
        if result is None:
            return None
        shapes = frozenset(p for i in node.input[1:] for p in self._shape_nodes(i))
        return replace(result, nodes=result.nodes | {position} | _union_nodes(inputs) | shapes)

    def _shape_nodes(self, name: str, depth: int = 0) -> set[int]:
        """The Concat nodes (and their Constant inputs) that build a shape input."""
        position = self.index.producer.get(name) if name else None
        if position is None or depth > _MAX_DEPTH or name not in self.index.constant_values:
            return set()
        node = self.index.nodes[position]
        if node.op_type not in _SHAPE_OPS:
            return {position} if depth and name in self.index.constants else set()
        found = {position}
        for part in node.input:
            found |= self._shape_nodes(part, depth + 1)
        return found

    def const_ints(self, name: str, depth: int = 0) -> list[int] | None:
        array = self.index.constant_array(name) if name else None
        if array is None:
            return self._concat_ints(name, depth)
        if array.dtype.kind not in "iu":
            return None
        return [int(x) for x in array.reshape(-1)]

    def _concat_ints(self, name: str, depth: int) -> list[int] | None:
        """A shape the dynamo exporter builds with ``Concat`` of 1-D integer constants."""
        position = self.index.producer.get(name) if name else None
        if position is None or depth > _MAX_DEPTH:
            return None
        node = self.index.nodes[position]
        if node.op_type != "Concat" or node.domain not in ("", "ai.onnx") or not node.input:
            return None
        if _attr(node, "axis") not in (0, -1):
            return None
        values: list[int] = []
        for part in node.input:
            ints = self.const_ints(part, depth + 1)
            if ints is None:
                return None
            values += ints
        return values

    def const_scalar(self, name: str) -> float | None:
        array = self.index.constant_array(name) if name else None
        if array is None or array.size != 1 or array.dtype.kind not in "fiu":
            return None
        return float(array.reshape(-1)[0])


def _union_nodes(inputs: list[Term | None]) -> frozenset[int]:
    nodes: frozenset[int] = frozenset()
    for term in inputs:
        if term is not None:
            nodes |= term.nodes
    return nodes


def _with_shape(term: Term, shape: tuple[int, ...]) -> Term | None:
    """A flat-order-preserving reshape: every layout stays as it is."""
    if _numel(shape) != term.numel or any(s < 0 for s in shape):
        return None
    return replace(term, shape=tuple(shape))


def _broadcast_shapes(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    rank = max(len(a), len(b))
    a = (1,) * (rank - len(a)) + a
    b = (1,) * (rank - len(b)) + b
    out = []
    for x, y in zip(a, b, strict=True):
        if x != y and 1 not in (x, y):
            return None
        out.append(max(x, y) if 0 not in (x, y) else 0)
    return tuple(out)


def _broadcast_layout(layout: Keyed, shape: tuple[int, ...], out: tuple[int, ...]) -> Keyed | None:
    """The layout of a factor of a value of ``shape`` once broadcast to ``out``."""
    padded = (1,) * (len(out) - len(shape)) + shape
    if padded == out or layout.size == 1:
        return layout
    rank = len(out)
    # The key spans the contiguous axes j0..j1 of the source frame (sizes multiply to `size`,
    # trailing size `stride`); it survives broadcasting when none of those axes is expanded.
    for j1 in range(rank):
        if _suffix(padded, j1) != layout.stride:
            continue
        span = 1
        for j0 in range(j1, -1, -1):
            span *= padded[j0]
            if span == layout.size:
                if all(padded[j] == out[j] for j in range(j0, j1 + 1)):
                    return Keyed.of(layout.size, _suffix(out, j1))
                break
            if span > layout.size:
                break
    return None


def _broadcast_term(term: Term, out: tuple[int, ...]) -> tuple[Factor, ...] | None:
    factors = []
    for factor in term.factors:
        layout = _broadcast_layout(factor.layout, term.shape, out)
        if layout is None:
            return None
        factors.append(replace(factor, layout=layout))
    return tuple(factors)


def _merge(factors: tuple[Factor, ...]) -> tuple[Factor, ...]:
    merged: dict[tuple, Factor] = {}
    for factor in factors:
        key = factor.merge_key()
        if key in merged:
            total = merged[key].exponent + factor.exponent
            merged[key] = replace(merged[key], exponent=total)
        else:
            merged[key] = factor
    return tuple(f for f in merged.values() if f.exponent != 0)


def _arith(term: Term, factors: tuple[Factor, ...], shape: tuple[int, ...], dtype: int,
           *others: Term) -> Term:
    dtypes = term.arith_dtypes.union(*(o.arith_dtypes for o in others)) | {dtype}
    return Term(shape, dtype, _merge(factors), term.nodes, leaf=False, arith_dtypes=dtypes)


def _power(term: Term, exponent: Fraction) -> tuple[Factor, ...] | None:
    # A non-integer power of a product is only the product of powers for non-negative factors:
    # sums of squares are; a leaf (g, v) may be negative (sqrt(v^2) is |v|, not v).
    if exponent.denominator != 1 and any(f.kind != "ss" for f in term.factors):
        return None
    return tuple(replace(f, exponent=f.exponent * exponent) for f in term.factors)


def _h_identity(an: _Analyzer, node: onnx.NodeProto, inputs: list[Term | None]) -> Term | None:
    return inputs[0]


def _h_cast(an: _Analyzer, node: onnx.NodeProto, inputs: list[Term | None]) -> Term | None:
    term = inputs[0]
    to = _attr(node, "to")
    if term is None or to not in FLOAT_TYPES or term.dtype not in FLOAT_TYPES:
        return None
    if term.leaf:
        return replace(
            term,
            dtype=to,
            factors=tuple(replace(f, casts=(*f.casts, to)) for f in term.factors),
        )
    return replace(term, dtype=to, arith_dtypes=term.arith_dtypes | {to})


def _h_reshape(an: _Analyzer, node: onnx.NodeProto, inputs: list[Term | None]) -> Term | None:
    term = inputs[0]
    target = an.const_ints(node.input[1]) if len(node.input) > 1 else None
    if term is None or target is None:
        return None
    allow_zero = bool(_attr(node, "allowzero", 0))
    shape = [
        term.shape[i] if size == 0 and not allow_zero and i < len(term.shape) else size
        for i, size in enumerate(target)
    ]
    if shape.count(-1) > 1:
        return None
    if -1 in shape:
        known = _numel(tuple(s for s in shape if s != -1))
        if known == 0 or term.numel % known:
            return None
        shape[shape.index(-1)] = term.numel // known
    return _with_shape(term, tuple(shape))


def _axes(an: _Analyzer, node: onnx.NodeProto, rank: int) -> list[int] | None:
    """Axes from the attribute (older opsets) or the second input (newer); [] if absent."""
    axes = _attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = an.const_ints(node.input[1])
        if axes is None:
            return None
    axes = list(axes or [])
    if any(not -rank <= a < rank for a in axes):
        return None
    return sorted({a % rank for a in axes})


def _h_unsqueeze(an: _Analyzer, node: onnx.NodeProto, inputs: list[Term | None]) -> Term | None:
    term = inputs[0]
    assert term is not None
    added = _attr(node, "axes")
    if added is None and len(node.input) > 1 and node.input[1]:
        added = an.const_ints(node.input[1])
    if not added:
        return None
    rank = len(term.shape) + len(added)
    axes = _axes(an, node, rank)
    if not axes or len(axes) != len(added):
        return None
    dims = iter(term.shape)
    shape = tuple(1 if i in axes else next(dims) for i in range(rank))
    return _with_shape(term, shape)


def _h_squeeze(an: _Analyzer, node: onnx.NodeProto, inputs: list[Term | None]) -> Term | None:
    term = inputs[0]
    assert term is not None
    axes = _axes(an, node, len(term.shape))
    if axes is None:
        return None
    if not axes:
        axes = [i for i, s in enumerate(term.shape) if s == 1]
    if any(term.shape[a] != 1 for a in axes):
        return None
    return _with_shape(term, tuple(s for i, s in enumerate(term.shape) if i not in axes))


def _h_flatten(an: _Analyzer, node: onnx.NodeProto, inputs: list[Term | None]) -> Term | None:
    term = inputs[0]
    assert term is not None
    rank = len(term.shape)
    axis = _attr(node, "axis", 1)
    if not -rank <= axis <= rank:
        return None
    if axis < 0:
        axis += rank
    return _with_shape(term, (_numel(term.shape[:axis]), _numel(term.shape[axis:])))


def _h_expand(an: _Analyzer, node: onnx.NodeProto, inputs: list[Term | None]) -> Term | None:
    term = inputs[0]
    target = an.const_ints(node.input[1]) if len(node.input) > 1 else None
    if term is None or target is None:
        return None
    out = _broadcast_shapes(term.shape, tuple(target))
    factors = _broadcast_term(term, out) if out is not None else None
    if factors is None or out is None:
        return None
    return replace(term, shape=out, factors=factors)


def _binary(an: _Analyzer, node: onnx.NodeProto, inputs: list[Term | None]) -> Term | None:
    if len(inputs) != 2 or inputs[0] is None or inputs[1] is None:
        return None
    a, b = inputs[0], inputs[1]
    if a.dtype not in FLOAT_TYPES or a.dtype != b.dtype:
        return None
    out = _broadcast_shapes(a.shape, b.shape)
    if out is None:
        return None
    fa, fb = _broadcast_term(a, out), _broadcast_term(b, out)
    if fa is None or fb is None:
        return None
    if node.op_type == "Div":
        fb = tuple(replace(f, exponent=-f.exponent) for f in fb)
    return replace(_arith(a, fa + fb, out, a.dtype, b), nodes=a.nodes | b.nodes)


def _h_unary_power(an: _Analyzer, node: onnx.NodeProto, inputs: list[Term | None]) -> Term | None:
    term = inputs[0]
    assert term is not None
    if term.dtype not in FLOAT_TYPES:
        return None
    if node.op_type == "Reciprocal":
        exponent = Fraction(-1)
    elif node.op_type == "Sqrt":
        exponent = Fraction(1, 2)
    else:  # Pow with a constant scalar exponent
        value = an.const_scalar(node.input[1]) if len(node.input) > 1 else None
        if value is None:
            return None
        exponent = Fraction(value).limit_denominator(16)
        if float(exponent) != value:
            return None
    factors = _power(term, exponent)
    if factors is None:
        return None
    return _arith(term, factors, term.shape, term.dtype)


def _identity_leaf(term: Term, power: int) -> Factor | None:
    """The single leaf factor of ``term`` if it is ``leaf^power`` in the leaf's own layout."""
    if len(term.factors) != 1:
        return None
    factor = term.factors[0]
    if (
        factor.kind != "leaf"
        or factor.perm
        or factor.exponent != power
        or factor.layout != Keyed.of(term.numel, 1)
    ):
        return None
    return factor


def _group_of(shape: tuple[int, ...], reduced: list[int]) -> Keyed | None:
    """Partition of elements into reduction groups: at most one kept axis may be larger than 1."""
    kept = [i for i in range(len(shape)) if i not in reduced and shape[i] != 1]
    if len(kept) > 1:
        return None
    if not kept:
        return Keyed(1, 1)
    return Keyed.of(shape[kept[0]], _suffix(shape, kept[0]))


def _h_reduce(an: _Analyzer, node: onnx.NodeProto, inputs: list[Term | None]) -> Term | None:
    term = inputs[0]
    assert term is not None
    if term.dtype not in FLOAT_TYPES or term.numel == 0:
        return None
    power = 2 if node.op_type == "ReduceSum" else 1
    leaf = _identity_leaf(term, power)
    if leaf is None:
        return None
    rank = len(term.shape)
    axes = _axes(an, node, rank)
    if axes is None:
        return None
    if not axes:
        if _attr(node, "noop_with_empty_axes", 0):
            return None  # no reduction at all: not a norm
        axes = list(range(rank))
    group = _group_of(term.shape, axes)
    if group is None:
        return None
    if _attr(node, "keepdims", 1):
        shape = tuple(1 if i in axes else s for i, s in enumerate(term.shape))
    else:
        shape = tuple(s for i, s in enumerate(term.shape) if i not in axes)
    exponent = Fraction(1, 2) if node.op_type == "ReduceL2" else Fraction(1)
    ss = Factor("ss", leaf.source, exponent, Keyed.of(group.size, 1), group, leaf.casts)
    return Term(shape, term.dtype, (ss,), term.nodes, leaf=False,
                arith_dtypes=term.arith_dtypes | {term.dtype})


def _h_lpnorm(an: _Analyzer, node: onnx.NodeProto, inputs: list[Term | None]) -> Term | None:
    term = inputs[0]
    assert term is not None
    if term.dtype not in FLOAT_TYPES or _attr(node, "p", 2) != 2 or term.numel == 0:
        return None
    leaf = _identity_leaf(term, 1)
    rank = len(term.shape)
    axis = _attr(node, "axis", -1)
    if leaf is None or not -rank <= axis < rank:
        return None
    group = _group_of(term.shape, [axis % rank])
    if group is None:
        return None
    ss = Factor("ss", leaf.source, Fraction(-1, 2), group, group, leaf.casts)
    return _arith(term, (leaf, ss), term.shape, term.dtype)


def _h_transpose(an: _Analyzer, node: onnx.NodeProto, inputs: list[Term | None]) -> Term | None:
    """Only a constant weight's own axes permuted (PyTorch's ``permute`` before spectral
    norm's matrix): the flat order changes, which only :func:`_h_matmul` reads (``perm``)."""
    term = inputs[0]
    assert term is not None
    leaf = _identity_leaf(term, 1)
    info = an.index.constant_info(leaf.source) if leaf is not None else None
    if leaf is None or info is None or not term.leaf or term.shape != info[0]:
        return None
    rank = len(term.shape)
    perm = list(_attr(node, "perm", None) or range(rank - 1, -1, -1))
    if sorted(perm) != list(range(rank)):
        return None
    if perm == list(range(rank)):
        return term
    shape = tuple(term.shape[axis] for axis in perm)
    return replace(term, shape=shape, factors=(replace(leaf, perm=tuple(perm)),))


def _vector_leaf(term: Term, length: int) -> Factor | None:
    """The constant behind ``term`` when it is a bare 1-D constant of ``length`` elements."""
    factor = _identity_leaf(term, 1) if term.leaf else None
    if factor is None or term.shape != (length,):
        return None
    return factor


def _matrix_leaf(an: _Analyzer, term: Term) -> tuple[Factor, int] | None:
    """(constant, dim) when the 2-D ``term`` is a constant with axis ``dim`` moved first and
    the rest flattened, in order: spectral norm's ``weight_mat``."""
    if not term.leaf or len(term.factors) != 1 or len(term.shape) != 2:
        return None
    factor = term.factors[0]
    info = an.index.constant_info(factor.source)
    if (
        factor.kind != "leaf"
        or factor.exponent != 1
        or factor.layout != Keyed.of(term.numel, 1)
        or info is None
        or _numel(info[0]) != term.numel
        or not info[0]
    ):
        return None
    shape = info[0]
    dim = factor.perm[0] if factor.perm else 0
    if factor.perm and list(factor.perm[1:]) != [a for a in range(len(shape)) if a != dim]:
        return None
    if term.shape[0] != shape[dim]:
        return None
    return replace(factor, perm=()), dim


def _h_matmul(an: _Analyzer, node: onnx.NodeProto, inputs: list[Term | None]) -> Term | None:
    """``M·v`` (matrix times vector) and ``u·(M·v)`` (dot product): spectral norm's σ."""
    if len(inputs) != 2 or inputs[0] is None or inputs[1] is None:
        return None
    a, b = inputs[0], inputs[1]
    if a.dtype not in FLOAT_TYPES or a.dtype != b.dtype:
        return None
    if len(a.shape) == 2 and len(b.shape) == 1:
        matrix = _matrix_leaf(an, a)
        vector = _vector_leaf(b, a.shape[1])
        if matrix is None or vector is None:
            return None
        leaf, dim = matrix
        product = Factor("mv", leaf.source, Fraction(1), Keyed.of(a.shape[0], 1),
                         casts=leaf.casts, bilinear=Bilinear(dim, vector.source, vector.casts))
        return _arith(a, (product,), (a.shape[0],), a.dtype, b)
    if len(a.shape) == 1 and a.shape == b.shape:
        for mv, other in ((b, a), (a, b)):
            first = mv.factors[0] if len(mv.factors) == 1 else None
            u = _vector_leaf(other, a.shape[0])
            if (
                first is None or u is None or first.kind != "mv" or first.exponent != 1
                or first.bilinear is None or first.bilinear.u
            ):
                continue
            sigma = replace(first, kind="sigma", layout=Keyed(1, 1),
                            bilinear=replace(first.bilinear, u=u.source, u_casts=u.casts))
            return _arith(mv, (sigma,), (), a.dtype, other)
    return None


_HANDLERS = {
    "Identity": _h_identity,
    "Cast": _h_cast,
    "Reshape": _h_reshape,
    "Unsqueeze": _h_unsqueeze,
    "Squeeze": _h_squeeze,
    "Flatten": _h_flatten,
    "Expand": _h_expand,
    "Mul": _binary,
    "Div": _binary,
    "Reciprocal": _h_unary_power,
    "Sqrt": _h_unary_power,
    "Pow": _h_unary_power,
    "ReduceL2": _h_reduce,
    "ReduceSumSquare": _h_reduce,
    "ReduceSum": _h_reduce,
    "LpNormalization": _h_lpnorm,
    "Transpose": _h_transpose,
    "MatMul": _h_matmul,
}


# ------------------------------------------------------------------------------------------
# Recognizing weight norm


@dataclass(frozen=True)
class _Match:
    v: Factor
    g: Factor
    ss: Factor


def _classify(term: Term, index: GraphIndex) -> _Match | None:
    if term.dtype not in FLOAT_TYPES:
        return None
    factors = _merge(term.factors)
    sums = [f for f in factors if f.kind == "ss"]
    leaves = [f for f in factors if f.kind == "leaf" and not f.perm]
    if (
        len(factors) != 3
        or len(sums) != 1
        or len(leaves) != 2
        or sums[0].exponent != Fraction(-1, 2)
    ):
        return None
    ss = sums[0]
    identity = Keyed.of(term.numel, 1)
    v_candidates = [
        f for f in leaves if f.source == ss.source and f.exponent == 1 and f.layout == identity
    ]
    if len(v_candidates) != 1:
        return None
    v = v_candidates[0]
    g = next(f for f in leaves if f is not v)
    group = ss.group
    assert group is not None
    v_info, g_info = index.constant_info(v.source), index.constant_info(g.source)
    if v_info is None or g_info is None:
        return None
    if (
        g.source == v.source
        or g.exponent != 1
        or _numel(v_info[0]) != term.numel
        or ss.layout != group
        or g.layout != group
        or _numel(g_info[0]) != group.size
        or v_info[1] not in FLOAT_TYPES
        or g_info[1] not in FLOAT_TYPES
    ):
        return None
    return _Match(v=v, g=g, ss=ss)


@dataclass(frozen=True)
class _SpectralMatch:
    weight: Factor
    sigma: Factor


def _classify_spectral(term: Term, index: GraphIndex) -> _SpectralMatch | None:
    """``W / σ`` with ``σ = uᵀ·M·v``, ``M`` being ``W`` (or a same-sized copy) as a matrix."""
    if term.dtype not in FLOAT_TYPES:
        return None
    factors = _merge(term.factors)
    leaves = [f for f in factors if f.kind == "leaf"]
    sigmas = [f for f in factors if f.kind == "sigma"]
    if len(factors) != 2 or len(leaves) != 1 or len(sigmas) != 1:
        return None
    weight, sigma = leaves[0], sigmas[0]
    bilinear = sigma.bilinear
    w_info, m_info = index.constant_info(weight.source), index.constant_info(sigma.source)
    if (
        bilinear is None
        or not bilinear.u
        or weight.perm
        or weight.exponent != 1
        or weight.layout != Keyed.of(term.numel, 1)
        or sigma.exponent != -1
        or sigma.layout.size != 1
        or w_info is None
        or m_info is None
        or _numel(w_info[0]) != term.numel
        or _numel(m_info[0]) != term.numel
        or w_info[1] not in FLOAT_TYPES
        or m_info[1] not in FLOAT_TYPES
    ):
        return None
    return _SpectralMatch(weight, sigma)


def spectral_parameter_name(original: str, u: str, v: str) -> str | None:
    """The folded parameter's name when the original weight and ``u``/``v`` are named like
    PyTorch's spectral-norm keys (``x.weight_orig``/``_u``/``_v``, or
    ``x.parametrizations.weight.original`` and ``x.parametrizations.weight.0._u``/``._v``)."""
    if original.endswith("_orig"):
        candidate = original[: -len("_orig")]
        if candidate and (u == f"{candidate}_u" or v == f"{candidate}_v"):
            return candidate
    # ``.original`` alone (weight norm's are original0/original1) says spectral norm: the
    # dynamo exporter may have renamed u and v (``clone``, ``clone_1``) by folding a copy.
    head, mark, param = original.removesuffix(".original").rpartition("parametrizations.")
    if original.endswith(".original") and mark and param and "." not in param:
        return f"{head}{param}"
    return None


def _narrowest(dtypes: set[int] | frozenset[int]) -> int | None:
    """The least precise float type of a set; None if two are incomparable (float16, bfloat16)."""
    lowest = min(_PRECISION[d] for d in dtypes)
    candidates = {d for d in dtypes if _PRECISION[d] == lowest}
    return candidates.pop() if len(candidates) == 1 else None


def _effective_casts(stored: int, casts: tuple[int, ...]) -> tuple[int, ...]:
    """The casts that change values (narrowing ones), in order; widening casts are exact."""
    effective: list[int] = []
    current = stored
    for to in casts:
        if _PRECISION[to] < _PRECISION[current] or {to, current} == {FLOAT16, BFLOAT16}:
            effective.append(to)
        current = to
    return tuple(effective)


def _dim_for(v_shape: tuple[int, ...], g_shape: tuple[int, ...], group: Keyed) -> int | None:
    """The axis of v whose index is the group key (None: whole tensor or no single axis).

    One group (a whole-tensor norm) is read the way the checkpoint fold reads g's shape
    (:func:`~wnconvert.numerics.infer_dim`), so both fold with the same ``dim`` and agree bit
    for bit.
    """
    if group.size == 1:
        try:
            return infer_dim(g_shape, v_shape)
        except ValueError:
            return None
    for axis, size in enumerate(v_shape):
        if size == group.size and _suffix(v_shape, axis) == group.stride:
            return axis
    return None


def parameter_name(v: str, g: str) -> str | None:
    """The folded parameter's name when ``v`` (or ``g``) is named like a weight-norm key."""
    for name, role in ((v, "v"), (g, "g")):
        for style, suffix in (("parametrize", ".original1" if role == "v" else ".original0"),
                              ("legacy", f"_{role}")):
            if not name.endswith(suffix):
                continue
            if style == "legacy":
                candidate = name[: -len(suffix)]
            else:
                head = name[: -len(suffix)]
                module, mark, param = head.rpartition("parametrizations.")
                if not mark or not param or "." in param:
                    continue
                candidate = f"{module}{param}"
            if not candidate:
                continue
            keys = pair_keys(candidate, style)  # type: ignore[arg-type]  # one of the two
            if (keys.v_key if role == "v" else keys.g_key) == name:
                return candidate
    return None


def find_weight_norm(index: GraphIndex) -> list[WeightNormSite]:
    """Every weight-norm and spectral-norm computation from constants in the main graph, in
    graph order (spectral-norm sites have ``spectral`` set)."""
    analyzer = _Analyzer(index)
    sites: list[WeightNormSite] = []
    covered: set[int] = set()
    for position, node in enumerate(index.nodes):
        if (
            node.op_type not in ROOT_OPS
            or node.domain not in ("", "ai.onnx")
            or position in covered
            or len(node.output) != 1
        ):
            continue
        root = node.output[0]
        term = analyzer.term(root)
        if term is None:
            continue
        match = _classify(term, index)
        spectral = _classify_spectral(term, index) if match is None else None
        if match is None and spectral is None:
            continue
        root, term = _extend_root(analyzer, index, root, term)
        if match is not None:
            site = _site(index, root, term, match)
        else:
            assert spectral is not None
            site = _spectral_site(index, root, term, spectral)
        covered.update(site.node_indices)
        sites.append(site)
    return sites


def _extend_root(
    analyzer: _Analyzer, index: GraphIndex, root: str, term: Term
) -> tuple[str, Term]:
    """Take in trailing Cast/Identity nodes, so a cast result is rounded once, not twice."""
    while root not in index.graph_outputs:
        users = index.consumers.get(root, [])
        if len(users) != 1:
            break
        node = index.nodes[users[0]]
        if node.op_type not in ("Cast", "Identity") or list(node.input) != [root]:
            break
        extended = analyzer.term(node.output[0])
        if extended is None:
            break
        root, term = node.output[0], extended
    return root, term


def _site(index: GraphIndex, root: str, term: Term, match: _Match) -> WeightNormSite:
    v_shape, v_type = index.constant_info(match.v.source) or ((), 0)
    g_shape, g_type = index.constant_info(match.g.source) or ((), 0)
    group = match.ss.group
    assert group is not None
    positions = tuple(sorted(term.nodes))
    foldable, reason = True, None
    round_dtype = _narrowest(term.arith_dtypes | {term.dtype})
    v_casts = _effective_casts(v_type, match.v.casts)
    if round_dtype is None:
        foldable, reason = False, "mixes float16 and bfloat16 arithmetic"
        round_dtype = term.dtype
    elif v_casts != _effective_casts(v_type, match.ss.casts):
        foldable, reason = False, "v is rounded differently before the norm and the product"
    return WeightNormSite(
        root=root,
        v=match.v.source,
        g=match.g.source,
        shape=term.shape,
        v_shape=v_shape,
        g_shape=g_shape,
        group=group,
        dim=_dim_for(v_shape, g_shape, group),
        dtype=term.dtype,
        round_dtype=round_dtype,
        v_casts=v_casts,
        g_casts=_effective_casts(g_type, match.g.casts),
        node_indices=positions,
        node_names=tuple(index.node_label(p) for p in positions),
        op_types=tuple(index.nodes[p].op_type for p in positions),
        parameter=parameter_name(match.v.source, match.g.source),
        foldable=foldable,
        reason=reason,
    )


def _spectral_site(index: GraphIndex, root: str, term: Term,
                   match: _SpectralMatch) -> WeightNormSite:
    weight, sigma, bilinear = match.weight, match.sigma, match.sigma.bilinear
    assert bilinear is not None
    w_shape, w_type = index.constant_info(weight.source) or ((), 0)
    m_shape, m_type = index.constant_info(sigma.source) or ((), 0)
    rows = m_shape[bilinear.matrix_dim]
    if sigma.source == weight.source:
        dim: int | None = bilinear.matrix_dim
    else:  # a copy of the weight: the axis is only known when one axis fits
        fits = [axis for axis, size in enumerate(w_shape) if size == rows]
        dim = fits[0] if len(fits) == 1 else None
    positions = tuple(sorted(term.nodes))
    foldable, reason = True, None
    round_dtype = _narrowest(term.arith_dtypes | {term.dtype})
    if round_dtype is None:
        foldable, reason = False, "mixes float16 and bfloat16 arithmetic"
        round_dtype = term.dtype
    parts = SpectralParts(
        matrix=sigma.source,
        matrix_dim=bilinear.matrix_dim,
        matrix_casts=_effective_casts(m_type, sigma.casts),
        u=bilinear.u,
        u_casts=_effective_casts(_type_of(index, bilinear.u), bilinear.u_casts),
        vector=bilinear.v,
        vector_casts=_effective_casts(_type_of(index, bilinear.v), bilinear.v_casts),
    )
    return WeightNormSite(
        root=root,
        v=weight.source,
        g="",
        shape=term.shape,
        v_shape=w_shape,
        g_shape=(),
        group=Keyed(1, 1),
        dim=dim,
        dtype=term.dtype,
        round_dtype=round_dtype,
        v_casts=_effective_casts(w_type, weight.casts),
        g_casts=(),
        node_indices=positions,
        node_names=tuple(index.node_label(p) for p in positions),
        op_types=tuple(index.nodes[p].op_type for p in positions),
        parameter=spectral_parameter_name(weight.source, bilinear.u, bilinear.v),
        foldable=foldable,
        reason=reason,
        spectral=parts,
    )


def _type_of(index: GraphIndex, name: str) -> int:
    info = index.constant_info(name)
    return info[1] if info is not None else 0


def op_counts(graph: onnx.GraphProto) -> dict[str, int]:
    """Node count per op type (``domain.Op`` outside the default domain), most frequent first."""
    counts: dict[str, int] = defaultdict(int)
    for node in iter_nodes(graph):
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[key] += 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
