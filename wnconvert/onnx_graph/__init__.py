"""Weight norm inside ONNX models: find it, fold it, lint for it.

* :func:`inspect_file` lists the weight-norm computations a graph still runs, the initializers
  that look like ``g``/``v`` pairs, and initializers an exporter already folded but left
  nameless (``mul``, ``mul_1``, ...).
* :func:`check_file` is the CI lint: is the graph free of run-time weight norm?
* :func:`fold_file` replaces each computation by one initializer (float64, rounded once, the
  same numbers as the checkpoint fold), gives initializers an exporter named after ops their
  parameter names back (:mod:`.names`), and writes the model atomically, keeping its layout.

All three open the model with :func:`~.validate.open_model`, which refuses what
``onnx.checker`` (full check) refuses, so they accept and refuse the same files. Models are read
lazily (:mod:`.protoio`): tensor data is only read for the weights being folded or matched, so
these work on models of any size, with or without external data. Subgraphs are walked by
:mod:`.walk` only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..keys import find_pair_keys
from .analysis import GraphIndex, WeightNormSite, find_weight_norm, op_counts
from .fold import FoldResult, LayerFold, fold_model
from .hidden import find_all_weight_norm, pairs_read_at_run_time, spectral_read_at_run_time
from .names import LostName, Renamed, lost_names, restore_names
from .protoio import LazyModel, load_model, snapshot
from .protowrite import StagedOutput, WrittenFiles, data_file_name, plan_external, write_model
from .validate import open_model, pair_dim

if TYPE_CHECKING:
    from ..formats.source import TensorSource

__all__ = [
    "CheckResult",
    "FoldJob",
    "FoldOutcome",
    "FoldResult",
    "GvPair",
    "Inspection",
    "LayerFold",
    "LazyModel",
    "LostName",
    "Renamed",
    "WeightNormSite",
    "check_file",
    "data_file_name",
    "default_output",
    "find_weight_norm",
    "fold_file",
    "fold_model",
    "inspect_file",
    "load_model",
    "op_counts",
    "open_model",
    "restore_names",
    "write_model",
]

@dataclass(frozen=True)
class GvPair:
    """Two initializers named like a weight-norm pair (``x_g``/``x_v``, ``...original0/1``)."""

    parameter: str
    g: str
    v: str
    g_shape: tuple[int, ...]
    v_shape: tuple[int, ...]
    dim: int | None
    shapes_fit: bool
    computed_by: str | None  # the weight-norm computation using them, if any
    # Both read at run time by nothing recognized as weight norm (e.g. through a Transpose):
    # most likely weight norm the analysis cannot see (:func:`.hidden.pairs_read_at_run_time`).
    unrecognized: bool = False

    def to_dict(self) -> dict:
        return {
            "parameter": self.parameter,
            "g": self.g,
            "v": self.v,
            "g_shape": list(self.g_shape),
            "v_shape": list(self.v_shape),
            "dim": self.dim,
            "shapes_fit": self.shapes_fit,
            "computed_by": self.computed_by,
            "read_unrecognized": self.unrecognized,
        }


@dataclass
class Inspection:
    path: Path
    ir_version: int
    opsets: dict[str, int]
    producer: str
    external_data: bool
    tensor_bytes: int
    sites: list[WeightNormSite] = field(default_factory=list)
    pairs: list[GvPair] = field(default_factory=list)
    lost_names: list[LostName] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)
    inlined_functions: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "model": str(self.path),
            "ir_version": self.ir_version,
            "opsets": self.opsets,
            "producer": self.producer,
            "external_data": self.external_data,
            "tensor_bytes": self.tensor_bytes,
            "weight_norm": [site.to_dict() for site in self.sites],
            "pairs": [pair.to_dict() for pair in self.pairs],
            "folded_with_lost_names": [lost.to_dict() for lost in self.lost_names],
            "op_counts": self.ops,
            "inlined_functions": list(self.inlined_functions),
        }


@dataclass
class CheckResult:
    path: Path
    sites: list[WeightNormSite]
    inlined_functions: tuple[str, ...] = ()
    # g/v pairs read at run time by something not recognized as weight norm: not clean either.
    unrecognized_pairs: list[GvPair] = field(default_factory=list)
    # Spectral-norm weights (parameter names) read at run time with no recognized spectral norm.
    unrecognized_spectral: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.sites and not self.unrecognized_pairs and not self.unrecognized_spectral

    def to_dict(self) -> dict:
        return {
            "model": str(self.path),
            "clean": self.clean,
            "weight_norm": [site.to_dict() for site in self.sites],
            "unrecognized_pairs": [pair.to_dict() for pair in self.unrecognized_pairs],
            "unrecognized_spectral_norm": self.unrecognized_spectral,
            "inlined_functions": list(self.inlined_functions),
        }


@dataclass
class FoldOutcome:
    input: Path
    output: Path
    files: list[Path]  # written, final paths (data file first)
    result: FoldResult
    external_data: bool
    inlined_functions: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "input": str(self.input),
            "output": str(self.output),
            "files": [str(path) for path in self.files],
            "external_data": self.external_data,
            **self.result.to_dict(),
            "inlined_functions": list(self.inlined_functions),
        }


def default_output(path: Path) -> Path:
    """``model.onnx`` -> ``model.folded.onnx`` next to it."""
    return path.with_name(f"{path.stem}.folded.onnx")


def check_file(path: Path) -> CheckResult:
    """Find run-time weight norm in ``path`` (reads no tensor data but small constants)."""
    model = open_model(path)
    index = GraphIndex.build(model)
    sites = find_all_weight_norm(index)
    return CheckResult(path=Path(path), sites=sites, inlined_functions=model.inlined_functions,
                       unrecognized_pairs=[p for p in _pairs(index, sites) if p.unrecognized],
                       unrecognized_spectral=spectral_read_at_run_time(index, sites))


def inspect_file(path: Path) -> Inspection:
    model = open_model(path)
    proto = model.proto
    index = GraphIndex.build(model)
    sites = find_all_weight_norm(index)
    return Inspection(
        path=Path(path),
        ir_version=proto.ir_version,
        opsets={(o.domain or "ai.onnx"): o.version for o in proto.opset_import},
        producer=" ".join(p for p in (proto.producer_name, proto.producer_version) if p),
        external_data=model.has_external_data,
        tensor_bytes=model.tensor_nbytes(),
        sites=sites,
        pairs=_pairs(index, sites),
        lost_names=lost_names(model),
        ops=op_counts(proto.graph),
        inlined_functions=model.inlined_functions,
    )


def _pairs(index: GraphIndex, sites: list[WeightNormSite]) -> list[GvPair]:
    by_leaves = {(site.g, site.v): site.root for site in sites}
    unrecognized = {keys.weight_key for keys in pairs_read_at_run_time(index, sites)}
    pairs = []
    for keys in find_pair_keys(index.initializers):
        g_shape = tuple(index.initializers[keys.g_key].dims)
        v_shape = tuple(index.initializers[keys.v_key].dims)
        try:
            dim, fits = pair_dim(g_shape, v_shape), True
        except ValueError:
            dim, fits = None, False
        pairs.append(
            GvPair(
                parameter=keys.weight_key,
                g=keys.g_key,
                v=keys.v_key,
                g_shape=g_shape,
                v_shape=v_shape,
                dim=dim,
                shapes_fit=fits,
                computed_by=by_leaves.get((keys.g_key, keys.v_key)),
                unrecognized=keys.weight_key in unrecognized,
            )
        )
    return pairs


class FoldJob:
    """Fold ``path`` into ``output`` in steps, so a caller can verify before committing.

    ::

        with FoldJob(path, output, force=False) as job:   # reads the graph, plans the fold
            staged = job.write()                          # complete output in a private folder
            ...                                           # verify `staged`; raise to abandon
            outcome = job.commit()                        # moved into place atomically

    Leaving the block without :meth:`commit` (an exception, Ctrl-C) leaves nothing behind.
    """

    def __init__(self, path: Path, output: Path, *, force: bool, reference: Path | None = None,
                 reference_key: str | None = None, grid: str | None = None,
                 on_validated: Callable[[LazyModel], None] | None = None) -> None:
        self.path, self.output, self.force = Path(path), Path(output), force
        # Called with the input once it is read and validated (onnx.checker), before the fold:
        # work on the original model can start then (verification's reference run).
        self.on_validated = on_validated
        self.grid = grid  # reduced precision: see LayerFold.grid
        self.reference, self.reference_key = reference, reference_key
        self.model: LazyModel | None = None
        # The input as read and checked, before the fold edits ``model``: verification compares
        # against it, so the input is parsed once per job (:func:`.protoio.snapshot`).
        self.original: LazyModel | None = None
        self.result = FoldResult()
        self._staged: StagedOutput | None = None
        self._written: WrittenFiles | None = None

    def __enter__(self) -> FoldJob:
        from ..formats.atomic import check_output

        protected: tuple[Path, ...] = (self.path,)
        if self.reference is not None:
            protected += (Path(self.reference),)
        # Fail fast, before reading a large model, on an output that may not be written.
        check_output(self.output, force=self.force, inputs=protected)
        self.model = open_model(self.path)
        if self.on_validated is not None:
            self.on_validated(self.model)
        self.original = snapshot(self.model)
        reference = self._reference_source()
        if reference is not None:
            protected += tuple(reference[1])
        self.result = fold_model(self.model, grid=self.grid)
        try:
            self.result.renamed = restore_names(
                self.model, reference=reference[0] if reference is not None else None
            )
        except InputError as exc:
            if reference is None:
                raise
            raise exc.located(self.reference) from None  # name the reference file
        staged = StagedOutput(
            self.output,
            force=self.force,
            inputs=(*protected, *self.model.data_files),
            with_data=any(plan_external(self.model).values()),
        )
        self._staged = staged.__enter__()
        return self

    def _reference_source(self) -> tuple[TensorSource, list[Path]] | None:
        """The reference checkpoint's tensors (read lazily where the format allows) and its
        files."""
        if self.reference is None:
            return None
        from ..formats import load_checkpoint
        from ..formats.source import source_of

        checkpoint = load_checkpoint(self.reference, key=self.reference_key)
        return source_of(checkpoint.state_dict), list(checkpoint.input_files)

    def write(self, *, on_tensor: Callable[[str, int, int], None] | None = None) -> Path:
        """Write the whole output into the staging folder; returns the staged model's path."""
        assert self.model is not None and self._staged is not None, "use FoldJob in a with block"
        self._written = write_model(
            self.model,
            self._staged.path,
            data_name=data_file_name(self.output),
            on_tensor=on_tensor,
        )
        return self._staged.path

    def commit(self) -> FoldOutcome:
        assert self._staged is not None and self._written is not None, "write() first"
        files = self._staged.commit(self._written)
        return FoldOutcome(
            input=self.path,
            output=self.output,
            files=files,
            result=self.result,
            external_data=self._written.data is not None,
            inlined_functions=self.model.inlined_functions if self.model else (),
        )

    def __exit__(self, *exc_info: object) -> None:
        if self._staged is not None:
            self._staged.__exit__(*exc_info)


def fold_file(
    path: Path,
    output: Path,
    *,
    force: bool,
    reference: Path | None = None,
    reference_key: str | None = None,
    on_tensor: Callable[[str, int, int], None] | None = None,
) -> FoldOutcome:
    """Fold every weight-norm computation of ``path`` into ``output`` and give initializers
    their parameter names back (from exporter metadata, and by value from the checkpoint
    ``reference``), atomically.

    External tensors stay external, in ``<output>.data``; see :class:`FoldJob` to verify the
    output before it is moved into place.
    """
    with FoldJob(path, output, force=force, reference=reference,
                 reference_key=reference_key) as job:
        job.write(on_tensor=on_tensor)
        return job.commit()
