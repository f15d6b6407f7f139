"""Each flag belongs to the jobs that use it (issue 17 §2): a flag the chosen job would ignore
is refused with one line saying why, and the declarations cover every flag."""

from __future__ import annotations

import pytest

from wnconvert.cli import app
from wnconvert.cli.options import FLAGS, JOBS, USED_BY
from wnconvert.errors import API_TERMS


@pytest.mark.parametrize(("args", "message"), [
    (["SOURCE", "--provider", "bogus"], "--provider applies to verification"),
    (["SOURCE", "-o", "OUT.pt", "--atol", "5"],
     "--atol applies to verification, which runs with fold --to onnx"),
    (["SOURCE", "-o", "OUT.safetensors", "--runs", "3"], "--runs applies to verification"),
    (["SOURCE", "--opset", "18"], "--opset applies to the ONNX export"),
    (["SOURCE", "--model", "m.py:build"], "--model applies to building the network"),
    (["SOURCE", "--trust-program"], "--trust-program applies to running a .pt2 program"),
])
def test_fold_to_a_checkpoint_refuses_flags_it_would_ignore(args, message, shipped, cli,
                                                             tmp_path, assert_input_error):
    source = shipped("tiny_hifigan_legacy.pt")
    argv = [str(source) if a == "SOURCE" else str(tmp_path / a[4:]) if a.startswith("OUT.")
            else a for a in args]
    text = assert_input_error(cli("fold", *argv), message)
    assert "does not use it (drop it)" in text
    assert not list(tmp_path.glob("OUT*")) and not list(tmp_path.glob("out*"))


def test_no_verify_refuses_verification_flags(shipped, cli, tmp_path, assert_input_error):
    model = shipped("tiny_hifigan_legacy.pt")
    text = assert_input_error(
        cli("fold", str(model), "--to", "onnx", "--model", "x.py:build", "--no-verify",
            "--provider", "bogus"), "--provider applies to verification")
    assert "--no-verify turns verification off" in text


def test_a_flag_given_at_its_default_value_is_still_refused(shipped, cli, assert_input_error):
    # Given on the command line: the user thinks it does something.
    assert_input_error(cli("fold", str(shipped("tiny_hifigan_legacy.pt")), "--seed", "0"),
                       "--seed applies to verification")


def test_inspect_of_an_onnx_model_refuses_key(tmp_path, cli, assert_input_error):
    assert_input_error(cli("inspect", str(tmp_path / "m.onnx"), "--key", "x"),
                       "--key applies to picking the state dict")


def test_every_option_of_every_command_is_declared() -> None:
    import typer.main

    group = typer.main.get_command(app)
    global_params = {"json_out", "quiet", "debug", "force", "help"}
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        for param in command.params:
            if param.param_type_name == "argument" or param.name in global_params:
                continue
            if name == "verify" and param.name == "reference":
                continue  # required: part of the job itself
            assert param.name in USED_BY, (name, param.name)
    for jobs, _ in USED_BY.values():
        assert jobs <= {*JOBS, "verification"}
    assert set(API_TERMS) <= set(FLAGS)
