"""Fuzzing the ONNX readers through the CLI (``check``, ``inspect``, ``fold``).

A small weight-normed model (inline, and with its tensors in external data) is mutated by byte
flips, truncation and appended bytes. Every outcome must be one of two:

* success (``check`` may also exit 1, "weight norm found"): ``onnx.checker`` (full check)
  accepts the input, and ``fold``'s output too;
* exit 2, one ``error:`` line on stderr, no traceback, not an "unexpected X ... report it".

Either way the inputs are unchanged and nothing else is left in the folder. CI draws a fixed
set of examples (``tests/conftest.py``); search longer with ``--hypothesis-profile=fuzz``.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.fuzzing import FUZZ, examples, flips
from tests.onnx_graph.builders import save, weight_norm_model


def _files(*, external: bool, threshold: int = 0) -> dict[str, bytes]:
    model, _, _ = weight_norm_model((4, 3, 2), 0)
    with tempfile.TemporaryDirectory() as folder:
        save(model, Path(folder) / "model.onnx", external=external, threshold=threshold)
        return {p.name: p.read_bytes() for p in Path(folder).iterdir()}


INLINE = _files(external=False)
EXTERNAL = _files(external=True)
# Only the weights external (shape constants inline, as exporters write them): ONNX Runtime
# can run it, so fold's verification runs too.
INLINE_DATA = _files(external=True, threshold=64)


def checker_accepts(path: Path) -> bool:
    # Loaded first: given a path, the checker's shape inference cannot read constants kept in
    # external data (see test_validate.test_valid_models_pass_with_and_without_external_data).
    # onnx.load ignores unknown external-data keys with a UserWarning: accepted, not refused.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
    except Exception:  # noqa: BLE001 - any refusal by the reference counts
        return False
    return True


def _digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.iterdir()}



@pytest.fixture
def cli(strict_cli):
    """Every command here must print nothing past its own streams (see ``strict_cli``)."""
    return strict_cli

def check_contract(cli, files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name, content in files.items():
            (root / name).write_bytes(content)
        model, output = root / "model.onnx", root / "out.onnx"
        before = _digests(root)
        for args in (["check", model], ["inspect", model],
                     ["fold", model, "--no-verify", "-o", output]):
            result = cli(*args)
            assert "Traceback" not in result.output, result.output
            if result.exit_code == 0 or (args[0] == "check" and result.exit_code == 1):
                assert checker_accepts(model), (
                    f"{args[0]} accepted a model onnx.checker refuses:\n{result.output}")
                if args[0] == "fold":
                    assert checker_accepts(output), "fold wrote a model onnx.checker refuses"
                    for written in set(root.iterdir()) - {root / n for n in files}:
                        written.unlink()  # out.onnx and its external data, if any
            else:
                assert result.exit_code == 2, (
                    f"{args[0]}: exit {result.exit_code}\n{result.output}\n{result.exception!r}")
                lines = result.stderr.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
                assert "report it" not in lines[0], lines[0]  # not an "unexpected X"
            assert _digests(root) == before, "an input was modified or debris was left behind"


def flipped(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for where, value in flips:
        out[where % len(out)] = value
    return bytes(out)




@settings(FUZZ, max_examples=examples(40))
@given(flips=flips)
@example(flips=[(4, 128)])  # producer_name not UTF-8: protobuf gave bytes, inspect crashed
def test_inline_model_byte_flips(cli, flips):
    check_contract(cli, {"model.onnx": flipped(INLINE["model.onnx"], flips)})


@settings(FUZZ, max_examples=examples(40))
@given(flips=flips)
@example(flips=[(484478, 29)])  # tensor data type 29: onnx.checker raised a bare ValueError
@example(flips=[(578, 1)])  # an external-data key onnx does not know: ignored, like onnx does
@example(flips=[(1035, 216)])  # offset "": onnx.load refuses it, it was read as 0
def test_external_data_model_byte_flips(cli, flips):
    files = dict(EXTERNAL)
    files["model.onnx"] = flipped(files["model.onnx"], flips)
    check_contract(cli, files)


@settings(FUZZ, max_examples=examples(30))
@given(cut=st.integers(0, len(INLINE["model.onnx"]) - 1), tail=st.binary(max_size=16))
def test_inline_model_truncated_or_extended(cli, cut, tail):
    content = INLINE["model.onnx"]
    check_contract(cli, {"model.onnx": content[:cut] if not tail else content + tail})


@settings(FUZZ, max_examples=examples(30))
@given(cut=st.integers(0, len(EXTERNAL["model.onnx.data"]) - 1), tail=st.binary(max_size=16))
def test_external_data_truncated_or_extended(cli, cut, tail):
    files = dict(EXTERNAL)
    data = files["model.onnx.data"]
    files["model.onnx.data"] = data[:cut] if not tail else data + tail
    check_contract(cli, files)


@settings(FUZZ, max_examples=examples(30))
@given(flips=flips)
@example(flips=[(3, 96)])  # v[0, 0, 0] = 3.7e19: the graph's float32 norm overflows
@example(flips=[(3, 127), (2, 128), (1, 0), (0, 1)])  # a signalling NaN in v
@example(flips=[(3, 96), (27, 127)])  # overflow and a signalling NaN: the test's own check
def test_weight_bytes_flipped_fold_and_verify(cli, flips):
    # Any bytes are valid float data: NaN (signalling too), Inf, subnormals, huge values. The
    # fold reproduces what the graph computes (verification by ONNX Runtime passes), except
    # where the graph's float32 norm overflows and the float64 fold does not: then the check
    # fails (exit 1) and says so, and nothing is written.
    files = dict(INLINE_DATA)
    files["model.onnx.data"] = flipped(files["model.onnx.data"], flips)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name, content in files.items():
            (root / name).write_bytes(content)
        result = cli("fold", root / "model.onnx", "-o", root / "out.onnx")
        assert "Traceback" not in result.output, result.output
        if result.exit_code == 1:
            assert result.stderr.strip().splitlines()[-1].startswith(
                "error: verification failed:"), result.stderr
            assert not (root / "out.onnx").exists()
            weights = np.frombuffer(files["model.onnx.data"], np.float32)
            with np.errstate(over="ignore", invalid="ignore"):  # sNaN: invalid
                total = np.nansum(np.square(weights), dtype=np.float32)  # >= any row NaN-free
            assert not np.isfinite(total), "the check failed, yet no float32 norm overflows"
        else:
            assert result.exit_code == 0, result.output
            assert checker_accepts(root / "out.onnx")
