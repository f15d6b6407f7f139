"""Polygraphy's JSON data files: input feeds and ``RunResults``, read and written without
Polygraphy and without unpickling anything.

Formats (Polygraphy's ``polygraphy.json`` serde, as ``polygraphy run --save-inputs`` and
``--save-outputs`` write them):

* inputs: a JSON list of feed dicts, ``[{"x": ARRAY, ...}, ...]``, one per iteration;
* outputs: ``{"lst": [[RUNNER, [ITERATION, ...]], ...], "polygraphy_class": "RunResults"}``
  where an ``ITERATION`` is ``{"outputs": {"y": ARRAY, ...}, "runtime": SECONDS,
  "runner_name": RUNNER, "polygraphy_class": "IterationResult"}``;
* an ``ARRAY`` is ``{"array": BASE64 of numpy.save, "polygraphy_class": "ndarray"}``, in outputs
  wrapped as ``{"values": ARRAY, "polygraphy_class": "LazyArray"}``.

Files of older Polygraphy versions mark a class as ``"__polygraphy_encoded_<class>":
"polygraphy_serialized_json_type"`` instead of ``polygraphy_class``; they are read the same way.

Reading checks every ``.npy`` header against the bytes that follow it before anything is
allocated (:func:`wnconvert.export.inputs.read_npy`): plain numeric dtypes only (no objects, so
no pickles), the data exactly as large as the declared shape, at most
:data:`~wnconvert.export.inputs.MAX_INPUT_BYTES` per array. Anything else (another
``polygraphy_class``, a malformed structure) is an :class:`InputError` naming the file.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:
    from typing import TypeAlias

    import numpy as np

    Feed: TypeAlias = "dict[str, np.ndarray]"
    #: ``(runner name, one dict of outputs per iteration)`` in file order.
    RunnerResults: TypeAlias = "tuple[str, list[dict[str, np.ndarray]]]"

#: The ``polygraphy_class`` values read (``LazyNumpyArray``: Polygraphy's older name).
ARRAY_CLASSES = ("ndarray", "LazyArray", "LazyNumpyArray")
_FIX = "save it with polygraphy run --save-inputs/--save-outputs or wnconvert"
_LEGACY_PREFIX = "__polygraphy_encoded_"
_LEGACY_MARKER = "polygraphy_serialized_json_type"


class _Malformed(ValueError):
    """What is wrong, said in terms of the file's structure; becomes one InputError line."""


def load_feeds(path: Path | str) -> list[Feed]:
    """The feeds of a Polygraphy inputs file (``--save-inputs``): one dict of named arrays per
    iteration, in order. :class:`InputError` for anything but that."""
    path = Path(path)
    data = _load_json(path)
    try:
        if not isinstance(data, list):
            raise _Malformed(f"expected a JSON list of feeds (input name -> array), found "
                             f"{_kind(data)}")
        if not data:
            raise _Malformed("holds no feeds; a check on no inputs compares nothing")
        return [_arrays(feed, f"feed {index}") for index, feed in enumerate(data)]
    except _Malformed as exc:
        raise InputError(f"{path}: not a Polygraphy inputs file: {exc}; {_FIX}") from None


def load_run_results(path: Path | str) -> list[RunnerResults]:
    """The runners of a Polygraphy ``RunResults`` file (``--save-outputs``), in file order."""
    path = Path(path)
    data = _load_json(path)
    try:
        if not isinstance(data, dict) or data.get("polygraphy_class") != "RunResults":
            raise _Malformed(f"expected a RunResults object, found {_kind(data)}")
        _check_keys(data, {"lst", "polygraphy_class"}, "RunResults")
        runners = data.get("lst")
        if not isinstance(runners, list) or not runners:
            raise _Malformed("RunResults 'lst' holds no runners")
        results: list[RunnerResults] = []
        for index, entry in enumerate(runners):
            if (not isinstance(entry, list) or len(entry) != 2
                    or not isinstance(entry[0], str) or not isinstance(entry[1], list)):
                raise _Malformed(f"runner {index} is not [name, [iteration, ...]]")
            name, iterations = entry
            if not iterations:
                raise _Malformed(f"runner {name!r} has no iterations")
            results.append((name, [_iteration(item, f"runner {name!r} iteration {i}")
                                   for i, item in enumerate(iterations)]))
        names = [name for name, _ in results]
        if len(set(names)) != len(names):
            raise _Malformed("two runners have the same name")
        return results
    except _Malformed as exc:
        raise InputError(f"{path}: not a Polygraphy outputs file: {exc}; {_FIX}") from None


def feeds_json(feeds: Sequence[Mapping[str, np.ndarray]]) -> bytes:
    """A Polygraphy inputs file of ``feeds`` (``polygraphy run --load-inputs`` reads it)."""
    data = [{name: encode_array(array) for name, array in feed.items()} for feed in feeds]
    return (json.dumps(data, indent=4) + "\n").encode("utf-8")


def run_results_json(runners: Sequence[tuple[str, Sequence[Mapping[str, np.ndarray]]]], *,
                     runtimes: Mapping[str, Sequence[float]] | None = None) -> bytes:
    """A Polygraphy ``RunResults`` file (``polygraphy run --load-outputs`` reads it): each
    runner's outputs, one dict per iteration; ``runtimes`` in seconds (0 where not given)."""
    lst = []
    for name, iterations in runners:
        times = (runtimes or {}).get(name, ())
        lst.append([name, [
            {"outputs": {out: {"values": encode_array(array), "polygraphy_class": "LazyArray"}
                         for out, array in outputs.items()},
             "runtime": float(times[i]) if i < len(times) else 0.0,
             "runner_name": name, "polygraphy_class": "IterationResult"}
            for i, outputs in enumerate(iterations)]])
    data = {"lst": lst, "polygraphy_class": "RunResults"}
    return (json.dumps(data, indent=4) + "\n").encode("utf-8")


def write_feeds(path: Path, feeds: Sequence[Mapping[str, np.ndarray]], *,
                force: bool = False) -> Path:
    """Write :func:`feeds_json` atomically (an existing file only with ``force``)."""
    return _write(path, feeds_json(feeds), force=force)


def write_run_results(path: Path, runners: Sequence[tuple[str, Sequence[Mapping[str,
                                                                               np.ndarray]]]],
                      *, runtimes: Mapping[str, Sequence[float]] | None = None,
                      force: bool = False) -> Path:
    """Write :func:`run_results_json` atomically (an existing file only with ``force``)."""
    return _write(path, run_results_json(runners, runtimes=runtimes), force=force)


def encode_array(array: np.ndarray) -> dict[str, str]:
    """Polygraphy's encoding of one array: ``numpy.save`` (no pickles) in base64. bfloat16,
    which ``numpy.load`` cannot read back without ml_dtypes, is written as float32 (exact)."""
    import numpy as np

    if array.dtype.name == "bfloat16":  # ml_dtypes' type, as wnconvert holds bfloat16
        array = array.astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return {"array": base64.b64encode(buffer.getvalue()).decode("ascii"),
            "polygraphy_class": "ndarray"}


def decode_array(value: object, where: str) -> np.ndarray:
    """One array (``ndarray``, or one wrapped in ``LazyArray``), checked before allocation."""
    from ..export.inputs import read_npy

    if not isinstance(value, dict):
        raise _Malformed(f"{where} is {_kind(value)}, not an encoded array")
    kind = value.get("polygraphy_class")
    if kind not in ARRAY_CLASSES:
        raise _Malformed(f"{where} has polygraphy_class {kind!r}; wnconvert reads arrays "
                         f"({', '.join(ARRAY_CLASSES)}) only")
    if kind != "ndarray":
        _check_keys(value, {"values", "polygraphy_class"}, f"{where} ({kind})")
        inner = value.get("values")
        if isinstance(inner, dict) and inner.get("polygraphy_class") != "ndarray":
            raise _Malformed(f"{where} holds polygraphy_class "
                             f"{inner.get('polygraphy_class')!r} in its values; wnconvert reads "
                             "ndarray values only")
        return decode_array(inner, where)
    _check_keys(value, {"array", "polygraphy_class"}, where)
    text = value.get("array")
    if not isinstance(text, str):
        raise _Malformed(f"{where} has no base64 'array' string")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _Malformed(f"{where} is not valid base64") from None
    try:
        array = read_npy(io.BytesIO(data), len(data))
    except (ValueError, EOFError) as exc:  # read_npy: wrong magic, header, dtype or size
        raise _Malformed(f"{where} is not a plain numeric .npy array ({exc})") from None
    if array.size == 0:
        raise _Malformed(f"{where} has no elements (shape {list(array.shape)}); a check on it "
                         "would compare nothing")
    return array


def _arrays(value: object, where: str) -> Feed:
    if not isinstance(value, dict) or "polygraphy_class" in value:
        raise _Malformed(f"{where} is {_kind(value)}, not a dict of input name -> array")
    if not value:
        raise _Malformed(f"{where} is empty")
    return {str(name): decode_array(array, f"{where} {name!r}") for name, array in value.items()}


def _iteration(value: object, where: str) -> Feed:
    if not isinstance(value, dict) or value.get("polygraphy_class") != "IterationResult":
        raise _Malformed(f"{where} is {_kind(value)}, not an IterationResult")
    _check_keys(value, {"outputs", "runtime", "runner_name", "polygraphy_class"}, where)
    outputs = value.get("outputs")
    if not isinstance(outputs, dict) or "polygraphy_class" in outputs:
        raise _Malformed(f"{where} has no 'outputs' dict")
    if not outputs:
        raise _Malformed(f"{where} has no outputs")
    return {str(name): decode_array(array, f"{where} output {name!r}")
            for name, array in outputs.items()}


def _check_keys(value: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _Malformed(f"{where} has unexpected key(s) {', '.join(map(repr, unknown))}")


def _kind(value: object) -> str:
    if isinstance(value, dict):
        kind = value.get("polygraphy_class")
        return f"a {kind!r} object" if kind is not None else "a JSON object"
    names = {list: "a JSON list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), f"a {type(value).__name__}")


def _load_json(path: Path) -> Any:
    """The parsed file; refused when it is larger than half the memory (it is read whole, and
    its arrays, three quarters of its size, are decoded next to it)."""
    from ..export.inputs import npz_memory_budget
    from .files import require_regular_file

    size = require_regular_file(path, what="Polygraphy JSON file").st_size
    budget = npz_memory_budget()
    if budget is not None and size > budget:
        raise InputError(f"{path}: {size:,} bytes of JSON is more than half this machine's "
                         "memory; save fewer or smaller arrays")
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8"), object_pairs_hook=_with_class)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); {_FIX}") from None
    except RecursionError:
        raise InputError(f"{path}: nested too deeply to be Polygraphy data; {_FIX}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None


def _with_class(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, an older Polygraphy's class marker turned into ``polygraphy_class``."""
    value = dict(pairs)
    legacy = [key for key, marker in value.items()
              if key.startswith(_LEGACY_PREFIX) and marker == _LEGACY_MARKER]
    if len(legacy) == 1 and "polygraphy_class" not in value:
        del value[legacy[0]]
        value["polygraphy_class"] = legacy[0].removeprefix(_LEGACY_PREFIX)
    return value


def _write(path: Path, data: bytes, *, force: bool) -> Path:
    from .atomic import atomic_file, check_output

    check_output(path, force=force)
    with atomic_file(path, force=force) as handle:
        handle.write(data)
    return path
