"""Weights compared by name: checkpoint tensors or reference initializers vs the candidate's."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from .compare import compare_arrays, dtype_name
from .results import WeightComparison, WeightsReport
from .tolerance import VerifyOptions

if TYPE_CHECKING:
    import numpy as np

    from ..onnx_graph.protoio import LazyModel


def compare_weights(candidate: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                    *, options: VerifyOptions) -> WeightsReport:
    """Compare the reference's floating tensors with the candidate's (weight-norm pairs folded
    first), matched by name, then by name after a common wrapper prefix (``m.``, ``model.``;
    see :func:`~wnconvert.keys.detect_key_prefix`), then by value for initializers the
    exporter renamed (same shape and dtype, values that agree within the tolerance).

    A candidate tensor left unmatched that its exporter marked as derived from parameters (a
    BatchNorm folded into a convolution; see ``DERIVED_KEY``) is listed in ``derived`` with
    the exporter's note: it is none of the reference's tensors, so it is not compared.

    Tensors are loaded (and pairs folded) one name at a time, so with lazy mappings such as
    :func:`onnx_initializers` peak memory stays near the largest tensor, not the model.
    """
    from ..keys import detect_key_prefix

    cand = _weight_loaders(candidate)
    ref = _weight_loaders(reference)
    prefix = detect_key_prefix(list(cand), list(ref))
    pairs: dict[str, str] = {name: name for name in ref if name in cand}  # reference -> cand
    if prefix is not None:
        strip, add = prefix
        for name in cand:
            target = add + name[len(strip):]
            if name.startswith(strip) and target in ref and target not in pairs:
                pairs[target] = name
    compared: list[WeightComparison] = []
    skipped: list[tuple[str, str]] = []
    for ref_name, cand_name in pairs.items():
        comparison = _compare_one(cand_name, cand[cand_name], ref_name, ref[ref_name], options)
        if isinstance(comparison, str):
            skipped.append((ref_name, comparison))
        else:
            compared.append(comparison)
    by_value = _match_by_value(
        {n: cand[n] for n in cand if n not in set(pairs.values())},
        {n: ref[n] for n in ref if n not in pairs}, options)
    for cand_name, ref_name, comparison in by_value:
        pairs[ref_name] = cand_name
        compared.append(comparison)
    used = set(pairs.values())
    derivation = getattr(candidate, "derivation", None)
    notes = {n: derivation(n) for n in cand if n not in used} if derivation is not None else {}
    derived = {n: note for n, note in notes.items() if note is not None}
    return WeightsReport(
        mode=options.weights,
        compared=tuple(compared),
        skipped=tuple(skipped),
        only_in_candidate=tuple(n for n in cand if n not in used and n not in derived),
        only_in_reference=tuple(n for n in ref if n not in pairs),
        prefix=prefix if prefix is not None and any(pairs[r] != r for r in pairs) else None,
        matched_by_value=tuple((c, r) for c, r, _ in by_value),
        derived=tuple(derived.items()),
    )


def _compare_one(cand_name: str, cand: _Loader, ref_name: str, ref: _Loader,
                 options: VerifyOptions) -> WeightComparison | str:
    (c_shape, c_dtype, c_load), (r_shape, r_dtype, r_load) = cand, ref
    if c_shape != r_shape:
        return f"shape {list(c_shape)} vs reference {list(r_shape)}"
    narrow = c_dtype if c_dtype in ("float16", "bfloat16") and r_dtype == "float32" else None
    tol = options.tolerance_for(ref_name, r_dtype, computes_in=narrow)
    # A reduced-precision candidate's weight, widened exactly, against its float32 original.
    comp = compare_arrays(c_load().astype(r_dtype) if narrow else c_load(), r_load(), tol)
    return WeightComparison(
        name=cand_name, shape=r_shape, dtype=r_dtype, max_abs=comp.max_abs,
        max_rel=comp.max_rel, atol=tol.atol, rtol=tol.rtol, passed=comp.mismatched == 0,
        reference_name=ref_name if ref_name != cand_name else None,
    )


_VALUE_GROUP_LIMIT = 64  # same-shape tensors tried against each other (pairwise) at most


def _match_by_value(cand: Mapping[str, _Loader], ref: Mapping[str, _Loader],
                    options: VerifyOptions) -> list[tuple[str, str, WeightComparison]]:
    """(candidate, reference, comparison) for renamed initializers.

    Only weights (rank >= 2) take part: a scalar or a bias-sized vector of an exporter constant
    would pair with anything. A pair is made only where the values agree within the tolerance,
    even for the only tensor of its shape on both sides: that one may be derived from several
    parameters (a BatchNorm folded into the convolution's weight), and pairing it would fail a
    correct export. A weight changed under a name the exporter made up is not paired; the
    outputs, which it changes, are what catches it.
    """
    groups: dict[tuple[tuple[int, ...], str], tuple[list[str], list[str]]] = {}
    for side, tensors in ((0, cand), (1, ref)):
        for name, (shape, dtype, _) in tensors.items():
            if len(shape) >= 2:
                groups.setdefault((shape, dtype), ([], []))[side].append(name)
    found: list[tuple[str, str, WeightComparison]] = []
    for c_names, r_names in groups.values():
        if not c_names or not r_names:
            continue
        if len(c_names) * len(r_names) > _VALUE_GROUP_LIMIT ** 2:
            continue
        free = list(c_names)
        for r_name in r_names:
            for c_name in free:
                comp = _compare_one(c_name, cand[c_name], r_name, ref[r_name], options)
                if not isinstance(comp, str) and comp.passed:
                    found.append((c_name, r_name, comp))
                    free.remove(c_name)
                    break
    return found


_FLOAT_NAMES = ("float64", "float32", "float16", "bfloat16")
_Loader = tuple[tuple[int, ...], str, Callable[[], "np.ndarray"]]


def _weight_loaders(tensors: Mapping[str, np.ndarray]) -> dict[str, _Loader]:
    """name -> (shape, dtype, load) for the floating tensors, weight-norm pairs and spectral
    norm (where its axis is clear) folded.

    Integer tensors are shape constants or counters (num_batches_tracked), not weights.
    Shapes and dtypes come from the mapping's metadata when it has some (no data is read).
    """
    from ..keys import find_pair_keys
    from ..numerics import fold, infer_dim

    meta = {}
    for key in tensors:
        shape, dtype = _shape_dtype(tensors, key)
        if dtype in _FLOAT_NAMES:
            meta[key] = (shape, dtype)
    pairs = {}
    for pair in find_pair_keys(meta):
        try:
            dim = infer_dim(meta[pair.g_key][0], meta[pair.v_key][0])
        except ValueError:
            continue  # not a real pair; compare the tensors as they are
        pairs[pair.g_key] = pairs[pair.v_key] = (pair, dim)
    spectral = _spectral_loaders(tensors, meta)
    out: dict[str, _Loader] = {}
    for key, (shape, dtype) in meta.items():
        if key in spectral:
            if spectral[key][0] not in out:
                out[spectral[key][0]] = spectral[key][1]
            continue
        if key not in pairs:
            out[key] = (shape, dtype, functools.partial(tensors.__getitem__, key))
            continue
        pair, dim = pairs[key]
        if pair.weight_key in out:
            continue
        v_shape, v_dtype = meta[pair.v_key]

        def load_folded(pair=pair, dim=dim) -> np.ndarray:
            return fold(tensors[pair.g_key], tensors[pair.v_key], dim)[0]

        out[pair.weight_key] = (v_shape, v_dtype, load_folded)
    return out


def _spectral_loaders(tensors: Mapping[str, np.ndarray],
                      meta: Mapping[str, tuple[tuple[int, ...], str]]
                      ) -> dict[str, tuple[str, _Loader]]:
    """member key -> (plain weight key, loader of PyTorch's eval-mode weight) for each
    spectral-norm site whose axis ``u``/``v`` fit by size alone (others are compared as they
    are, so a candidate without them shows as unmatched rather than wrongly folded)."""
    from ..keys import find_spectral_keys
    from ..numerics import spectral_dims, spectral_fold

    found: dict[str, tuple[str, _Loader]] = {}
    try:
        sites = find_spectral_keys(meta)
    except InputError:
        return found  # an inconsistent reference: compare its tensors as they are
    for site in sites:
        if site.v_key is None or not {site.orig_key, site.u_key, site.v_key} <= set(meta):
            continue
        shape, dtype = meta[site.orig_key]
        dims = spectral_dims(shape, math.prod(meta[site.u_key][0]),
                             math.prod(meta[site.v_key][0]))
        if len(dims) != 1:
            continue

        def load_folded(site=site, dim=dims[0]) -> np.ndarray:
            return spectral_fold(tensors[site.orig_key], tensors[site.u_key],
                                 tensors[site.v_key], dim)[0]

        for member in site.members:
            found[member] = (site.weight_key, (shape, dtype, load_folded))
    return found


def _shape_dtype(tensors: Mapping[str, np.ndarray], key: str) -> tuple[tuple[int, ...], str]:
    describe = getattr(tensors, "describe", None)
    if describe is not None:
        return describe(key)
    array = tensors[key]
    return tuple(array.shape), dtype_name(array)


class _LazyInitializers(Mapping):
    """The main graph's initializers, each read when accessed.

    The model is scanned without its tensor bytes (inline or external), so an inline 1 GB
    model costs 1 GB only while one of its tensors is in use, not for the whole comparison.
    """

    def __init__(self, model: Path | LazyModel) -> None:
        from ..onnx_graph.protoio import LazyModel, load_model

        self._model = model if isinstance(model, LazyModel) else load_model(Path(model))
        self._tensors = {init.name: init for init in self._model.proto.graph.initializer}

    def __getitem__(self, name: str) -> np.ndarray:
        import onnx

        from ..dtypes import numpy_dtype
        from ..onnx_graph.protoio import read_initializer

        tensor = self._tensors[name]
        array = read_initializer(self._model, tensor)
        if tensor.data_type == onnx.TensorProto.BFLOAT16:
            array = array.view(numpy_dtype("bfloat16"))  # read_initializer gives uint16 bits
        return array

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def derivation(self, name: str) -> str | None:
        """The exporter's note that this initializer is derived from parameters, if any."""
        from ..onnx_graph.names import DERIVED_KEY

        return next((e.value for e in self._tensors[name].metadata_props
                     if e.key == DERIVED_KEY), None)

    def describe(self, name: str) -> tuple[tuple[int, ...], str]:
        from ..dtypes import from_onnx_code

        tensor = self._tensors[name]
        # Types outside the registry (strings, float4...) are not weights to compare.
        dtype = from_onnx_code(tensor.data_type) or f"onnx type {tensor.data_type}"
        return tuple(int(d) for d in tensor.dims), dtype


def onnx_initializers(model: Path | LazyModel) -> Mapping[str, np.ndarray]:
    """The main graph's initializers as numpy arrays, read lazily one at a time, from the file
    ``model`` or from a model already read (not parsed again)."""
    return _LazyInitializers(model)

