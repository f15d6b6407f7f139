"""Fuzzing the checkpoint readers through the CLI (``inspect``, ``fold``, ``decompose``,
``restyle``).

Valid safetensors files and ``.pt`` archives are mutated (byte flips, truncation, header JSON
edits, pickle byte flips) and every outcome must be one of two:

* exit 0, and the reference reader accepts the input too (``safetensors.safe_open`` /
  ``torch.load(weights_only=True, map_location="cpu")`` without mmap) and reads the output back;
* exit 2, one ``error:`` line on stderr, no traceback, nothing written.

Either way the input is unchanged. CI draws tens of fixed examples per test (see the profiles in
``tests/conftest.py``); search longer with ``--hypothesis-profile=fuzz``.
"""

from __future__ import annotations

import hashlib
import json
import struct
import tempfile
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from tests.formats.references import safetensors_reference_reads
from tests.fuzzing import FUZZ, examples, flips


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"a.weight_g": torch.rand(3, 1) + 0.5, "a.weight_v": torch.randn(3, 4),
            "a.bias": torch.randn(3), "b.weight": torch.randn(2, 3).to(torch.float16)}


def _safetensors_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.safetensors"
        save_file(_state(), str(path), metadata={"format": "pt"})
        return path.read_bytes()


def _pt_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.pt"
        torch.save({"state_dict": _state(), "step": 7}, path)
        return path.read_bytes()


# A crafted pickle can reach torch's C++ warning about a plain-method __torch_function__ while
# the unpickler's error is already set; made an exception by the strict warning filter, torch
# then prints it to the process's stderr instead (the CLI alone records and drops it).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Defining your `__torch_function__` as a plain method:UserWarning")

SAFETENSORS = _safetensors_bytes()
PT = _pt_bytes()


def _records(data: bytes) -> list[tuple[str, bytes]]:
    import io

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(i.filename, archive.read(i.filename)) for i in archive.infolist()]


RECORDS = _records(PT)
PICKLE = next(i for i, (name, _) in enumerate(RECORDS) if name.endswith("/data.pkl"))
TENSOR_RECORDS = [i for i, (name, _) in enumerate(RECORDS) if "/data/" in name]


def rebuilt(records: list[tuple[str, bytes]]) -> bytes:
    """A ``.pt`` archive of ``records``, with correct CRCs (so edits reach torch's reader)."""
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, content in records:
            archive.writestr(name, content)
    return buffer.getvalue()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# With torch: the mutations make BF16 tensors, which safe_open cannot give numpy.
reads_safetensors = partial(safetensors_reference_reads, framework="pt")


def reference_reads_pt(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except Exception:  # noqa: BLE001 - any refusal by the reference counts
        return False
    return True



@pytest.fixture
def cli(strict_cli):
    """Every command here must print nothing past its own streams (see ``strict_cli``)."""
    return strict_cli

def check_contract(cli, content: bytes, suffix: str,
                   reference_reads: Callable[[Path], bool]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        path = root / f"input{suffix}"
        path.write_bytes(content)
        digest = _digest(path)
        output = root / f"output{suffix}"
        writers = ("fold", "decompose", "restyle")
        for args in (["inspect", path], ["fold", path, "-o", output],
                     ["decompose", path, "-o", output],
                     ["restyle", path, "--style", "parametrize", "-o", output]):
            result = cli(*args)
            assert "Traceback" not in result.output, result.output
            assert _digest(path) == digest, "the input was modified"
            if result.exit_code == 0:
                assert reference_reads(path), (
                    f"{args[0]} accepted a file the reference refuses:\n{result.output}")
                if args[0] in writers:
                    assert reference_reads(output), (
                        f"{args[0]} wrote a file the reference refuses")
                    output.unlink()
            else:
                assert result.exit_code == 2, (
                    f"{args[0]}: exit {result.exit_code}\n{result.output}\n{result.exception!r}")
                assert isinstance(result.exception, SystemExit), repr(result.exception)
                lines = result.stderr.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
                assert "report it" not in lines[0], lines[0]  # not an "unexpected X"
            assert sorted(p.name for p in root.iterdir()) == [path.name], "debris left behind"


# --------------------------------------------------------------------------- byte-level


def flipped(data: bytes, flips: list[tuple[int, int]], span: tuple[int, int]) -> bytes:
    out = bytearray(data)
    low, high = span
    for where, value in flips:
        out[low + where % (high - low)] = value
    return bytes(out)




@FUZZ
@given(flips=flips)
@example(flips=[(62683, 127)])  # a signalling NaN in v: widening it raised a RuntimeWarning
def test_safetensors_byte_flips(cli, flips):
    check_contract(cli, flipped(SAFETENSORS, flips, (0, len(SAFETENSORS))), ".safetensors",
                   reads_safetensors)


@FUZZ
@given(flips=flips)
def test_safetensors_header_byte_flips(cli, flips):
    (header_len,) = struct.unpack("<Q", SAFETENSORS[:8])
    check_contract(cli, flipped(SAFETENSORS, flips, (0, 8 + header_len)), ".safetensors",
                   reads_safetensors)


@settings(FUZZ, max_examples=examples(30))
@given(cut=st.integers(0, len(SAFETENSORS) - 1), tail=st.binary(max_size=16))
def test_safetensors_truncated_or_extended(cli, cut, tail):
    content = SAFETENSORS[:cut] if not tail else SAFETENSORS + tail
    check_contract(cli, content, ".safetensors", reads_safetensors)


@FUZZ
@given(flips=flips)
@example(flips=[(169544, 210), (17992, 100), (210, 129), (169544, 210)])  # the warning above
def test_pt_pickle_byte_flips(cli, flips):
    records = list(RECORDS)
    name, pickled = records[PICKLE]
    records[PICKLE] = (name, flipped(pickled, flips, (0, len(pickled))))
    check_contract(cli, rebuilt(records), ".pt", reference_reads_pt)


@settings(FUZZ, max_examples=examples(40))
@given(which=st.sampled_from(TENSOR_RECORDS), size=st.integers(0, 80), fill=st.binary(max_size=8))
def test_pt_tensor_records_resized(cli, which, size, fill):
    # A record shorter or longer than its storage: torch's mmap path would not notice.
    records = list(RECORDS)
    name, content = records[which]
    records[which] = (name, (content + fill * 80)[:size] if fill else content[:size])
    check_contract(cli, rebuilt(records), ".pt", reference_reads_pt)


@settings(FUZZ, max_examples=examples(40))
@given(flips=flips)
@example(flips=[(19357, 218)])  # a record marked as a folder: torch read unfilled memory
def test_pt_byte_flips(cli, flips):
    check_contract(cli, flipped(PT, flips, (0, len(PT))), ".pt", reference_reads_pt)


@settings(FUZZ, max_examples=examples(30))
@given(cut=st.integers(0, len(PT) - 1))
def test_pt_truncated(cli, cut):
    check_contract(cli, PT[:cut], ".pt", reference_reads_pt)


# --------------------------------------------------------------------------- header JSON


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**66), 2**66)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=4)
    | st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "F8_E4M3", "f32", "\ud800"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=3),
    max_leaves=8,
)
names = st.text(max_size=6) | st.sampled_from(["a.weight_g", "a.weight_v", "\ud800x",
                                               "__metadata__", "a.weight"])


def _mutate_header(header: dict, data: st.DataObject) -> None:
    keys = list(header)
    key = data.draw(st.sampled_from(keys)) if keys else None
    op = data.draw(st.sampled_from(["field", "dim", "offset", "drop", "rename", "add",
                                    "dtype", "metadata"]))
    entry = header.get(key) if isinstance(header.get(key), dict) else None
    if op == "field" and entry is not None:
        entry[data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "x"]))] = \
            data.draw(json_values)
    elif op == "dim" and entry is not None and isinstance(entry.get("shape"), list):
        shape = entry["shape"]
        if shape and data.draw(st.booleans()):
            shape[data.draw(st.integers(0, len(shape) - 1))] = data.draw(
                st.integers(-1, 2**65) | st.just(0) | st.booleans())
        else:
            shape.append(data.draw(st.integers(0, 3)))
    elif op == "offset" and entry is not None and isinstance(entry.get("data_offsets"), list):
        offsets = entry["data_offsets"]
        if len(offsets) == 2:
            side = data.draw(st.integers(0, 1))
            offsets[side] = data.draw(st.integers(-2, 200) | st.sampled_from([True, 2.0]))
    elif op == "drop" and key is not None:
        del header[key]
    elif op == "rename" and key is not None:
        header[data.draw(names)] = header.pop(key)
    elif op == "add":
        header[data.draw(names)] = data.draw(json_values)
    elif op == "dtype" and entry is not None:
        entry["dtype"] = data.draw(st.sampled_from(["F32", "F16", "F64", "I32", "U8", "BF16"]))
    elif op == "metadata":
        header["__metadata__"] = data.draw(json_values)


@settings(FUZZ, max_examples=examples(80))
@given(data=st.data())
def test_safetensors_header_json_mutations(cli, data):
    (header_len,) = struct.unpack("<Q", SAFETENSORS[:8])
    header = json.loads(SAFETENSORS[8:8 + header_len])
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate_header(header, data)
    raw = json.dumps(header).encode()  # ensure_ascii: a lone surrogate becomes "\ud800"
    raw += b" " * data.draw(st.integers(0, 8))
    content = struct.pack("<Q", len(raw)) + raw + SAFETENSORS[8 + header_len:]
    check_contract(cli, content, ".safetensors", reads_safetensors)


@pytest.mark.parametrize("content", [SAFETENSORS], ids=["unmutated"])
def test_the_fuzz_seed_itself_folds(cli, content):
    # The baseline: the unmutated file passes the contract's success branch.
    check_contract(cli, content, ".safetensors", reads_safetensors)
    check_contract(cli, PT, ".pt", reference_reads_pt)
