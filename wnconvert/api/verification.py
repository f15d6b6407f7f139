"""Verification: an ONNX model checked on ONNX Runtime against its reference.

The reference is another ONNX model, a ``.pt2`` program (run only with ``trust_program=True``),
or a checkpoint loaded into the model that ``model`` builds (an ``nn.Module``, a callable, or
``"MODULE:CALLABLE"``). A failed check is a report with ``passed == False``, not an exception.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._requires import require_torch
from ..errors import InputError
from .progress import SILENT, Progress

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeAlias

    import torch

    from ..export import PreparedModel
    from ..formats import Checkpoint
    from ..keys import PrefixChange
    from ..verification import VerificationReport, VerifyOptions

    #: What builds the model: an ``nn.Module`` (copied, never changed), a callable returning
    #: one, or ``"MODULE:CALLABLE"`` / ``"path/file.py:CALLABLE"``.
    ModelSource: TypeAlias = "torch.nn.Module | Callable[..., torch.nn.Module] | str"


def verify(candidate: Path | str,
           reference: Path | str | Checkpoint | Mapping[str, torch.Tensor] | None = None, *,
           model: ModelSource | None = None, model_kwargs: Mapping[str, Any] | None = None,
           key: str | None = None, options: VerifyOptions | None = None,
           reports: Sequence[Path | str] = (), prefix: PrefixChange | None = None,
           trust_program: bool = False, force: bool = False,
           progress: Progress = SILENT) -> VerificationReport:
    """Check the ONNX model ``candidate`` against ``reference`` on ONNX Runtime.

    ``reference`` is another ONNX model (run on ONNX Runtime CPU), a ``.pt2`` program, or a
    checkpoint (path, loaded :class:`Checkpoint` or state dict) together with ``model`` that
    builds the network; with ``model`` alone (an ``nn.Module``), the module's own weights are
    the reference. ``options`` set providers, inputs and tolerances; ``reports`` (``.json``,
    ``.xml`` JUnit) are written whether the check passed or not (``force`` replaces existing
    ones). Returns the report: ``.passed``, ``.failures()``, ``.to_dict()``.
    """
    from ..formats.files import require_exists
    from ..verification import (
        VerifyOptions,
        plan_providers,
        verify_onnx_against_onnx,
        verify_onnx_against_torch,
    )
    from ..verification.report import check_report_paths, write_reports

    options = options if options is not None else VerifyOptions()
    candidate = check_candidate(candidate)
    if isinstance(reference, (str, Path)):
        require_exists(reference)
    check_trust(reference, model, trust_program=trust_program)
    report_paths = [Path(p) for p in reports]
    check_report_paths(report_paths, force=force, inputs=protected_inputs(
        candidate, *_paths(reference), options.inputs_file,
        model=model if isinstance(model, str) else None))
    plan_providers(options.providers, cuda_tf32=options.cuda_tf32)  # fail before loading
    prepared = load_reference(reference, model=model, model_kwargs=model_kwargs, key=key,
                              prefix=prefix, trust_program=trust_program)
    if prepared is None:
        progress.status(f"verifying {candidate} against {reference} (ONNX Runtime CPU)")
        with progress.step("verifying") as callback:
            report = verify_onnx_against_onnx(candidate, Path(str(reference)), options=options,
                                              progress=callback)
    else:
        if prepared.key_change:
            progress.note(f"note: {prepared.key_change}")
        progress.status(f"verifying {candidate} against {_name(reference, model)} (PyTorch CPU)")
        with progress.step("verifying") as callback:
            report = verify_onnx_against_torch(
                candidate, prepared.reference, options=options,
                reference_weights=prepared.weights, reference_info=prepared.description,
                progress=callback)
    report.reports_written = write_reports(report, report_paths, force=force)
    return report


def check_candidate(candidate: Path | str) -> Path:
    """The ONNX model :func:`verify` checks, refused (:class:`InputError`) when it is missing,
    not ``.onnx``, or a model ``onnx.checker`` refuses: the files ``check_onnx``, ``inspect``
    and ``fold_onnx`` refuse, with the same message (a gate on a broken file is no gate)."""
    from ..formats.files import require_exists
    from ..onnx_graph import open_model

    path = require_exists(candidate)
    if path.suffix.lower() != ".onnx":
        raise InputError(f"{path}: expected an .onnx model to verify")
    open_model(path)
    return path


def load_reference(reference: Path | str | Checkpoint | Mapping[str, torch.Tensor] | None, *,
                   model: ModelSource | None = None,
                   model_kwargs: Mapping[str, Any] | None = None, key: str | None = None,
                   prefix: PrefixChange | None = None,
                   trust_program: bool = False) -> PreparedModel | None:
    """The PyTorch reference that :func:`verify` runs: a ``.pt2`` program, or a checkpoint
    (path, :class:`Checkpoint` or state dict; or the module's own weights) loaded into what
    ``model`` builds; None for an ONNX reference, which runs as it is on ONNX Runtime."""
    from ..export import prepare_model
    from ..onnx_graph import open_model

    suffix = Path(str(reference)).suffix.lower() if isinstance(reference, (str, Path)) else ""
    if suffix == ".onnx":
        if model is not None or key:
            raise InputError.template("{reference}: an ONNX reference runs as it is; drop "
                                      "{-model}/{-key}", reference=reference)
        open_model(Path(str(reference)))  # refused like any ONNX input (onnx.checker)
        return None
    # Files and MODULE:CALLABLE names only: tensors or a module in hand mean torch is there.
    named = reference if isinstance(reference, (str, Path)) else model
    if isinstance(named, (str, Path)):
        require_torch(f"verifying against {named} (a PyTorch reference)")
    if suffix == ".pt2":
        if model is not None:
            raise InputError.template("{reference}: a .pt2 program is the model itself; drop "
                                      "{-model}", reference=reference)
        return prepare_program_source(Path(str(reference)), trust_program=trust_program)
    if model is None:
        raise InputError.template(
            "{what}: a checkpoint reference needs {-model} (MODULE:CALLABLE, a callable or an "
            "nn.Module) to build the network (or pass an .onnx/.pt2)",
            what=reference if suffix else "verify")
    name, state_dict = reference_state_dict(reference, model=model, key=key)
    if is_program(model):  # a program given the checkpoint's weights
        return prepare_program_source(Path(str(model)), trust_program=trust_program,
                                      state_dict=_renamed(state_dict, prefix), source=name)
    return prepare_model(state_dict, model=model, model_kwargs=dict(model_kwargs or {}),
                         source=name, need_plain=False, prefix=prefix)


def _renamed(state_dict: Mapping[str, torch.Tensor],
             prefix: PrefixChange | None) -> Mapping[str, torch.Tensor]:
    from ..export.torch_model import renamed_state_dict

    return renamed_state_dict(state_dict, prefix) if prefix else state_dict


def reference_state_dict(reference: Path | str | Checkpoint | Mapping[str, torch.Tensor] | None,
                         *, model: ModelSource, key: str | None
                         ) -> tuple[str, Mapping[str, torch.Tensor]]:
    """Where the weights come from (for messages) and the state dict itself."""
    from ..export.torch_model import build_model, model_label
    from ..formats import Checkpoint, load_checkpoint

    if isinstance(reference, (str, Path)):
        return str(reference), load_checkpoint(Path(reference), key=key).materialize()
    if key is not None:
        raise InputError.template("{-key} selects the state dict of a checkpoint file; drop "
                                  "it for an in-memory one")
    if isinstance(reference, Checkpoint):
        return str(reference.path), reference.materialize()
    if reference is not None:
        return "state dict", dict(reference)
    from torch import nn

    if not isinstance(model, nn.Module):
        raise InputError.template("no weights: pass a checkpoint, or an nn.Module as {-model} "
                                  "(its own weights are then used)")
    return f"the weights of {model_label(model)}", build_model(model, {}).state_dict()


def is_program(source: object) -> bool:
    """True when ``source`` names a ``.pt2`` program (as an input, reference or ``model``)."""
    return isinstance(source, (str, Path)) and str(source).lower().endswith(".pt2")


def check_trust(*sources: object, trust_program: bool) -> None:
    """Before anything else: an untrusted ``.pt2`` among ``sources`` is refused (loading one
    runs code from the file), and ``trust_program`` without any ``.pt2`` would be ignored."""
    from ..export.program import require_trust

    programs = [Path(str(s)) for s in sources if is_program(s)]
    for program in programs:
        require_trust(program, trust_program=trust_program)
    if trust_program and not programs:
        raise InputError.template("{-trust_program} applies to a .pt2 program (the input, the "
                                  "reference or the model); this job reads none (drop it)")


def prepare_program_source(path: Path, *, trust_program: bool,
                           state_dict: Mapping[str, torch.Tensor] | None = None,
                           source: str | None = None) -> PreparedModel:
    """A ``.pt2`` program as reference and export source, optionally with other weights
    (see :func:`wnconvert.export.load_program`)."""
    from ..export import prepare_program

    return prepare_program(path, trust_program=trust_program, state_dict=state_dict,
                           source=source)


def protected_inputs(*paths: Path | None, model: str | None = None) -> list[Path]:
    """Every file a job reads, so that no output is one of them (even with ``force``).

    The given paths, the external data files of ``.onnx`` ones, and the source file of a
    ``model="path/to/file.py:CALLABLE"``.
    """
    found: list[Path] = []
    for path in paths:
        if path is None:
            continue
        found.append(path)
        if path.suffix.lower() == ".onnx" and path.is_file():
            from ..onnx_graph.protoio import load_model

            with suppress(InputError, OSError):  # unreadable: the job itself says why
                found.extend(load_model(path).data_files)
    target = (model or "").rpartition(":")[0]
    if target.endswith(".py") or "/" in target or os.sep in target:
        found.append(Path(target))
    return found


def _paths(reference: object) -> list[Path]:
    return [Path(reference)] if isinstance(reference, (str, Path)) else []


def _name(reference: object, model: object) -> str:
    if isinstance(reference, (str, Path)):
        return str(reference)
    from ..export.torch_model import model_label

    return "state dict" if reference is not None else model_label(model)
