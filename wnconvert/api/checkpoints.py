"""Checkpoint jobs: inspect, fold, decompose and restyle a checkpoint file.

Each job streams (tensors are read, converted and written one at a time, safetensors outputs
never held whole), publishes its output atomically, and never overwrites an input or, without
``force=True``, an existing file. The ``*_state_dict`` functions in :mod:`wnconvert.convert` do
the same conversions in memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import InputError
from .progress import SILENT, Progress

if TYPE_CHECKING:
    import torch

    from ..convert import Conversion
    from ..formats import Checkpoint
    from ..keys import PrefixChange

#: Output formats of a checkpoint job.
CheckpointFormat = Literal["pt", "safetensors"]
#: What a checkpoint job wrote: a ``.nemo`` input with a ``.nemo`` output gives ``nemo``.
WrittenFormat = Literal["pt", "safetensors", "nemo"]
#: Key styles of weight-norm pairs.
KeyStyle = Literal["parametrize", "legacy"]


@dataclass(frozen=True)
class CheckpointInspection:
    """What :func:`inspect_checkpoint` found: the container, every pair, totals."""

    data: dict[str, Any]

    @property
    def pairs(self) -> list[dict[str, Any]]:
        return list(self.data["pairs"])

    @property
    def totals(self) -> dict[str, Any]:
        return dict(self.data["totals"])

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``wnconvert inspect --json`` (schema version 1)."""
        return self.data


@dataclass(frozen=True)
class ConversionResult:
    """What a checkpoint job wrote."""

    action: str  # fold, decompose, restyle
    input: Path
    output: Path
    format: WrittenFormat
    pairs: list[dict[str, Any]]  # the pairs folded, created or renamed
    unchanged: int  # tensors copied as they are
    bytes_in: int  # tensor bytes read
    bytes_out: int  # tensor bytes written
    file_bytes: int  # bytes of the written file(s): headers and padding included
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``wnconvert fold/decompose/restyle --json``."""
        return {
            "action": self.action, "input": str(self.input), "output": str(self.output),
            "format": self.format, "pairs": self.pairs, "unchanged": self.unchanged,
            "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "file_bytes": self.file_bytes, "seconds": round(self.seconds, 4),
            "notes": self.notes,
        }


def open_checkpoint(source: Path | str | Checkpoint, *, key: str | None = None) -> Checkpoint:
    """``source`` opened (without running code from it), or as given when already open."""
    from ..formats import Checkpoint, load_checkpoint

    if isinstance(source, Checkpoint):
        if key is not None:
            raise InputError.template("{-key} selects the state dict of a file; a loaded "
                                      "Checkpoint already has one (drop it)")
        return source
    return load_checkpoint(Path(source), key=key)


def inspect_checkpoint(source: Path | str | Checkpoint, *, key: str | None = None,
                       progress: Progress = SILENT) -> CheckpointInspection:
    """Layout, every weight-norm pair (name, style, dim, shape, dtype, range of ``g``,
    zero-norm rows), the plain tensors :func:`decompose_checkpoint` would pick, and totals.
    Reads each pair once, streaming."""
    from ..inspection import inspect_checkpoint as inspect

    checkpoint = open_checkpoint(source, key=key)
    with progress.step("inspecting") as bar, _about(checkpoint.path):
        return CheckpointInspection(inspect(checkpoint, on_pair=bar))


def fold_checkpoint(source: Path | str | Checkpoint, output: Path | str | None = None, *,
                    key: str | None = None, to: CheckpointFormat | None = None,
                    prefix: PrefixChange | None = None, sn_dim: int | None = None,
                    force: bool = False, progress: Progress = SILENT) -> ConversionResult:
    """Fold every weight-norm pair and every spectral-norm site (both key styles) into its
    plain weight and write the checkpoint to ``output`` (default ``<stem>.folded.<ext>`` beside
    the input).

    ``w = g · v / ‖v‖`` in float64, rounded once to ``v``'s dtype; spectral norm as PyTorch's
    eval mode computes it, ``W_orig / σ`` with ``σ = uᵀ · W_mat · v`` from the stored vectors,
    its ``dim`` read from the lengths of ``u`` and ``v`` (``sn_dim`` picks it where several axes
    fit, a square weight; refused otherwise). Everything else in the file (other tensors,
    container entries, metadata, shards) is written back unchanged. ``to`` picks the format
    (default: ``output``'s suffix, else the input's). ``prefix`` renames the keys. For ONNX,
    see :func:`wnconvert.export_onnx`.
    """
    from ..convert import plan_fold

    _check_to(to)
    checkpoint = open_checkpoint(source, key=key)
    with _about(checkpoint.path):
        conversion = plan_fold(checkpoint.state_dict, prefix=prefix, spectral=True,
                               sn_dim=sn_dim)
    if not conversion.pairs and not conversion.spectral:
        raise InputError(
            f"{checkpoint.path}: no weight-norm pairs (*_g/*_v or "
            "parametrizations.*.original0/1) and no spectral norm (*_orig/_u/_v or "
            "parametrizations.*.original with .0._u/_v) found; nothing to fold (is it already "
            "folded? see wnconvert inspect)"
        )
    return _write(checkpoint, conversion, output=output, to=to, force=force,
                  progress=progress, action="folded")


def decompose_checkpoint(source: Path | str | Checkpoint, output: Path | str | None = None, *,
                         key: str | None = None, to: CheckpointFormat | None = None,
                         dim: int | None = 0, include: Sequence[str] = (),
                         exclude: Sequence[str] = (),
                         like: Path | str | Checkpoint | Mapping[str, torch.Tensor] | None = None,
                         style: KeyStyle = "parametrize", prefix: PrefixChange | None = None,
                         force: bool = False, progress: Progress = SILENT) -> ConversionResult:
    """Split plain weights into ``g`` (the norm, float64 rounded once) and ``v`` (the weight,
    bit for bit) and write the checkpoint to ``output`` (default ``<stem>.decomposed.<ext>``).

    Without ``like``: every floating ``*weight`` of rank >= 2 (or the keys ``include`` globs
    pick, less ``exclude``), normalized over all axes but ``dim`` (``None``: one norm over the
    whole tensor), keys in ``style``. With ``like`` (a state dict of the target model with
    weight norm applied, as a file or in memory): exactly its pairs with its dims and key style,
    every key checked, so the result loads with ``strict=True``.
    """
    from ..convert import plan_decompose
    from ..formats import Checkpoint

    _check_to(to)
    checkpoint = open_checkpoint(source, key=key)
    template: Any = None
    template_files: list[Path] = []
    where, values = "{path}", {"path": checkpoint.path}
    if isinstance(like, (str, Path, Checkpoint)):
        like_checkpoint = open_checkpoint(like)
        template, template_files = like_checkpoint.state_dict, like_checkpoint.input_files
        where, values = "{path} vs {-like=like}", {**values, "like": like_checkpoint.path}
    elif like is not None:
        template, where = like, "{path} vs a template state dict"
    with _about(where, **values):
        conversion = plan_decompose(checkpoint.state_dict, dim=dim, include=include,
                                    exclude=exclude, style=style, like=template, prefix=prefix)
    if template is None and not conversion.pairs:
        picked = ", ".join(include) if include else "*weight (rank >= 2)"
        raise InputError.template(
            "{path}: nothing to decompose: no plain floating tensor matches {picked}; adjust "
            "{-include}/{-exclude}", path=checkpoint.path, picked=picked)
    return _write(checkpoint, conversion, output=output, to=to, force=force, progress=progress,
                  action="decomposed", inputs=template_files)


def restyle_checkpoint(source: Path | str | Checkpoint, output: Path | str | None = None, *,
                       style: KeyStyle, key: str | None = None,
                       to: CheckpointFormat | None = None, force: bool = False,
                       progress: Progress = SILENT) -> ConversionResult:
    """Rename weight-norm keys to ``style`` (``legacy``: ``_g``/``_v``; ``parametrize``:
    ``parametrizations.<name>.original0/1``) and write the checkpoint to ``output`` (default
    ``<stem>.<style>.<ext>``); every tensor is copied bit for bit."""
    from ..convert import plan_restyle

    _check_to(to)
    checkpoint = open_checkpoint(source, key=key)
    with _about(checkpoint.path):
        conversion = plan_restyle(checkpoint.state_dict, style=style)
    if not conversion.pairs:
        raise InputError(f"{checkpoint.path}: no weight-norm pair needs renaming to the {style} "
                         "style (none found, or all already in it)")
    return _write(checkpoint, conversion, output=output, to=to, force=force, progress=progress,
                  action=style)


def save_checkpoint(checkpoint: Checkpoint | Mapping[str, torch.Tensor], output: Path | str, *,
                    fmt: CheckpointFormat | None = None, metadata: dict[str, str] | None = None,
                    force: bool = False) -> Path:
    """Write a checkpoint atomically; the format comes from ``fmt`` or ``output``'s suffix.

    ``checkpoint`` is what :func:`wnconvert.load_checkpoint` returned (its safetensors metadata
    is kept unless ``metadata`` is given) or a plain state dict. Returns the path written.
    """
    from ..formats import Checkpoint
    from ..formats import save_checkpoint as save_state_dict

    output = Path(output)
    if isinstance(checkpoint, Checkpoint):
        metadata = metadata if metadata is not None else checkpoint.metadata
        state_dict: Mapping[str, torch.Tensor] = checkpoint.state_dict
    else:
        state_dict = checkpoint
    save_state_dict(state_dict, output, fmt=fmt, metadata=metadata, force=force)
    return output


# --------------------------------------------------------------------------------------------


def _check_to(to: str | None) -> None:
    if to is not None and to not in ("pt", "safetensors"):
        hint = ("; ONNX is an export: wnconvert.export_onnx (wnconvert fold --to onnx)"
                if to == "onnx" else "")
        raise InputError.template("{-to=to}: a checkpoint job writes pt or safetensors{hint}",
                                  to=to, hint=hint)


@contextmanager
def _about(where: object, /, **values: Any) -> Iterator[None]:
    """Name the input file in input errors raised by the (path-agnostic) core (``where`` is a
    template when ``values`` are given, see :meth:`InputError.located`)."""
    try:
        yield
    except InputError as exc:
        path = values.get("path", where)
        if str(path) in str(exc):
            raise
        raise exc.located(where, **values) from None


def _write(checkpoint: Checkpoint, conversion: Conversion, *, output: Path | str | None,
           to: CheckpointFormat | None, force: bool, progress: Progress, action: str,
           inputs: Sequence[Path] = ()) -> ConversionResult:
    """Write a planned conversion, one tensor at a time, and say what was written."""
    from ..formats import default_output, output_format, write_checkpoint

    started = time.perf_counter()
    out = Path(output) if output is not None else None
    fmt = output_format(out, to, checkpoint)
    target = out if out is not None else default_output(checkpoint, action, fmt)
    total = len(conversion.plan)
    with progress.step(f"{conversion.action} → {target.name}") as bar:
        on_tensor: Callable[[str], None] | None = None
        if bar is not None:
            done = 0

            def on_tensor(name: str) -> None:
                nonlocal done
                done += 1
                bar(name, done, total)

        written = write_checkpoint(checkpoint, conversion.plan, target, fmt=fmt, force=force,
                                   on_tensor=on_tensor, inputs=list(inputs))
    source = checkpoint.source
    return ConversionResult(
        action=conversion.action, input=checkpoint.path, output=target, format=fmt,
        pairs=[*(pair.to_dict() for pair in conversion.pairs),
               *(site.to_dict() for site in conversion.spectral)],
        unchanged=conversion.unchanged,
        bytes_in=sum(source.info(k).nbytes for k in source.keys()),
        bytes_out=sum(item.info.nbytes for item in conversion.plan), file_bytes=written,
        seconds=time.perf_counter() - started, notes=list(conversion.notes),
    )
