"""Reading the checkpoints a test wrote (one definition for every test folder).

Reading goes through the reference libraries, not through wnconvert, so a test compares what
wnconvert wrote with what safetensors or ``torch.load(weights_only=True)`` makes of it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def read_pt(path: Path) -> dict[str, torch.Tensor]:
    """A ``.pt`` checkpoint as ``torch.load(weights_only=True)`` reads it, on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file (by name) with safetensors' loader, else :func:`read_pt`."""
    if path.name.endswith(".safetensors"):
        return load_file(str(path))
    return read_pt(path)
