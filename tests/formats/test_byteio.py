"""wnconvert.formats.byteio: the byte-range copier."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from wnconvert.errors import InputError
from wnconvert.formats import byteio


@pytest.mark.parametrize("kernel", [True, False])
def test_copy_range_copies_exactly(kernel, tmp_path, monkeypatch):
    if not kernel:
        def unsupported(*args, **kwargs):
            raise OSError(errno.EXDEV, "cross-device copy")

        monkeypatch.setattr(byteio.os, "copy_file_range", unsupported, raising=False)
    monkeypatch.setattr(byteio, "_COPY_CHUNK", 1000)  # several chunks in the fallback
    data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    source = tmp_path / "src.bin"
    source.write_bytes(data)
    with open(tmp_path / "dst.bin", "wb") as out:
        out.write(b"head")
        out.flush()
        byteio.copy_range(source, 123, 7000, out.fileno(), 4)
        assert out.tell() == 4  # the copy does not move the file position
    assert (tmp_path / "dst.bin").read_bytes() == b"head" + data[123:7123]


def test_copy_range_of_a_source_that_ends_early_is_an_input_error(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(b"x" * 100)
    with open(tmp_path / "dst.bin", "wb") as out, pytest.raises(InputError, match="src.bin"):
        byteio.copy_range(source, 50, 100, out.fileno(), 0)


def test_copy_range_does_not_retry_a_full_disk(tmp_path, monkeypatch):
    calls = []

    def full(*args, **kwargs):
        calls.append(args)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(byteio.os, "copy_file_range", full, raising=False)
    monkeypatch.setattr(byteio.os, "pread", lambda *a: pytest.fail("fell back on ENOSPC"))
    source = tmp_path / "src.bin"
    source.write_bytes(b"x" * 100)
    with open(tmp_path / "dst.bin", "wb") as out, pytest.raises(OSError) as caught:
        byteio.copy_range(source, 0, 100, out.fileno(), 0)
    assert caught.value.errno == errno.ENOSPC and len(calls) == 1
