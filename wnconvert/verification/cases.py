"""Input cases: seeded random draws or real data, plus a second size of the dynamic axes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import InputError
from ..export.inputs import InputSpec, check_input_size, load_inputs_npz, random_array
from .compare import dtype_name
from .results import CaseInfo
from .runners import InputSignature
from .tolerance import VerifyOptions

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class InputCase:
    info: CaseInfo
    feeds: dict[str, np.ndarray]


class CasePlan:
    """The input sets to run, generated one at a time (``runs`` draws may be many; only the
    case in use is in memory). ``len()`` is the number of cases."""

    def __init__(self, signature: Sequence[InputSignature], options: VerifyOptions) -> None:
        self._options = options
        self._arrays: dict[str, np.ndarray] | None = None
        self._feeds: list[dict[str, np.ndarray]] | None = None
        self._second: dict[str, tuple[int, ...]] | None = None
        if options.inputs_file is not None and options.inputs_file.suffix.lower() == ".json":
            # A Polygraphy file's feeds are the cases, exactly: no second size is added, so
            # outputs Polygraphy saved for the same feeds line up one to one.
            self._feeds = _polygraphy_feeds(signature, options.inputs_file)
            self._groups = {}
            return
        if options.inputs_file is not None:
            self._arrays = _file_inputs(signature, options.inputs_file)
            self._shapes = {name: tuple(a.shape) for name, a in self._arrays.items()}
        else:
            self._shapes = _input_shapes(signature, options)
            self._dtypes = _input_dtypes(signature, options)
            for name, shape in self._shapes.items():
                check_input_size(f"{name!r} ({_dims_text(shape)})", shape, self._dtypes[name],
                                 given=False)
        self._groups = _dynamic_groups(signature, options)
        if self._groups:
            second = _resize(self._shapes, self._groups, grow=self._arrays is None)
            if second != self._shapes:
                self._second = second
                if self._arrays is None:  # doubled dynamic axes: generated, so bounded too
                    for name, shape in second.items():
                        check_input_size(f"{name!r} at the second size ({_dims_text(shape)})",
                                         shape, self._dtypes[name], given=False)

    def __len__(self) -> int:
        if self._feeds is not None:
            return len(self._feeds)
        first = 1 if self._arrays is not None else self._options.runs
        return first + (self._second is not None)

    def __iter__(self) -> Iterator[InputCase]:
        options, second = self._options, self._second
        if self._feeds is not None:
            for index, feeds in enumerate(self._feeds):
                yield _case(f"feed {index}", "file", feeds, None)
            return
        if self._arrays is not None:
            arrays = self._arrays
            yield _case("inputs file", "file", arrays, None)
            if second is not None:
                cropped = {name: a[tuple(slice(0, n) for n in second[name])]
                           for name, a in arrays.items()}
                yield _case(_size_label(second, self._groups), "file", cropped, None)
            return
        for run in range(options.runs):
            feeds = _random_feeds(self._shapes, self._dtypes, seed=options.seed, draw=run)
            yield _case(f"run {run}", "random", feeds, (options.seed, run))
        if second is not None:
            feeds = _random_feeds(second, self._dtypes, seed=options.seed, draw=options.runs)
            yield _case(_size_label(second, self._groups), "random", feeds,
                        (options.seed, options.runs))


def same_feeds(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    """Whether two cases' feeds are the same arrays, bit for bit (names, dtypes, shapes and
    bytes: NaN payloads and signed zeros included). Outputs computed ahead on ``a`` serve
    ``b`` only then."""
    return a.keys() == b.keys() and all(
        a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
        and a[name].tobytes() == b[name].tobytes() for name in b)


def build_cases(signature: Sequence[InputSignature], options: VerifyOptions) -> list[InputCase]:
    """Every input case at once: ``runs`` draws (or the file's data) plus one at a second size.

    The second size doubles every dynamic axis for random data (doubling keeps any
    divisibility a model needs) and crops it to half for real data. Verification itself
    iterates a :class:`CasePlan` so only one case is in memory.
    """
    return list(CasePlan(signature, options))


def _case(label: str, source: Literal["random", "file"], feeds: dict[str, np.ndarray],
          seed: tuple[int, int] | None) -> InputCase:
    info = CaseInfo(label, source, {n: (tuple(a.shape), dtype_name(a)) for n, a in feeds.items()},
                    seed)
    return InputCase(info, feeds)


def _input_shapes(signature: Sequence[InputSignature],
                  options: VerifyOptions) -> dict[str, tuple[int, ...]]:
    specs = _specs_by_input(signature, options.input_specs)
    shapes: dict[str, tuple[int, ...]] = {}
    for sig in signature:
        spec = specs.get(sig.name)
        if spec is not None:
            if len(spec.shape) != len(sig.dims):
                raise InputError.template(
                    "{-inputs=text}: model input {name!r} has rank {rank} (dims {dims}), not "
                    "{given}; fix the shape", text=spec.text, name=sig.name, rank=len(sig.dims),
                    dims=_dims_text(sig.dims), given=len(spec.shape))
            for axis, (want, have) in enumerate(zip(spec.shape, sig.dims, strict=True)):
                if isinstance(have, int) and have != want:
                    raise InputError.template(
                        "{-inputs=text}: model input {name!r} has fixed size {have} on axis "
                        "{axis}, not {want}; fix the shape", text=spec.text, name=sig.name,
                        have=have, axis=axis, want=want)
            shapes[sig.name] = spec.shape
        else:
            shapes[sig.name] = tuple(
                d if isinstance(d, int) else _symbolic_default(d, options.default_dim)
                for d in sig.dims
            )
    return shapes


def _symbolic_default(name: str | None, default: int) -> int:
    # A batch axis is 1 in deployment; any other symbolic axis (time, tokens) gets `default`.
    return 1 if name and "batch" in name.lower() else default


def _dims_text(dims: Sequence[int | str | None]) -> str:
    return "x".join(str(d) if d is not None else "?" for d in dims)


def _specs_by_input(signature: Sequence[InputSignature],
                    specs: Sequence[InputSpec]) -> dict[str, InputSpec]:
    if not specs:
        return {}
    names = [sig.name for sig in signature]
    if any(spec.name for spec in specs):
        out: dict[str, InputSpec] = {}
        for spec in specs:
            if spec.name not in names:
                raise InputError.template("{-inputs=text}: the model has no input {name!r}; its "
                                          "inputs are {names}", text=spec.text, name=spec.name,
                                          names=", ".join(names))
            out[spec.name] = spec
        return out
    if len(specs) != len(names):
        raise InputError.template(
            "{-inputs} given {count} times but the model has {inputs} inputs ({names}); give "
            "one {-inputs} per positional input", count=len(specs), inputs=len(names),
            names=", ".join(names))
    return dict(zip(names, specs, strict=True))


def _input_dtypes(signature: Sequence[InputSignature], options: VerifyOptions) -> dict[str, str]:
    specs = _specs_by_input(signature, options.input_specs)
    dtypes = {}
    for sig in signature:
        spec = specs.get(sig.name)
        dtypes[sig.name] = spec.dtype if spec is not None and spec.dtype else sig.dtype
        if dtypes[sig.name] != sig.dtype:
            raise InputError.template(
                "{-inputs=text}: model input {name!r} takes {dtype}, not {given}; fix the dtype",
                text=spec.text if spec else sig.name, name=sig.name, dtype=sig.dtype,
                given=dtypes[sig.name])
    return dtypes


def _random_feeds(shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str], *,
                  seed: int, draw: int) -> dict[str, np.ndarray]:
    import numpy as np

    rng = np.random.default_rng([seed, draw])
    return {name: random_array(rng, shape, dtypes[name]) for name, shape in shapes.items()}


def _polygraphy_feeds(signature: Sequence[InputSignature],
                      path: Path) -> list[dict[str, np.ndarray]]:
    from ..formats.polygraphy_json import load_feeds

    feeds = load_feeds(path)
    # Polygraphy names every array after its input: no positional fallback, which would feed
    # a renamed model's inputs silently.
    return [_matched_arrays(signature, path, feed, f"feed {index}: ", by_position=False)
            for index, feed in enumerate(feeds)]


def _file_inputs(signature: Sequence[InputSignature], path: Path) -> dict[str, np.ndarray]:
    return _matched_arrays(signature, path, load_inputs_npz(path), "", by_position=True)


def _matched_arrays(signature: Sequence[InputSignature], path: Path,
                    data: Mapping[str, np.ndarray], where: str, *,
                    by_position: bool) -> dict[str, np.ndarray]:
    """``data`` as the model's inputs: by name, else (``by_position``) in order when the
    counts agree; each
    array of the input's dtype and shape (``where`` says which feed, for messages)."""
    path_where = f"{path}: {where}"
    names = [sig.name for sig in signature]
    if set(data) == set(names):
        arrays = {name: data[name] for name in names}
    elif by_position and len(data) == len(names):
        # np.savez(path, a, b) stores arr_0, arr_1...: use file order as positional order.
        arrays = dict(zip(names, data.values(), strict=True))
    else:
        raise InputError(
            f"{path_where}holds {len(data)} arrays ({', '.join(data)}) but the model has "
            f"{len(names)} inputs ({', '.join(names)}); save one array per input, named after it"
        )
    for sig in signature:
        array = arrays[sig.name]
        if dtype_name(array) != sig.dtype:
            raise InputError(f"{path_where}array for input {sig.name!r} is {dtype_name(array)}, "
                             f"the model takes {sig.dtype}; convert it with numpy .astype")
        if len(array.shape) != len(sig.dims) or any(
            isinstance(d, int) and d != s for d, s in zip(sig.dims, array.shape, strict=True)
        ):
            raise InputError(f"{path_where}array for input {sig.name!r} has shape "
                             f"{list(array.shape)}, the model takes {_dims_text(sig.dims)}")
    return arrays


def _dynamic_groups(signature: Sequence[InputSignature],
                    options: VerifyOptions) -> dict[str, list[tuple[str, int]]]:
    """Symbolic size name -> the (input, axis) places that share it."""
    groups: dict[str, list[tuple[str, int]]] = {}
    names = [sig.name for sig in signature]
    for sig in signature:
        for axis, dim in enumerate(sig.dims):
            if not isinstance(dim, int):
                key = dim if dim else f"{sig.name}.{axis}"
                groups.setdefault(key, []).append((sig.name, axis))
    for dyn in options.dynamic_axes:
        name = dyn.input_name(names)
        place = (name, dyn.axis)
        if any(place in places for places in groups.values()):
            continue
        groups.setdefault(dyn.dim_name or f"{name}.{dyn.axis}", []).append(place)
    return groups


def _resize(shapes: Mapping[str, tuple[int, ...]], groups: Mapping[str, list[tuple[str, int]]],
            *, grow: bool) -> dict[str, tuple[int, ...]]:
    new = {name: list(shape) for name, shape in shapes.items()}
    for places in groups.values():
        for name, axis in places:
            if axis >= len(new[name]):
                raise InputError.template("{-dynamic=text}: input {name!r} has only {rank} axes",
                                          text=f"{name}:{axis}", name=name,
                                          rank=len(new[name]))
        size = shapes[places[0][0]][places[0][1]]
        target = size * 2 if grow else max(1, size // 2)
        for name, axis in places:
            new[name][axis] = target
    return {name: tuple(shape) for name, shape in new.items()}


def _size_label(shapes: Mapping[str, tuple[int, ...]],
                groups: Mapping[str, list[tuple[str, int]]]) -> str:
    parts = [f"{key}={shapes[places[0][0]][places[0][1]]}" for key, places in groups.items()]
    return "second size " + ", ".join(parts)

