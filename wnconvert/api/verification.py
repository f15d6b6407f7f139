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
    from ..onnx_graph import LazyModel
    from ..verification import Recording, VerificationReport, VerifyOptions

    #: What builds the model: an ``nn.Module`` (copied, never changed), a callable returning
    #: one, or ``"MODULE:CALLABLE"`` / ``"path/file.py:CALLABLE"``.
    ModelSource: TypeAlias = "torch.nn.Module | Callable[..., torch.nn.Module] | str"


def verify(candidate: Path | str,
           reference: Path | str | Checkpoint | Mapping[str, torch.Tensor] | None = None, *,
           model: ModelSource | None = None, model_kwargs: Mapping[str, Any] | None = None,
           key: str | None = None, options: VerifyOptions | None = None,
           reports: Sequence[Path | str] = (), prefix: PrefixChange | None = None,
           trust_program: bool = False, force: bool = False,
           reference_outputs: Path | str | None = None, reference_runner: str | None = None,
           save_inputs: Path | str | None = None, save_outputs: Path | str | None = None,
           progress: Progress = SILENT) -> VerificationReport:
    """Check the ONNX model ``candidate`` against ``reference`` on ONNX Runtime.

    ``reference`` is another ONNX model (run on ONNX Runtime CPU), a ``.pt2`` program, or a
    checkpoint (path, loaded :class:`Checkpoint` or state dict) together with ``model`` that
    builds the network; with ``model`` alone (an ``nn.Module``), the module's own weights are
    the reference. ``options`` set providers, inputs and tolerances; ``reports`` (``.json``,
    ``.xml`` JUnit) are written whether the check passed or not (``force`` replaces existing
    ones). Returns the report: ``.passed``, ``.failures()``, ``.to_dict()``.

    Polygraphy's data (see :mod:`wnconvert.formats.polygraphy_json`): ``reference_outputs``, a
    ``RunResults`` file saved by ``polygraphy run --save-outputs`` (say, from TensorRT), is the
    reference instead of ``reference``/``model``; it needs ``options.inputs_file``, the
    Polygraphy inputs file (``--save-inputs``) the outputs were computed from, and
    ``reference_runner`` to pick one runner when it holds several. ``save_inputs`` writes the
    feeds of every case as a Polygraphy inputs file, ``save_outputs`` the reference's and each
    provider's outputs as ``RunResults`` (written whether the check passed or not).
    """
    from ..formats.files import require_exists
    from ..verification import (
        Recording,
        VerifyOptions,
        plan_providers,
        verify_onnx_against_onnx,
        verify_onnx_against_outputs,
        verify_onnx_against_torch,
    )
    from ..verification.report import check_report_paths

    options = options if options is not None else VerifyOptions()
    # The candidate is read and checked once; the verification works on that reading.
    read = _open_candidate(candidate)
    candidate = read.path
    outputs_path = _check_reference_outputs(reference_outputs, reference_runner,
                                            reference=reference, model=model)
    if outputs_path is None and reference is None and model is None:
        raise InputError.template("{candidate}: nothing to verify against; give {-reference} "
                                  "(a checkpoint with {-model}, a .pt2 or an .onnx) or "
                                  "{-reference_outputs} (outputs saved by Polygraphy)",
                                  candidate=candidate)
    if isinstance(reference, (str, Path)):
        require_exists(reference)
    check_trust(reference, model, trust_program=trust_program)
    report_paths = [Path(p) for p in reports]
    inputs = [candidate, *read.data_files,
              *protected_inputs(*_paths(reference), options.inputs_file, outputs_path,
                                model=model if isinstance(model, str) else None)]
    check_report_paths(report_paths, force=force, inputs=inputs)
    saves = check_save_paths(save_inputs, save_outputs, reports=report_paths, force=force,
                             inputs=inputs)
    plan_providers(options.providers, cuda_tf32=options.cuda_tf32)  # fail before loading
    recording = Recording() if any(saves) else None
    if outputs_path is not None:
        progress.status(f"verifying {candidate} against the outputs saved in {outputs_path}")
        with progress.step("verifying") as callback:
            report = verify_onnx_against_outputs(candidate, outputs_path,
                                                 runner=reference_runner, options=options,
                                                 progress=callback, recording=recording,
                                                 candidate_model=read)
        _finish(report, report_paths, saves, recording, force=force, progress=progress)
        return report
    prepared = load_reference(reference, model=model, model_kwargs=model_kwargs, key=key,
                              prefix=prefix, trust_program=trust_program)
    if prepared is None:
        progress.status(f"verifying {candidate} against {reference} (ONNX Runtime CPU)")
        with progress.step("verifying") as callback:
            report = verify_onnx_against_onnx(candidate, Path(str(reference)), options=options,
                                              progress=callback, recording=recording,
                                              candidate_model=read)
    else:
        if prepared.key_change:
            progress.note(f"note: {prepared.key_change}")
        progress.status(f"verifying {candidate} against {_name(reference, model)} (PyTorch CPU)")
        with progress.step("verifying") as callback:
            report = verify_onnx_against_torch(
                candidate, prepared.reference, options=options,
                reference_weights=prepared.weights, reference_info=prepared.description,
                progress=callback, recording=recording, candidate_model=read)
    _finish(report, report_paths, saves, recording, force=force, progress=progress)
    return report


def _finish(report: VerificationReport, report_paths: Sequence[Path],
            saves: tuple[Path | None, Path | None], recording: Recording | None, *,
            force: bool, progress: Progress) -> None:
    """Write the reports and the Polygraphy files, whether the check passed or not."""
    from ..verification.report import write_reports

    report.reports_written = write_reports(report, report_paths, force=force)
    if recording is not None:
        write_recording(recording, *saves, force=force, progress=progress)


def _check_reference_outputs(path: Path | str | None, runner: str | None, *,
                             reference: object, model: object) -> Path | None:
    """The Polygraphy outputs file that is the reference, refused next to another reference
    (``runner`` without it is refused as ignored)."""
    from ..formats.files import require_exists

    if path is None:
        if runner is not None:
            raise InputError.template("{-reference_runner} picks a runner of "
                                      "{-reference_outputs}; drop it")
        return None
    if reference is not None or model is not None:
        raise InputError.template("{-reference_outputs=path}: the saved outputs are the "
                                  "reference; drop {-reference}/{-model}", path=path)
    if Path(path).suffix.lower() != ".json":
        raise InputError.template("{-reference_outputs=path}: expected a Polygraphy outputs "
                                  "file (.json, polygraphy run --save-outputs)", path=path)
    return require_exists(path)


def check_save_paths(save_inputs: Path | str | None, save_outputs: Path | str | None, *,
                     reports: Sequence[Path] = (), force: bool,
                     inputs: Sequence[Path] = ()) -> tuple[Path | None, Path | None]:
    """``save_inputs``/``save_outputs`` as paths, refused before any work when not ``.json``,
    the same file as each other or a report, an input, or existing without ``force``."""
    from ..formats.atomic import check_output, same_file

    paths = (None if save_inputs is None else Path(save_inputs),
             None if save_outputs is None else Path(save_outputs))
    taken = list(reports)
    for label, path in zip(("save_inputs", "save_outputs"), paths, strict=True):
        if path is None:
            continue
        if path.suffix.lower() != ".json":
            raise InputError.template("{-" + label + "=path}: Polygraphy data is JSON; name "
                                      "the file .json", path=path)
        if any(same_file(path, other) or path == other for other in taken):
            raise InputError.template("{-" + label + "=path}: already written as another "
                                      "output of this job; give each output its own file",
                                      path=path)
        check_output(path, force=force, inputs=inputs)
        taken.append(path)
    return paths


def write_recording(recording: Recording, save_inputs: Path | None, save_outputs: Path | None,
                    *, force: bool, progress: Progress = SILENT) -> None:
    """Write what a verification recorded as Polygraphy files (see :func:`verify`)."""
    from ..formats.polygraphy_json import write_feeds, write_run_results

    if save_inputs is not None:
        write_feeds(save_inputs, recording.feeds, force=force)
        progress.note(f"saved {len(recording.feeds)} feed(s) to {save_inputs} (Polygraphy "
                      "inputs)")
    if save_outputs is not None:
        runners = recording.runners()
        write_run_results(save_outputs, runners, runtimes=recording.runtimes, force=force)
        progress.note(f"saved the outputs of {', '.join(name for name, _ in runners)} to "
                      f"{save_outputs} (Polygraphy RunResults)")


def check_candidate(candidate: Path | str) -> Path:
    """The ONNX model :func:`verify` checks, refused (:class:`InputError`) when it is missing,
    not ``.onnx``, or a model ``onnx.checker`` refuses: the files ``check_onnx``, ``inspect``
    and ``fold_onnx`` refuse, with the same message (a gate on a broken file is no gate)."""
    return _open_candidate(candidate).path


def _open_candidate(candidate: Path | str) -> LazyModel:
    """:func:`check_candidate`, keeping the model as read (tensor bytes not loaded)."""
    from ..formats.files import require_exists
    from ..onnx_graph import open_model

    path = require_exists(candidate)
    if path.suffix.lower() != ".onnx":
        raise InputError(f"{path}: expected an .onnx model to verify")
    return open_model(path)


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
