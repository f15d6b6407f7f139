"""The contract every checkpoint command keeps.

* exit 0 success, 2 usage or input error; an input error is one line on stderr that names the
  file, with no traceback (``--debug`` shows it); results on stdout, warnings on stderr;
* inputs are never modified, outputs never overwritten without ``--force`` and written
  atomically (no temp files left, on success or failure); no code from a checkpoint runs;
* ``--version``, ``--help`` with an example on every command, ``--quiet``, ``--json``.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.main import get_command

from tests.formats.faults import FailingFile
from wnconvert import numerics
from wnconvert._version import __version__
from wnconvert.cli import app
from wnconvert.formats import torch_pickle

COMMANDS = ("inspect", "fold", "decompose", "restyle")
WRITERS = ("fold", "decompose", "restyle")


def command_args(command: str, path: Path, *extra: object) -> list[object]:
    """Arguments that make ``command`` do its ordinary job on ``path``."""
    args: list[object] = [command, path]
    if command == "restyle":
        args += ["--style", "parametrize"]
    return [*args, *extra]


def legacy_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A legacy pair (fold, restyle to parametrize) and a plain weight (decompose)."""
    torch.manual_seed(seed)
    return {"a.weight_g": torch.rand(3, 1) + 0.5, "a.weight_v": torch.randn(3, 4),
            "a.bias": torch.randn(3), "b.weight": torch.randn(2, 3)}


def expected_output(command: str, source: Path) -> Path:
    stem, _, ext = source.name.rpartition(".")
    action = {"fold": "folded", "decompose": "decomposed", "restyle": "parametrize"}[command]
    return source.with_name(f"{stem}.{action}.{ext}")


# --------------------------------------------------------------------------- bad inputs


class RunsCode:
    """Pickles to a call that would create ``marker`` when unpickled."""

    def __init__(self, marker: Path, how: str) -> None:
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch '{self.marker}'",))
        return (open, (str(self.marker), "w"))


def _missing(folder: Path) -> Path:
    return folder / "missing.pt"


def _truncated_safetensors(folder: Path) -> Path:
    good = folder / "whole.bin.tmpdata"
    save_file(legacy_state(), str(good))
    data = good.read_bytes()
    good.unlink()
    path = folder / "cut.safetensors"
    path.write_bytes(data[: len(data) - 20])
    return path


def _short_safetensors(folder: Path) -> Path:
    path = folder / "short.safetensors"
    path.write_bytes(b"\x10\x00")
    return path


def _garbage_header_safetensors(folder: Path) -> Path:
    path = folder / "garbage.safetensors"
    path.write_bytes((12).to_bytes(8, "little") + b"not json!!!!" + b"\0" * 16)
    return path


def _truncated_pt(folder: Path) -> Path:
    path = folder / "cut.pt"
    torch.save(legacy_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _text_pt(folder: Path) -> Path:
    path = folder / "notes.pt"
    path.write_text("these are my training notes, not a checkpoint\n")
    return path


def _empty_pt(folder: Path) -> Path:
    path = folder / "empty.pt"
    path.write_bytes(b"")
    return path


def _unknown_suffix(folder: Path) -> Path:
    path = folder / "weights.npz"
    path.write_bytes(b"PK\x03\x04")
    return path


def _no_state_dict(folder: Path) -> Path:
    path = folder / "config.pt"
    torch.save({"lr": 0.1, "betas": [0.9, 0.99]}, path)
    return path


def _mismatched_pt(folder: Path) -> Path:
    state = legacy_state()
    state["a.weight_g"] = torch.ones(2, 1)  # v has 3 rows
    path = folder / "mismatch.pt"
    torch.save(state, path)
    return path


def _mismatched_safetensors(folder: Path) -> Path:
    state = legacy_state()
    state["a.weight_g"] = torch.ones(3, 4, 1)  # wrong rank
    path = folder / "mismatch.safetensors"
    save_file(state, str(path))
    return path


def _index_missing_shard(folder: Path) -> Path:
    path = folder / "model.safetensors.index.json"
    path.write_text(json.dumps({"weight_map": {"w": "model-00001-of-00002.safetensors"}}))
    return path


def _index_not_json(folder: Path) -> Path:
    path = folder / "model.safetensors.index.json"
    path.write_text("{ not json")
    return path


BAD_INPUTS: dict[str, Callable[[Path], Path]] = {
    "missing-file": _missing,
    "truncated-safetensors": _truncated_safetensors,
    "short-safetensors": _short_safetensors,
    "garbage-header-safetensors": _garbage_header_safetensors,
    "truncated-pt": _truncated_pt,
    "text-file-named-pt": _text_pt,
    "empty-pt": _empty_pt,
    "unknown-suffix": _unknown_suffix,
    "pt-without-state-dict": _no_state_dict,
    "mismatched-g-v-pt": _mismatched_pt,
    "mismatched-g-v-safetensors": _mismatched_safetensors,
    "index-missing-shard": _index_missing_shard,
    "index-not-json": _index_not_json,
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("bad", list(BAD_INPUTS))
def test_bad_input(bad, command, tmp_path, cli, assert_input_error, snapshot):
    path = BAD_INPUTS[bad](tmp_path)
    before = snapshot(tmp_path)
    assert_input_error(cli(*command_args(command, path)), path)
    assert snapshot(tmp_path) == before  # input untouched, no output, no temp file


def _plain_and_pair() -> dict[str, torch.Tensor]:
    w = torch.randn(3, 4)
    return {"a.weight": w, "a.weight_g": torch.ones(3, 1), "a.weight_v": w.clone()}


def _pair_in_both_styles() -> dict[str, torch.Tensor]:
    w = torch.randn(3, 4)
    return {"a.weight_g": torch.ones(3, 1), "a.weight_v": w,
            "a.parametrizations.weight.original0": torch.ones(3, 1),
            "a.parametrizations.weight.original1": w.clone()}


@pytest.mark.parametrize(
    "state, args",
    [
        pytest.param(_plain_and_pair, ["fold"], id="fold-plain-and-pair"),
        pytest.param(_plain_and_pair, ["decompose"], id="decompose-plain-and-pair"),
        pytest.param(_plain_and_pair, ["decompose", "--style", "legacy"],
                     id="decompose-plain-and-pair-legacy"),
        pytest.param(_plain_and_pair, ["decompose", "--style", "legacy", "--to", "safetensors"],
                     id="decompose-plain-and-pair-legacy-safetensors"),
        pytest.param(_pair_in_both_styles, ["restyle", "--style", "parametrize"],
                     id="restyle-duplicate-keys"),
        pytest.param(_pair_in_both_styles, ["fold"], id="fold-pair-in-both-styles"),
    ],
)
def test_inconsistent_checkpoint_is_an_input_error(state, args, tmp_path, cli,
                                                   assert_input_error, snapshot):
    key = "a.parametrizations.weight" if args[0] == "restyle" else "a.weight"
    # A weight that is both a plain tensor and a pair (or a pair in both key styles) cannot be
    # converted without dropping or duplicating keys: refuse, and write nothing.
    path = tmp_path / "inconsistent.pt"
    torch.save(state(), path)
    before = snapshot(tmp_path)
    assert_input_error(cli(args[0], path, *args[1:]), path, key)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("how", ["open", "system"])
@pytest.mark.parametrize("layout", ["torch-zip", "plain-pickle"])
def test_pickle_that_would_run_code_is_refused(layout, how, command, tmp_path, cli,
                                               assert_input_error, snapshot):
    marker = tmp_path / "marker" / "PWNED"
    marker.parent.mkdir()
    payload = {"weight_g": torch.ones(2, 1), "weight_v": torch.ones(2, 2),
               "evil": RunsCode(marker, how)}
    path = tmp_path / "evil.pt"
    if layout == "torch-zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)

    # Control: an unsafe load of this very file does create the marker.
    if layout == "torch-zip":
        loaded = torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as f:
            loaded = pickle.load(f)
    if hasattr(loaded["evil"], "close"):
        loaded["evil"].close()
    assert marker.exists()
    marker.unlink()

    before = snapshot(tmp_path)
    line = assert_input_error(cli(*command_args(command, path)), path)
    assert "refused" in line
    assert not marker.exists(), "code from the checkpoint ran"
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", WRITERS)
def test_debug_shows_the_traceback_and_keeps_exit_code_2(command, tmp_path, runner):
    path = tmp_path / "missing.pt"
    result = runner.invoke(app, [str(a) for a in command_args(command, path, "--debug")])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr
    assert "wnconvert.errors.InputNotFound" in result.stderr  # the library error, not a wrapper
    assert "missing.pt" in result.stderr


def test_debug_shows_the_traceback_for_inspect(tmp_path, runner):
    result = runner.invoke(app, ["inspect", str(tmp_path / "missing.pt"), "--debug"])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr


# --------------------------------------------------------------------------- outputs


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt.pt"
    torch.save(legacy_state(), path)
    return path


@pytest.mark.parametrize("command", WRITERS)
def test_existing_output_needs_force(command, source, cli, assert_ok, assert_input_error,
                                     snapshot, tmp_path):
    output = expected_output(command, source)
    output.write_bytes(b"precious")
    before = snapshot(tmp_path)

    line = assert_input_error(cli(*command_args(command, source)), output)
    assert "--force" in line
    assert snapshot(tmp_path) == before

    assert_ok(cli(*command_args(command, source, "--force")))
    assert output.read_bytes() != b"precious"
    torch.load(output, weights_only=True)  # a real checkpoint now
    after = snapshot(tmp_path)
    assert set(after) == set(before)
    assert after[source.name] == before[source.name]


@pytest.mark.parametrize("command", WRITERS)
def test_existing_explicit_output_needs_force(command, source, cli, assert_ok,
                                              assert_input_error, tmp_path):
    output = tmp_path / "out.safetensors"
    output.write_bytes(b"precious")
    assert_input_error(cli(*command_args(command, source, "-o", output)), output, "--force")
    assert output.read_bytes() == b"precious"
    assert_ok(cli(*command_args(command, source, "-o", output, "-f")))
    assert output.read_bytes()[:8] != b"precious"


@pytest.mark.parametrize("command", WRITERS)
@pytest.mark.parametrize("spelling", ["same", "dotdot", "relative", "symlink"])
def test_output_equal_to_input_is_refused_even_with_force(
    spelling, command, source, cli, assert_input_error, snapshot, tmp_path, monkeypatch
):
    if spelling == "same":
        output: object = source
    elif spelling == "dotdot":
        (tmp_path / "sub").mkdir()
        output = tmp_path / "sub" / ".." / source.name
    elif spelling == "relative":
        monkeypatch.chdir(tmp_path)
        output = source.name
    else:
        output = tmp_path / "link.pt"
        os.symlink(source, output)
    before = snapshot(tmp_path)
    line = assert_input_error(cli(*command_args(command, source, "-o", output, "--force")))
    assert "input" in line
    assert source.name in line or "link.pt" in line
    assert snapshot(tmp_path) == before


def test_output_equal_to_an_input_shard_is_refused(tmp_path, save_sharded, cli,
                                                   assert_input_error, snapshot):
    state = legacy_state()
    index = save_sharded([{k: state[k] for k in ("a.weight_g", "a.bias")},
                          {k: state[k] for k in ("a.weight_v", "b.weight")}])
    shard = tmp_path / "model-00002-of-00002.safetensors"
    before = snapshot(tmp_path)
    assert_input_error(cli("fold", index, "-o", shard, "--force"), shard)
    assert snapshot(tmp_path) == before


def test_sharded_output_whose_shards_are_inputs_is_refused(tmp_path, save_sharded, cli,
                                                           assert_input_error, snapshot):
    state = legacy_state()
    # The input index is a.safetensors.index.json, its shards are named b-0000i-of-00002.
    index = save_sharded([{k: state[k] for k in ("a.weight_g", "a.bias")},
                          {k: state[k] for k in ("a.weight_v", "b.weight")}], stem="b")
    renamed = index.with_name("a.safetensors.index.json")
    index.rename(renamed)
    before = snapshot(tmp_path)
    output = tmp_path / "b.safetensors.index.json"  # would write b-00001-of-00002...
    assert_input_error(cli("fold", renamed, "-o", output, "--force"), "b-0000")
    assert snapshot(tmp_path) == before


def test_existing_output_shard_needs_force(tmp_path, save_sharded, cli, assert_ok,
                                          assert_input_error):
    state = legacy_state()
    index = save_sharded([{k: state[k] for k in ("a.weight_g", "a.bias")},
                          {k: state[k] for k in ("a.weight_v", "b.weight")}])
    taken = tmp_path / "model.folded-00002-of-00002.safetensors"
    taken.write_bytes(b"someone else's file")
    assert_input_error(cli("fold", index), taken, "--force")
    assert taken.read_bytes() == b"someone else's file"
    assert not (tmp_path / "model.folded.safetensors.index.json").exists()
    assert_ok(cli("fold", index, "--force"))
    assert taken.read_bytes() != b"someone else's file"


# --------------------------------------------------------------------------- atomic writes


def _fail_on_second_fold(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    real = numerics.fold_into
    calls = {"n": 0}

    def fold(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(numerics, "fold_into", fold)


def two_pairs() -> dict[str, torch.Tensor]:
    return {"a.weight_g": torch.ones(2, 1), "a.weight_v": torch.randn(2, 3),
            "b.weight_g": torch.ones(4, 1), "b.weight_v": torch.randn(4, 3)}


@pytest.mark.parametrize("target", ["out.pt", "out.safetensors"])
def test_failure_while_writing_leaves_nothing(target, tmp_path, cli, snapshot, no_temp_files,
                                              monkeypatch):
    source = tmp_path / "in.pt"
    torch.save(two_pairs(), source)
    before = snapshot(tmp_path)
    _fail_on_second_fold(monkeypatch, RuntimeError("simulated failure"))
    result = cli("fold", source, "-o", tmp_path / target)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before
    no_temp_files(tmp_path)


def test_failure_while_writing_sharded_leaves_nothing(tmp_path, save_sharded, cli, snapshot,
                                                      no_temp_files, monkeypatch):
    state = two_pairs()
    index = save_sharded([{k: state[k] for k in ("a.weight_g", "b.weight_v")},
                          {k: state[k] for k in ("a.weight_v", "b.weight_g")}])
    before = snapshot(tmp_path)
    _fail_on_second_fold(monkeypatch, RuntimeError("simulated failure"))
    result = cli("fold", index)
    assert result.exit_code == 2
    assert snapshot(tmp_path) == before
    no_temp_files(tmp_path)


def test_failure_in_the_pickle_writer_leaves_nothing(tmp_path, cli, snapshot, no_temp_files,
                                                     monkeypatch):
    source = tmp_path / "in.pt"
    torch.save(two_pairs(), source)
    before = snapshot(tmp_path)

    def save_pickle(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch_pickle, "save_pickle", save_pickle)
    result = cli("fold", source)
    assert result.exit_code == 2
    assert "No space left on device" in result.stderr
    assert snapshot(tmp_path) == before
    no_temp_files(tmp_path)


def test_failure_with_force_keeps_the_old_output(tmp_path, cli, no_temp_files, monkeypatch):
    source = tmp_path / "in.pt"
    torch.save(two_pairs(), source)
    output = tmp_path / "out.safetensors"
    output.write_bytes(b"previous result")
    _fail_on_second_fold(monkeypatch, RuntimeError("simulated failure"))
    assert cli("fold", source, "-o", output, "--force").exit_code == 2
    assert output.read_bytes() == b"previous result"
    no_temp_files(tmp_path)


def test_interrupt_while_writing_leaves_nothing(tmp_path, cli, snapshot, no_temp_files,
                                                monkeypatch):
    source = tmp_path / "in.safetensors"
    save_file(two_pairs(), str(source))
    before = snapshot(tmp_path)
    _fail_on_second_fold(monkeypatch, KeyboardInterrupt())
    result = cli("fold", source)
    assert result.exit_code == 130
    assert "interrupted" in result.stderr
    assert "Traceback" not in result.output
    assert snapshot(tmp_path) == before
    no_temp_files(tmp_path)


@pytest.mark.parametrize("command", WRITERS)
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_success_leaves_only_the_output(command, fmt, tmp_path, cli, assert_ok, snapshot,
                                        no_temp_files):
    source = tmp_path / f"ckpt.{fmt}"
    if fmt == "pt":
        torch.save(legacy_state(), source)
    else:
        save_file(legacy_state(), str(source))
    before = snapshot(tmp_path)
    assert_ok(cli(*command_args(command, source)))
    after = snapshot(tmp_path)
    assert set(after) == {*before, expected_output(command, source).name}
    assert after[source.name] == before[source.name]
    no_temp_files(tmp_path)


# --------------------------------------------------------------------------- output streams


@pytest.mark.parametrize("command", WRITERS)
def test_quiet_prints_nothing(command, source, cli, assert_ok):
    result = assert_ok(cli(*command_args(command, source, "--quiet")))
    assert result.stdout == ""
    assert result.stderr == ""
    assert expected_output(command, source).exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_json_is_the_only_thing_on_stdout(command, source, cli, assert_ok):
    result = assert_ok(cli(*command_args(command, source, "--json")))
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    assert result.stderr == ""


@pytest.mark.parametrize("flag", ["--json", "--quiet"])
@pytest.mark.parametrize("command", COMMANDS)
def test_errors_go_to_stderr_with_json_and_quiet(command, flag, tmp_path, cli,
                                                 assert_input_error):
    path = tmp_path / "missing.pt"
    assert_input_error(cli(*command_args(command, path, flag)), path)


@pytest.mark.parametrize("command", COMMANDS)
def test_quiet_json_still_prints_json(command, source, cli, assert_ok):
    result = assert_ok(cli(*command_args(command, source, "--json", "--quiet")))
    assert isinstance(json.loads(result.stdout), dict)


@pytest.mark.parametrize("command", COMMANDS)
def test_no_progress_bar_when_not_a_terminal(command, source, cli, assert_ok):
    result = assert_ok(cli(*command_args(command, source)))
    assert result.stderr == ""  # the bar would be drawn on stderr
    for text in (result.stdout, result.stderr):
        assert "\x1b[" not in text  # no ANSI escapes (cursor moves, colours)
        assert "\r" not in text
    assert "→" not in result.stderr  # the bar's "fold → name" description


# --------------------------------------------------------------------------- --version, --help


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout == f"wnconvert {__version__}\n"
    assert result.stderr == ""


def test_root_help_lists_commands_and_exit_codes(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.stdout
    text = " ".join(result.stdout.split())
    assert "Exit codes: 0 success, 1 a numerical check failed, 2 usage or input error" in text


def _normalized(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_shows_its_example(command, flag, cli):
    epilog = get_command(app).commands[command].epilog
    assert epilog and "wnconvert " + command in epilog
    result = cli(command, flag)
    assert result.exit_code == 0
    assert result.stderr == ""
    assert _normalized(epilog.replace("\b", "")) in _normalized(result.stdout)  # \b: keep lines


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_the_common_options(command, cli):
    text = cli(command, "--help").stdout
    for option in ("--quiet", "--debug", "--json", "--key"):
        assert option in text
    if command != "inspect":
        for option in ("--force", "--output", "--to"):
            assert option in text


def test_unknown_option_is_a_usage_error(source, cli):
    result = cli("fold", source, "--frobnicate")
    assert result.exit_code == 2
    assert "--frobnicate" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [
    ["fold", "SOURCE", "--frobnicate"],
    ["restyle", "SOURCE"],  # click lists the choices of a missing option one per line
    ["restyle", "SOURCE", "--style", "bogus"],
    ["fold", "SOURCE", "--dim"],
    ["squash", "x.pt"],
])
def test_usage_errors_are_one_line(args, source, cli):
    result = cli(*(source if a == "SOURCE" else a for a in args))
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert lines[0].endswith("-h')"), lines[0]  # where to look


def test_unknown_command_is_a_usage_error(cli):
    result = cli("squash", "x.pt")
    assert result.exit_code == 2
    assert result.stdout == ""


def test_inputs_are_read_only_safe(tmp_path, cli, assert_ok, shipped):
    # Read-only inputs (e.g. a model cache) convert fine and stay as they were.
    source = shipped("tiny_hifigan_legacy.pt")
    source.chmod(0o444)
    try:
        assert_ok(cli("fold", source))
        assert_ok(cli("inspect", source))
    finally:
        source.chmod(0o644)
    assert shutil.os.access(tmp_path / "tiny_hifigan_legacy.folded.pt", os.R_OK)


# --------------------------------------------------------------------------- every input is
# protected; a file that appears while writing is kept; the real cause of a failed .pt write


@pytest.mark.parametrize("spelling", ["same", "hardlink", "symlink"])
def test_template_is_never_an_output(spelling, tmp_path, cli, assert_input_error, snapshot):
    plain = tmp_path / "plain.pt"
    torch.save({"a.weight": torch.randn(3, 4)}, plain)
    template = tmp_path / "tmpl.pt"
    torch.save({"a.weight_g": torch.ones(3, 1), "a.weight_v": torch.randn(3, 4)}, template)
    output = template
    if spelling == "hardlink":
        output = tmp_path / "hard.pt"
        os.link(template, output)
    elif spelling == "symlink":
        output = tmp_path / "link.pt"
        output.symlink_to(template)
    before = snapshot(tmp_path)
    line = assert_input_error(cli("decompose", plain, "--like", template, "-o", output, "--force"),
                              output)
    assert "input file" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", WRITERS)
def test_output_hard_linked_to_the_input_is_refused_even_with_force(
    command, source, cli, assert_input_error, snapshot, tmp_path
):
    output = tmp_path / "alias.pt"
    os.link(source, output)
    before = snapshot(tmp_path)
    assert_input_error(cli(*command_args(command, source, "-o", output, "--force")), output,
                       "input file")
    assert snapshot(tmp_path) == before


def _appear_on_first_fold(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Another run creates ``path`` while this one works (after its check, before its publish)."""
    real = numerics.fold_into

    def fold(*args, **kwargs):
        if not path.exists():
            path.write_bytes(b"the other run's output")
        return real(*args, **kwargs)

    monkeypatch.setattr(numerics, "fold_into", fold)


@pytest.mark.parametrize("target", ["out.pt", "out.safetensors", "out.safetensors.index.json"])
def test_output_that_appears_while_writing_is_kept(target, tmp_path, cli, assert_input_error,
                                                   assert_ok, no_temp_files, monkeypatch):
    source = tmp_path / "in.pt"
    torch.save(two_pairs(), source)
    output = tmp_path / target
    _appear_on_first_fold(monkeypatch, output)
    line = assert_input_error(cli("fold", source, "-o", output), output)
    assert "appeared while writing" in line and "--force" in line
    assert output.read_bytes() == b"the other run's output"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.pt", target])
    no_temp_files(tmp_path)
    # With --force the run replaces it.
    output.unlink()
    assert_ok(cli("fold", source, "-o", output, "--force"))
    assert output.read_bytes() != b"the other run's output"
    no_temp_files(tmp_path)


def _fail_in_the_write_layer(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    from wnconvert.formats import atomic

    monkeypatch.setattr(atomic, "open", lambda path, mode: FailingFile(path, mode, exc, fail_at=2),
                        raising=False)


def test_full_disk_on_pt_output_says_so(tmp_path, cli, snapshot, no_temp_files, monkeypatch):
    source = tmp_path / "in.pt"
    torch.save(two_pairs(), source)
    before = snapshot(tmp_path)
    _fail_in_the_write_layer(monkeypatch, OSError(28, "No space left on device"))
    result = cli("fold", source, "-o", tmp_path / "out.pt")  # torch.save writes the real zip
    assert result.exit_code == 2
    line, = result.stderr.strip().splitlines()
    assert "out.pt: No space left on device" in line
    assert "enforce" not in line and "Traceback" not in result.output
    assert snapshot(tmp_path) == before
    no_temp_files(tmp_path)


def test_interrupt_inside_the_pt_writer_exits_130(tmp_path, cli, snapshot, no_temp_files,
                                                  monkeypatch):
    source = tmp_path / "in.pt"
    torch.save(two_pairs(), source)
    before = snapshot(tmp_path)
    _fail_in_the_write_layer(monkeypatch, KeyboardInterrupt())
    result = cli("fold", source, "-o", tmp_path / "out.pt")
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and "enforce" not in result.stderr
    assert snapshot(tmp_path) == before
    no_temp_files(tmp_path)


@pytest.fixture
def onnx_with_data_named_json(tmp_path: Path) -> tuple[Path, Path]:
    """An .onnx model whose external data file is ``w.json`` (a name a report could take)."""
    import onnx

    from tests.onnx_graph.builders import weight_norm_model

    model, _, _ = weight_norm_model((4, 3), 0)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="w.json", size_threshold=0)
    return path, tmp_path / "w.json"


@pytest.mark.parametrize("command", ["fold", "verify"])
def test_external_data_of_an_input_is_never_a_report(command, onnx_with_data_named_json, cli,
                                                     assert_input_error, snapshot, tmp_path):
    model, data = onnx_with_data_named_json
    before = snapshot(tmp_path)
    args = ["--reference", model] if command == "verify" else []
    result = cli(command, model, *args, "--report", data, "--force")
    assert_input_error(result, "w.json", "input file")
    assert snapshot(tmp_path) == before


def test_model_source_file_is_never_an_output(tmp_path, cli, assert_input_error, snapshot):
    # A --model file that the export's external data file (<output>.data) would replace.
    source = tmp_path / "ckpt.pt"
    torch.save(two_pairs(), source)
    code = tmp_path / "net.onnx.data"
    code.write_text("def build():\n    raise SystemExit('must not run')\n")
    before = snapshot(tmp_path)
    result = cli("fold", source, "--to", "onnx", "--model", f"{code}:build", "--input", "1x3",
                 "-o", tmp_path / "net.onnx", "--force", "--no-verify")
    assert_input_error(result, "net.onnx.data", "input file")
    assert snapshot(tmp_path) == before


def test_shards_of_a_sharded_template_are_never_outputs(tmp_path, save_sharded, save_st, cli,
                                                        assert_input_error, snapshot):
    index = save_sharded([{"a.weight_g": torch.ones(3, 1), "a.weight_v": torch.randn(3, 4)}],
                         stem="out")
    template = index.rename(tmp_path / "tmpl.safetensors.index.json")
    plain = save_st({"a.weight": torch.randn(3, 4)}, name="plain.safetensors")
    before = snapshot(tmp_path)
    # The output's one shard would be out-00001-of-00001.safetensors: the template's shard.
    result = cli("decompose", plain, "--like", template, "-o",
                 tmp_path / "out.safetensors.index.json", "--force")
    assert_input_error(result, "out-00001-of-00001.safetensors", "input file")
    assert snapshot(tmp_path) == before
