"""What ``wnconvert inspect`` reports about a checkpoint, as plain data (rendered elsewhere).

The JSON form (``inspect --json``) is this dict; its schema is documented in
docs/checkpoints.md and versioned by ``schema``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import numerics
from .convert import find_pairs, select_for_decompose
from .formats import Checkpoint
from .formats.source import read_view
from .spectral import find_spectral_sites

SCHEMA_VERSION = 1


def inspect_checkpoint(
    checkpoint: Checkpoint, *, on_pair: Callable[[str, int, int], None] | None = None
) -> dict[str, Any]:
    """Layout, every weight-norm pair with statistics, every spectral-norm site (kind, dim,
    σ), what decompose would pick, and totals.

    Reads each pair's ``g`` and ``v`` once (streaming) to report ``g``'s range and zero-norm rows.
    """
    source = checkpoint.source
    pairs = find_pairs(source)
    pair_rows = []
    for i, pair in enumerate(pairs):
        g = numerics.as_float64(source.load(pair.keys.g_key))
        norms = numerics.squared_norms(read_view(source, pair.keys.v_key), pair.dim)
        finite_g = g[np.isfinite(g)]
        pair_rows.append(
            {
                **pair.to_dict(),
                "g_min": float(finite_g.min()) if finite_g.size else None,
                "g_max": float(finite_g.max()) if finite_g.size else None,
                "zero_norm_rows": int((norms == 0).sum()),
                "nonfinite_rows": int((~np.isfinite(norms)).sum() + (~np.isfinite(g)).sum()),
            }
        )
        if on_pair:
            on_pair(pair.weight_key, i + 1, len(pairs))
    spectral_rows = [_spectral_row(source, site) for site in find_spectral_sites(source)]
    picked = select_for_decompose(source)
    keys = source.keys()
    infos = {k: source.info(k) for k in keys}
    return {
        "schema": SCHEMA_VERSION,
        "container": checkpoint.layout(),
        "pairs": pair_rows,
        "spectral_norm": spectral_rows,
        "decompose_candidates": [
            {"name": k, "shape": list(infos[k].shape), "dtype": infos[k].dtype} for k in picked
        ],
        "totals": {
            "tensors": len(keys),
            "parameters": sum(i.numel for i in infos.values()),
            "bytes": sum(i.nbytes for i in infos.values()),
            "pairs": len(pair_rows),
            "pairs_by_style": {
                s: sum(1 for p in pairs if p.style == s) for s in ("parametrize", "legacy")
            },
            "zero_norm_rows": sum(r["zero_norm_rows"] for r in pair_rows),
            "spectral_norm": len(spectral_rows),
            "decompose_candidates": len(picked),
        },
    }


def _spectral_row(source: Any, site: Any) -> dict[str, Any]:
    """A spectral-norm site with σ (None where its dim is ambiguous, listed in ``dims``, or
    where a legacy checkpoint has no ``v``)."""
    sigma = None
    if site.dim is not None and site.keys.v_key is not None:
        sigma = numerics.spectral_sigma(read_view(source, site.keys.orig_key),
                                        read_view(source, site.keys.u_key),
                                        read_view(source, site.keys.v_key), site.dim)
    return {**site.to_dict(), "dims": list(site.dims), "sigma": sigma}
