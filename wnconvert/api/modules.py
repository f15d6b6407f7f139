"""Live modules: fold every weight norm and spectral norm of an ``nn.Module`` in place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .progress import SILENT, Progress

if TYPE_CHECKING:
    import torch

    from ..modules import FoldedParameter, LeftInPlace


@dataclass(frozen=True)
class ModuleFoldResult:
    """What :func:`fold_module` folded, and what it left in place."""

    folded: list[FoldedParameter]
    left: list[LeftInPlace] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"action": "fold", "folded": [f.to_dict() for f in self.folded],
                "left": [item.to_dict() for item in self.left], "notes": list(self.notes)}


def fold_module(module: torch.nn.Module, *, progress: Progress = SILENT) -> ModuleFoldResult:
    """Remove, in place, every weight norm and spectral norm of ``module`` (nested modules
    included; legacy hooks and ``torch.nn.utils.parametrizations``, mixed freely), leaving
    plain parameters with their original names (``conv.weight``).

    Weight norm: ``w = g · v / ‖v‖``. Spectral norm: what eval mode computes, ``W_orig / σ``
    with ``σ = uᵀ · W_mat · v`` from the stored ``u``/``v`` (no power iteration; a 1-D weight
    is ``W / ‖W‖``). Both in float64, rounded once to the parameter's dtype, so the module's
    eval outputs are unchanged. A module in training mode is folded as eval mode would compute
    it (PyTorch would first run a power iteration on its next call): the result says so in
    ``notes``. Parametrizations that are neither (or chains of several) are left in place and
    listed in ``left``. Returns what was folded (name, kind, style, dim, shape, dtype, σ).
    """
    from torch import nn

    from ..modules import fold_sites, in_training_mode

    if not isinstance(module, nn.Module):
        raise InputError(f"fold_module takes a torch.nn.Module, not a {type(module).__name__}")
    notes = []
    training = in_training_mode(module)
    if training:
        shown = ", ".join(training[:3]) + (f", ... {len(training) - 3} more"
                                           if len(training) > 3 else "")
        notes.append(f"spectral norm of {shown} in training mode: folded as eval mode computes "
                     "it, from the stored u/v (no power iteration)")
    progress.status("folding weight norm and spectral norm")
    folded, left = fold_sites(module)
    for item in left:
        notes.append(f"{item.name}: {item.what}; left in place")
    for note in notes:
        progress.note(note)
    return ModuleFoldResult(folded, left, notes)
