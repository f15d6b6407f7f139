"""The user's PyTorch model: build it from ``--model``, find, strip or apply its weight norm,
load a checkpoint into it strictly, and prepare the reference and the plain module to export.

Importing the model's module runs the user's code: that is what ``model=`` asks for. Everything
the user's code raises or exits with is reported as an error naming the callable.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .inputs import DynamicAxis

if TYPE_CHECKING:
    import torch

    from ..keys import PrefixChange

@contextlib.contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def load_callable(spec: str) -> Callable[..., Any]:
    """Import ``MODULE:CALLABLE`` (from the current folder or PYTHONPATH) or ``FILE.py:CALLABLE``.

    Importing runs the user's code: that is what ``--model`` asks for.
    """
    target, colon, attr = spec.rpartition(":")
    if not colon or not target or not attr:
        raise InputError.template("{-model=spec}: expected MODULE:CALLABLE or "
                                  "path/to/file.py:CALLABLE (e.g. fixtures/models.py:"
                                  "build_generator)", spec=spec)
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    try:
        if is_file:
            path = Path(target)
            if not path.is_file():
                raise InputError.template("{-model=spec}: {path} does not exist; check the path",
                                          spec=spec, path=path)
            name = "_wnconvert_model_" + re.sub(r"\W", "_", str(path.resolve()))
            module = sys.modules.get(name)
            if module is None:
                module_spec = importlib.util.spec_from_file_location(name, path)
                if module_spec is None or module_spec.loader is None:
                    raise InputError.template("{-model=spec}: cannot import {path} as Python",
                                              spec=spec, path=path)
                module = importlib.util.module_from_spec(module_spec)
                # Registered before running so dataclasses/pickling inside it work; its folder is
                # importable so it can import its sibling modules.
                sys.modules[name] = module
                try:
                    with _on_sys_path(path.resolve().parent):
                        module_spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
        else:
            with _on_sys_path(Path.cwd()):
                module = importlib.import_module(target)
    except InputError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code may raise or exit
        raise InputError.template("{-model=spec}: importing {target} failed: {error}",
                                  spec=spec, target=target,
                                  error=f"{type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError.template("{-model=spec}: {target} has no attribute {part!r}",
                                      spec=spec, target=target, part=part)
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError.template("{-model=spec}: {attr} is not callable", spec=spec, attr=attr)
    return obj


def model_label(spec: Any) -> str:
    """How messages and reports name a model source."""
    if isinstance(spec, str):
        return spec
    from torch import nn

    if isinstance(spec, nn.Module):
        return f"<{type(spec).__name__} instance>"
    return getattr(spec, "__qualname__", None) or repr(spec)


def build_model(spec: Any, kwargs: Mapping[str, Any]) -> torch.nn.Module:
    """A fresh instance of the model (in eval mode) from ``spec``: an ``nn.Module``, a
    callable returning one (called with ``kwargs``), or ``"MODULE:CALLABLE"`` /
    ``"path/file.py:CALLABLE"``.

    An ``nn.Module`` is deep-copied, so that nothing done to the result (weights loaded, weight
    norm removed) reaches the caller's module."""
    from torch import nn

    if isinstance(spec, nn.Module):
        if kwargs:
            raise InputError.template("{-model_kwargs} apply to a callable that builds the "
                                      "model; an nn.Module is already built (drop them)")
        return independent_copy(spec).eval()
    label = model_label(spec)
    factory = load_callable(spec) if isinstance(spec, str) else spec
    if not callable(factory):
        raise InputError.template("{-model=label}: expected an nn.Module, a callable returning "
                                  "one, or MODULE:CALLABLE", label=label)
    try:
        # Deprecation chatter of the user's code (e.g. torch.nn.utils.weight_norm) is not
        # wnconvert's to report, and must not become an error under -W error.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            module = factory(**kwargs)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code may raise or exit
        raise InputError.template("{-model=label}: calling it with {kwargs} raised {error}; "
                                  "check {-model_kwargs}", label=label, kwargs=dict(kwargs),
                                  error=f"{type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise InputError.template("{-model=label}: returned a {kind}, not a torch.nn.Module",
                                  label=label, kind=type(module).__name__)
    return module.eval()


def independent_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy that shares nothing with ``module``, parametrizations included.

    ``torch.nn.utils.parametrize`` gives a parametrized module a class of its own and keeps the
    parametrized tensors as properties of that class; ``copy.deepcopy`` shares the class, so
    removing weight norm from the copy would remove it from the original too. Each copied
    parametrized module gets a class of its own.
    """
    import copy

    import torch
    from torch.nn.utils import parametrize

    # The legacy weight_norm/spectral_norm hooks keep the weight they computed on the last call
    # as a plain attribute, a non-leaf tensor deepcopy refuses: copy those values detached.
    memo: dict[int, Any] = {
        id(value): value.detach().clone()
        for sub in module.modules() for value in vars(sub).values()
        if isinstance(value, torch.Tensor) and not value.is_leaf
    }
    clone = copy.deepcopy(module, memo)
    for sub in clone.modules():
        if parametrize.is_parametrized(sub):
            cls = type(sub)
            own = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
            sub.__class__ = type(cls.__name__, cls.__bases__, own)
    return clone


# --------------------------------------------------------------------------------------------
# Weight norm in modules and state dicts


def has_weight_norm(module: torch.nn.Module) -> bool:
    """True when any submodule has weight norm (parametrization or legacy hook)."""
    return any(_weight_norm_sites(module))


def _weight_norm_sites(module: torch.nn.Module) -> Iterator[tuple[torch.nn.Module, str, str]]:
    """(submodule, parameter name, 'parametrize'|'legacy') for every weight norm in ``module``."""
    from torch.nn.utils import parametrize
    from torch.nn.utils.weight_norm import WeightNorm

    for sub in module.modules():
        if parametrize.is_parametrized(sub):
            plists: Any = sub.parametrizations  # a ModuleDict of ParametrizationLists
            for name, plist in plists.items():
                if any(type(p).__name__ == "_WeightNorm" for p in plist):
                    yield sub, name, "parametrize"
        for hook in sub._forward_pre_hooks.values():
            if isinstance(hook, WeightNorm):
                yield sub, hook.name, "legacy"


def strip_weight_norm(module: torch.nn.Module) -> torch.nn.Module:
    """Remove every weight norm from ``module`` in place (its weights are reloaded afterwards).

    Other parametrizations (spectral norm, orthogonal...) are left alone.
    """
    from torch.nn.utils import parametrize, remove_weight_norm

    for sub, name, style in list(_weight_norm_sites(module)):
        if style == "parametrize":
            # Weight norm has two originals, so only leave_parametrized=True is allowed.
            parametrize.remove_parametrizations(sub, name, leave_parametrized=True)
        else:
            remove_weight_norm(sub, name)
    return module


def match_state_dict(source: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor], *,
                     source_name: str, model: Any) -> dict[str, torch.Tensor]:
    """Re-key ``source`` to ``template``'s keys (the module's own state dict).

    Weight-norm pairs are renamed when both sides have them (the original ``g``/``v``, never
    recomputed), folded when the template wants a plain weight and decomposed when it wants a
    pair the source stores plain (:func:`wnconvert.convert.decompose_state_dict` with ``like``).
    """
    from ..convert import decompose_state_dict

    if list(source) == list(template):
        return dict(source)
    try:
        return decompose_state_dict(source, like=template)
    except InputError as exc:
        raise InputError.template("{source}: does not fit {-model=label}: {exc}; check {-key} "
                                  "and {-model_kwargs}", source=source_name,
                                  label=model_label(model), exc=exc) from None


def fold_all(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every weight-norm pair (both styles) replaced by its exactly folded weight.

    Spectral norm stays: the plain module keeps it (:func:`strip_weight_norm`)."""
    from ..convert import fold_state_dict

    return fold_state_dict(state_dict, spectral=False)


def load_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                source: str, model: Any) -> None:
    """``load_state_dict(strict=True)`` after matching keys, with a one-line error."""
    matched = match_state_dict(state_dict, module.state_dict(), source_name=source, model=model)
    try:
        module.load_state_dict(matched, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise InputError.template("{source}: does not fit {-model=label}: {detail}; check "
                                  "{-model_kwargs}", source=source, label=model_label(model),
                                  detail=detail[:400]) from None


def _few(keys: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... {len(keys) - n} more" if len(keys) > n else "")


# --------------------------------------------------------------------------------------------
# Prepared models: the reference and the plain module to export


@dataclass
class PreparedModel:
    """What export and verification need from a model source."""

    reference: torch.nn.Module  # as the user built it (weight norm computed at run time if any)
    plain: torch.nn.Module  # no weight norm; weights are the exact fold
    weights: dict[str, torch.Tensor]  # the reference's state dict (for weight comparison)
    input_names: list[str]
    description: dict[str, Any]
    example_inputs: list[torch.Tensor] | None = None  # from a .pt2 program
    dynamic_axes: tuple[DynamicAxis, ...] = ()  # from a .pt2 program
    notes: list[str] = field(default_factory=list)
    key_change: str | None = None  # how the checkpoint's keys were renamed to fit, if they were


def forward_input_names(module: torch.nn.Module, count: int) -> list[str]:
    """Names of the first ``count`` positional parameters of ``module.forward``."""
    names: list[str] = []
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    for param in params:
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            names.append(param.name)
        elif param.kind == param.VAR_POSITIONAL:
            break
    names = names[:count]
    names += [f"input_{i}" for i in range(len(names), count)]
    return names


def prepare_model(state_dict: Mapping[str, torch.Tensor], *, model: Any,
                  model_kwargs: Mapping[str, Any], source: str,
                  need_plain: bool = True, prefix: PrefixChange | None = None) -> PreparedModel:
    """Build the reference and the plain module from ``--model`` and a loaded state dict.

    The reference computes weight norm at run time from the checkpoint's own ``g``/``v``: as
    built when the module has weight norm, otherwise with weight norm applied (parametrize API)
    where the checkpoint has pairs, so the reference never depends on wnconvert's fold.
    ``need_plain=False`` (verification only) skips building the module to export. ``prefix``
    renames the checkpoint's keys first; without it, a common prefix that makes the keys fit the
    module (a Lightning ``model.``, an HF task model's ``hubert.``) is found and applied, with a
    note. (A ``.pt2`` program as the model: :func:`wnconvert.export.prepare_program`.)
    """
    notes: list[str] = []
    key_change: str | None = None
    if prefix:
        key_change = prefix.note(state_dict, why="keys renamed as asked")
        state_dict = renamed_state_dict(state_dict, prefix)
    from ..keys import find_pair_keys, prefix_to_match

    reference = build_model(model, model_kwargs)
    if not prefix:
        change = prefix_to_match(_weight_names(state_dict), _weight_names(reference.state_dict()))
        if change is not None:
            key_change = change.note(state_dict, why="keys fit the model after a prefix change")
            state_dict = renamed_state_dict(state_dict, change)
    plain: torch.nn.Module | None = None
    applied = 0
    if not has_weight_norm(reference) and find_pair_keys(state_dict):
        if need_plain:
            plain = reference  # loads the folded weights below
            load_strict(plain, state_dict, source=source, model=model)
            reference = build_model(model, model_kwargs)
        applied = apply_weight_norm_like(reference, state_dict)
        notes.append(f"reference: the model with weight norm applied to the {applied} weights "
                     "the checkpoint stores as g/v pairs")
    load_strict(reference, state_dict, source=source, model=model)
    weights = dict(reference.state_dict())
    if plain is None:
        from ..modules import find_sites, fold_sites

        if need_plain and find_sites(reference)[0]:
            # A second instance with the reference's own weights, then every weight norm and
            # spectral norm folded in place (float64, rounded once): nothing of either is left
            # for the exporter. (A deepcopy would share a parametrized module's class.)
            plain = build_model(model, model_kwargs)
            load_strict(plain, weights, source=source, model=model)
            folded, _ = fold_sites(plain)
            kinds = sorted({site.kind.replace("_", " ") for site in folded})
            notes.append(f"{' and '.join(kinds)} removed from the exported module; weights "
                         "folded in float64")
        else:
            plain = reference
    description = {"model": model_label(model), "model_kwargs": dict(model_kwargs),
                   "checkpoint": source,
                   "weight_norm": "applied" if applied else (
                       "as built" if has_weight_norm(reference) else "none")}
    return PreparedModel(reference, plain, weights, [], description,
                         notes=[*([key_change] if key_change else []), *notes],
                         key_change=key_change)


def _weight_names(state_dict: Mapping[str, Any]) -> list[str]:
    """Keys with weight-norm pairs named by their weight (both styles match a plain module)."""
    from ..keys import find_pair_keys

    names = {k: k for k in state_dict}
    for pair in find_pair_keys(state_dict):
        names.pop(pair.g_key, None)
        names[pair.v_key] = pair.weight_key
    return list(names.values())


def renamed_state_dict(state_dict: Mapping[str, torch.Tensor],
                       change: PrefixChange) -> dict[str, torch.Tensor]:
    """``state_dict`` under ``change`` (keys without its prefix left out)."""
    from ..keys import rename_keys

    return {new: state_dict[old] for new, old in rename_keys(state_dict, change).items()}


def apply_weight_norm_like(module: torch.nn.Module,
                           state_dict: Mapping[str, torch.Tensor]) -> int:
    """Apply parametrize weight norm where ``state_dict`` has g/v pairs (dim from g's shape).

    Pairs whose module or parameter does not exist are left for the strict load to report.
    """
    from torch.nn.utils.parametrizations import weight_norm

    from ..keys import find_pair_keys
    from ..numerics import check_pair_shapes

    count = 0
    for pair in find_pair_keys(state_dict):
        try:
            sub = module.get_submodule(pair.module)
        except AttributeError:
            continue
        if pair.param not in sub._parameters:
            continue
        g, v = state_dict[pair.g_key], state_dict[pair.v_key]
        dim = check_pair_shapes(pair.weight_key, tuple(g.shape), tuple(v.shape))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. RNN weights "not part of a single block"
            weight_norm(sub, name=pair.param, dim=dim)  # type: ignore[arg-type]  # None is valid
        count += 1
    return count
