"""Weight norm and spectral norm in a live ``nn.Module``: find every site, fold it in float64 and
remove the reparametrization, in place.

Both APIs of each are handled, mixed freely: the legacy hooks (``torch.nn.utils.weight_norm``,
``torch.nn.utils.spectral_norm``) and ``torch.nn.utils.parametrizations.weight_norm`` /
``spectral_norm``. Values are never taken from PyTorch's own removal (which computes in the
tensor's precision, and for spectral norm in training mode would first run a power iteration):

* weight norm: ``w = g · v / ‖v‖`` (:func:`wnconvert.numerics.fold`);
* spectral norm: ``W = W_orig / σ`` with ``σ = uᵀ · W_mat · v`` from the stored ``u``/``v``, as
  eval mode computes it (:func:`wnconvert.numerics.spectral_fold`); a 1-D weight ``W / ‖W‖``.

Both in float64, rounded once to the parameter's dtype. A parametrization this module does not
know (or a chain of several on one parameter) is left in place and reported.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from . import numerics
from .dtypes import name_of_torch, numpy_to_tensor, tensor_to_numpy
from .errors import InputError, WeightNormWarning

if TYPE_CHECKING:
    import numpy as np
    import torch

Kind = Literal["weight_norm", "spectral_norm"]
SiteStyle = Literal["parametrize", "legacy"]


@dataclass(frozen=True)
class FoldedParameter:
    """One reparametrized parameter folded into a plain one.

    ``name`` is the plain parameter's key (``conv.weight``); ``dim`` is weight norm's kept axis
    (``None``: one norm over the whole tensor) or spectral norm's ``dim``; ``sigma`` is what
    spectral norm divided by (``None`` for weight norm).
    """

    name: str
    kind: Kind
    style: SiteStyle
    dim: int | None
    shape: tuple[int, ...]
    dtype: str
    sigma: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "style": self.style, "dim": self.dim,
                "shape": list(self.shape), "dtype": self.dtype, "sigma": self.sigma}


@dataclass(frozen=True)
class LeftInPlace:
    """A reparametrization left as it is: ``name`` the parameter, ``what`` why."""

    name: str
    what: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "what": self.what}


@dataclass(frozen=True)
class _Site:
    module: torch.nn.Module
    path: str  # the submodule's path ("" at the top level)
    param: str
    kind: Kind
    style: SiteStyle
    hook: Any  # the legacy hook, or the parametrization module

    @property
    def name(self) -> str:
        return f"{self.path}.{self.param}" if self.path else self.param


_PARAMETRIZATIONS: dict[str, Kind] = {"_WeightNorm": "weight_norm",
                                      "_SpectralNorm": "spectral_norm"}


def find_sites(module: torch.nn.Module) -> tuple[list[_Site], list[LeftInPlace]]:
    """Every weight-norm and spectral-norm site of ``module`` (nested modules included), and
    the parametrizations that are neither (left in place)."""
    sites: list[_Site] = []
    left: list[LeftInPlace] = []
    for path, sub in module.named_modules():
        for site in _sites_of(sub, path, left):
            sites.append(site)
    return sites, left


def _sites_of(sub: torch.nn.Module, path: str, left: list[LeftInPlace]) -> Iterator[_Site]:
    from torch.nn.utils import parametrize
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    if parametrize.is_parametrized(sub):
        plists: Any = sub.parametrizations  # a ModuleDict of ParametrizationLists
        for param, plist in plists.items():
            kinds = [_PARAMETRIZATIONS.get(type(p).__name__) for p in plist]
            if len(kinds) == 1 and kinds[0] is not None:
                yield _Site(sub, path, param, kinds[0], "parametrize", plist[0])
            else:
                name = f"{path}.{param}" if path else param
                chain = " -> ".join(type(p).__name__ for p in plist)
                what = (f"a chain of {len(kinds)} parametrizations ({chain})" if len(kinds) > 1
                        else f"parametrization {chain}, neither weight norm nor spectral norm")
                left.append(LeftInPlace(name, what))
    for hook in sub._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm):
            yield _Site(sub, path, hook.name, "weight_norm", "legacy", hook)
        elif isinstance(hook, SpectralNorm):
            yield _Site(sub, path, hook.name, "spectral_norm", "legacy", hook)


def in_training_mode(module: torch.nn.Module) -> list[str]:
    """The spectral-norm parameters that would run a power iteration on the next call."""
    names = []
    for site in find_sites(module)[0]:
        if site.kind == "spectral_norm":
            training = site.hook.training if site.style == "parametrize" else site.module.training
            if training:
                names.append(site.name)
    return names


def _array(tensor: torch.Tensor, what: str) -> np.ndarray:
    if tensor.device.type == "meta":
        raise InputError(f"{what} is on the meta device: it has no values to fold (load the "
                         "weights first)")
    return tensor_to_numpy(tensor)


def _weight_norm_dim(dim: int | None, rank: int) -> int | None:
    # PyTorch stores dim=None as -1, which means the whole tensor, not the last axis.
    if dim is None or dim == -1:
        return None
    return numerics.normalize_dim(dim, rank)


def _fold_value(site: _Site) -> tuple[np.ndarray, int | None, float | None]:
    """(the folded weight, dim, σ) of ``site``, in float64 rounded once."""
    sub, name = site.module, site.name
    if site.kind == "weight_norm":
        if site.style == "parametrize":
            plist: Any = sub.parametrizations[site.param]  # type: ignore[index,union-attr]
            g, v = plist.original0, plist.original1
        else:
            g, v = getattr(sub, f"{site.param}_g"), getattr(sub, f"{site.param}_v")
        dim = _weight_norm_dim(site.hook.dim, v.ndim)
        w, stats = numerics.fold(_array(g, name), _array(v, name), dim)
        if stats.zero_norm_rows:
            warnings.warn(f"{name}: {stats.zero_norm_rows} row(s) with zero norm (PyTorch's "
                          "weight norm gives NaN there); folded to zeros", WeightNormWarning,
                          stacklevel=4)
        return w, dim, None
    if site.style == "parametrize":
        plist = sub.parametrizations[site.param]  # type: ignore[index,union-attr]
        weight = plist.original
        u = getattr(site.hook, "_u", None)
        v_vec = getattr(site.hook, "_v", None)
    else:
        weight = getattr(sub, f"{site.param}_orig")
        u, v_vec = getattr(sub, f"{site.param}_u"), getattr(sub, f"{site.param}_v")
    dim = int(site.hook.dim)
    w, sigma = numerics.spectral_fold(
        _array(weight, name), None if u is None else _array(u, name),
        None if v_vec is None else _array(v_vec, name), dim, eps=float(site.hook.eps))
    return w, dim, sigma


def _remove(site: _Site) -> torch.nn.Parameter:
    """Remove ``site``'s reparametrization; return the plain parameter it leaves."""
    from torch.nn.utils import parametrize, remove_spectral_norm, remove_weight_norm

    sub = site.module
    if site.style == "parametrize":
        # Spectral norm has one original, which comes back as the parameter (nothing computed,
        # no power iteration); weight norm's two originals only allow leaving the computed value.
        parametrize.remove_parametrizations(sub, site.param,
                                            leave_parametrized=site.kind == "weight_norm")
    elif site.kind == "weight_norm":
        remove_weight_norm(sub, site.param)
    else:
        remove_spectral_norm(sub, site.param)
        _drop_spectral_load_hook(sub, site.param)
    param = sub._parameters[site.param]
    assert param is not None
    return param


def _drop_spectral_load_hook(sub: torch.nn.Module, param: str) -> None:
    """Remove legacy spectral norm's load_state_dict pre-hook, which ``remove_spectral_norm``
    leaves behind (it looks for the hook itself, but PyTorch stores it wrapped): left there, the
    folded module refuses its own plain state dict (``weight_orig``/``weight_u`` missing)."""
    from torch.nn.utils.spectral_norm import SpectralNormLoadStateDictPreHook

    for key, hook in list(sub._load_state_dict_pre_hooks.items()):
        inner = getattr(hook, "hook", hook)
        if (isinstance(inner, SpectralNormLoadStateDictPreHook)
                and getattr(inner.fn, "name", None) == param):
            del sub._load_state_dict_pre_hooks[key]


def fold_sites(module: torch.nn.Module) -> tuple[list[FoldedParameter], list[LeftInPlace]]:
    """Fold every site of ``module`` in place (see the module docstring)."""
    import torch

    sites, left = find_sites(module)
    # Every value first: a site that cannot be folded leaves the module untouched.
    values = [(site, *_fold_value(site)) for site in sites]
    folded = []
    for site, w, dim, sigma in values:
        param = _remove(site)
        with torch.no_grad():
            param.copy_(numpy_to_tensor(w))
        folded.append(FoldedParameter(site.name, site.kind, site.style, dim,
                                      tuple(param.shape), name_of_torch(param.dtype), sigma))
    return folded, left
