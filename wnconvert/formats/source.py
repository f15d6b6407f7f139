"""The common view of a checkpoint's tensors: names, shapes and dtypes before any data is read."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..dtypes import ITEMSIZE, name_of_torch, tensor_to_numpy

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..keys import PrefixChange


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # "float32", "bfloat16", ... (see wnconvert.dtypes)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]


class TensorSource(Protocol):
    """Read access to the tensors of one state dict (possibly lazy, possibly many files)."""

    def keys(self) -> list[str]: ...

    def info(self, key: str) -> TensorInfo: ...

    def load(self, key: str) -> np.ndarray: ...


class DictSource:
    """A TensorSource over an in-memory mapping of tensors."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self._tensors = tensors

    def keys(self) -> list[str]:
        return list(self._tensors.keys())

    def info(self, key: str) -> TensorInfo:
        t = self._tensors[key]
        return TensorInfo(tuple(t.shape), name_of_torch(t.dtype))

    def load(self, key: str) -> np.ndarray:
        return tensor_to_numpy(self._tensors[key])

    def load_original(self, key: str) -> Any:
        """The tensor object itself (pass-through tensors keep identity and every dtype)."""
        return self._tensors[key]


class LazyStateDict(Mapping):
    """A read-only Mapping view of a TensorSource; torch tensors are read on access."""

    def __init__(self, source: TensorSource) -> None:
        self.source = source
        self._keys = source.keys()
        self._key_set = set(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        from ..dtypes import numpy_to_tensor

        if key not in self._key_set:
            raise KeyError(key)
        return numpy_to_tensor(self.source.load(key))

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def info(self, key: str) -> TensorInfo:
        return self.source.info(key)


class RenamedSource:
    """A TensorSource whose keys are another source's keys under a prefix change
    (:class:`wnconvert.keys.PrefixChange`); keys outside the prefix are left out.

    Plans made over it name the renamed keys as ``source_key``: :meth:`original` maps them back
    for writers that read the underlying checkpoint directly.
    """

    def __init__(self, source: TensorSource, change: PrefixChange) -> None:
        from ..keys import rename_keys

        self.source = source
        self.change = change
        self._old = rename_keys(source.keys(), change)  # new -> old

    def keys(self) -> list[str]:
        return list(self._old)

    def original(self, key: str) -> str:
        return self._old.get(key, key)

    def info(self, key: str) -> TensorInfo:
        return self.source.info(self._old[key])

    def load(self, key: str) -> np.ndarray:
        return self.source.load(self._old[key])

    def view(self, key: str) -> np.ndarray:
        return read_view(self.source, self._old[key])


def read_view(source: TensorSource, key: str) -> np.ndarray:
    """A tensor for reading only: a memory-mapped view where the source offers one
    (safetensors), else :meth:`TensorSource.load`. Never write into the result."""
    view = getattr(source, "view", None)
    return view(key) if view is not None else source.load(key)


def source_of(state_dict: Mapping[str, torch.Tensor]) -> TensorSource:
    """The TensorSource behind a state dict (lazy ones keep their streaming source)."""
    if isinstance(state_dict, LazyStateDict):
        return state_dict.source
    return DictSource(state_dict)


@dataclass
class PlannedTensor:
    """One tensor of an output: its name, shape, dtype, and how to make it.

    ``produce`` is ``None`` for a tensor copied unchanged from ``source_key`` (writers may copy
    its bytes without decoding). ``source_key`` also decides which shard a tensor goes to.
    ``write_into``, where given, makes the same tensor as ``produce`` but hands it over in
    pieces: ``write_into(write)`` calls ``write(byte_offset, piece)`` (see
    :func:`wnconvert.numerics.fold_into`); streaming writers prefer it.
    """

    key: str
    info: TensorInfo
    source_key: str
    produce: Callable[[], np.ndarray] | None = None
    write_into: Callable[[Callable[[int, np.ndarray], None]], None] | None = None


def as_source(state: Mapping[str, Any] | TensorSource) -> TensorSource:
    """``state`` as a TensorSource: itself when it is one, else its state dict's source."""
    if (
        hasattr(state, "info")
        and hasattr(state, "load")
        and hasattr(state, "keys")
        and not isinstance(state, Mapping)
    ):
        return state  # type: ignore[return-value]
    return source_of(state)  # type: ignore[arg-type]
