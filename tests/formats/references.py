"""What the reference libraries accept: the verdicts wnconvert's readers are held to."""

from __future__ import annotations

from pathlib import Path


def safetensors_reference_reads(path: Path, *, framework: str = "np") -> bool:
    """Whether ``safetensors.safe_open`` reads every tensor of ``path``.

    With numpy by default, as wnconvert reads tensors into numpy arrays: with numpy, safe_open
    also refuses more than 64 dims and a shape whose product overflows even when one axis is 0.
    ``framework="pt"`` reads the dtypes numpy lacks (BF16).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework) as f:
            for key in f.keys():
                f.get_tensor(key)
    except Exception:  # noqa: BLE001 - any refusal by the reference counts
        return False
    return True
