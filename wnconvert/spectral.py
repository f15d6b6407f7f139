"""Spectral norm in state dicts: where each site is, which axis it normalizes, and the plan
entry that folds it (as PyTorch's eval mode computes it; the arithmetic is in
:mod:`wnconvert.numerics`). The fold job itself, with weight norm, is :mod:`wnconvert.convert`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import numerics
from .dtypes import is_floating
from .errors import InputError
from .formats.source import PlannedTensor, TensorInfo, TensorSource, as_source, read_view
from .keys import SpectralKeys, Style, find_spectral_keys

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class SpectralSite:
    """One spectral-normed parameter: its keys, ``dim`` (read from the lengths of ``u`` and
    ``v``; ``None`` while several axes fit, see ``dims``), shape and dtype of the weight."""

    keys: SpectralKeys
    dim: int | None
    dims: tuple[int, ...]  # every axis u and v fit
    shape: tuple[int, ...]
    dtype: str

    @property
    def weight_key(self) -> str:
        return self.keys.weight_key

    @property
    def style(self) -> Style:
        return self.keys.style

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.weight_key, "kind": "spectral_norm", "style": self.style,
                "orig_key": self.keys.orig_key, "u_key": self.keys.u_key,
                "v_key": self.keys.v_key, "dim": self.dim, "shape": list(self.shape),
                "dtype": self.dtype}


def find_spectral_sites(state: Mapping[str, Any] | TensorSource, *,
                        sn_dim: int | None = None) -> list[SpectralSite]:
    """Every spectral-norm site of a state dict (both key styles), ``dim`` read from the lengths
    of ``u`` (the size of ``dim``) and ``v`` (the product of the other sizes).

    Where several axes fit (a square weight, or a kernel as long as the output channels),
    ``sn_dim`` picks one when it is among them; else the stored vectors decide when they tell
    clearly (:func:`wnconvert.numerics.spectral_dim_from_vectors`, which reads those tensors);
    else ``dim`` stays None and :func:`plan_fold` refuses. Raises :class:`InputError` if
    ``u``/``v`` fit no axis of the weight.
    """
    source = as_source(state)
    sites = []
    for keys in find_spectral_keys(source.keys()):
        weight = source.info(keys.orig_key)
        if not is_floating(weight.dtype) or weight.numel == 0:
            raise InputError(f"spectral-norm weight {keys.orig_key!r} has shape "
                             f"{list(weight.shape)} and dtype {weight.dtype}; spectral norm needs "
                             "a floating tensor with elements (the checkpoint is inconsistent)")
        if keys.v_key is None:  # legacy, before weight_v: the stored weight is kept
            sites.append(SpectralSite(keys, None, (), weight.shape, weight.dtype))
            continue
        u, v = source.info(keys.u_key), source.info(keys.v_key)
        dims = numerics.spectral_dims(weight.shape, u.numel, v.numel)
        if not dims:
            raise InputError(f"spectral norm of {keys.weight_key!r}: u ({u.numel}) and v "
                             f"({v.numel}) fit no axis of the weight {list(weight.shape)}; the "
                             "checkpoint is inconsistent")
        if len(dims) == 1:
            dim: int | None = dims[0]
        elif sn_dim in dims:
            dim = sn_dim
        else:
            dim = numerics.spectral_dim_from_vectors(
                read_view(source, keys.orig_key), read_view(source, keys.u_key),
                read_view(source, keys.v_key), dims)
        sites.append(SpectralSite(keys, dim, tuple(dims), weight.shape, weight.dtype))
    return sites


def check_sn_dim(site: SpectralSite, sn_dim: int | None) -> int:
    """The axis to fold ``site`` over, or the input error saying how to choose it."""
    if site.dim is not None:
        return site.dim
    axes = " and ".join(str(d) for d in site.dims)
    why = "" if sn_dim is None else " ({-sn_dim=sn_dim} is not one of them)"
    raise InputError.template(
        "spectral norm of {name}: u and v fit axes {axes} of its weight {shape} and its "
        "power-iteration vectors do not tell which" + why + "; give {-sn_dim} (PyTorch's "
        "default: 0, 1 for ConvTranspose), or fold the module itself (fold_module)",
        name=site.weight_key, axes=axes, shape=list(site.shape), sn_dim=sn_dim)


def planned_spectral(source: TensorSource, site: SpectralSite, dim: int) -> PlannedTensor:
    """The plan entry that folds spectral-norm ``site``: ``W_orig / σ`` as eval mode computes
    it (one tensor at a time: σ needs the whole weight)."""
    keys = site.keys
    assert keys.v_key is not None

    def produce() -> np.ndarray:
        w, _ = numerics.spectral_fold(read_view(source, keys.orig_key),
                                      read_view(source, keys.u_key),
                                      read_view(source, keys.v_key), dim)  # type: ignore[arg-type]
        return w

    return PlannedTensor(site.weight_key, TensorInfo(site.shape, site.dtype), keys.orig_key,
                         produce)
