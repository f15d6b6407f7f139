"""A file that fails mid-write, for the tests of what a full disk or Ctrl-C leaves behind."""

from __future__ import annotations

from pathlib import Path


class FailingFile:
    """A real file whose ``fail_at``-th ``write`` raises ``exc`` (as a full disk or Ctrl-C
    would); every other attribute is the file's own. Closed by ``with`` or by the caller."""

    def __init__(self, path: Path, mode: str, exc: BaseException, *, fail_at: int) -> None:
        self._file = open(path, mode)  # noqa: SIM115 - closed in __exit__ or by the caller
        self.exc, self.fail_at, self.writes = exc, fail_at, 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes == self.fail_at:
            raise self.exc
        return self._file.write(data)

    def __getattr__(self, name: str):
        return getattr(self._file, name)

    def __enter__(self) -> FailingFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._file.close()
