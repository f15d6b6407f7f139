"""Replacing weight-norm (and spectral-norm) computations in an ONNX graph by one folded
initializer each.

The graph edit is cheap and happens at once; the folded data is computed when the output is
written (:class:`~wnconvert.onnx_graph.protoio.Computed`), one tensor at a time, so the model is
never held in memory twice.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from ..errors import WeightNormWarning
from .analysis import (
    FLOAT_TYPES,
    GraphIndex,
    WeightNormSite,
    dtype_name,
    find_weight_norm,
    op_counts,
)
from .hidden import (
    find_weight_norm_in_subgraphs,
    pairs_read_at_run_time,
    spectral_read_at_run_time,
)
from .names import Renamed, names_in_use
from .protoio import Computed, FileRange, LazyModel, read_initializer
from .walk import outer_references, rename_references

if TYPE_CHECKING:
    import numpy as np
    import onnx


@dataclass
class LayerFold:
    """One folded weight: what it replaced and what the fold noticed."""

    name: str  # the new initializer
    value: str  # the graph value it replaces (the old chain's output)
    v: str
    g: str
    shape: tuple[int, ...]
    dim: int | None
    dim_label: str
    dtype: str
    nodes_removed: int
    ops_removed: tuple[str, ...]
    zero_norm_rows: int = 0  # filled in when the data is computed (on write)
    nonfinite_rows: int = 0
    kind: str = "weight_norm"  # or "spectral_norm": v is the original weight, g is empty
    sigma: float | None = None  # spectral norm: the σ divided by (filled in on write)
    # Reduced precision ("float16"/"bfloat16"): the float64 fold is rounded once onto that
    # type's grid (stored in float32, exactly), so the later conversion does not round twice.
    grid: str | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "replaces": self.value,
            "v": self.v,
            "g": self.g or None,
            "sigma": self.sigma,
            "shape": list(self.shape),
            "dim": self.dim,
            "dtype": self.dtype,
            "nodes_removed": self.nodes_removed,
            "ops_removed": list(self.ops_removed),
            "zero_norm_rows": self.zero_norm_rows,
            "nonfinite_rows": self.nonfinite_rows,
        }


@dataclass
class FoldResult:
    layers: list[LayerFold] = field(default_factory=list)
    skipped: list[WeightNormSite] = field(default_factory=list)  # found, left in place
    # g/v pairs read at run time by something not recognized as weight norm: left in place.
    unrecognized: list[str] = field(default_factory=list)
    # Spectral-norm weights (parameter names) read at run time by something not recognized.
    unrecognized_spectral: list[str] = field(default_factory=list)
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)
    initializers_removed: list[str] = field(default_factory=list)
    renamed: list[Renamed] = field(default_factory=list)  # initializers given their names back

    @property
    def changed(self) -> bool:
        """False when the graph was already clean: nothing folded, nothing renamed."""
        return bool(self.layers or self.renamed)

    def to_dict(self) -> dict:
        return {
            "changed": self.changed,
            "layers": [layer.to_dict() for layer in self.layers],
            "renamed": [entry.to_dict() for entry in self.renamed],
            "skipped": [site.to_dict() for site in self.skipped],
            "unrecognized_pairs": self.unrecognized,
            "unrecognized_spectral_norm": self.unrecognized_spectral,
            "initializers_removed": self.initializers_removed,
            "op_counts": {"before": self.ops_before, "after": self.ops_after},
        }


def fold_model(model: LazyModel, *, grid: str | None = None) -> FoldResult:
    """Replace every foldable weight-norm computation of ``model``'s main graph, in place.

    Everything else in the graph stays as it was: node order and names, other initializers,
    value_info, metadata, opsets. Dead nodes and initializers of the folded computations (and
    only those) are removed. ``grid``: see :attr:`LayerFold.grid` (float32 weights only).
    """
    graph = model.proto.graph
    result = FoldResult(ops_before=op_counts(graph))
    index = GraphIndex.build(model)
    sites = find_weight_norm(index)
    result.skipped = [site for site in sites if not site.foldable]
    result.skipped += find_weight_norm_in_subgraphs(model)
    result.unrecognized = [keys.weight_key for keys in
                           pairs_read_at_run_time(index, sites + result.skipped)]
    result.unrecognized_spectral = spectral_read_at_run_time(index, sites + result.skipped)
    foldable = [site for site in sites if site.foldable]
    if not foldable:
        result.ops_after = dict(result.ops_before)
        return result

    taken = names_in_use(graph)
    renames: dict[str, str] = {}  # old root -> new initializer name
    new_tensors: dict[str, tuple[onnx.TensorProto, Computed, str]] = {}  # name -> (.., anchor)
    layers: dict[str, LayerFold] = {}
    reuse: dict[tuple, str] = {}
    for site in foldable:
        key = (site.v, site.g, site.group, site.v_casts, site.g_casts, site.round_dtype,
               site.dtype, site.shape, site.spectral)
        if key in reuse and site.root not in index.graph_outputs:
            renames[site.root] = reuse[key]  # the same weight computed twice: share it
            continue
        name = _choose_name(site, index, taken)
        taken.add(name)
        reuse[key] = name
        if name != site.root:
            renames[site.root] = name
        layer = LayerFold(
            name=name,
            value=site.root,
            v=site.v,
            g=site.g,
            shape=site.shape,
            dim=site.dim,
            dim_label=site.dim_label,
            dtype=dtype_name(site.dtype),
            nodes_removed=0,
            ops_removed=(),
            kind=site.kind,
            grid=grid if site.dtype == site.round_dtype == 1 else None,  # float32 sites
        )
        layers[site.root] = layer
        new_tensors[name] = (
            _skeleton(name, site),
            Computed(
                nbytes=_numel(site.shape) * _itemsize(site.dtype),
                external=_is_external(model, site.v),
                compute=_computation(model, index, site, layer),
            ),
            site.v if site.v in index.initializers else site.g,
        )

    # value_info of the main graph is renamed or dropped by _prune_value_info below.
    rename_references(graph, renames, value_info=False)
    chain_nodes = {p for site in foldable for p in site.node_indices}
    dead = _dead_nodes(graph, chain_nodes, {site.root for site in foldable})
    for site in foldable:
        folded = layers.get(site.root)
        if folded is not None:
            removed = [p for p in site.node_indices if p in dead]
            folded.nodes_removed = len(removed)
            folded.ops_removed = tuple(graph.node[p].op_type for p in removed)
    removed_values = {out for p in dead for out in graph.node[p].output if out}
    leaves = {site.v for site in foldable} | {site.g for site in foldable if site.g}
    leaves |= {name for site in foldable if site.spectral is not None
               for name in (site.spectral.matrix, site.spectral.u, site.spectral.vector)}
    leaves |= {name for p in dead for name in graph.node[p].input}
    _remove_nodes(graph, dead)
    result.initializers_removed = _rebuild_initializers(model, new_tensors, leaves)
    # A replaced value that keeps its name lives on as an initializer: keep its value_info.
    gone = (removed_values | set(result.initializers_removed)) - set(new_tensors)
    _prune_value_info(graph, gone, renames)
    result.layers = list(layers.values())
    result.ops_after = op_counts(graph)
    return result


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _itemsize(elem_type: int) -> int:
    return {1: 4, 10: 2, 11: 8, 16: 2}[elem_type]


def _is_external(model: LazyModel, name: str) -> bool:
    source = model.sources.get(name)
    return isinstance(source, FileRange) and source.external


def _choose_name(site: WeightNormSite, index: GraphIndex, taken: set[str]) -> str:
    """The parameter's name when g/v say it and it is free; else the replaced value's name."""
    if site.root in index.graph_outputs or not site.parameter:
        return site.root  # a graph output keeps its name: the model's interface must not change
    if site.parameter not in taken:
        return site.parameter
    return site.root


def _skeleton(name: str, site: WeightNormSite) -> onnx.TensorProto:
    import onnx

    tensor = onnx.TensorProto()
    tensor.name = name
    tensor.data_type = site.dtype
    tensor.dims.extend(site.shape)
    return tensor


def _dead_nodes(graph: onnx.GraphProto, candidates: set[int], replaced: set[str]) -> set[int]:
    """The candidate nodes none of whose outputs is still needed (a fixed point).

    ``replaced`` values are provided by new initializers from now on (whatever uses them).
    """
    needed_by: dict[str, set[int]] = {}
    for position, node in enumerate(graph.node):
        for name in [*node.input, *outer_references(node)]:
            if name:
                needed_by.setdefault(name, set()).add(position)
    outputs = {o.name for o in graph.output}
    dead: set[int] = set()
    changed = True
    while changed:
        changed = False
        for position in sorted(candidates - dead, reverse=True):
            node = graph.node[position]
            if all(
                name in replaced or (name not in outputs and needed_by.get(name, set()) <= dead)
                for name in node.output
                if name
            ):
                dead.add(position)
                changed = True
    return dead


def _remove_nodes(graph: onnx.GraphProto, dead: set[int]) -> None:
    import onnx

    kept = onnx.GraphProto()
    kept.node.extend(node for position, node in enumerate(graph.node) if position not in dead)
    graph.ClearField("node")
    graph.node.extend(kept.node)


def _rebuild_initializers(
    model: LazyModel,
    new_tensors: dict[str, tuple[onnx.TensorProto, Computed, str]],
    leaves: set[str],
) -> list[str]:
    """Drop the folded computations' initializers nothing uses any more (and only those);
    put each new one where its v (or g) was."""
    import onnx

    graph = model.proto.graph
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        used |= outer_references(node)
    after: dict[str, list[str]] = {}
    for name, (_, _, anchor) in new_tensors.items():
        after.setdefault(anchor, []).append(name)
    kept = onnx.GraphProto()
    removed: list[str] = []
    placed: set[str] = set()
    for tensor in graph.initializer:
        if tensor.name in used or tensor.name not in leaves:
            kept.initializer.append(tensor)
        else:
            removed.append(tensor.name)
            model.sources.pop(tensor.name, None)
        for name in after.get(tensor.name, []):
            kept.initializer.append(new_tensors[name][0])
            placed.add(name)
    for name, (tensor, _, _) in new_tensors.items():
        if name not in placed:  # v and g were Constant nodes
            kept.initializer.append(tensor)
    for name, (_, source, _) in new_tensors.items():
        model.sources[name] = source
    graph.ClearField("initializer")
    graph.initializer.extend(kept.initializer)
    # Graph inputs that only gave removed initializers a default (IR < 4 models) go too.
    gone = set(removed)
    if gone & {i.name for i in graph.input}:
        inputs = [i for i in graph.input if i.name not in gone]
        kept_inputs = onnx.GraphProto()
        kept_inputs.input.extend(inputs)
        graph.ClearField("input")
        graph.input.extend(kept_inputs.input)
    return removed


def _prune_value_info(graph: onnx.GraphProto, gone: set[str], renames: dict[str, str]) -> None:
    import onnx

    kept = onnx.GraphProto()
    for info in graph.value_info:
        if info.name in renames:
            if renames[info.name] in {v.name for v in kept.value_info}:
                continue
            info.name = renames[info.name]
        elif info.name in gone:
            continue
        kept.value_info.append(info)
    graph.ClearField("value_info")
    graph.value_info.extend(kept.value_info)


# ------------------------------------------------------------------------------------------
# Computing the folded data


def _numpy_type(elem_type: int) -> np.dtype:
    from ..dtypes import numpy_dtype

    return numpy_dtype(FLOAT_TYPES[elem_type])


def _leaf_loader(model: LazyModel, index: GraphIndex, name: str) -> Callable[[], np.ndarray]:
    """A loader for a constant's data, captured now: the graph is edited before data is read."""
    if name in index.initializers:
        tensor = _copy_tensor(index.initializers[name])
        source = model.sources.get(name)
        snapshot = LazyModel(model.path, model.proto, {name: source} if source else {}, 1)
        return partial(_typed, lambda: read_initializer(snapshot, tensor), tensor.data_type)
    array = index.constant_array(name, limit=None)
    info = index.constant_info(name)
    assert array is not None and info is not None
    return partial(_typed, lambda: array, info[1])


def _copy_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    import onnx

    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    return copy


def _typed(read: Callable[[], np.ndarray], elem_type: int) -> np.ndarray:
    """The array with its float type (bfloat16 arrives as raw 16-bit words)."""
    import numpy as np

    array = np.ascontiguousarray(read())
    wanted = _numpy_type(elem_type)
    return array.view(wanted) if array.dtype != wanted else array


def _apply_casts(x: np.ndarray, casts: tuple[int, ...]) -> np.ndarray:
    """The value a leaf has after the graph's narrowing casts (each rounds to nearest even)."""

    from ..numerics import as_float64, round_from_float64

    for to in casts:
        x = round_from_float64(as_float64(x), _numpy_type(to))
    return x


def _computation(model: LazyModel, index: GraphIndex, site: WeightNormSite,
                 layer: LayerFold) -> Callable[[], np.ndarray]:
    if site.spectral is None:
        return partial(_compute, _leaf_loader(model, index, site.v),
                       _leaf_loader(model, index, site.g), site, layer)
    parts = site.spectral
    return partial(
        _compute_spectral,
        _leaf_loader(model, index, site.v),
        _leaf_loader(model, index, parts.matrix),
        _leaf_loader(model, index, parts.u),
        _leaf_loader(model, index, parts.vector),
        site,
        layer,
    )


def _compute_spectral(
    load_weight: Callable[[], np.ndarray],
    load_matrix: Callable[[], np.ndarray],
    load_u: Callable[[], np.ndarray],
    load_v: Callable[[], np.ndarray],
    site: WeightNormSite,
    layer: LayerFold,
) -> np.ndarray:
    """``W / σ``, ``σ = uᵀ·W_mat·v``, for one site: PyTorch's eval-mode spectral norm in
    float64, rounded once (:func:`~wnconvert.numerics.spectral_fold`)."""
    import math

    import numpy as np

    from ..numerics import as_float64, round_from_float64, spectral_fold, spectral_sigma

    parts = site.spectral
    assert parts is not None
    weight = _apply_casts(load_weight(), site.v_casts)
    u = _apply_casts(load_u(), parts.u_casts)
    v = _apply_casts(load_v(), parts.vector_casts)
    round_type = _numpy_type(site.round_dtype)
    if parts.matrix == site.v and parts.matrix_casts == site.v_casts and (
            weight.dtype == round_type) and layer.grid is None:
        w, sigma = spectral_fold(weight, u, v, parts.matrix_dim)
    else:  # σ from a copy of the weight (or cast differently), or rounded to another type
        sigma = spectral_sigma(_apply_casts(load_matrix(), parts.matrix_casts), u, v,
                               parts.matrix_dim)
        with np.errstate(divide="ignore", invalid="ignore"):  # σ = 0: ±inf/NaN, as the graph
            w64 = as_float64(weight) / sigma
        if layer.grid is None:
            w = round_from_float64(w64, round_type)
        else:
            from .precision import round_onto_grid

            w = round_onto_grid(w64, round_type, layer.grid)
    del weight, u, v
    out_type = _numpy_type(site.dtype)
    w = (w if w.dtype == out_type else w.astype(out_type)).reshape(site.shape)
    layer.sigma = sigma
    if sigma == 0 or not math.isfinite(sigma):
        layer.nonfinite_rows = 1
        warnings.warn(
            f"{layer.name}: spectral norm's σ = uᵀ·W·v is {sigma} for {site.v}; the folded "
            "weight is not finite, as the original graph computes it",
            WeightNormWarning,
            stacklevel=2,
        )
    return np.ascontiguousarray(w)


def _compute(
    load_v: Callable[[], np.ndarray],
    load_g: Callable[[], np.ndarray],
    site: WeightNormSite,
    layer: LayerFold,
) -> np.ndarray:
    """``g * v / ||v||`` for one site, in float64, rounded once: the checkpoint fold's numbers."""
    import numpy as np

    from ..numerics import as_float64, fold, g_shape_for, round_from_float64

    v = _apply_casts(load_v(), site.v_casts)
    g = _apply_casts(load_g(), site.g_casts)
    group = site.group
    if site.dim is not None:
        frame, dim = tuple(v.shape), site.dim  # v's own layout: the checkpoint fold exactly
    elif group.size == 1:
        frame, dim = (v.size,), None
    else:
        frame, dim = (v.size // (group.size * group.stride), group.size, group.stride), 1
    v = v.reshape(frame)
    g = g.reshape(g_shape_for(frame, dim))
    round_type = _numpy_type(site.round_dtype)
    if v.dtype == round_type and layer.grid is None:
        w, stats = fold(g, v, dim)
    else:
        w64, stats = fold(g, as_float64(v), dim)
        if layer.grid is None:
            w = round_from_float64(w64, round_type)
        else:
            from .precision import round_onto_grid

            w = round_onto_grid(w64, round_type, layer.grid)
    del v, g
    out_type = _numpy_type(site.dtype)
    w = (w if w.dtype == out_type else w.astype(out_type)).reshape(site.shape)
    layer.zero_norm_rows, layer.nonfinite_rows = stats.zero_norm_rows, stats.nonfinite_rows
    if stats.zero_norm_rows:
        warnings.warn(
            f"{layer.name}: {stats.zero_norm_rows} row(s) of {site.v} have zero norm; folded "
            "to zeros (the original graph computes NaN there)",
            WeightNormWarning,
            stacklevel=2,
        )
    if stats.nonfinite_rows:
        warnings.warn(
            f"{layer.name}: {stats.nonfinite_rows} row(s) have NaN or Inf in g or v; the "
            "folded weight has them too",
            WeightNormWarning,
            stacklevel=2,
        )
    return np.ascontiguousarray(w)


