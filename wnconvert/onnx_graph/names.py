"""Giving initializers back the parameter names an exporter lost (``mul_5`` -> ``conv.weight``).

Two sources of names, both conservative (an initializer keeps its name unless one parameter,
and only one, claims it):

* exporter metadata: the onnxscript optimizer behind ``torch.onnx.export(dynamo=True)`` records
  on a value it constant-folded the names it was folded from; a weight folded from one g/v pair
  gets that pair's parameter name (:func:`lost_names`).
* a reference checkpoint: an initializer whose *value* equals one checkpoint tensor (after
  folding its g/v pairs, float64 rounded once) takes that tensor's name
  (:func:`match_reference`). Candidates are compared by dtype and shape first, then by a hash
  of their bytes, so a large model is not compared everything with everything and only tensors
  whose dtype and shape occur on both sides are ever read.

:func:`rename_initializers` applies the names everywhere the graph uses them.
"""

from __future__ import annotations

import ast
import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import WeightNormWarning
from .analysis import FLOAT_TYPES, dtype_name
from .protoio import LazyModel, read_initializer
from .walk import all_graphs, iter_nodes, rename_references

if TYPE_CHECKING:
    import numpy as np

    from ..formats.source import TensorSource

# Metadata the onnxscript optimizer (behind torch.onnx.export(dynamo=True)) leaves on a value it
# constant-folded: the names it was computed from.
FOLDED_FROM_KEY = "pkg.onnxscript.optimizer.folded_from"
# Tensor metadata wnconvert's exporter leaves on an initializer it found to be derived from
# parameters rather than to be one (a BatchNorm folded into a convolution): why, for reports.
DERIVED_KEY = "wnconvert.derived"
# A folded reference matches an initializer the exporter folded in the model's own precision
# (not float64) when every element is this many units of that precision's epsilon close.
_FOLD_ULPS = 8
_SAMPLE = 64  # elements compared first, before a whole tensor is
_EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}


@dataclass(frozen=True)
class LostName:
    """An initializer the exporter folded from a g/v pair and named after an op (``mul_3``)."""

    initializer: str
    parameter: str  # the name the g/v pair it came from says
    shape: tuple[int, ...]
    folded_from: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "initializer": self.initializer,
            "parameter": self.parameter,
            "shape": list(self.shape),
            "folded_from": list(self.folded_from),
        }


@dataclass(frozen=True)
class Renamed:
    """One initializer that got its parameter name back."""

    old: str
    new: str
    how: str  # "folded_from" (exporter metadata), "reference" (equal bytes),
    # "reference-fold" (equal to the reference's g/v fold up to the exporter's rounding)

    def to_dict(self) -> dict:
        return {"from": self.old, "to": self.new, "how": self.how}


def fingerprint(array: np.ndarray) -> tuple[str, tuple[int, ...], str]:
    """(dtype, shape, hash of the bytes): equal fingerprints mean equal tensors, bit for bit."""
    import numpy as np

    data = np.ascontiguousarray(array)
    digest = hashlib.blake2b(data.reshape(-1).view(np.uint8).data, digest_size=16).hexdigest()
    return str(data.dtype), tuple(data.shape), digest


def holds_value(array: np.ndarray, expected: np.ndarray) -> bool:
    """Whether ``array`` is ``expected``'s value: the same bytes, or the same dtype and shape
    and within the rounding of the array's precision (a weight the exporter folded from g/v
    itself, in float32, against the same fold in float64)."""
    import numpy as np

    from ..numerics import as_float64

    if fingerprint(array) == fingerprint(expected):
        return True
    kind = str(np.asarray(array).dtype)
    if kind != str(np.asarray(expected).dtype) or array.shape != expected.shape:
        return False
    eps = _EPS.get(kind)
    if eps is None:
        return False
    return _close(as_float64(array).reshape(-1), as_float64(expected).reshape(-1), eps)


def lost_names(model: LazyModel) -> list[LostName]:
    """Initializers whose exporter metadata says they were folded from one g/v pair.

    Only the onnxscript optimizer records where a folded constant came from; without that
    record a folded weight cannot be told apart from any other initializer, so none is guessed.
    """
    from ..keys import find_pair_keys

    graph = model.proto.graph
    metadata: dict[str, str] = {}
    for info in graph.value_info:
        for entry in info.metadata_props:
            if entry.key == FOLDED_FROM_KEY:
                metadata[info.name] = entry.value
    lost = []
    for tensor in graph.initializer:
        raw = next(
            (e.value for e in tensor.metadata_props if e.key == FOLDED_FROM_KEY),
            metadata.get(tensor.name),
        )
        if raw is None:
            continue
        try:
            names = ast.literal_eval(raw)
        except (ValueError, SyntaxError, RecursionError, MemoryError):
            continue
        if not isinstance(names, list | tuple | set) or not all(isinstance(n, str) for n in names):
            continue
        found = find_pair_keys(sorted(names))
        if len(found) != 1 or found[0].weight_key == tensor.name:
            continue  # no single pair, or already named after it (an earlier fold renamed it)
        lost.append(
            LostName(
                initializer=tensor.name,
                parameter=found[0].weight_key,
                shape=tuple(tensor.dims),
                folded_from=tuple(sorted(names)),
            )
        )
    return lost


def names_in_use(graph: Any) -> set[str]:
    """Every value name of a graph and its subgraphs (a new name must be none of them)."""
    names: set[str] = set()
    for current in all_graphs(graph):
        names |= {t.name for t in current.initializer} | {i.name for i in current.input}
        names |= {o.name for o in current.output} | {v.name for v in current.value_info}
    for node in iter_nodes(graph):
        names.update(node.input)
        names.update(node.output)
    names.discard("")
    return names


def _renamable(model: LazyModel) -> list[str]:
    """Main-graph initializers whose name may change: not the model's inputs or outputs."""
    graph = model.proto.graph
    interface = {i.name for i in graph.input} | {o.name for o in graph.output}
    return [t.name for t in graph.initializer if t.name not in interface]


def plan_metadata_renames(model: LazyModel, taken: set[str]) -> list[Renamed]:
    """Names from the exporter's ``folded_from`` metadata (see :func:`lost_names`)."""
    renamable = set(_renamable(model))
    planned: list[Renamed] = []
    for lost in lost_names(model):
        if lost.initializer not in renamable or lost.parameter in taken:
            continue
        taken.add(lost.parameter)
        planned.append(Renamed(lost.initializer, lost.parameter, "folded_from"))
    return planned


def match_reference(
    model: LazyModel, reference: TensorSource, taken: set[str], *,
    skip: frozenset[str] | set[str] = frozenset(),
) -> list[Renamed]:
    """Initializers equal to one tensor of ``reference`` (g/v pairs folded) take its name.

    ``taken`` names are never given (and the names given are added to it); ``skip`` are
    initializers that already have a new name. Weights this run folds itself are named from
    their g/v pair already and are not compared.
    """
    from ..convert import plan_fold
    from .protoio import Computed

    conversion = plan_fold(reference)  # InputError if its g/v pairs do not fit
    reference_keys = {item.key for item in conversion.plan}
    by_name = {t.name: t for t in model.proto.graph.initializer}
    # 1. dtype and shape: only groups present on both sides are ever read.
    candidates: dict[tuple[str, tuple[int, ...]], list[str]] = {}
    for name in _renamable(model):
        tensor = by_name[name]
        if (name in skip or name in reference_keys or tensor.data_type not in FLOAT_TYPES
                or isinstance(model.sources.get(name), Computed)):
            continue
        candidates.setdefault((dtype_name(tensor.data_type), tuple(tensor.dims)), []).append(name)
    wanted = [item for item in conversion.plan
              if (item.info.dtype, item.info.shape) in candidates and item.key not in taken]
    groups = {(item.info.dtype, item.info.shape) for item in wanted}
    candidates = {group: names for group, names in candidates.items() if group in groups}
    if not wanted:
        return []
    # 2. hashes of the initializers in those groups (one tensor in memory at a time).
    hashes: dict[tuple[str, tuple[int, ...], str], list[str]] = {}
    for names in candidates.values():
        for name in names:
            hashes.setdefault(_initializer_print(model, by_name[name]), []).append(name)
    # 3. each reference tensor (one in memory at a time) against those hashes: equal bytes.
    planned: list[Renamed] = []
    claimed: set[str] = set()
    inexact = []
    for item in wanted:
        free = [n for n in hashes.get(_print_of(_produce(reference, item), item.info.dtype), [])
                if n not in claimed]
        if free and item.key not in taken:
            claimed.add(free[0])
            taken.add(item.key)
            planned.append(Renamed(free[0], item.key, "reference"))
        elif item.produce is not None:
            inexact.append(item)
    # 4. weights folded here in float64 that the exporter folded in the model's precision:
    # compared with a tolerance, after every exact match is claimed (each is produced again
    # rather than kept, so memory stays at one tensor).
    for item in inexact:
        found = _near_match(model, by_name, candidates, item, _produce(reference, item), claimed)
        if found is not None and item.key not in taken:
            claimed.add(found)
            taken.add(item.key)
            planned.append(Renamed(found, item.key, "reference-fold"))
    return planned


def _produce(reference: TensorSource, item: Any) -> np.ndarray:
    from ..formats.source import read_view

    if item.produce is None:
        return read_view(reference, item.source_key)
    with warnings.catch_warnings():
        # Zero-norm rows of the reference are the reference's business, not this graph's.
        warnings.simplefilter("ignore", WeightNormWarning)
        return item.produce()


def _initializer_print(model: LazyModel, tensor: Any) -> tuple[str, tuple[int, ...], str]:
    return _print_of(read_initializer(model, tensor), dtype_name(tensor.data_type))


def _print_of(array: np.ndarray, dtype: str) -> tuple[str, tuple[int, ...], str]:
    _, shape, digest = fingerprint(array)
    return dtype, shape, digest  # named dtype: bfloat16 is uint16 bits in one reader


def _near_match(
    model: LazyModel,
    by_name: Mapping[str, Any],
    candidates: Mapping[tuple[str, tuple[int, ...]], list[str]],
    item: Any,
    array: np.ndarray,
    claimed: set[str],
) -> str | None:
    """The one unclaimed initializer of the item's dtype and shape within the exporter's
    rounding of ``array``; None if none or several fit (no guess)."""
    import numpy as np

    from ..dtypes import numpy_dtype
    from ..numerics import as_float64

    dtype = numpy_dtype(item.info.dtype)
    eps = _EPS[item.info.dtype]
    ref = as_float64(array).reshape(-1)
    sample = np.linspace(0, ref.size - 1, min(_SAMPLE, ref.size)).astype(np.int64)
    fits = []
    for name in candidates[(item.info.dtype, item.info.shape)]:
        if name in claimed:
            continue
        data = np.asarray(read_initializer(model, by_name[name]))
        flat = (data if data.dtype == dtype else data.view(dtype)).reshape(-1)
        if not _close(as_float64(flat[sample]), ref[sample], eps):
            continue  # the cheap test: most candidates fail here
        if _close(as_float64(flat), ref, eps):
            fits.append(name)
    return fits[0] if len(fits) == 1 else None


def _close(a: np.ndarray, b: np.ndarray, eps: float) -> bool:
    import numpy as np

    finite = np.isfinite(b)
    if not np.array_equal(np.isfinite(a), finite):
        return False
    tolerance = _FOLD_ULPS * eps * np.abs(b[finite]) + np.finfo(np.float32).tiny
    return bool(np.all(np.abs(a[finite] - b[finite]) <= tolerance))


def rename_initializers(model: LazyModel, renames: Mapping[str, str]) -> None:
    """Rename main-graph initializers and every use of them (nodes, value_info, subgraphs).

    The caller makes sure no new name is in use and no renamed initializer is a graph input or
    output (:func:`plan_metadata_renames` and :func:`match_reference` do).
    """
    if not renames:
        return
    graph = model.proto.graph
    for tensor in graph.initializer:
        if tensor.name in renames:
            new = renames[tensor.name]
            if tensor.name in model.sources:
                model.sources[new] = model.sources.pop(tensor.name)
            tensor.name = new
    rename_references(graph, dict(renames), value_info=True)


def restore_names(model: LazyModel, *, reference: TensorSource | None = None) -> list[Renamed]:
    """Give initializers their parameter names back, in place (see the module doc)."""
    taken = names_in_use(model.proto.graph)
    planned = plan_metadata_renames(model, taken)
    if reference is not None:
        planned += match_reference(model, reference, taken, skip={r.old for r in planned})
    rename_initializers(model, {r.old: r.new for r in planned})
    return planned
