"""``torch.export`` programs (``.pt2``): load one only when the caller trusts it, without running
any pickled code, refuse graphs that call anything but PyTorch's own tensor operators, move it to
the CPU, and fold its ``aten._weight_norm`` calls on parameters into plain parameters.

A ``.pt2`` is a program, not data: ``torch.export.load`` evaluates text from the file (symbolic
sizes are parsed by sympy, guard code is generated from it) and running the graph runs whatever
operators it names, ``aten.from_file`` included. Filtering the archive's pickles cannot make that
safe, so nothing is read with torch until the caller says it trusts the program
(``trust_program=True``, as ``trust_remote_code`` in transformers); even then the graph may only
call core ATen/prims operators (or ones torch decomposes into them) that touch no files.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .inputs import DynamicAxis
from .torch_model import PreparedModel, load_strict

if TYPE_CHECKING:
    import torch

#: Archive folders whose contents torch would load as native code or other runtimes' blobs.
_CODE_FOLDERS = ("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")


def require_trust(path: Path, *, trust_program: bool) -> None:
    """Refuse a ``.pt2`` the caller has not said it trusts, before torch reads any of it."""
    if not trust_program:
        raise InputError.template(
            "{path}: refused: a .pt2 is a program, and loading it evaluates code from the file "
            "(symbolic sizes, guards) and runs its graph; pass {-trust_program} only for a "
            "program you trust as you would its Python code", path=path)


def load_program(path: Path, *, trust_program: bool = False) -> Any:
    """Load a ``torch.export`` archive (``.pt2``) the caller trusts, without unpickling anything
    unsafely, and refuse a graph that calls anything but core tensor operators.

    Without ``trust_program`` nothing is read with torch (:func:`require_trust`). After loading,
    :func:`check_program_operators` refuses custom, non-core and file-touching operators.

    ``torch.export.load`` unpickles with ``weights_only=False`` in several places (weights and
    constants flagged ``use_pickle``, opaque and custom-class constants, and the sample inputs
    when the safe unpickler refuses them), so a crafted archive can run code. The archive is
    read here first and refused when any member would need that (:func:`check_program_archive`);
    the load itself then runs with every unpickler torch might reach forced to the safe one
    (:func:`_safe_unpickling`), so a path this check does not know cannot run code either. The
    program is moved to the CPU: references run there, in float32.
    """
    from ..formats.files import require_regular_file

    require_regular_file(path, what=".pt2 program")
    require_trust(path, trust_program=trust_program)
    from .._requires import require_torch

    torch = require_torch(f"reading {path}")
    check_program_archive(path)
    try:
        with _safe_unpickling(), _torch_export_log() as logged:
            program = torch.export.load(str(path))
    except _UnsafeMember as exc:
        raise InputError(f"{path}: refused: {exc}; wnconvert never unpickles arbitrary objects. "
                         "Re-save the program with torch.export.save from plain tensors") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad archives
        # torch logs the real cause (with a traceback) and raises "check the warnings above".
        cause = next((r.exc_info[1] for r in reversed(logged) if r.exc_info and r.exc_info[1]),
                     exc)
        raise InputError(f"{path}: cannot load as a torch.export program (.pt2): "
                         f"{type(cause).__name__}: {' '.join(str(cause).split())[:300]}") from None
    check_program_operators(program, path)
    return _to_cpu(program)


@contextlib.contextmanager
def _torch_export_log() -> Iterator[list[logging.LogRecord]]:
    """Keep what ``torch.export`` logs while loading (a traceback on stderr for a damaged
    archive) off the terminal; the records are returned so the error can name the cause."""
    logger = logging.getLogger("torch.export")
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    # torch gives this logger its own stderr handler (and no propagation): swap them all.
    handlers, propagate = logger.handlers[:], logger.propagate
    logger.handlers = [_Keep(logging.WARNING)]
    logger.propagate = False
    try:
        yield records
    finally:
        logger.handlers, logger.propagate = handlers, propagate


class _UnsafeMember(Exception):
    """An archive member that only an unsafe unpickler could read."""


def check_program_archive(path: Path) -> None:
    """Refuse a ``.pt2`` archive with any member that ``torch.export.load`` would unpickle
    unsafely or run as code; names the member and says why."""
    import io
    import json
    import zipfile

    import torch

    def refuse(member: str, why: str) -> InputError:
        return InputError.template(
            "{path}: refused: archive member {member} {why}; wnconvert never unpickles "
            "arbitrary objects or loads compiled code from a file. Re-save the program with "
            "torch.export.save from plain tensors, or export the model from its code with "
            "{-model}", path=path, member=member, why=why)

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path}: not a torch.export archive (.pt2): {exc}") from None
    with archive:
        names = archive.namelist()
        roots = {name.split("/", 1)[0] for name in names}
        if len(roots) != 1 or not all("/" in name for name in names):
            raise InputError(f"{path}: not a torch.export archive (.pt2): expected one top "
                             "folder as torch.export.save writes")
        root = roots.pop() + "/"
        inner = {name[len(root):]: name for name in names}

        def read(member: str) -> bytes:
            return archive.read(inner[member])

        if inner.get("archive_format") is None or read("archive_format").strip() != b"pt2":
            raise InputError(f"{path}: not a torch.export archive in the current format (no "
                             "archive_format 'pt2'); re-save it with torch.export.save")
        for member in inner:
            if member.startswith(_CODE_FOLDERS):
                raise refuse(member, "holds compiled code or another runtime's package")
        models = [m[len("models/"):-len(".json")] for m in inner
                  if m.startswith("models/") and m.endswith(".json")]
        if not models:
            raise InputError(f"{path}: the archive holds no exported program (models/*.json)")
        for model in models:
            for legacy in (f"data/weights/{model}.pt", f"data/constants/{model}.pt"):
                if legacy in inner:
                    raise refuse(legacy, "is a legacy pickled state dict")
            for kind in ("weights", "constants"):
                config_name = f"data/{kind}/{model}_{kind}_config.json"
                if config_name not in inner:
                    continue
                try:
                    config = json.loads(read(config_name)).get("config", {})
                    entries = list(config.items())
                except (ValueError, AttributeError, RecursionError):
                    raise refuse(config_name, "is not a valid payload config") from None
                for fqn, meta in entries:
                    meta = meta if isinstance(meta, dict) else {}
                    file_name = str(meta.get("path_name", ""))
                    if meta.get("use_pickle"):
                        raise refuse(f"data/{kind}/{file_name}",
                                     f"stores {fqn!r} as a pickle (use_pickle)")
                    if file_name.startswith(("custom_obj_", "opaque_obj_")):
                        raise refuse(f"data/{kind}/{file_name}",
                                     f"stores {fqn!r} as a pickled Python or C++ object")
            sample = f"data/sample_inputs/{model}.pt"
            if sample in inner and archive.getinfo(inner[sample]).file_size:
                try:
                    torch.load(io.BytesIO(read(sample)), weights_only=True)
                except Exception:  # noqa: BLE001 - anything the safe unpickler refuses
                    raise refuse(sample, "holds sample inputs that only an unsafe unpickler "
                                 "can read") from None


@contextlib.contextmanager
def _safe_unpickling() -> Iterator[None]:
    """While loading, every unpickler torch.export may reach is the safe one or refuses."""
    import pickle

    import torch
    from torch.export.pt2_archive import _package

    real_load = torch.load
    real_pickle_load_obj = torch._C._pickle_load_obj

    def safe_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        try:
            return real_load(*args, **kwargs)
        except pickle.UnpicklingError as exc:
            raise _UnsafeMember(f"a member needs unsafe unpickling ({exc})") from None

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise _UnsafeMember("a member is a pickled object")

    class _NoPickle:
        loads = staticmethod(refuse)
        load = staticmethod(refuse)

    real_package_pickle = _package.pickle
    torch.load = safe_load
    torch._C._pickle_load_obj = refuse
    _package.pickle = _NoPickle  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = real_load
        torch._C._pickle_load_obj = real_pickle_load_obj
        _package.pickle = real_package_pickle


#: Operators torch.export puts in a graph that are neither tagged core nor decomposed by torch:
#: its runtime checks on sizes and tensor metadata (they read no data, and raise when an
#: assumption the program was exported under does not hold) and the copy of a tensor constant.
_EXPORT_OPERATORS = frozenset({
    "aten._assert_scalar.default", "aten._assert_tensor_metadata.default",
    "aten._assert_async.msg", "aten._functional_assert_async.msg",
    "aten.sym_constrain_range.default", "aten.sym_constrain_range_for_size.default",
    "aten.lift_fresh_copy.default",
})
#: ATen operators that reach outside the program's tensors, and what they reach.
_IO_OPERATORS = {"from_file": "which reads, creates and overwrites files",
                 "save": "which writes files", "_print": "which writes to the terminal"}
#: Control flow whose branches and bodies are graphs of the same program; they are vetted with
#: the rest (every nested graph module is walked). Other higher-order operators (custom-op
#: wrappers, Triton kernels, delegates, effects) run code that is not in a graph wnconvert reads.
_CONTROL_FLOW = frozenset({"cond", "while_loop", "map_impl", "scan",
                           "wrap_with_set_grad_enabled", "wrap_with_autocast"})
#: Schema argument names that say an operator opens a path.
_PATH_ARGUMENTS = ("file", "path", "dir", "url")


def check_program_operators(program: Any, path: Path) -> None:
    """Refuse a loaded program whose graph (or any graph nested in it) calls anything but
    PyTorch's core tensor operators, naming the first such call and why.

    Allowed: ATen operators tagged core or that torch rewrites into core ATen itself (in
    ``torch.export.default_decompositions()``, composite like ``aten.conv1d``, or the in-place
    form of one of those, like ``aten.relu_``), prims, export's own size checks and constant
    copies, ``getitem`` and the size arithmetic torch's deserializer creates, and control flow
    (``cond``, ``while_loop``, ...) whose subgraphs are walked here too. Refused even so: any
    operator that reads or writes files or the terminal. Non-core ATen operators torch does not
    decompose (``aten.digamma`` in torch 2.13) are refused: the rule is torch's core set, not a
    list of ours. Trust lets the program run; it does not let it reach the machine.
    """
    import torch

    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            why: str | None = f"a {node.op} node, which an exported program does not have"
            if node.op == "call_function":  # call_module/call_method: not in an exported graph
                why = _operator_problem(node.target)
            if why is not None:
                raise InputError.template(
                    "{path}: refused: the program calls {op}, {why}; wnconvert runs only core "
                    "ATen/prims operators that touch no files, even with {-trust_program}",
                    path=path, op=_operator_name(node.target), why=why)


def _operator_problem(target: Any) -> str | None:
    """Why the graph may not call ``target`` (None when it may)."""
    import operator

    import torch

    try:
        if target is operator.getitem or target in _size_arithmetic():
            return None
    except TypeError:  # unhashable: whatever torch's deserializer resolved, not an operator
        return "which is not a PyTorch operator"
    if isinstance(target, torch._ops.HigherOrderOperator):
        return None if target.name() in _CONTROL_FLOW else (
            "a higher-order operator whose code wnconvert cannot vet")
    if not isinstance(target, torch._ops.OpOverload):
        return "which is not a PyTorch operator"
    io = _input_output(target)
    if io is not None:
        return io
    if target.namespace == "prims":
        return None
    if target.namespace != "aten":
        return f"a custom operator (namespace {target.namespace!r})"
    if _is_core_aten(target):
        return None
    return "which is not a core ATen operator (nor one torch decomposes into them)"


def _input_output(op: Any) -> str | None:
    """What ``op`` reaches outside the program's tensors (None when nothing), whatever its
    namespace: a string argument named like a file or path is taken to be one."""
    packet = op._schema.name.split("::", 1)[-1]
    if op.namespace == "aten" and packet in _IO_OPERATORS:
        return _IO_OPERATORS[packet]
    if any(word in argument.name.lower() and "str" in str(argument.type).lower()
           for argument in op._schema.arguments for word in _PATH_ARGUMENTS):
        return "which takes a file name or path"
    return None


def _is_core_aten(op: Any) -> bool:
    """Tagged core; or rewritten into core ATen by torch itself (``run_decompositions``):
    decomposed by export's default table, composite (defined by other ATen operators only), or
    the in-place form of such an operator (functionalization makes it the functional one);
    or one of export's own operators."""
    import torch

    if (torch.Tag.core in op.tags or str(op) in _EXPORT_OPERATORS
            or op in _core_decompositions() or _is_composite(op)):
        return True
    packet = op._schema.name.split("::", 1)[-1]
    if torch.Tag.inplace in op.tags and packet.endswith("_") and not packet.endswith("__"):
        functional = getattr(getattr(torch.ops.aten, packet[:-1], None), op._overloadname, None)
        return isinstance(functional, torch._ops.OpOverload) and _is_core_aten(functional)
    return False


def _is_composite(op: Any) -> bool:
    import torch

    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(op.name(),
                                                              "CompositeImplicitAutograd")
    except RuntimeError:  # not a dispatcher operator (a TorchScript builtin such as aten::save)
        return False


def _operator_name(target: Any) -> str:
    import torch

    if isinstance(target, torch._ops.OpOverload):
        name = str(target)  # aten.from_file.default
    elif isinstance(target, torch._ops.HigherOrderOperator):
        name = f"torch.ops.higher_order.{target.name()}"
    elif isinstance(target, str):  # a target torch's deserializer could not resolve
        name = target
    else:
        name = (f"{getattr(target, '__module__', None) or '?'}."
                f"{getattr(target, '__qualname__', type(target).__name__)}")
    return name[:120]


@functools.cache
def _size_arithmetic() -> frozenset[Any]:
    """The Python functions torch's deserializer puts in a graph for symbolic sizes
    (``torch._export.serde.serialize._SYM_OPS``, listed here so a change there is a choice)."""
    import math
    import operator

    import torch

    return frozenset({
        operator.eq, operator.ne, operator.le, operator.ge, operator.lt, operator.gt,
        operator.neg, operator.pos, operator.mul, operator.add, operator.sub,
        operator.floordiv, operator.mod, operator.pow, operator.truediv, operator.and_,
        operator.or_, operator.lshift, operator.rshift, math.trunc, torch.sym_not,
        torch.sym_int, torch.sym_float, torch.sym_ite, torch.sym_max, torch.sym_min,
        torch.sym_sqrt,
    })


@functools.cache
def _core_decompositions() -> Any:
    """ATen operators torch itself decomposes into core ATen (export's default table)."""
    import torch

    return torch.export.default_decompositions()


def _to_cpu(program: Any) -> Any:
    """The program with every parameter, buffer and constant on the CPU."""
    import torch

    tensors = [*program.state_dict.values(), *program.constants.values()]
    if all(not isinstance(t, torch.Tensor) or t.device.type == "cpu" for t in tensors):
        return program
    from torch.export.passes import move_to_device_pass

    return move_to_device_pass(program, "cpu")


def prepare_program(path: Path, *, trust_program: bool = False,
                    state_dict: Mapping[str, torch.Tensor] | None = None,
                    source: str | None = None) -> PreparedModel:
    """Reference and plain module from a ``.pt2`` program (optionally with other weights);
    refused unless ``trust_program`` (see :func:`load_program`)."""
    program = load_program(path, trust_program=trust_program)
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

    from ..dtypes import numpy_to_tensor, tensor_to_numpy
    from ..keys import find_pair_keys
    from ..numerics import fold, infer_dim

    graph: Any = graph_module.graph  # a torch.fx.Graph (typed as Tensor | Module by torch)
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
        graph_module.recompile()  # type: ignore[operator]
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
