"""Shared fixtures for the library tests (and for tests/cli, which sees them automatically).

* ``fixtures_dir``: the repository's ``fixtures/`` folder (committed tiny HiFi-GAN checkpoints).
* ``fixture_models``: ``fixtures/models.py`` imported as a module (``build_generator``,
  ``apply_weight_norm``...); ``fixtures/`` is not a package, so it is loaded by path.
* ``save_pt`` / ``save_st`` / ``save_sharded``: write a checkpoint under ``tmp_path`` and return
  its path (``save_sharded`` writes shards with safetensors' own ``save_file`` plus a
  hand-written ``*.safetensors.index.json``).

Helpers that are plain functions live in modules of the ``tests`` package (it is one, so test
file names may repeat across folders) and are imported by name:
``tests.checkpoints`` (``read_pt``, ``read_checkpoint``) and ``tests.onnx_graph.builders``
(hand-built ONNX graphs). Fixtures of ``tests/cli/conftest.py`` are shared with
``tests/formats`` by import.

Hypothesis: the ``wnconvert`` profile (no deadline, no example database on disk) is loaded here.

Exports: the first ``torch.onnx.export`` (dynamo) of a worker builds torch's table of ONNX
translations (torchlib), and later ones reuse a copy of it (:func:`_share_torchlib_registry`):
torch rebuilds it on every export, most of a small model's export time.

Order: the test files that take longest run first (:func:`pytest_collection_modifyitems`), so
that ``make test``'s workers (``--dist loadfile --no-loadscope-reorder``: one file per worker at
a time, in collection order) do not end with one worker still running a long file alone.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hypothesis import settings

REPO_ROOT = Path(__file__).resolve().parent.parent

# CI draws the same examples on every run (derandomize): a red run is about the change under
# test and reproduces anywhere. The search for new failures is a separate, explicit step:
#   pytest tests/formats/test_fuzz.py --hypothesis-profile=fuzz   (random, many examples)
# and what it finds is kept as an @example, so CI checks it from then on.
settings.register_profile("wnconvert", deadline=None, database=None, print_blob=True,
                          derandomize=True)
settings.register_profile("fuzz", settings.get_profile("wnconvert"), derandomize=False,
                          max_examples=1000)
settings.load_profile("wnconvert")

# The files that take longest, longest first (wall time, measured on the 2-core development
# machine: docs/performance.md, "Test suite"). The first two wait on the package index most of
# the time, which the other worker's CPU-bound files fill.
# A file not listed follows them, by its number of tests marked slow; nothing depends on the order.
LONGEST_FIRST = (
    "tests/test_pre_commit_hook.py",  # two fresh hook environments, from the package index
    "tests/test_packaging.py",  # a wheel and a fresh virtual environment
    "tests/export/test_transformers_models.py",  # 13 exports of real model families
    "tests/export/test_onnx_export.py",
    "tests/cli/test_signals.py",  # 17 processes, each importing torch
    "tests/test_docs.py",
    "tests/cli/test_polygraphy_io.py",
    "tests/test_typing.py",  # mypy --strict over wnconvert, torch and numpy (a cold cache)
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first (longest-processing-time-first scheduling), each file's tests kept
    together and in their own order. xdist schedules files in this order when told not to
    reorder them by test count (``--no-loadscope-reorder``, which ``make test`` passes);
    by default it runs the files with most tests first, which are among the quickest."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    slow = Counter(item.location[0] for item in items if item.get_closest_marker("slow"))
    first_seen: dict[str, int] = {}
    for item in items:
        first_seen.setdefault(item.location[0], len(first_seen))

    def key(item: pytest.Item) -> tuple[int, int, int]:
        file = item.location[0]
        return rank.get(file, len(rank)), -slow[file], first_seen[file]

    items.sort(key=key)  # stable: a file's tests keep their order


_REGISTRATION = "torch.onnx._internal.exporter._registration"


def _share_torchlib_registry() -> bool:
    """Make ``ONNXRegistry.from_torchlib`` (which ``torch.onnx.export(dynamo=True)`` calls on
    every export) build the table once per process and per argument, then hand out copies.

    The table is built from torchlib's functions by reading and compiling their source (about
    0.8 CPU s each time, on exports of 1-3 s). A copy holds the same entries in new lists, so
    what one export registers (its ``custom_translation_table``) stays out of the others: the
    exported files are byte-identical (docs/performance.md, "Test suite"). Returns whether the
    shared table is in place; where torch's internals are not as expected (another torch
    version), nothing is patched and the suite is only slower.
    """
    registration = sys.modules.get(_REGISTRATION)
    registry_class = getattr(registration, "ONNXRegistry", None)
    build = getattr(registry_class, "from_torchlib", None)
    if registry_class is None or build is None:
        return False
    if getattr(build, "shared_by_the_tests", False):
        return True
    original = build.__func__
    built: dict[object, object] = {}

    def from_torchlib(cls: type, *args: object, **kwargs: object) -> object:
        try:
            key = (cls, args, tuple(sorted(kwargs.items())))
            hash(key)
        except TypeError:
            return original(cls, *args, **kwargs)
        if key not in built:
            built[key] = original(cls, *args, **kwargs)
        table = built[key]
        functions = getattr(table, "functions", None)
        if not isinstance(functions, dict) or not all(
                isinstance(entries, list) for entries in functions.values()):
            return original(cls, *args, **kwargs)
        copy = object.__new__(cls)
        copy.__dict__.update(vars(table))
        copy.functions = {target: list(entries) for target, entries in functions.items()}
        return copy

    from_torchlib.shared_by_the_tests = True  # type: ignore[attr-defined]
    from_torchlib.unshared = original  # type: ignore[attr-defined]
    registry_class.from_torchlib = classmethod(from_torchlib)
    return True


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Share torchlib's table once a test has loaded torch's exporter (cheap until then)."""
    if _REGISTRATION in sys.modules:
        _share_torchlib_registry()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``/work/main/fixtures`` (wherever the repository is checked out)."""
    return REPO_ROOT / "fixtures"


@pytest.fixture(scope="session")
def fixture_models(fixtures_dir: Path) -> ModuleType:
    """``fixtures/models.py`` as a module."""
    spec = importlib.util.spec_from_file_location("wnconvert_fixture_models",
                                                  fixtures_dir / "models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def save_pt(tmp_path: Path) -> Callable[..., Path]:
    """``save_pt(obj, name="model.pt") -> path``: ``torch.save`` into ``tmp_path``."""

    def save(obj: object, name: str = "model.pt") -> Path:
        path = tmp_path / name
        torch.save(obj, path)
        return path

    return save


@pytest.fixture
def save_st(tmp_path: Path) -> Callable[..., Path]:
    """``save_st(tensors, name="model.safetensors", metadata=None) -> path`` (safetensors'
    own writer)."""
    from safetensors.torch import save_file

    def save(tensors: Mapping[str, torch.Tensor], name: str = "model.safetensors",
             metadata: dict[str, str] | None = None) -> Path:
        path = tmp_path / name
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
        return path

    return save


@pytest.fixture
def save_sharded(tmp_path: Path) -> Callable[..., Path]:
    """``save_sharded(shards, stem="model", metadata=None) -> index path``.

    ``shards`` is a list of state dicts, one per shard file, written as
    ``<stem>-0000i-of-0000n.safetensors`` with a hand-written index (``weight_map`` and
    ``metadata.total_size``).
    """
    from safetensors.torch import save_file

    def save(shards: list[Mapping[str, torch.Tensor]], stem: str = "model",
             metadata: dict[str, str] | None = None, folder: Path | None = None) -> Path:
        folder = folder or tmp_path
        folder.mkdir(parents=True, exist_ok=True)
        weight_map: dict[str, str] = {}
        total = 0
        for i, shard in enumerate(shards):
            name = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file({k: v.contiguous() for k, v in shard.items()}, str(folder / name),
                      metadata=metadata)
            for key, tensor in shard.items():
                weight_map[key] = name
                total += tensor.numel() * tensor.element_size()
        index = folder / f"{stem}.safetensors.index.json"
        index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
        return index

    return save


@pytest.fixture
def shipped(tmp_path: Path, fixtures_dir: Path) -> Callable[[str], Path]:
    """Copy a shipped fixture into ``tmp_path`` (outputs land next to inputs)."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copyfile(fixtures_dir / name, target)
        return target

    return copy
