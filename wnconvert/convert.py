"""The three jobs on state dicts: fold, decompose, restyle.

Each job first builds a *plan* from names, shapes and dtypes alone (nothing is read), so
mismatches are reported before any work and writers can stream. ``fold_state_dict`` and friends
are the in-memory API on torch state dicts; the CLI uses the ``plan_*`` functions with the
streaming writers in :mod:`wnconvert.formats`.

(Why one module of ~600 lines: the three plans share the pair model, the producers and the
prefix handling; ``plan_decompose(like=...)`` mixes all three jobs per key.)
"""

from __future__ import annotations

import fnmatch
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from . import numerics
from .dtypes import is_floating, numpy_to_tensor
from .errors import InputError, WeightNormWarning
from .formats.source import (
    DictSource,
    PlannedTensor,
    RenamedSource,
    TensorInfo,
    TensorSource,
    as_source,
    read_view,
)
from .keys import (
    STYLES,
    PairKeys,
    PrefixChange,
    Style,
    find_pair_keys,
    pair_keys,
    prefix_to_match,
    restyle_key_map,
)
from .spectral import SpectralSite, check_sn_dim, find_spectral_sites, planned_spectral

if TYPE_CHECKING:
    import numpy as np
    import torch

DEFAULT_INCLUDE = ("*weight",)


@dataclass(frozen=True)
class Pair:
    """One weight-normed parameter: its keys, ``dim`` (from ``g``'s shape), shape and dtype."""

    keys: PairKeys
    dim: int | None
    shape: tuple[int, ...]  # v's shape = the folded weight's shape
    g_shape: tuple[int, ...]
    dtype: str

    @property
    def weight_key(self) -> str:
        return self.keys.weight_key

    @property
    def style(self) -> Style:
        return self.keys.style

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.weight_key,
            "style": self.style,
            "g_key": self.keys.g_key,
            "v_key": self.keys.v_key,
            "dim": self.dim,
            "shape": list(self.shape),
            "g_shape": list(self.g_shape),
            "dtype": self.dtype,
        }


def find_pairs(state: Mapping[str, Any] | TensorSource) -> list[Pair]:
    """Every weight-norm pair in a state dict, both key styles, with ``dim`` read from ``g``.

    Raises :class:`InputError` if a pair's ``g`` and ``v`` shapes do not fit.
    """
    source = as_source(state)
    pairs = []
    for keys in find_pair_keys(source.keys()):
        g, v = source.info(keys.g_key), source.info(keys.v_key)
        dim = numerics.check_pair_shapes(keys.weight_key, g.shape, v.shape)
        if v.numel == 0 or g.numel == 0:
            # Nothing to normalize: PyTorch's norm of an empty row is 0 (g/0 -> NaN), and a
            # fold that touched no element could never fail its check.
            raise InputError(
                f"weight-norm pair {keys.weight_key!r} has no elements (g {list(g.shape)}, "
                f"v {list(v.shape)}); the checkpoint is inconsistent (re-save it from the model, "
                "or exclude this parameter)"
            )
        if not is_floating(v.dtype):
            raise InputError(
                f"weight-norm pair {keys.weight_key!r} has dtype {v.dtype}; weight norm needs "
                "floating tensors (the checkpoint is inconsistent)"
            )
        pairs.append(Pair(keys, dim, v.shape, g.shape, v.dtype))
    return pairs


@dataclass
class Conversion:
    """What a job will write: the output plan and the pairs it touched."""

    action: str  # "fold", "decompose", "restyle"
    plan: list[PlannedTensor]
    pairs: list[Pair]  # folded / created / renamed pairs
    source: TensorSource  # where pass-through and input tensors are read from
    notes: list[str] = field(default_factory=list)
    spectral: list[SpectralSite] = field(default_factory=list)  # spectral norm folded (fold)

    @property
    def unchanged(self) -> int:
        """Tensors copied as they are."""
        return sum(1 for item in self.plan if item.produce is None)

    def to_state_dict(self) -> dict[str, torch.Tensor]:
        """Run the plan in memory and return a torch state dict (pass-through tensors kept)."""
        source_original = self.source
        out: dict[str, torch.Tensor] = OrderedDict()
        for item in self.plan:
            if item.produce is not None:
                out[item.key] = numpy_to_tensor(item.produce())
            elif isinstance(source_original, DictSource):
                out[item.key] = source_original.load_original(item.source_key)
            else:
                out[item.key] = numpy_to_tensor(source_original.load(item.source_key))  # type: ignore[union-attr]
        return out


def _conversion(
    action: str,
    plan: list[PlannedTensor],
    pairs: list[Pair],
    source: TensorSource,
    notes: list[str] | None = None,
) -> Conversion:
    return Conversion(action, plan, pairs, source, notes or [])


# --------------------------------------------------------------------------- producers


def _planned_fold(source: TensorSource, pair: Pair, key: str | None = None) -> PlannedTensor:
    """The plan entry that folds ``pair`` into ``key`` (default: the pair's weight name).

    Both ways of making it read ``g`` and ``v`` through :func:`read_view` (a memory map for
    safetensors) and warn from the calling thread once the pair is done.
    """

    def produce() -> np.ndarray:
        w, stats = numerics.fold(
            read_view(source, pair.keys.g_key), read_view(source, pair.keys.v_key), pair.dim
        )
        _warn_fold(pair.weight_key, stats)
        return w

    def write_into(write: Callable[[int, np.ndarray], None]) -> None:
        stats = numerics.fold_into(
            read_view(source, pair.keys.g_key), read_view(source, pair.keys.v_key), pair.dim, write
        )
        _warn_fold(pair.weight_key, stats)

    return PlannedTensor(
        key or pair.weight_key,
        TensorInfo(pair.shape, pair.dtype),
        pair.keys.v_key,
        produce,
        write_into,
    )


def _warn_fold(name: str, stats: numerics.FoldStats) -> None:
    if stats.zero_norm_rows:
        warnings.warn(
            f"{name}: {stats.zero_norm_rows} row(s) with zero norm (PyTorch's weight norm gives "
            "NaN there); folded to zeros",
            WeightNormWarning,
            stacklevel=3,
        )
    if stats.nonfinite_rows:
        warnings.warn(
            f"{name}: {stats.nonfinite_rows} row(s) with NaN or Inf in g or v; they stay "
            "non-finite in the folded weight",
            WeightNormWarning,
            stacklevel=3,
        )


def _decompose_producers(source: TensorSource, key: str, dim: int | None, g_shape: tuple[int, ...]):
    """(produce_g, produce_v): g from the weight's norm, v = the weight's own bytes."""

    def produce_g() -> np.ndarray:
        import numpy as np

        g, _, zero = numerics.decompose(read_view(source, key), dim)
        if zero:
            warnings.warn(
                f"{key}: {zero} row(s) with zero norm; g is 0 there and PyTorch's weight norm "
                "will give NaN for them (0/0) when the model runs",
                WeightNormWarning,
                stacklevel=3,
            )
        if not np.isfinite(g).all():
            warnings.warn(
                f"{key}: NaN or Inf in the weight; g is non-finite there",
                WeightNormWarning,
                stacklevel=3,
            )
        return g.reshape(g_shape)

    return produce_g


# --------------------------------------------------------------------------- fold


def _plan_fold(state: Mapping[str, Any] | TensorSource, *, spectral: bool = False,
               sn_dim: int | None = None) -> Conversion:
    """Fold every pair (both styles) and, with ``spectral``, every spectral-norm site: the
    plain weight takes the place of the first key."""
    source = as_source(state)
    pairs = find_pairs(source)
    sites = find_spectral_sites(source, sn_dim=sn_dim) if spectral else []
    by_key: dict[str, Pair | SpectralSite] = {}
    for found in pairs:
        by_key[found.keys.g_key] = found
        by_key[found.keys.v_key] = found
    notes: list[str] = []
    for site in sites:
        if site.keys.stored_key is not None:
            notes.append(f"{site.weight_key}: legacy spectral norm saved without "
                         f"{site.weight_key}_v (before PyTorch 1.1); kept its stored weight "
                         f"(PyTorch's normalized weight when it was saved)")
        for key in site.keys.members:
            if key in by_key:
                raise InputError(f"{key!r} belongs both to a weight-norm pair and to spectral "
                                 "norm; the checkpoint is inconsistent")
            by_key[key] = site
    plan: list[PlannedTensor] = []
    emitted: set[str] = set()
    taken_names = set(source.keys())
    for key in source.keys():
        item = by_key.get(key)
        if item is None:
            plan.append(PlannedTensor(key, source.info(key), key))
            continue
        if item.weight_key in emitted:
            continue
        emitted.add(item.weight_key)
        if isinstance(item, SpectralSite) and item.keys.stored_key is not None:
            continue  # the stored weight is planned as it is, in its own place
        if item.weight_key in taken_names:
            kind = "a weight-norm pair" if isinstance(item, Pair) else "spectral norm"
            raise InputError(
                f"{item.weight_key!r} exists both as a plain tensor and as {kind}; the "
                "checkpoint is inconsistent (remove one of them)"
            )
        if isinstance(item, Pair):
            plan.append(_planned_fold(source, item))
        else:
            plan.append(planned_spectral(source, item, check_sn_dim(item, sn_dim)))
    return Conversion("fold", plan, pairs, source, notes, spectral=sites)


# --------------------------------------------------------------------------- decompose


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def select_for_decompose(
    state: Mapping[str, Any] | TensorSource,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[str]:
    """Plain tensors decompose would pick: floating, not already in a pair, and by default
    ``*weight`` of rank >= 2 (``include`` replaces that default; ``exclude`` removes)."""
    source = as_source(state)
    in_pairs = {k for p in find_pair_keys(source.keys()) for k in (p.g_key, p.v_key)}
    picked = []
    for key in source.keys():
        if key in in_pairs:
            continue
        info = source.info(key)
        if not is_floating(info.dtype):
            continue
        if include:
            if not _matches(key, include):
                continue
        elif not (_matches(key, DEFAULT_INCLUDE) and len(info.shape) >= 2):
            continue
        if _matches(key, exclude):
            continue
        picked.append(key)
    return picked


def _plan_decompose(
    state: Mapping[str, Any] | TensorSource,
    *,
    dim: int | None = 0,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    style: Style = "parametrize",
    like: Mapping[str, Any] | TensorSource | None = None,
) -> Conversion:
    """Split plain weights into ``g``/``v``.

    Without ``like``: the tensors :func:`select_for_decompose` picks, normalized over all axes
    but ``dim`` (``None`` = whole tensor), keys in ``style``. With ``like`` (the state dict of the
    target model with weight norm applied): exactly the template's pairs with its dims and key
    style, and every key checked so the result loads with ``strict=True``.
    """
    if style not in STYLES:
        raise InputError.template("{-style=style}: use one of {choices}", style=style,
                                  choices=", ".join(STYLES))
    source = as_source(state)
    if like is not None:
        return _plan_like_any_prefix(source, as_source(like))
    existing = {p.weight_key for p in find_pairs(source)}  # also checks every pair's shapes
    if dim is not None and dim < 0:
        # PyTorch's weight_norm(dim=-1) means the whole tensor, not the last axis; refuse the
        # ambiguity rather than guess which one the user meant.
        raise InputError.template(
            "{-dim=dim}: give a non-negative axis, or 'none' for one norm over the whole tensor "
            "(PyTorch's weight_norm(dim=-1) means the whole tensor)", dim=dim)
    picked = set(select_for_decompose(source, include=include, exclude=exclude))
    both = sorted(picked & existing)
    if both:
        raise InputError.template(
            "{keys} exist both as plain tensors and as weight-norm pairs; the checkpoint is "
            "inconsistent (remove one of them, or {-exclude} them)", keys=_clip(both))
    plan: list[PlannedTensor] = []
    pairs: list[Pair] = []
    for key in source.keys():
        info = source.info(key)
        if key not in picked:
            plan.append(PlannedTensor(key, info, key))
            continue
        try:
            key_dim = None if dim is None else numerics.normalize_dim(dim, len(info.shape))
        except ValueError:
            raise InputError.template(
                "{key} has shape {shape}: {-dim=dim} does not exist for it; narrow the "
                "selection with {-include}/{-exclude} or pick another {-dim}", key=key,
                shape=list(info.shape), dim=dim) from None
        if info.numel == 0:
            raise InputError(
                f"{key} has shape {list(info.shape)}, no elements: there is no norm to split off "
                "(leave it out with exclude, or narrow include)"
            )
        keys = pair_keys(key, style)
        g_shape = numerics.g_shape_for(info.shape, key_dim)
        plan.append(
            PlannedTensor(
                keys.g_key,
                TensorInfo(g_shape, info.dtype),
                key,
                _decompose_producers(source, key, key_dim, g_shape),
            )
        )
        plan.append(PlannedTensor(keys.v_key, info, key))
        pairs.append(Pair(keys, key_dim, info.shape, g_shape, info.dtype))
    _check_unique(plan)
    return _conversion("decompose", plan, pairs, source)


def _check_unique(plan: list[PlannedTensor]) -> None:
    seen: set[str] = set()
    clashes: set[str] = set()
    for item in plan:
        if item.key in seen:
            clashes.add(item.key)
        seen.add(item.key)
    if clashes:
        raise InputError.template(
            "the output would hold duplicate keys {keys}; the checkpoint already has keys with "
            "these names (rename or {-exclude} them)", keys=_clip(sorted(clashes)))


def _plan_like(source: TensorSource, template: TensorSource) -> Conversion:
    """Make ``source`` match ``template``'s keys: decompose, fold or rename as each key needs."""
    template_pairs = {p.weight_key: p for p in find_pairs(template)}
    source_pairs = {p.weight_key: p for p in find_pairs(source)}
    source_keys = set(source.keys())
    pair_members = {k for p in template_pairs.values() for k in (p.keys.g_key, p.keys.v_key)}
    used: set[str] = set()
    missing: list[str] = []
    mismatched: list[str] = []
    plan: list[PlannedTensor] = []
    touched: list[Pair] = []
    notes: list[str] = []

    def shape_ok(key: str, have: tuple[int, ...], want: tuple[int, ...]) -> bool:
        if tuple(have) != tuple(want):
            mismatched.append(f"{key} (checkpoint {list(have)}, template {list(want)})")
            return False
        return True

    emitted_pairs: set[str] = set()
    for tkey in template.keys():
        if tkey in pair_members:
            tp = next(p for p in template_pairs.values() if tkey in (p.keys.g_key, p.keys.v_key))
            if tp.weight_key in emitted_pairs:
                continue
            emitted_pairs.add(tp.weight_key)
            target = pair_keys(tp.weight_key, tp.style)
            if tp.weight_key in source_keys:  # plain weight in the checkpoint: decompose
                info = source.info(tp.weight_key)
                used.add(tp.weight_key)
                if not shape_ok(tp.weight_key, info.shape, tp.shape):
                    continue
                if not is_floating(info.dtype):
                    mismatched.append(f"{tp.weight_key} (dtype {info.dtype} is not floating)")
                    continue
                produce_g = _decompose_producers(source, tp.weight_key, tp.dim, tp.g_shape)
                plan.append(
                    PlannedTensor(
                        target.g_key, TensorInfo(tp.g_shape, info.dtype), tp.weight_key, produce_g
                    )
                )
                plan.append(PlannedTensor(target.v_key, info, tp.weight_key))
                touched.append(Pair(target, tp.dim, info.shape, tp.g_shape, info.dtype))
            elif tp.weight_key in source_pairs:  # already a pair: rename, no arithmetic
                sp = source_pairs[tp.weight_key]
                used.update((sp.keys.g_key, sp.keys.v_key))
                ok = shape_ok(sp.keys.g_key, sp.g_shape, tp.g_shape)
                ok = shape_ok(sp.keys.v_key, sp.shape, tp.shape) and ok
                if not ok:
                    continue
                plan.append(PlannedTensor(target.g_key, source.info(sp.keys.g_key), sp.keys.g_key))
                plan.append(PlannedTensor(target.v_key, source.info(sp.keys.v_key), sp.keys.v_key))
                if sp.style != tp.style:
                    touched.append(Pair(target, sp.dim, sp.shape, sp.g_shape, sp.dtype))
            else:
                missing.extend((target.g_key, target.v_key))
            continue
        # A plain key in the template.
        if tkey in source_keys:
            used.add(tkey)
            info = source.info(tkey)
            if shape_ok(tkey, info.shape, template.info(tkey).shape):
                plan.append(PlannedTensor(tkey, info, tkey))
        elif tkey in source_pairs:  # the target model has no weight norm here: fold
            sp = source_pairs[tkey]
            used.update((sp.keys.g_key, sp.keys.v_key))
            if shape_ok(tkey, sp.shape, template.info(tkey).shape):
                plan.append(_planned_fold(source, sp, tkey))
                notes.append(f"folded {tkey} (the template has no weight norm there)")
        else:
            missing.append(tkey)
    unexpected = [k for k in source.keys() if k not in used]
    if missing or unexpected or mismatched:
        raise InputError(
            "the checkpoint does not match the template: "
            + "; ".join(
                f"{label} ({len(items)}): {_clip(items)}"
                for label, items in (
                    ("missing", missing),
                    ("unexpected", unexpected),
                    ("shape mismatch", mismatched),
                )
                if items
            )
            + " (check that both describe the same architecture)"
        )
    return _conversion("decompose", plan, touched, source, notes)


def _clip(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


# --------------------------------------------------------------------------- restyle


def _plan_restyle(state: Mapping[str, Any] | TensorSource, *, style: Style) -> Conversion:
    """Rename every pair's keys to ``style``; tensors are copied bit for bit."""
    if style not in STYLES:
        raise InputError.template("{-style=style}: use one of {choices}", style=style,
                                  choices=", ".join(STYLES))
    source = as_source(state)
    pairs = find_pairs(source)
    rename = restyle_key_map([p.keys for p in pairs], style)
    moved = [
        Pair(pair_keys(p.weight_key, style), p.dim, p.shape, p.g_shape, p.dtype)
        for p in pairs
        if p.style != style
    ]
    new_names = [rename.get(k, k) for k in source.keys()]
    clashes = sorted({n for n in new_names if new_names.count(n) > 1})
    if clashes:
        raise InputError(f"restyling would give duplicate keys: {_clip(clashes)}")
    plan = [PlannedTensor(rename.get(k, k), source.info(k), k) for k in source.keys()]
    return _conversion("restyle", plan, moved, source)


# --------------------------------------------------------------------------- key prefixes


def _over_original(conversion: Conversion, renamed: RenamedSource, why: str) -> Conversion:
    """``conversion`` planned over ``renamed``, expressed over the underlying source (writers
    read the checkpoint itself), with a note saying what was renamed and left out."""
    plan = [replace(item, source_key=renamed.original(item.source_key))
            for item in conversion.plan]
    note = renamed.change.note(renamed.source.keys(), why=why)
    return Conversion(conversion.action, plan, conversion.pairs, renamed.source,
                      [*conversion.notes, note], spectral=conversion.spectral)


def _with_prefix(state: Mapping[str, Any] | TensorSource, prefix: PrefixChange | None,
                 plan: Callable[[Mapping[str, Any] | TensorSource], Conversion]) -> Conversion:
    if not prefix:
        return plan(state)
    renamed = RenamedSource(as_source(state), prefix)
    return _over_original(plan(renamed), renamed, "keys renamed as asked")


def _plan_like_any_prefix(source: TensorSource, template: TensorSource) -> Conversion:
    """:func:`_plan_like`, and when the keys only match under a common prefix change (a
    Lightning ``model.`` prefix, an HF task model's ``hubert.``), that change, said in a note."""
    try:
        return _plan_like(source, template)
    except InputError:
        change = prefix_to_match(source.keys(), template.keys())
        if change is None:
            raise
    renamed = RenamedSource(source, change)
    return _over_original(_plan_like(renamed, template), renamed,
                          "keys match the template after a prefix change")


def plan_fold(state: Mapping[str, Any] | TensorSource, *,
              prefix: PrefixChange | None = None, spectral: bool = False,
              sn_dim: int | None = None) -> Conversion:
    """Fold every weight-norm pair (both styles) and, with ``spectral``, every spectral-norm
    site (both styles): the plain weight takes the place of the first key. (``spectral`` is off
    by default: callers that map keys onto a model which keeps spectral norm need it off.)

    Spectral norm is folded as PyTorch's eval mode computes it, ``W_orig / σ`` with
    ``σ = uᵀ · W_mat · v`` from the stored vectors; its ``dim`` is read from the lengths of
    ``u`` and ``v``, and ``sn_dim`` picks it where several axes fit (refused otherwise). A
    legacy site saved without ``v`` keeps its stored weight (said in a note). ``prefix`` renames
    the output's keys (keys without its ``strip`` part are left out)."""
    return _with_prefix(state, prefix,
                        lambda source: _plan_fold(source, spectral=spectral, sn_dim=sn_dim))


def plan_decompose(state: Mapping[str, Any] | TensorSource, *, dim: int | None = 0,
                   include: Sequence[str] = (), exclude: Sequence[str] = (),
                   style: Style = "parametrize",
                   like: Mapping[str, Any] | TensorSource | None = None,
                   prefix: PrefixChange | None = None) -> Conversion:
    """Split plain weights into ``g``/``v``.

    Without ``like``: the tensors :func:`select_for_decompose` picks, normalized over all axes
    but ``dim`` (``None`` = whole tensor), keys in ``style``. With ``like`` (the state dict of the
    target model with weight norm applied): exactly the template's pairs with its dims and key
    style, and every key checked so the result loads with ``strict=True``; a common key prefix
    that makes the keys match (``model.``) is found and applied. ``prefix`` renames the
    checkpoint's keys first.
    """
    def plan(source: Mapping[str, Any] | TensorSource) -> Conversion:
        return _plan_decompose(source, dim=dim, include=include, exclude=exclude, style=style,
                               like=like)

    return _with_prefix(state, prefix, plan)


def plan_restyle(state: Mapping[str, Any] | TensorSource, *, style: Style,
                 prefix: PrefixChange | None = None) -> Conversion:
    """Rename weight-norm keys to ``style``; ``prefix`` renames every key as well."""
    return _with_prefix(state, prefix, lambda source: _plan_restyle(source, style=style))


# --------------------------------------------------------------------------- in-memory API


def fold_state_dict(state_dict: Mapping[str, torch.Tensor], *, spectral: bool = True,
                    sn_dim: int | None = None) -> dict[str, torch.Tensor]:
    """Fold every weight-norm pair (both key styles) into its plain weight, and with
    ``spectral`` every spectral-norm site (see :func:`plan_fold`).

    ``w = g * v / ||v||`` in float64, rounded once to ``v``'s dtype; zero-norm rows become
    zeros with a :class:`WeightNormWarning`. Other tensors are passed through (same objects).
    """
    return plan_fold(state_dict, spectral=spectral, sn_dim=sn_dim).to_state_dict()


def decompose_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    like: Mapping[str, torch.Tensor] | None = None,
    dim: int | None = 0,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    style: Style = "parametrize",
) -> dict[str, torch.Tensor]:
    """Split plain weights into ``g``/``v`` (see :func:`plan_decompose`)."""
    return plan_decompose(
        state_dict, like=like, dim=dim, include=include, exclude=exclude, style=style
    ).to_state_dict()


def restyle_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, style: Style
) -> dict[str, torch.Tensor]:
    """Rename weight-norm keys to ``style`` (``"parametrize"`` or ``"legacy"``), no arithmetic."""
    return plan_restyle(state_dict, style=style).to_state_dict()
