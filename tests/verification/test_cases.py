"""Verification: input cases (seeded draws, shapes, .npz, second size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wnconvert.errors import InputError
from wnconvert.export import DynamicAxis, InputSpec
from wnconvert.verification import (
    InputSignature,
    VerifyOptions,
    build_cases,
)

SIG = [InputSignature("mel", "float32", (1, 16, "time")), InputSignature("ids", "int64", (3,))]


def test_random_inputs_are_seeded_and_follow_the_signature() -> None:
    options = VerifyOptions(seed=7, runs=2)
    first = build_cases(SIG, options)
    again = build_cases(SIG, options)
    # Two draws plus one at the second size of the symbolic axis "time".
    assert [c.info.label for c in first] == ["run 0", "run 1", "second size time=32"]
    assert first[0].feeds["mel"].shape == (1, 16, 16)
    assert first[2].feeds["mel"].shape == (1, 16, 32)
    assert first[0].feeds["ids"].dtype == np.int64
    np.testing.assert_array_equal(first[1].feeds["mel"], again[1].feeds["mel"])
    assert not np.array_equal(first[0].feeds["mel"], first[1].feeds["mel"])
    other_seed = build_cases(SIG, VerifyOptions(seed=8))
    assert not np.array_equal(first[0].feeds["mel"], other_seed[0].feeds["mel"])


def test_input_specs_set_shapes_and_are_checked_against_the_model() -> None:
    specs = (InputSpec((1, 16, 50)), InputSpec((3,), "int64"))
    cases = build_cases(SIG, VerifyOptions(input_specs=specs))
    assert cases[0].feeds["mel"].shape == (1, 16, 50)
    assert cases[1].feeds["mel"].shape == (1, 16, 100)
    with pytest.raises(InputError, match="fixed size 16 on axis 1"):
        build_cases(SIG, VerifyOptions(input_specs=(InputSpec((1, 8, 50)), specs[1])))
    with pytest.raises(InputError, match="2 inputs"):
        build_cases(SIG, VerifyOptions(input_specs=specs[:1]))
    with pytest.raises(InputError, match="takes int64"):
        build_cases(SIG, VerifyOptions(input_specs=(specs[0], InputSpec((3,), "float32"))))


def test_explicit_dynamic_axis_on_a_static_model_adds_a_second_size() -> None:
    sig = [InputSignature("x", "float32", (2, 5))]
    cases = build_cases(sig, VerifyOptions(dynamic_axes=(DynamicAxis(0, 0, "batch"),)))
    assert [c.feeds["x"].shape for c in cases] == [(2, 5), (4, 5)]


def test_npz_inputs_by_name_or_position_and_cropped_for_the_second_size(tmp_path: Path) -> None:
    mel = np.random.default_rng(0).standard_normal((1, 16, 40)).astype(np.float32)
    ids = np.arange(3, dtype=np.int64)
    named = tmp_path / "named.npz"
    np.savez(named, ids=ids, mel=mel)
    cases = build_cases(SIG, VerifyOptions(inputs_file=named))
    assert [c.info.source for c in cases] == ["file", "file"]
    np.testing.assert_array_equal(cases[0].feeds["mel"], mel)
    np.testing.assert_array_equal(cases[1].feeds["mel"], mel[:, :, :20])
    positional = tmp_path / "positional.npz"
    np.savez(positional, mel, ids)
    np.testing.assert_array_equal(build_cases(SIG, VerifyOptions(inputs_file=positional))[0]
                                  .feeds["ids"], ids)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, mel.astype(np.float64), ids)
    with pytest.raises(InputError, match="wrong.npz.*float64"):
        build_cases(SIG, VerifyOptions(inputs_file=wrong))




def test_the_second_size_is_bounded_like_the_first() -> None:
    """Doubling a dynamic axis may cross the limit on generated inputs: refused before any
    input is generated, not with a MemoryError half-way through the run."""
    from wnconvert.verification.cases import CasePlan

    sig = [InputSignature("x", "float32", ("time", 2**25 + 1))]  # 16 x ... : just over 2 GiB
    with pytest.raises(InputError, match="input 'x' at the second size \\(32x33554433\\): 4.0 "
                                         "GiB for one input is more than the 4 GiB"):
        CasePlan(sig, VerifyOptions())
