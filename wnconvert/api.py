"""The public Python API: one typed function per job, symmetric where it can be.

``load_checkpoint`` / ``save_checkpoint`` (``save_checkpoint`` accepts what ``load_checkpoint``
returns, or any state dict), ``fold_state_dict`` / ``decompose_state_dict`` /
``restyle_state_dict`` (torch state dicts in, torch state dicts out), ``fold_onnx`` /
``check_onnx`` (ONNX graphs), ``export_onnx`` and ``verify`` (returns the report). Plans and
other intermediate types stay internal. Errors are :class:`wnconvert.InputError`
(a ``ValueError``), :class:`wnconvert.ConversionNotPossible` (a ``RuntimeError``); a failed
verification is a report with ``passed == False``, not an exception.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .export import DynamicAxis, Exporter, ExportResult, InputSpec, PreparedModel
    from .formats import Checkpoint, Format
    from .keys import PrefixChange
    from .onnx_graph import CheckResult, FoldOutcome
    from .verify import VerificationReport, VerifyOptions


def save_checkpoint(checkpoint: Checkpoint | Mapping[str, torch.Tensor], output: Path | str, *,
                    fmt: Format | None = None, metadata: dict[str, str] | None = None,
                    force: bool = False) -> Path:
    """Write a checkpoint atomically; the format comes from ``fmt`` or ``output``'s suffix.

    ``checkpoint`` is what :func:`load_checkpoint` returned (its safetensors metadata is kept
    unless ``metadata`` is given) or a plain state dict. Returns the path written.
    """
    from .formats import Checkpoint
    from .formats import save_checkpoint as save_state_dict

    output = Path(output)
    if isinstance(checkpoint, Checkpoint):
        metadata = metadata if metadata is not None else checkpoint.metadata
        state_dict: Mapping[str, torch.Tensor] = checkpoint.state_dict
    else:
        state_dict = checkpoint
    save_state_dict(state_dict, output, fmt=fmt, metadata=metadata, force=force)
    return output


def fold_onnx(path: Path | str, output: Path | str | None = None, *, force: bool = False,
              reference: Path | str | None = None,
              reference_key: str | None = None) -> FoldOutcome:
    """Fold every weight-norm computation in the ONNX model at ``path`` into named initializers
    and write ``output`` (default ``<stem>.folded.onnx``) atomically; ``reference`` is a
    checkpoint whose tensor names go to initializers of equal value. No verification: call
    :func:`verify` with the output and ``path`` for that (the CLI does)."""
    from .onnx_graph import default_output, fold_file

    source = Path(path)
    target = Path(output) if output is not None else default_output(source)
    return fold_file(source, target, force=force,
                     reference=Path(reference) if reference is not None else None,
                     reference_key=reference_key)


def check_onnx(path: Path | str) -> CheckResult:
    """Where the ONNX model at ``path`` still computes weight norm (``.clean`` when nowhere).
    A model that ``onnx.checker`` refuses raises :class:`wnconvert.InputError`."""
    from .onnx_graph import check_file

    return check_file(Path(path))


def export_onnx(checkpoint: Path | str | Mapping[str, torch.Tensor], output: Path | str, *,
                model: str, inputs: Sequence[InputSpec],
                model_kwargs: Mapping[str, Any] | None = None, key: str | None = None,
                dynamic: Sequence[DynamicAxis] = (),
                opset: int | None = None, exporter: Exporter = "auto",
                prefix: PrefixChange | None = None, force: bool = False,
                seed: int = 0, trust_program: bool = False) -> ExportResult:
    """Export the model that ``model`` (``"MODULE:CALLABLE"`` or ``"path/file.py:CALLABLE"``)
    builds, loaded strictly with ``checkpoint``'s weights, to ONNX with no weight norm left
    (weights folded in float64). ``inputs`` give the example inputs' shapes and dtypes
    (seeded random data). Verify the result with :func:`verify`.

    ``model`` may also be a ``.pt2`` program: a program runs code from its file, so it is
    refused unless ``trust_program=True`` (and even then only if its graph calls core
    ATen/prims operators that touch no files)."""
    from .export import example_inputs, prepare_model
    from .export import export_onnx as export_module
    from .formats import load_checkpoint

    if isinstance(checkpoint, (str, Path)):
        source = str(checkpoint)
        state_dict: Mapping[str, torch.Tensor] = load_checkpoint(Path(checkpoint),
                                                                 key=key).materialize()
    else:
        source, state_dict = "state dict", checkpoint
    prepared = prepare_model(state_dict, model=model, model_kwargs=dict(model_kwargs or {}),
                             source=source, prefix=prefix, trust_program=trust_program)
    names = [spec.name for spec in inputs if spec.name]
    return export_module(prepared.plain, example_inputs(inputs, seed=seed), output=Path(output),
                         input_names=names if len(names) == len(inputs) else None,
                         dynamic=dynamic,
                         opset=opset, exporter=exporter, force=force)


def verify(candidate: Path | str, reference: Path | str | Mapping[str, torch.Tensor], *,
           model: str | None = None, model_kwargs: Mapping[str, Any] | None = None,
           key: str | None = None, options: VerifyOptions | None = None,
           prefix: PrefixChange | None = None,
           trust_program: bool = False) -> VerificationReport:
    """Check the ONNX model ``candidate`` against ``reference`` on ONNX Runtime.

    ``reference`` is another ONNX model, a ``.pt2`` program, or a checkpoint (path or state
    dict) together with ``model`` that builds the network (or is a ``.pt2`` program). A
    ``.pt2`` runs code from its file: it is refused unless ``trust_program=True``. Returns the
    report: ``.passed``, ``.failures()``, ``.to_dict()`` (the JSON schema of ``--report``)."""
    from .verify import VerifyOptions, verify_onnx_against_onnx, verify_onnx_against_torch

    options = options if options is not None else VerifyOptions()
    candidate = check_candidate(candidate)
    prepared = load_reference(reference, model=model, model_kwargs=model_kwargs, key=key,
                              prefix=prefix, trust_program=trust_program)
    if prepared is None:
        return verify_onnx_against_onnx(Path(candidate), Path(str(reference)), options=options)
    return verify_onnx_against_torch(Path(candidate), prepared.reference, options=options,
                                     reference_weights=prepared.weights,
                                     reference_info=prepared.description)


def check_candidate(candidate: Path | str) -> Path:
    """The ONNX model :func:`verify` checks, refused (:class:`InputError`) when it is missing,
    not ``.onnx``, or a model ``onnx.checker`` refuses: the files ``check_onnx``, ``inspect``
    and ``fold_onnx`` refuse, with the same message (a gate on a broken file is no gate)."""
    from .errors import InputError, InputNotFound
    from .onnx_graph import open_model

    path = Path(candidate)
    if not path.exists():
        raise InputNotFound(f"{path}: no such file or directory; check the path")
    if path.suffix.lower() != ".onnx":
        raise InputError(f"{path}: expected an .onnx model to verify")
    open_model(path)
    return path


def load_reference(reference: Path | str | Mapping[str, torch.Tensor], *,
                   model: str | None = None, model_kwargs: Mapping[str, Any] | None = None,
                   key: str | None = None, prefix: PrefixChange | None = None,
                   trust_program: bool = False) -> PreparedModel | None:
    """The PyTorch reference that :func:`verify` runs: a ``.pt2`` program, or a checkpoint
    (path or state dict) loaded into what ``model`` builds; None for an ONNX reference, which
    runs as it is on ONNX Runtime. A ``.pt2`` (as ``reference`` or ``model``) is refused
    unless ``trust_program=True``: loading it runs code from the file."""
    from .errors import InputError
    from .export import prepare_model, prepare_program
    from .formats import load_checkpoint
    from .onnx_graph import open_model

    suffix = Path(str(reference)).suffix.lower() if isinstance(reference, (str, Path)) else ""
    if suffix == ".onnx":
        if model or key:
            raise InputError(f"{reference}: an ONNX reference runs as it is; drop model=/key=")
        open_model(Path(str(reference)))  # refused like any ONNX input (onnx.checker)
        return None
    if suffix == ".pt2":
        if model:
            raise InputError(f"{reference}: a .pt2 program is the model itself; drop model=")
        return prepare_program(Path(str(reference)), trust_program=trust_program)
    if not model:
        raise InputError(f"{reference if suffix else 'verify'}: a checkpoint reference needs "
                         "model='MODULE:CALLABLE' to build the network (or pass an .onnx/.pt2)")
    if isinstance(reference, (str, Path)):
        name = str(reference)
        state_dict = load_checkpoint(Path(reference), key=key).materialize()
    else:
        name, state_dict = "state dict", dict(reference)
    return prepare_model(state_dict, model=model, model_kwargs=dict(model_kwargs or {}),
                         source=name, need_plain=False, prefix=prefix,
                         trust_program=trust_program)
