"""Exporting a weight-normalized model to ONNX with no weight norm left in the graph.

The path: build the user's module (``--model MODULE:CALLABLE`` or ``path/file.py:CALLABLE``),
load the checkpoint into it with ``strict=True`` (weight-norm pairs restyled, folded or
decomposed to fit the module's own keys), keep that module as the *reference*, and export a
second instance with weight norm removed whose weights are the exact float64 fold.

Why fold before exporting: ``torch.onnx.export`` (dynamo) constant-folds small weight-norm chains
into initializers named ``mul``/``mul_1`` and leaves ``ReduceL2 -> Div -> Mul`` chains computed at
run time for large ones; the legacy exporter folds into ``onnx::Conv_123``. Exporting a plain
module avoids both; names the exporter still loses (a Linear weight pre-transposed by the
optimizer, a wrapper prefix) are restored afterwards by matching initializers to parameters
bit for bit (:func:`restore_parameter_names`).

A ``torch.export`` program (``.pt2``) is also accepted: its ``aten._weight_norm`` calls on
parameters are replaced by folded parameters before export.

torch, onnx and onnx_ir are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import InputError, InputNotFound, WeightNormWarning

if TYPE_CHECKING:
    import numpy as np
    import onnx_ir as ir
    import torch

#: Opset 18 is the dynamo exporter's native opset (its op library is written for it) and is
#: supported by ONNX Runtime >= 1.14 and TensorRT >= 8.6; ``--opset`` overrides it.
DEFAULT_OPSET = 18
#: Protobuf cannot serialize a message over 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2
Exporter = Literal["auto", "dynamo", "legacy"]
_WRAPPER_ATTR = "wrapped"

# --------------------------------------------------------------------------------------------
# Input specifications

_FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")
_DTYPES = (*_FLOAT_DTYPES, "int64", "int32", "int16", "int8", "uint8", "bool")
_DTYPE_ALIASES = {"float": "float32", "half": "float16", "double": "float64", "long": "int64",
                  "int": "int64", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class InputSpec:
    """``--input [NAME=]SHAPE[:DTYPE]``, e.g. ``1x80x200`` or ``mel=1x80x200:float16``."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    name: str | None = None
    text: str = ""


def parse_input_spec(text: str) -> InputSpec:
    """Parse ``[NAME=]SHAPE[:DTYPE]``; SHAPE is sizes joined by ``x`` (``1x80x200``)."""
    name, eq, rest = text.partition("=")
    if not eq:
        name, rest = "", text
    shape_text, _, dtype_text = rest.partition(":")
    dtype = _DTYPE_ALIASES.get(dtype_text.lower(), dtype_text.lower()) or "float32"
    try:
        shape = tuple(int(part) for part in shape_text.lower().split("x")) if shape_text else ()
    except ValueError:
        shape = (-1,)
    if not shape or any(size < 0 for size in shape):
        raise InputError(
            f"--input {text!r}: expected SHAPE[:DTYPE] with sizes joined by 'x', e.g. "
            "--input 1x80x200 or --input mel=1x80x200:float16"
        )
    if dtype not in _DTYPES:
        raise InputError(f"--input {text!r}: unknown dtype {dtype_text!r}; use one of "
                         f"{', '.join(_DTYPES)}")
    return InputSpec(shape, dtype, name.strip() or None, text)


@dataclass(frozen=True)
class DynamicAxis:
    """``--dynamic [INPUT:]AXIS[=NAME]``: an input axis whose size may change at run time.

    INPUT is an input's index or name (default: the first input); NAME is the symbolic size's
    name in the ONNX graph (axes with the same NAME must have the same size).
    """

    axis: int
    input: int | str = 0
    dim_name: str | None = None
    text: str = ""

    def input_name(self, names: Sequence[str]) -> str:
        if isinstance(self.input, int):
            if not 0 <= self.input < len(names):
                raise InputError(f"--dynamic {self.text}: input index {self.input} is out of "
                                 f"range; the model has {len(names)} inputs ({', '.join(names)})")
            return names[self.input]
        if self.input not in names:
            raise InputError(f"--dynamic {self.text}: the model has no input {self.input!r}; its "
                             f"inputs are {', '.join(names)}")
        return self.input

    def symbol(self, names: Sequence[str]) -> str:
        return self.dim_name or f"{self.input_name(names)}_dim{self.axis}"


def parse_dynamic_axis(text: str) -> DynamicAxis:
    """Parse ``[INPUT:]AXIS[=NAME]`` (``2``, ``mel:2=time``, ``1:0=batch``)."""
    head, _, dim_name = text.partition("=")
    input_text, colon, axis_text = head.rpartition(":")
    if not colon:
        input_text, axis_text = "", head
    try:
        axis = int(axis_text)
        if axis < 0:
            raise ValueError
    except ValueError:
        raise InputError(
            f"--dynamic {text!r}: expected [INPUT:]AXIS[=NAME], e.g. --dynamic 2=time (axis 2 of "
            "the first input) or --dynamic mel:2=time"
        ) from None
    dim_name = dim_name.strip() or None
    if dim_name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", dim_name):
        raise InputError(f"--dynamic {text!r}: NAME must be an identifier (letters, digits, _)")
    source: int | str = 0
    if input_text:
        source = int(input_text) if input_text.isdigit() else input_text
    return DynamicAxis(axis, source, dim_name, text)


def load_inputs_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` file in file order (no pickles: object arrays are refused)."""
    import numpy as np

    if not path.exists():
        raise InputNotFound(f"{path}: no such file; check --inputs")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except ValueError as exc:
        raise InputError(f"{path}: cannot read as .npz without pickles ({exc}); save plain "
                         "numeric arrays with numpy.savez") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read as .npz: {exc}") from None


def example_inputs(specs: Sequence[InputSpec], *, seed: int = 0) -> list[torch.Tensor]:
    """Seeded random tensors for export tracing (standard normal / small integers)."""
    import numpy as np

    from .dtypes import numpy_dtype, numpy_to_tensor

    rng = np.random.default_rng([seed, 1_000_003])
    tensors = []
    for spec in specs:
        if spec.dtype in _FLOAT_DTYPES:
            data = rng.standard_normal(spec.shape).astype(numpy_dtype(spec.dtype))
        elif spec.dtype == "bool":
            data = rng.integers(0, 2, spec.shape).astype(np.bool_)
        else:
            data = rng.integers(0, 8, spec.shape).astype(spec.dtype)
        tensors.append(numpy_to_tensor(data))
    return tensors


# --------------------------------------------------------------------------------------------
# Outputs


def flatten_outputs(result: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Flatten a model's output into ``(name, tensor)`` pairs, in a stable order.

    A single tensor is ``output``; tuples/lists give ``output_0``, ``output_1``; mappings (and
    HF-style ``ModelOutput``), dataclasses and named tuples give their field names; nesting joins
    with ``.``. ``None`` entries are skipped (they are not outputs of the exported graph).
    """
    import torch

    if isinstance(result, torch.Tensor):
        return [(prefix or "output", result)]
    if result is None:
        return []
    items: list[tuple[str, Any]]
    if isinstance(result, Mapping):
        items = [(str(k), v) for k, v in result.items()]
    elif dataclasses.is_dataclass(result) and not isinstance(result, type):
        items = [(f.name, getattr(result, f.name)) for f in dataclasses.fields(result)]
    elif isinstance(result, tuple) and hasattr(result, "_fields"):
        items = [(name, getattr(result, name)) for name in result._fields]
    elif isinstance(result, (tuple, list)):
        base = prefix or "output"
        flat: list[tuple[str, torch.Tensor]] = []
        for i, item in enumerate(result):
            flat.extend(flatten_outputs(item, f"{base}_{i}"))
        return flat
    else:
        raise InputError(
            f"model output {prefix or 'output'!r} is a {type(result).__name__}; only tensors "
            "(in tuples, lists, dicts or dataclasses) can become ONNX outputs"
        )
    flat = []
    for name, item in items:
        flat.extend(flatten_outputs(item, f"{prefix}.{name}" if prefix else name))
    return flat


def output_names(flat: Sequence[tuple[str, Any]], input_names: Sequence[str]) -> list[str]:
    """ONNX output names for flattened outputs: unique, and never an input's name."""
    names = [name for name, _ in flat]
    if len(set(names)) != len(names):
        # Two fields flattened to the same name: fall back to positional names.
        names = [f"output_{i}" for i in range(len(names))]
    # ONNX forbids an output named like an input (one name, one value).
    return [f"{name}_out" if name in input_names else name for name in names]


def _make_flat_wrapper(module: torch.nn.Module) -> torch.nn.Module:
    from torch import nn

    class FlatOutputs(nn.Module):
        """Returns the wrapped module's outputs as a flat tuple (the exported output order)."""

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            setattr(self, _WRAPPER_ATTR, inner)

        def forward(self, *args: Any) -> tuple[Any, ...]:
            return tuple(t for _, t in flatten_outputs(getattr(self, _WRAPPER_ATTR)(*args)))

    return FlatOutputs(module).eval()


# --------------------------------------------------------------------------------------------
# The user's model


def parse_model_kwargs(text: str | None) -> dict[str, Any]:
    """``--model-kwargs`` JSON object (``{"weight_norm": "none"}``)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--model-kwargs: not valid JSON ({exc.msg} at column {exc.colno}); "
                         "write an object like '{\"channels\": 512}'") from None
    if not isinstance(value, dict):
        raise InputError("--model-kwargs: must be a JSON object like '{\"channels\": 512}'")
    return value


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
        raise InputError(f"--model {spec!r}: expected MODULE:CALLABLE or path/to/file.py:CALLABLE"
                         " (e.g. fixtures/models.py:build_generator)")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    try:
        if is_file:
            path = Path(target)
            if not path.is_file():
                raise InputError(f"--model {spec!r}: {path} does not exist; check the path")
            name = "_wnconvert_model_" + re.sub(r"\W", "_", str(path.resolve()))
            module = sys.modules.get(name)
            if module is None:
                module_spec = importlib.util.spec_from_file_location(name, path)
                if module_spec is None or module_spec.loader is None:
                    raise InputError(f"--model {spec!r}: cannot import {path} as Python")
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
    except Exception as exc:  # noqa: BLE001 - user code can raise anything while importing
        raise InputError(f"--model {spec!r}: importing {target} failed: "
                         f"{type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"--model {spec!r}: {target} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"--model {spec!r}: {attr} is not callable")
    return obj


def build_model(spec: str, kwargs: Mapping[str, Any]) -> torch.nn.Module:
    """Call the ``--model`` callable; the result must be an ``nn.Module`` (put in eval mode)."""
    from torch import nn

    factory = load_callable(spec)
    try:
        # Deprecation chatter of the user's code (e.g. torch.nn.utils.weight_norm) is not
        # wnconvert's to report, and must not become an error under -W error.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            module = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - user code can raise anything
        raise InputError(f"--model {spec!r}: calling it with {dict(kwargs)} raised "
                         f"{type(exc).__name__}: {exc}; check --model-kwargs") from None
    if not isinstance(module, nn.Module):
        raise InputError(f"--model {spec!r}: returned a {type(module).__name__}, not a "
                         "torch.nn.Module")
    return module.eval()


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
            for name, plist in sub.parametrizations.items():
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
                     source_name: str, model: str) -> dict[str, torch.Tensor]:
    """Re-key ``source`` to ``template``'s keys (the module's own state dict).

    Weight-norm pairs are renamed when both sides have them (the original ``g``/``v``, never
    recomputed), folded when the template wants a plain weight and decomposed when it wants a
    pair the source stores plain (:func:`wnconvert.convert.decompose_state_dict` with ``like``).
    """
    from .convert import decompose_state_dict

    if list(source) == list(template):
        return dict(source)
    try:
        return decompose_state_dict(source, like=template)
    except InputError as exc:
        raise InputError(f"{source_name}: does not fit --model {model}: {exc}; check --key "
                         "and --model-kwargs") from None


def fold_all(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every weight-norm pair (both styles) replaced by its exactly folded weight."""
    from .convert import fold_state_dict

    return fold_state_dict(state_dict)


def load_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                source: str, model: str) -> None:
    """``load_state_dict(strict=True)`` after matching keys, with a one-line error."""
    matched = match_state_dict(state_dict, module.state_dict(), source_name=source, model=model)
    try:
        module.load_state_dict(matched, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise InputError(f"{source}: does not fit --model {model}: {detail[:400]}; check "
                         "--model-kwargs") from None


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


def prepare_model(state_dict: Mapping[str, torch.Tensor], *, model: str,
                  model_kwargs: Mapping[str, Any], source: str,
                  need_plain: bool = True) -> PreparedModel:
    """Build the reference and the plain module from ``--model`` and a loaded state dict.

    The reference computes weight norm at run time from the checkpoint's own ``g``/``v``: as
    built when the module has weight norm, otherwise with weight norm applied (parametrize API)
    where the checkpoint has pairs, so the reference never depends on wnconvert's fold.
    ``need_plain=False`` (verification only) skips building the module to export.
    """
    if model.endswith(".pt2"):
        return prepare_program(Path(model), state_dict=state_dict, source=source)
    from .keys import find_pair_keys

    notes: list[str] = []
    reference = build_model(model, model_kwargs)
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
        if need_plain and has_weight_norm(reference):
            # A second instance, not a deepcopy: removing weight norm on a deepcopy of a
            # parametrized module breaks the original's parametrization.
            plain = strip_weight_norm(build_model(model, model_kwargs))
            load_strict(plain, fold_all(weights), source=source, model=model)
            notes.append("weight norm removed from the exported module; weights folded in "
                         "float64")
        else:
            plain = reference
    description = {"model": model, "model_kwargs": dict(model_kwargs), "checkpoint": source,
                   "weight_norm": "applied" if applied else (
                       "as built" if has_weight_norm(reference) else "none")}
    return PreparedModel(reference, plain, weights, [], description, notes=notes)


def apply_weight_norm_like(module: torch.nn.Module,
                           state_dict: Mapping[str, torch.Tensor]) -> int:
    """Apply parametrize weight norm where ``state_dict`` has g/v pairs (dim from g's shape).

    Pairs whose module or parameter does not exist are left for the strict load to report.
    """
    from torch.nn.utils.parametrizations import weight_norm

    from .keys import find_pair_keys
    from .numerics import check_pair_shapes

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
            weight_norm(sub, name=pair.param, dim=dim)
        count += 1
    return count


def load_program(path: Path) -> Any:
    """``torch.export.load`` with a one-line error (this runs no pickled code)."""
    import torch

    if not path.exists():
        raise InputNotFound(f"{path}: no such file; check the path")
    try:
        return torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad archives
        raise InputError(f"{path}: cannot load as a torch.export program (.pt2): "
                         f"{type(exc).__name__}: {exc}") from None


def prepare_program(path: Path, *, state_dict: Mapping[str, torch.Tensor] | None = None,
                    source: str | None = None) -> PreparedModel:
    """Reference and plain module from a ``.pt2`` program (optionally with other weights)."""
    program = load_program(path)
    reference = program.module()
    plain = program.module()
    if state_dict is not None:
        load_strict(reference, state_dict, source=source or str(path), model=str(path))
        load_strict(plain, state_dict, source=source or str(path), model=str(path))
    weights = dict(reference.state_dict())
    folded = fold_program_weight_norm(plain)
    names = [spec.arg.name for spec in program.graph_signature.input_specs
             if spec.kind.name == "USER_INPUT"]
    examples, dynamic = _program_inputs(program, names)
    notes = [f"folded {folded} weight-norm calls of the program"] if folded else []
    description = {"program": str(path), "checkpoint": source}
    return PreparedModel(reference, plain, weights, names, description, examples, dynamic, notes)


def _program_inputs(program: Any, names: Sequence[str]
                    ) -> tuple[list[torch.Tensor] | None, tuple[DynamicAxis, ...]]:
    """The program's example inputs and the axes it was exported with as dynamic."""
    import torch

    examples = None
    stored = getattr(program, "example_inputs", None)
    if stored is not None:
        args, kwargs = stored
        if not kwargs and all(isinstance(a, torch.Tensor) for a in args):
            examples = list(args)
    dynamic: list[DynamicAxis] = []
    symbols: dict[str, str] = {}  # the program's symbol (s71) -> a readable name (mel_dim2)
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for index, name in enumerate(names):
        value = placeholders[name].meta.get("val") if name in placeholders else None
        for axis, size in enumerate(getattr(value, "shape", ())):
            if not isinstance(size, int):
                symbol = symbols.setdefault(str(size), f"{name}_dim{axis}")
                dynamic.append(DynamicAxis(axis, index, symbol, f"{index}:{axis}"))
    return examples, tuple(dynamic)


def fold_program_weight_norm(graph_module: torch.nn.Module) -> int:
    """Replace ``aten._weight_norm(v, g, dim)`` on parameters by a folded parameter, in place.

    The new parameter is named like the plain module's (``conv.weight``). Returns the count.
    """
    import torch

    from .dtypes import numpy_to_tensor, tensor_to_numpy
    from .keys import find_pair_keys
    from .numerics import fold, infer_dim

    graph = graph_module.graph
    targets = {torch.ops.aten._weight_norm.default, torch.ops.aten._weight_norm_interface.default}
    pair_of_v = {p.v_key: p for p in find_pair_keys(dict(graph_module.state_dict()))}
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in targets:
            continue
        v_node, g_node = node.args[0], node.args[1]
        if not (getattr(v_node, "op", None) == "get_attr" and g_node.op == "get_attr"):
            continue  # computed operands: not a parameter's weight norm
        v = _get_attr(graph_module, v_node.target)
        g = _get_attr(graph_module, g_node.target)
        pair = pair_of_v.get(v_node.target)
        weight_name = pair.weight_key if pair else f"{v_node.target}_folded"
        # The dim argument is -1 for a whole-tensor norm; g's shape says it unambiguously.
        w, _ = fold(tensor_to_numpy(g), tensor_to_numpy(v),
                    infer_dim(tuple(g.shape), tuple(v.shape)))
        _set_param(graph_module, weight_name,
                   torch.nn.Parameter(numpy_to_tensor(w), requires_grad=False))
        with graph.inserting_before(node):
            new = graph.get_attr(weight_name)
        if node.target == torch.ops.aten._weight_norm_interface.default:
            for user in list(node.users):  # getitem(node, 0) is the weight, 1 the norms
                if user.target.__name__ == "getitem" and user.args[1] == 0:
                    user.replace_all_uses_with(new)
                    graph.erase_node(user)
            if node.users:
                continue
        else:
            node.replace_all_uses_with(new)
        graph.erase_node(node)
        for operand in (v_node, g_node):
            if not operand.users:
                graph.erase_node(operand)
                _del_attr(graph_module, operand.target)
        count += 1
    if count:
        graph.lint()
        graph_module.recompile()
    return count


def _get_attr(root: Any, target: str) -> Any:
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _set_param(root: Any, target: str, value: Any) -> None:
    import torch

    *path, last = target.split(".")
    obj = root
    for part in path:
        if not hasattr(obj, part):
            obj.add_module(part, torch.nn.Module())
        obj = getattr(obj, part)
    if last in obj._parameters or not hasattr(obj, last):
        obj.register_parameter(last, value)
    else:
        raise InputError(f"cannot fold weight norm into {target}: the name is taken in the program")


def _del_attr(root: Any, target: str) -> None:
    *path, last = target.split(".")
    obj = root
    for part in path:
        obj = getattr(obj, part)
    with contextlib.suppress(AttributeError):
        delattr(obj, last)


# --------------------------------------------------------------------------------------------
# Export


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
) -> ExportResult:
    """Export ``module`` (which must have no weight norm) to ``output`` atomically.

    ``exporter="auto"`` uses ``torch.export`` (dynamo) and falls back to the legacy TorchScript
    exporter when the model cannot be captured (data-dependent control flow), with a note.
    ``parameters`` are the tensors whose names initializers get back (default: the module's
    state dict). Over 2 GB of weights are saved as external data in ``<output>.data``.
    """
    import torch

    from .formats import check_output

    opset = opset or DEFAULT_OPSET
    external = output.with_name(output.name + ".data")
    check_output(output, force=force)
    args = tuple(args)
    try:
        with torch.inference_mode():
            sample = module(*args)
    except Exception as exc:  # noqa: BLE001 - the user's model may raise anything
        shapes = ", ".join(f"{list(a.shape)} {str(a.dtype).removeprefix('torch.')}" for a in args)
        raise InputError(f"the model fails on example inputs {shapes}: {type(exc).__name__}: "
                         f"{_exporter_message(exc).partition(': ')[2]}; check --input") from None
    flat = flatten_outputs(sample)
    if not flat:
        raise InputError("the model returns no tensors; nothing to export")
    single = isinstance(sample, torch.Tensor)
    export_module = module if single else _make_flat_wrapper(module)
    input_names = list(input_names or forward_input_names(module, len(args)))
    if len(input_names) != len(args):
        raise InputError(f"{len(input_names)} input names ({', '.join(input_names)}) for "
                         f"{len(args)} inputs; give one name per input")
    out_names = output_names(flat, input_names)
    dyn = _dynamic_by_input(dynamic, input_names, args)
    parameters = dict(parameters if parameters is not None else module.state_dict())
    notes: list[str] = []
    model = None
    used = exporter
    if exporter in ("auto", "dynamo"):
        try:
            model = _export_dynamo(export_module, args, input_names=input_names,
                                   output_names=out_names, dynamic=dyn, opset=opset,
                                   single=single)
            used = "dynamo"
            problem = _fails_at_second_size(model, args, input_names, dyn) if dyn else None
            if problem is not None:
                if exporter == "dynamo":
                    raise InputError(
                        f"the torch.export-based exporter wrote a graph that fails when a "
                        f"--dynamic axis changes size ({problem}); try --exporter legacy"
                    )
                raise ExportFailed(f"its graph fails when a --dynamic axis changes size: {problem}")
        except ExportFailed as exc:
            model = None
            if exporter == "dynamo":
                raise InputError(f"the torch.export-based exporter failed: {exc}; try the "
                                 "legacy exporter") from None
            notes.append(
                f"the torch.export-based exporter failed ({exc}); used the legacy "
                "TorchScript exporter, which traces the path the example inputs take through "
                "Python control flow"
            )
    if model is None:
        try:
            model = _export_legacy(export_module, args, input_names=input_names,
                                   output_names=out_names, dynamic=dyn, opset=opset)
        except InputError as exc:
            if not notes:
                raise
            # Both exporters failed: the first failure is usually the one to fix.
            first = notes[0].split(" (", 1)[1].rsplit("); used the legacy", 1)[0]
            raise InputError(f"the torch.export-based exporter failed ({first}); {exc}") from None
        used = "legacy"
    rename = restore_parameter_names(model, parameters)
    leftover = find_runtime_weight_norm(model)
    if leftover:
        warnings.warn(
            f"{output}: {len(leftover)} nodes still compute a norm of a weight at run time "
            f"({_few(leftover)}); the model may normalize weights itself",
            WeightNormWarning, stacklevel=2,
        )
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
        parameters_named=rename.named, parameters_total=rename.total,
        external_data=external if use_external else None, size_bytes=size,
        runtime_weight_norm=leftover, notes=notes,
    )


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
            raise InputError(f"--dynamic {dyn.text}: input {name!r} has {rank} axes "
                             f"(0..{rank - 1}); pick one of them")
        out.setdefault(name, {})[dyn.axis] = dyn.symbol(names)
    return out


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters: their prints, log records and warnings.

    Their chatter (progress lines, graph dumps of failed captures, missing torchvision ops)
    would mix with results on stdout and bury wnconvert's one-line messages on stderr; what
    matters from a failure is in the exception, which is reported.
    """
    import io

    # torch configures levels per logger, so each torch logger is raised, not just the root.
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name == "torch" or name.startswith(("torch.", "onnxscript"))]
    loggers.append(logging.getLogger("torch"))
    levels = [(logger, logger.level) for logger in loggers]
    for logger, _ in levels:
        logger.setLevel(logging.CRITICAL)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in levels:
            logger.setLevel(level)


def _export_dynamo(module: torch.nn.Module, args: tuple[torch.Tensor, ...], *,
                   input_names: Sequence[str], output_names: Sequence[str],
                   dynamic: Mapping[str, Mapping[int, str]], opset: int, single: bool) -> ir.Model:
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
        dynamic_shapes = tuple(specs) if single else (tuple(specs),)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module, args, dynamo=True, verbose=False, opset_version=opset,
                input_names=list(input_names), output_names=list(output_names),
                dynamic_shapes=dynamic_shapes, optimize=True, report=False,
            )
    except Exception as exc:  # noqa: BLE001 - torch.export raises many error types
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


def _exporter_message(exc: BaseException) -> str:
    """The first lines of the innermost error, on one line (the exporters wrap the cause)."""
    cause = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = " ".join(str(cause).split())
    # torch.export appends links and generic advice after the specific part.
    for marker in (" For more information", " The error above", " Refer to http"):
        text = text.split(marker)[0]
    return f"{type(cause).__name__}: {text[:400]}"


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
            raise InputError(f"the legacy ONNX exporter failed: {_exporter_message(exc)}"
                             ) from None
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

    from .formats.atomic import Staging

    outputs = [external, output] if external is not None else [output]
    with Staging(outputs, force=force) as staging:
        if external is not None:
            ir.save(model, staging.path(output), external_data=external.name,
                    size_threshold_bytes=1024)
        else:
            ir.save(model, staging.path(output))
        staging.publish()


# --------------------------------------------------------------------------------------------
# Names


@dataclass
class RenameResult:
    renamed: dict[str, str]
    untransposed: list[str]
    derived: list[str]
    named: int  # parameters that are initializers under their own name
    total: int  # floating parameters of the module


def _fingerprint(array: np.ndarray) -> tuple[str, tuple[int, ...], str]:
    import numpy as np

    data = np.ascontiguousarray(array)
    return str(data.dtype), tuple(data.shape), hashlib.blake2b(
        data.view(np.uint8).reshape(-1).data, digest_size=16).hexdigest()


def restore_parameter_names(model: ir.Model,
                            parameters: Mapping[str, torch.Tensor]) -> RenameResult:
    """Give initializers back the parameter names the exporter lost, in place.

    An initializer bit-identical to a parameter takes its name (``mul_3`` -> ``conv.weight``,
    ``onnx::Conv_12`` -> ``conv.weight``, ``wrapped.fc.bias`` -> ``fc.bias``). One equal to a
    2-D parameter transposed (the optimizer pre-transposes Linear weights for MatMul) is replaced
    by the parameter plus a Transpose node, so the weight is stored under its name and layout.
    Anything else (LSTM gate packing, constants) keeps the exporter's name.
    """
    import numpy as np

    from .dtypes import tensor_to_numpy

    graph = model.graph
    params = {k: tensor_to_numpy(t) for k, t in parameters.items()
              if t.dtype.is_floating_point}
    by_print: dict[tuple[str, tuple[int, ...], str], list[str]] = {}
    for key, array in params.items():
        by_print.setdefault(_fingerprint(array), []).append(key)
    transposed: dict[tuple[str, tuple[int, ...], str], list[str]] = {}
    for key, array in params.items():
        if array.ndim == 2:
            transposed.setdefault(_fingerprint(np.ascontiguousarray(array.T)), []).append(key)
    taken = set(graph.initializers)
    renamed: dict[str, str] = {}
    untransposed: list[str] = []
    derived: list[str] = []
    prefix = _WRAPPER_ATTR + "."
    for name, value in list(graph.initializers.items()):
        tensor = value.const_value
        if tensor is None:
            continue
        if name in params and not name.startswith(prefix):
            continue  # already the parameter's name
        array = tensor.numpy()
        if not np.issubdtype(array.dtype, np.floating) and str(array.dtype) != "bfloat16":
            continue  # shape constants and indices are not parameters
        fp = _fingerprint(array)
        candidates = [name.removeprefix(prefix)] if name.startswith(prefix) else []
        candidates += by_print.get(fp, [])
        new = next((k for k in candidates if k in params and k not in taken
                    and _fingerprint(params[k]) == fp), None)
        if new is not None:
            value.name = new
            taken.add(new)
            renamed[name] = new
            continue
        t_key = next((k for k in transposed.get(fp, []) if k not in taken), None)
        if t_key is not None:
            _untranspose(graph, value, t_key, params[t_key])
            taken.add(t_key)
            untransposed.append(t_key)
            continue
        derived.append(name)
    named = sum(1 for key in params if key in graph.initializers)
    return RenameResult(renamed, untransposed, derived, named, len(params))


def _untranspose(graph: ir.Graph, value: ir.Value, key: str, array: np.ndarray) -> None:
    """Replace initializer ``value`` (== param.T) by the parameter and a Transpose node."""
    import onnx_ir as ir

    param = ir.Value(name=key, shape=ir.Shape(array.shape),
                     type=ir.TensorType(value.dtype), const_value=ir.tensor(array, name=key))
    graph.register_initializer(param)
    node = ir.Node("", "Transpose", inputs=[param], attributes=[ir.AttrInt64s("perm", [1, 0])],
                   num_outputs=1, name=f"{key}.transpose")
    out = node.outputs[0]
    out.shape = value.shape
    out.type = value.type
    old_name = value.name
    value.replace_all_uses_with(out)
    graph.initializers.pop(old_name)
    out.name = old_name
    graph.insert_before(graph[0], node) if len(graph) else graph.append(node)


def find_runtime_weight_norm(model: ir.Model) -> list[str]:
    """Norm nodes (ReduceL2, LpNormalization, ...) computed from initializers only.

    After a correct export this is empty: weight norm of a parameter is exactly that.
    """
    graph = model.graph
    constant: set[int] = {id(v) for v in graph.initializers.values()}
    norms = {"ReduceL2", "LpNormalization", "ReduceSumSquare"}
    found = []
    for node in graph:  # topological order
        inputs = [v for v in node.inputs if v is not None]
        if node.op_type == "Constant" or (inputs and all(id(v) in constant for v in inputs)):
            constant.update(id(out) for out in node.outputs)
            if node.op_type in norms:
                found.append(node.name or node.op_type)
    return found
