"""Checkpoint inputs that must be refused: one line, exit 2, nothing written, input unchanged.

Each class of bad input is built here and run through the library (an :class:`InputError`
naming what is wrong) and through the CLI (``fold`` and ``inspect``). Where a reference reader
exists (``safetensors.safe_open``, ``torch.load(weights_only=True)`` without mmap), the test
also shows that it refuses the same file: wnconvert never accepts what the reference refuses.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.formats.payloads import OpensForWriting
from tests.formats.references import safetensors_reference_reads
from wnconvert import numerics
from wnconvert.convert import plan_decompose, plan_fold
from wnconvert.errors import InputError, InputNotFound
from wnconvert.formats import load_checkpoint, require_regular_file
from wnconvert.formats import safetensors_format as st
from wnconvert.formats import torch_pickle as tp

COMMANDS = ("fold", "inspect")


def refused_by_cli(cli, assert_input_error, snapshot, folder: Path, path: Path,
                   *mentions: object) -> None:
    """Every command refuses ``path`` by the contract and leaves ``folder`` as it was."""
    before = snapshot(folder)
    for command in COMMANDS:
        assert_input_error(cli(command, path), path, *mentions)
        assert snapshot(folder) == before, f"{command} changed or wrote files"


# --------------------------------------------------------------------------- safetensors headers


def safetensors_bytes(header: dict | bytes, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def entry(dtype: str = "F32", shape: object = (2,), offsets: object = (0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape,
            "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets}


EIGHT = bytes(8)
DEEP = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":' + b"[" * 100_000 \
    + b"]" * 100_000 + b"}}"

# (header, data, words in our message, whether safetensors' own reader refuses it too)
BAD_HEADERS: dict[str, tuple[dict | bytes, bytes, str, bool]] = {
    "overlapping-offsets": ({"a": entry(), "b": entry(shape=(1,), offsets=(4, 8))}, EIGHT,
                            "overlaps", True),
    "gap-before-tensor": ({"a": entry(shape=(1,), offsets=(4, 8))}, EIGHT, "leaves a gap", True),
    "trailing-bytes": ({"a": entry()}, EIGHT + b"junk", "after the last tensor", True),
    "float-shape": ({"a": entry(shape=[2.0])}, EIGHT, "shape must be", True),
    "boolean-shape": ({"a": entry(shape=[True, 2])}, EIGHT, "shape must be", True),
    "negative-shape": ({"a": entry(shape=[-2])}, EIGHT, "shape must be", True),
    "string-shape": ({"a": entry(shape="ab")}, EIGHT, "shape must be", True),
    "boolean-offsets": ({"a": entry(shape=[1], offsets=[False, True])}, b"\0", "data_offsets",
                        True),
    "float-offsets": (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8e0]}}', EIGHT,
                      "data_offsets", True),
    "minus-zero-offset": (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[-0,8]}}', EIGHT,
                          "data_offsets", True),
    "three-offsets": ({"a": entry(offsets=[0, 8, 8])}, EIGHT, "data_offsets", True),
    "65-dims": ({"a": entry(shape=[1] * 64 + [2])}, EIGHT, "65 dimensions", True),
    "overflowing-dims": ({"a": entry(shape=[2**32, 2**32, 0], offsets=(0, 0))}, b"",
                         "overflows", True),
    "overflowing-dims-after-zero": ({"a": entry(shape=[0, 2**32, 2**32], offsets=(0, 0))}, b"",
                                    "overflows", True),
    "dim-over-usize": ({"a": entry(shape=[2**64])}, EIGHT, "shape must be", True),
    "duplicate-key": (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                      b'"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', EIGHT,
                      "'a' twice", False),  # safetensors keeps the last one silently
    "duplicate-field": (b'{"a":{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}}',
                        EIGHT, "'dtype' twice", True),
    "lone-surrogate-key": (b'{"\\ud800":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
                           EIGHT, "not valid Unicode", True),
    "invalid-utf8": (b'{"a\xff":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', EIGHT,
                     "not valid JSON", True),
    "deep-nesting": (DEEP, EIGHT, "nested too deeply", True),
    "nan-in-header": (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":NaN}}', EIGHT,
                      "not valid JSON", True),
    "unknown-dtype": ({"a": entry(dtype="F33")}, EIGHT, "dtype 'F33'", True),
    "lowercase-dtype": ({"a": entry(dtype="f32")}, EIGHT, "dtype 'f32'", True),
    "size-mismatch": ({"a": entry(shape=(3,))}, EIGHT, "its shape needs 12", True),
    "offsets-backwards": ({"a": entry(shape=(1,), offsets=(4, 0))}, EIGHT, "end before", True),
    "metadata-not-strings": ({"__metadata__": {"x": 1}, "a": entry()}, EIGHT,
                             "__metadata__", True),
    "not-an-object": (b"[1, 2]", b"", "not a JSON object", True),
}


@pytest.fixture(params=list(BAD_HEADERS))
def bad_safetensors(request, tmp_path) -> tuple[Path, str, bool]:
    header, data, words, reference_refuses = BAD_HEADERS[request.param]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(safetensors_bytes(header, data))
    return path, words, reference_refuses


def test_bad_safetensors_header_library(bad_safetensors):
    path, words, reference_refuses = bad_safetensors
    assert (not safetensors_reference_reads(path)) == reference_refuses
    with pytest.raises(InputError, match="not a valid safetensors file") as info:
        load_checkpoint(path)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_safetensors_header_cli(bad_safetensors, tmp_path, cli, assert_input_error,
                                    snapshot):
    path, words, _ = bad_safetensors
    refused_by_cli(cli, assert_input_error, snapshot, tmp_path, path, words)


def test_header_over_100_mb_is_refused_before_it_is_read(tmp_path, cli, assert_input_error,
                                                         snapshot):
    # safetensors' MAX_HEADER_SIZE is 100_000_000 bytes (not 100 MiB). A sparse file: the
    # header length alone must be enough to refuse it, so nothing is read.
    path = tmp_path / "huge.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 100_000_001))
        f.truncate(8 + 100_000_001 + 8)
    assert not safetensors_reference_reads(path)
    with pytest.raises(InputError, match="over the format's limit of 100000000 bytes"):
        st.SafetensorsFile(path)
    refused_by_cli(cli, assert_input_error, snapshot, tmp_path, path, "limit")


def test_strict_header_still_accepts_what_safetensors_writes(save_st):
    # 64 dims, an empty tensor at the same offset as the next one, unicode names, metadata.
    tensors = {"é😀": torch.ones([1] * 63 + [2]), "empty": torch.zeros(0, 3), "b": torch.ones(3)}
    path = save_st(tensors, metadata={"format": "pt"})
    file = st.SafetensorsFile(path)
    assert set(file.entries) == set(tensors)
    assert file.info("é😀").shape == (1,) * 63 + (2,)
    assert file.metadata == {"format": "pt"}


def test_header_padding_and_unknown_fields_are_accepted_like_safetensors(tmp_path):
    header = json.dumps({"a": {**entry(), "note": [[1]]}}).encode() + b"  \t"
    path = tmp_path / "padded.safetensors"
    path.write_bytes(safetensors_bytes(header, np.arange(2, dtype=np.float32).tobytes()))
    assert safetensors_reference_reads(path)
    assert st.SafetensorsFile(path).load("a").tolist() == [0.0, 1.0]


# --------------------------------------------------------------------------- sharded index


def make_sharded(folder: Path, shards: dict[str, dict[str, torch.Tensor]],
                 weight_map: object | None = None, raw: str | None = None) -> Path:
    """Shards (name -> tensors) in ``folder`` and an index; ``weight_map`` defaults to the truth."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, tensors in shards.items():
        save_file(tensors, str(folder / name))
    if weight_map is None:
        weight_map = {k: name for name, tensors in shards.items() for k in tensors}
    index = folder / "model.safetensors.index.json"
    index.write_text(raw if raw is not None else json.dumps({"weight_map": weight_map}))
    return index


def pair(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {"a.weight_g": torch.rand(3, 1) + 0.5, "a.weight_v": torch.randn(3, 4)}


def _outside_dotdot(root: Path) -> Path:
    save_file({"secret": torch.ones(2)}, str(root / "outside.safetensors"))
    return make_sharded(root / "ckpt", {"s1.safetensors": pair()},
                        {"a.weight_g": "s1.safetensors", "a.weight_v": "s1.safetensors",
                         "secret": "../outside.safetensors"})


def _outside_absolute(root: Path) -> Path:
    save_file({"secret": torch.ones(2)}, str(root / "outside.safetensors"))
    return make_sharded(root / "ckpt", {"s1.safetensors": pair()},
                        {"a.weight_g": "s1.safetensors", "a.weight_v": "s1.safetensors",
                         "secret": str(root / "outside.safetensors")})


def _outside_symlink(root: Path) -> Path:
    save_file({"secret": torch.ones(2)}, str(root / "outside.safetensors"))
    index = make_sharded(root / "ckpt", {"s1.safetensors": pair()},
                         {"a.weight_g": "s1.safetensors", "a.weight_v": "s1.safetensors",
                          "secret": "s2.safetensors"})
    (root / "ckpt" / "s2.safetensors").symlink_to(root / "outside.safetensors")
    return index


def _key_in_two_shards(root: Path) -> Path:
    p = pair()
    return make_sharded(root / "ckpt", {"s1.safetensors": p, "s2.safetensors": {
        "a.weight_v": torch.zeros(3, 4), "b": torch.ones(2)}},
        {"a.weight_g": "s1.safetensors", "a.weight_v": "s1.safetensors", "b": "s2.safetensors"})


def _shard_spelled_two_ways(root: Path) -> Path:
    return make_sharded(root / "ckpt", {"s1.safetensors": pair()},
                        {"a.weight_g": "s1.safetensors", "a.weight_v": "./s1.safetensors"})


def _shard_linked_twice(root: Path) -> Path:
    index = make_sharded(root / "ckpt", {"s1.safetensors": pair()},
                         {"a.weight_g": "s1.safetensors", "a.weight_v": "s2.safetensors"})
    (root / "ckpt" / "s2.safetensors").symlink_to("s1.safetensors")
    return index


def _key_the_map_lacks(root: Path) -> Path:
    return make_sharded(root / "ckpt", {"s1.safetensors": {**pair(), "hidden": torch.ones(2)}},
                        {"a.weight_g": "s1.safetensors", "a.weight_v": "s1.safetensors"})


def _non_string_value(root: Path) -> Path:
    return make_sharded(root / "ckpt", {"s1.safetensors": pair()},
                        {"a.weight_g": "s1.safetensors", "a.weight_v": 1})


def _null_value(root: Path) -> Path:
    return make_sharded(root / "ckpt", {"s1.safetensors": pair()},
                        {"a.weight_g": "s1.safetensors", "a.weight_v": None})


def _list_value(root: Path) -> Path:
    return make_sharded(root / "ckpt", {"s1.safetensors": pair()},
                        {"a.weight_g": "s1.safetensors", "a.weight_v": ["s1.safetensors"]})


def _weight_map_a_list(root: Path) -> Path:
    return make_sharded(root / "ckpt", {"s1.safetensors": pair()}, ["s1.safetensors"])


def _weight_map_a_string(root: Path) -> Path:
    return make_sharded(root / "ckpt", {"s1.safetensors": pair()}, "s1.safetensors")


def _duplicate_map_key(root: Path) -> Path:
    raw = ('{"weight_map": {"a.weight_g": "s1.safetensors", "a.weight_v": "s1.safetensors", '
           '"a.weight_v": "s2.safetensors"}}')
    return make_sharded(root / "ckpt", {"s1.safetensors": pair(), "s2.safetensors": {
        "b": torch.ones(1)}}, raw=raw)


def _nul_in_shard_name(root: Path) -> Path:
    return make_sharded(root / "ckpt", {"s1.safetensors": pair()},
                        {"a.weight_g": "s1.safetensors", "a.weight_v": "s1\0.safetensors"})


def _deep_index(root: Path) -> Path:
    return make_sharded(root / "ckpt", {"s1.safetensors": pair()},
                        raw='{"weight_map": {}, "metadata": ' + "[" * 100_000 + "]" * 100_000
                        + "}")


BAD_INDEXES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "dotdot-outside": (_outside_dotdot, "outside the index's folder"),
    "absolute-outside": (_outside_absolute, "outside the index's folder"),
    "symlink-outside": (_outside_symlink, "outside the index's folder"),
    "key-in-two-shards": (_key_in_two_shards, "holds 'a.weight_v' but the index puts it in"),
    "shard-spelled-two-ways": (_shard_spelled_two_ways, "are the same file"),
    "shard-linked-under-two-names": (_shard_linked_twice, "are the same file"),
    "key-the-map-lacks": (_key_the_map_lacks, "holds 'hidden' but the index does not list it"),
    "number-value": (_non_string_value, "not a file name"),
    "null-value": (_null_value, "not a file name"),
    "list-value": (_list_value, "not a file name"),
    "weight-map-a-list": (_weight_map_a_list, "'weight_map' is a list"),
    "weight-map-a-string": (_weight_map_a_string, "'weight_map' is a string"),
    "duplicate-map-key": (_duplicate_map_key, "'a.weight_v' appears twice"),
    "nul-in-shard-name": (_nul_in_shard_name, "NUL byte"),
    "deeply-nested-index": (_deep_index, "nested too deeply"),
}


@pytest.mark.parametrize("case", list(BAD_INDEXES))
def test_bad_sharded_index_library(case, tmp_path):
    build, words = BAD_INDEXES[case]
    index = build(tmp_path)
    with pytest.raises(InputError) as info:
        load_checkpoint(index)
    assert words in str(info.value)
    assert str(index) in str(info.value)


@pytest.mark.parametrize("case", list(BAD_INDEXES))
def test_bad_sharded_index_cli(case, tmp_path, cli, assert_input_error, snapshot):
    build, words = BAD_INDEXES[case]
    index = build(tmp_path)
    refused_by_cli(cli, assert_input_error, snapshot, tmp_path, index, words)


def test_shards_in_a_subfolder_are_inside(tmp_path):
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    save_file(pair(), str(folder / "sub" / "s1.safetensors"))
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a.weight_g": "sub/s1.safetensors",
                                                "a.weight_v": "sub/s1.safetensors"}}))
    assert sorted(load_checkpoint(index).state_dict) == ["a.weight_g", "a.weight_v"]


# --------------------------------------------------------------------------- .pt records


def rewrite_zip(source: Path, target: Path, edit: Callable[[str, bytes], bytes],
                compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", compression) as new:
        for info in old.infolist():
            new.writestr(info.filename, edit(info.filename, old.read(info.filename)))
    return target


def _short_record(folder: Path) -> Path:
    good = folder / "good.bin"
    torch.save({"a.weight_g": torch.ones(4, 1), "a.weight_v": torch.arange(16.0).view(4, 4)},
               good)
    bad = rewrite_zip(good, folder / "short.pt",
                      lambda name, data: data[:8] if name.endswith("data/1") else data)
    good.unlink()
    return bad


def _empty_record(folder: Path) -> Path:
    good = folder / "good.bin"
    torch.save({"a.weight_g": torch.ones(4, 1), "a.weight_v": torch.randn(4, 4)}, good)
    bad = rewrite_zip(good, folder / "empty-record.pt",
                      lambda name, data: b"" if name.endswith("data/0") else data)
    good.unlink()
    return bad


def _view_past_record(folder: Path) -> Path:
    # The tensor's size in the pickle (16 elements -> 32) reaches past its 64-byte record.
    good = folder / "good.bin"
    torch.save({"w": torch.arange(16, dtype=torch.float32)}, good)

    def grow(name: str, data: bytes) -> bytes:
        if not name.endswith("data.pkl"):
            return data
        size = b"K\x10\x85"  # BININT1 16, TUPLE1: the tensor's size (16,)
        assert data.count(size) == 1
        return data.replace(size, b"K\x20\x85")

    bad = rewrite_zip(good, folder / "big-view.pt", grow)
    good.unlink()
    return bad


BAD_RECORDS = {"short-record": _short_record, "empty-record": _empty_record,
               "view-past-record": _view_past_record}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
def test_pt_record_sizes_are_checked_before_mmap(case, tmp_path, cli, assert_input_error,
                                                 snapshot):
    path = BAD_RECORDS[case](tmp_path)
    with pytest.raises(RuntimeError):  # the reference: torch's own loader, without mmap
        torch.load(path, weights_only=True, mmap=False)
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        tp.load_pickle(path)
    refused_by_cli(cli, assert_input_error, snapshot, tmp_path, path)


def test_short_record_message_names_the_record(tmp_path):
    path = _short_record(tmp_path)
    with pytest.raises(InputError, match=r"record \w+/data/1 holds 8 bytes but the pickle "
                                         r"declares 64;"):
        tp.load_pickle(path)


def test_view_message_says_how_far_it_reaches(tmp_path):
    with pytest.raises(InputError, match="holds 64 bytes but the pickle's tensors reach byte 128"):
        tp.load_pickle(_view_past_record(tmp_path))


@pytest.mark.parametrize("record", ["data.pkl", ".storage_alignment", "data/0"])
def test_a_record_marked_as_a_folder_is_refused(record, tmp_path, cli, assert_input_error,
                                                 snapshot):
    # Found by test_fuzz: with the DOS folder bit set in a record's external attributes, torch's
    # zip reader extracts nothing and torch parses an unfilled buffer, so the same file loaded
    # or failed from one run to the next.
    good = tmp_path / "good.bin"
    torch.save({"a.weight_g": torch.ones(3, 1)}, good)
    data = bytearray(good.read_bytes())
    good.unlink()
    name = next(n for n in zipfile.ZipFile(io.BytesIO(data)).namelist() if n.endswith(record))
    entry = data.find(b"PK\x01\x02")  # the record's central-directory entry
    while data[entry + 46 : entry + 46 + len(name)] != name.encode():
        entry = data.find(b"PK\x01\x02", entry + 4)
    data[entry + 38] |= 0x10  # external attributes, low byte: the DOS folder bit
    path = tmp_path / "folder.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=f"record {re.escape(name)} is marked as a folder"):
        tp.load_pickle(path)
    refused_by_cli(cli, assert_input_error, snapshot, tmp_path, path, "marked as a folder")


def test_tensor_with_backward_hooks_is_refused(tmp_path, cli, assert_input_error, snapshot):
    # torch.load keeps whatever the pickle gives as a tensor's backward hooks; torch.save
    # writes an empty OrderedDict. Found by test_fuzz: a tuple there made fold fail later.
    good = tmp_path / "good.bin"
    torch.save({"a.weight_g": torch.ones(3, 1)}, good)

    def hooks(name: str, data: bytes) -> bytes:
        if not name.endswith("data.pkl"):
            return data
        empty = b"ccollections\nOrderedDict\nq\n)R"  # OrderedDict()
        assert data.count(empty) == 1
        return data.replace(empty, b"K\x01\x85")  # (1,)

    path = rewrite_zip(good, tmp_path / "hooks.pt", hooks)
    good.unlink()
    assert torch.load(path, weights_only=True)["a.weight_g"]._backward_hooks == (1,)
    with pytest.raises(InputError, match="carries backward hooks"):
        tp.load_pickle(path)
    refused_by_cli(cli, assert_input_error, snapshot, tmp_path, path, "backward hooks")


def test_compressed_record_is_refused(tmp_path):
    good = tmp_path / "good.bin"
    torch.save({"w": torch.zeros(64)}, good)
    path = rewrite_zip(good, tmp_path / "deflated.pt", lambda name, data: data,
                       compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(InputError, match="is compressed"):
        tp.load_pickle(path)


def test_valid_pt_still_loads_memory_mapped(save_pt):
    state = {"a.weight_g": torch.ones(4, 1), "a.weight_v": torch.randn(4, 4),
             "view": torch.arange(10.0)[2:8:2], "shared": torch.arange(10.0)[:3]}
    path = save_pt({"state_dict": state, "step": 3,
                    "nested": [torch.ones(2), {"t": torch.ones(1)}]})
    assert tp._records_fit(path) is True
    loaded = tp.load_pickle(path)
    for key, value in state.items():
        assert torch.equal(loaded["state_dict"][key], value)


def test_pt_never_unpickles_code_even_when_the_environment_asks(tmp_path, monkeypatch, cli,
                                                                assert_input_error, snapshot):
    # torch honours TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only when weights_only is not passed;
    # wnconvert passes weights_only=True explicitly, so the restricted unpickler always runs.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"a.weight": torch.ones(2, 2), "x": OpensForWriting(marker)}, path)
    with pytest.raises(InputError, match="needs arbitrary code"):
        tp.load_pickle(path)
    refused_by_cli(cli, assert_input_error, snapshot, tmp_path, path, "nothing from it was run")
    assert not marker.exists()


# --------------------------------------------------------------------------- non-regular files


@pytest.fixture
def fifo_guard():
    """Unblock any reader stuck opening a FIFO (a writer opens and closes it, so the reader
    sees end-of-file), again and again after the first seconds: a regression fails, not hangs."""
    guarded: list[Path] = []
    stop = threading.Event()

    def release() -> None:
        if stop.wait(3):
            return
        while not stop.wait(0.2):
            for path in guarded:
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:  # ENXIO: nobody is reading it now
                    continue
                os.close(fd)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    yield guarded.append
    stop.set()
    thread.join()


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")


@needs_fifo
@pytest.mark.parametrize("name", ["model.pt", "model.safetensors",
                                  "model.safetensors.index.json"])
def test_fifo_checkpoint_is_refused_without_opening(name, tmp_path, fifo_guard, cli,
                                                    assert_input_error, snapshot):
    path = tmp_path / name
    os.mkfifo(path)
    fifo_guard(path)
    with pytest.raises(InputError, match="is a FIFO"):
        load_checkpoint(path)
    refused_by_cli(cli, assert_input_error, snapshot, tmp_path, path, "FIFO")


@needs_fifo
def test_fifo_shard_is_refused(tmp_path, fifo_guard, cli, assert_input_error, snapshot):
    index = make_sharded(tmp_path, {"s1.safetensors": pair()},
                         {"a.weight_g": "s1.safetensors", "a.weight_v": "s2.safetensors"})
    os.mkfifo(tmp_path / "s2.safetensors")
    fifo_guard(tmp_path / "s2.safetensors")
    with pytest.raises(InputError, match="s2.safetensors: is a FIFO"):
        load_checkpoint(index)
    refused_by_cli(cli, assert_input_error, snapshot, tmp_path, tmp_path / "s2.safetensors",
                   "FIFO")


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="no /dev/null")
@pytest.mark.parametrize("name", ["zero.pt", "zero.safetensors"])
def test_device_file_is_refused(name, tmp_path, cli, assert_input_error, snapshot):
    path = tmp_path / name
    # A checkpoint name for a device. /dev/null, not /dev/zero: should this check ever break,
    # the test must fail, not read an endless device until memory runs out.
    path.symlink_to("/dev/null")
    with pytest.raises(InputError, match="is a character device"):
        load_checkpoint(path)
    refused_by_cli(cli, assert_input_error, snapshot, tmp_path, path, "character device")


def test_require_regular_file(tmp_path):
    regular = tmp_path / "x.bin"
    regular.write_bytes(b"12345")
    assert require_regular_file(regular).st_size == 5
    link = tmp_path / "link.bin"
    link.symlink_to(regular)
    assert require_regular_file(link, what="ONNX model").st_size == 5
    with pytest.raises(InputError, match="is a folder, not a regular file; the --inputs file"):
        require_regular_file(tmp_path, what="--inputs file")
    with pytest.raises(InputNotFound, match="no such file"):
        require_regular_file(tmp_path / "missing.npz", what="--inputs file")
    with pytest.raises(InputError, match="cannot read"):
        require_regular_file(str(tmp_path / "nul\0.pt"))


# --------------------------------------------------------------------------- 0-element pairs


ZERO_PAIRS = {
    "both-empty": (torch.zeros(0, 1), torch.zeros(0, 4)),
    "v-empty": (torch.ones(3, 1), torch.zeros(3, 0)),
}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("case", list(ZERO_PAIRS))
def test_zero_element_pair_is_an_input_error(case, suffix, tmp_path, cli, assert_input_error,
                                             snapshot):
    g, v = ZERO_PAIRS[case]
    path = tmp_path / f"empty-pair{suffix}"
    state = {"a.weight_g": g, "a.weight_v": v}
    if suffix == ".pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    with pytest.raises(InputError, match="'a.weight' has no elements"):
        plan_fold(load_checkpoint(path).state_dict)
    refused_by_cli(cli, assert_input_error, snapshot, tmp_path, path, "no elements")


def test_zero_element_weight_is_not_decomposed(tmp_path, cli, assert_input_error, snapshot):
    path = tmp_path / "plain.pt"
    torch.save({"a.weight": torch.zeros(0, 4), "b.weight": torch.ones(3, 4)}, path)
    with pytest.raises(InputError, match=r"a.weight has shape \[0, 4\], no elements"):
        plan_decompose(load_checkpoint(path).state_dict)
    before = snapshot(tmp_path)
    assert_input_error(cli("decompose", path), path, "no elements")
    assert snapshot(tmp_path) == before


def test_numerics_say_an_empty_tensor_has_no_norm():
    with pytest.raises(ValueError, match="no elements"):
        numerics.fold(np.zeros((0, 1), np.float32), np.zeros((0, 4), np.float32), 0)
    with pytest.raises(ValueError, match="no elements"):
        numerics.decompose(np.zeros((0, 4), np.float32), 0)
