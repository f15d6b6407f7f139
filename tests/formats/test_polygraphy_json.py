"""Polygraphy's JSON data files: read what Polygraphy writes, write what it reads, refuse the
rest with one line (never unpickling)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest

from wnconvert.errors import InputError
from wnconvert.formats.polygraphy_json import (
    encode_array,
    feeds_json,
    load_feeds,
    load_run_results,
    run_results_json,
    write_feeds,
    write_run_results,
)

FEEDS = [{"x": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array([3], np.int64)},
         {"x": np.ones((2, 3), np.float16), "n": np.array([1], np.int64)}]


def _polygraphy_json(obj: object, path: Path) -> Path:
    from polygraphy.json import save_json

    save_json(obj, str(path))
    return path


def test_feeds_written_by_polygraphy_are_read(tmp_path: Path) -> None:
    path = _polygraphy_json(FEEDS, tmp_path / "in.json")
    feeds = load_feeds(path)
    assert [list(f) for f in feeds] == [["x", "n"], ["x", "n"]]
    for ours, theirs in zip(feeds, FEEDS, strict=True):
        for name, array in theirs.items():
            assert ours[name].dtype == array.dtype
            np.testing.assert_array_equal(ours[name], array)


def test_run_results_written_by_polygraphy_are_read(tmp_path: Path) -> None:
    from polygraphy.comparator import IterationResult, RunResults

    results = RunResults()
    results.append(("trt-runner", [IterationResult({"y": f["x"] * 2}, runtime=0.5,
                                                   runner_name="trt-runner") for f in FEEDS]))
    runners = load_run_results(_polygraphy_json(results, tmp_path / "out.json"))
    assert [name for name, _ in runners] == ["trt-runner"]
    np.testing.assert_array_equal(runners[0][1][1]["y"], FEEDS[1]["x"] * 2)


def test_ours_are_read_by_polygraphy_and_back(tmp_path: Path) -> None:
    from polygraphy.json import load_json

    write_feeds(tmp_path / "in.json", FEEDS)
    write_run_results(tmp_path / "out.json", [("ref", [{"y": f["x"]} for f in FEEDS])],
                      runtimes={"ref": [0.25]})
    theirs = load_json(str(tmp_path / "in.json"))
    np.testing.assert_array_equal(theirs[1]["x"], FEEDS[1]["x"])
    results = load_json(str(tmp_path / "out.json"))
    assert type(results).__name__ == "RunResults"
    iteration = results["ref"][0]
    assert iteration.runtime == 0.25 and iteration.runner_name == "ref"
    np.testing.assert_array_equal(np.asarray(iteration["y"]), FEEDS[0]["x"])
    ours = load_feeds(tmp_path / "in.json")
    assert ours[0]["n"].dtype == np.int64
    assert load_run_results(tmp_path / "out.json")[0][1][1]["y"].dtype == np.float16


def test_older_polygraphy_class_markers_are_read(tmp_path: Path) -> None:
    # Polygraphy before polygraphy_class: "__polygraphy_encoded_<class>" keys.
    marker = "polygraphy_serialized_json_type"
    array = {"array": _npy(FEEDS[0]["x"]), "__polygraphy_encoded_ndarray": marker}
    lazy = {"values": array, "__polygraphy_encoded_LazyNumpyArray": marker}
    iteration = {"outputs": {"y": lazy}, "runtime": 0.1, "runner_name": "old",
                 "__polygraphy_encoded_IterationResult": marker}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"lst": [["old", [iteration]]],
                                "__polygraphy_encoded_RunResults": marker}))
    [(name, [outputs])] = load_run_results(path)
    assert name == "old"
    np.testing.assert_array_equal(outputs["y"], FEEDS[0]["x"])
    feeds = tmp_path / "old_in.json"
    feeds.write_text(json.dumps([{"x": array}]))
    np.testing.assert_array_equal(load_feeds(feeds)[0]["x"], FEEDS[0]["x"])


def test_writing_never_overwrites_without_force(tmp_path: Path) -> None:
    path = tmp_path / "in.json"
    path.write_text("keep")
    with pytest.raises(InputError, match="exists"):
        write_feeds(path, FEEDS)
    assert path.read_text() == "keep"
    write_feeds(path, FEEDS, force=True)
    assert len(load_feeds(path)) == 2


def test_bfloat16_is_written_as_float32() -> None:
    import ml_dtypes

    array = np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)
    data = base64.b64decode(encode_array(array)["array"])
    assert np.load(io.BytesIO(data), allow_pickle=False).dtype == np.float32


def _npy(array: np.ndarray, **kwargs: object) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)  # type: ignore[arg-type]
    return base64.b64encode(buffer.getvalue()).decode()


def _header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    from numpy.lib import format as npy

    buffer = io.BytesIO()
    npy.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _bad_feeds(tmp_path: Path, array: object) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"x": array}]))
    return path


@pytest.mark.parametrize(("array", "message"), [
    ({"array": _npy(np.array([{"a": 1}], dtype=object), allow_pickle=True),
      "polygraphy_class": "ndarray"}, "not a plain numeric type"),
    ({"array": "k05VTVBZ!!", "polygraphy_class": "ndarray"}, "not valid base64"),
    ({"array": _npy(np.ones(3, np.float32)), "polygraphy_class": "Tensor"},
     "polygraphy_class 'Tensor'"),
    ({"array": _npy(np.ones(3, np.float32))}, "polygraphy_class None"),
    ({"array": base64.b64encode(_header((2, 3)) + b"\0" * 20).decode(),
      "polygraphy_class": "ndarray"}, "needs 24 bytes of data, the member holds 20"),
    ({"array": base64.b64encode(_header((10**9, 10**9)) + b"\0" * 8).decode(),
      "polygraphy_class": "ndarray"}, "needs 4000000000000000000 bytes"),
    ({"array": _npy(np.ones(3, np.float32)), "polygraphy_class": "ndarray", "extra": 1},
     "unexpected key"),
    ({"values": {"array": "", "polygraphy_class": "Tensor"}, "polygraphy_class": "LazyArray"},
     "polygraphy_class 'Tensor' in its values"),
    ({"array": _npy(np.ones((0, 3), np.float32)), "polygraphy_class": "ndarray"},
     "no elements"),
    ([1, 2], "not an encoded array"),
])
def test_bad_arrays_are_refused_in_one_line(tmp_path: Path, array: object,
                                            message: str) -> None:
    path = _bad_feeds(tmp_path, array)
    with pytest.raises(InputError, match="not a Polygraphy inputs file") as info:
        load_feeds(path)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text


def test_a_pickle_is_never_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    payload = {"array": base64.b64encode(pickle.dumps(np.ones(3))).decode(),
               "polygraphy_class": "ndarray"}
    with pytest.raises(InputError, match="not a plain numeric .npy array"):
        load_feeds(_bad_feeds(tmp_path, payload))


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "not valid JSON"),
    ('{"x": 1}', "expected a JSON list of feeds"),
    ("[]", "holds no feeds"),
    ("[[1]]", "feed 0 is a JSON list"),
    ("[{}]", "feed 0 is empty"),
])
def test_bad_feed_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "in.json"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_feeds(path)


def test_feeds_json_is_what_load_reads(tmp_path: Path) -> None:
    path = tmp_path / "in.json"
    path.write_bytes(feeds_json(FEEDS))
    assert load_feeds(path)[1]["x"].dtype == np.float16


@pytest.mark.parametrize(("data", "message"), [
    ([], "expected a RunResults object, found a JSON list"),
    ({"lst": [], "polygraphy_class": "RunResults"}, "holds no runners"),
    ({"lst": [["r", []]], "polygraphy_class": "RunResults"}, "runner 'r' has no iterations"),
    ({"lst": [["r"]], "polygraphy_class": "RunResults"}, "runner 0 is not"),
    ({"lst": [["r", [{"outputs": {}, "polygraphy_class": "IterationResult"}]]],
      "polygraphy_class": "RunResults"}, "has no outputs"),
    ({"lst": [["r", [{"polygraphy_class": "AccuracyResult"}]]],
      "polygraphy_class": "RunResults"}, "not an IterationResult"),
])
def test_bad_run_results_are_refused(tmp_path: Path, data: object, message: str) -> None:
    path = tmp_path / "out.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="not a Polygraphy outputs file") as info:
        load_run_results(path)
    assert message in str(info.value)


def test_duplicate_runner_names_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    path.write_bytes(run_results_json([("r", [{"y": np.ones(2)}]), ("r", [{"y": np.ones(2)}])]))
    with pytest.raises(InputError, match="two runners have the same name"):
        load_run_results(path)


# Fuzzing: mutated files are read or refused with InputError, nothing else (no other exception,
# no pickle). The .npy payload is mutated under its base64 too, where the header checks matter.
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.fuzzing import FUZZ, examples, flips  # noqa: E402

_VALID = feeds_json(FEEDS)
_PAYLOAD = base64.b64decode(encode_array(FEEDS[0]["x"])["array"])


def _read_or_refuse(path: Path) -> None:
    try:
        feeds = load_feeds(path)
    except InputError as exc:
        assert "\n" not in str(exc)
    else:
        assert feeds and all(a.dtype != object for f in feeds for a in f.values())


def _mutated(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    mutable = bytearray(data)
    for position, value in changes:
        mutable[position % len(mutable)] = value
    return bytes(mutable)


@settings(FUZZ, max_examples=examples(60))
@given(changes=flips)
def test_fuzzed_feed_files_are_read_or_refused(tmp_path_factory, changes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "in.json"
    path.write_bytes(_mutated(_VALID, changes))
    _read_or_refuse(path)


@settings(FUZZ, max_examples=examples(60))
@given(changes=flips, cut=st.integers(0, len(_PAYLOAD)))
@example(changes=[(42, 91)], cut=128)  # a header numpy's tokenizer rejects (not a ValueError)
def test_fuzzed_npy_payloads_are_read_or_refused(tmp_path_factory, changes, cut) -> None:
    payload = _mutated(_PAYLOAD, [(p % 128, v) for p, v in changes])[:cut]  # header region
    path = tmp_path_factory.mktemp("fuzz") / "in.json"
    path.write_text(json.dumps([{"x": {"array": base64.b64encode(payload).decode(),
                                       "polygraphy_class": "ndarray"}}]))
    _read_or_refuse(path)
