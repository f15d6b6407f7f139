"""A ``.pt2`` archive can never run pickled code (issue 9 §1): one crafted archive per member that
``torch.export.load`` would unpickle unsafely, each refused with one line, exit 2, nothing
written and no marker file created. A ``.pt2`` is still a program (issue 16): it is loaded only
with ``trust_program=True``, and even then its graph may call only core ATen/prims operators
that touch no files."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.export import programs
from tests.export.programs import save_program
from tests.fuzzing import FUZZ, examples, flips
from wnconvert.cli import app
from wnconvert.errors import InputError
from wnconvert.export import load_program, prepare_program
from wnconvert.export import program as program_module


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(2, 3, 3))
        self.register_buffer("scale", torch.tensor([2.0]))
        self.offset = torch.tensor([0.5])  # a plain attribute: saved as a tensor constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale + self.offset


class _Marker:
    """Unpickling this creates the file at ``path`` (the proof that code ran)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (os.mknod if hasattr(os, "mknod") else open, (self.path,))  # type: ignore[return-value]


def _pickled_marker(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(_Marker(str(marker)), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def valid_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "good.pt2"
    program = torch.export.export(_Tiny().eval(), (torch.randn(1, 2, 8),))
    torch.export.save(program, str(path))
    return path


def _rewrite(src: Path, dst: Path, edit: Callable[[dict[str, bytes], str], None]) -> Path:
    with zipfile.ZipFile(src) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    root = next(iter(members)).split("/", 1)[0] + "/"
    edit(members, root)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return dst


def _sample_inputs(marker: Path) -> Callable[[dict[str, bytes], str], None]:
    def edit(members: dict[str, bytes], root: str) -> None:
        members[root + "data/sample_inputs/model.pt"] = _pickled_marker(marker)
    return edit


def _pickled_payload(kind: str, marker: Path) -> Callable[[dict[str, bytes], str], None]:
    """Flag the first weight/constant ``use_pickle`` and store a malicious pickle for it."""
    def edit(members: dict[str, bytes], root: str) -> None:
        config_name = f"{root}data/{kind}/model_{kind}_config.json"
        config = json.loads(members[config_name])
        fqn, meta = next(iter(config["config"].items()))
        meta["use_pickle"] = True
        members[f"{root}data/{kind}/{meta['path_name']}"] = _pickled_marker(marker)
        config["config"][fqn] = meta
        members[config_name] = json.dumps(config).encode()
    return edit


def _object_constant(prefix: str, marker: Path) -> Callable[[dict[str, bytes], str], None]:
    """An opaque (``pickle.loads``) or custom-class (``torch._C._pickle_load_obj``) constant."""
    def edit(members: dict[str, bytes], root: str) -> None:
        import pickle

        config_name = f"{root}data/constants/model_constants_config.json"
        config = json.loads(members[config_name])
        config.setdefault("config", {})["evil"] = {"path_name": f"{prefix}0", "is_param": False,
                                                   "use_pickle": False, "tensor_meta": None}
        members[config_name] = json.dumps(config).encode()
        members[f"{root}data/constants/{prefix}0"] = pickle.dumps(_Marker(str(marker)))
    return edit


def _legacy_weights(marker: Path) -> Callable[[dict[str, bytes], str], None]:
    def edit(members: dict[str, bytes], root: str) -> None:
        members[root + "data/weights/model.pt"] = _pickled_marker(marker)
    return edit


def _compiled_code(marker: Path) -> Callable[[dict[str, bytes], str], None]:
    def edit(members: dict[str, bytes], root: str) -> None:
        members[root + "data/aotinductor/model/model.so"] = b"\x7fELF not really"
    return edit


CRAFTED = {
    "sample_inputs": _sample_inputs,
    "pickled_weight": lambda marker: _pickled_payload("weights", marker),
    "pickled_constant": lambda marker: _pickled_payload("constants", marker),
    "opaque_constant": lambda marker: _object_constant("opaque_obj_", marker),
    "custom_class_constant": lambda marker: _object_constant("custom_obj_", marker),
    "legacy_pickled_weights": _legacy_weights,
    "compiled_code": _compiled_code,
}


def test_a_valid_archive_loads_on_the_cpu(valid_pt2: Path) -> None:
    program = load_program(valid_pt2, trust_program=True)
    assert all(t.device.type == "cpu" for t in program.state_dict.values())


@pytest.mark.parametrize("member", sorted(CRAFTED))
def test_crafted_member_is_refused_and_runs_nothing(member: str, valid_pt2: Path,
                                                     tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    bad = _rewrite(valid_pt2, tmp_path / "bad.pt2", CRAFTED[member](marker))
    with pytest.raises(InputError, match="refused"):
        load_program(bad, trust_program=True)
    assert not marker.exists()


@pytest.mark.parametrize("member", ["sample_inputs", "pickled_weight", "pickled_constant",
                                    "opaque_constant"])
def test_the_load_guard_alone_runs_nothing(member: str, valid_pt2: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: with the archive check switched off, torch.export.load itself still
    only reaches the safe unpickler."""
    monkeypatch.setattr(program_module, "check_program_archive", lambda path: None)
    marker = tmp_path / "PWNED"
    bad = _rewrite(valid_pt2, tmp_path / "bad.pt2", CRAFTED[member](marker))
    with pytest.raises(InputError):
        load_program(bad, trust_program=True)
    assert not marker.exists()
    # The guard is lifted afterwards: torch.load is torch's own again.
    assert torch.load.__module__ == "torch.serialization"


def test_cli_fold_of_a_malicious_pt2_exits_2_and_writes_nothing(valid_pt2: Path,
                                                                 tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    bad = _rewrite(valid_pt2, tmp_path / "x.pt2", _sample_inputs(marker))
    out = tmp_path / "out.onnx"
    before = bad.read_bytes()
    result = CliRunner().invoke(app, ["fold", str(bad), "--trust-program", "--no-verify",
                                        "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "refused" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt2"]
    assert bad.read_bytes() == before


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt2"
    path.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a torch.export archive"):
        load_program(path, trust_program=True)


# --------------------------------------------------------------------------- damaged archives


def _version(members: dict[str, bytes], root: str) -> None:
    members[root + ".data/version"] = b"x"


def _renamed_constant(members: dict[str, bytes], root: str) -> None:
    spec = members[root + "models/model.json"]
    members[root + "models/model.json"] = spec.replace(b'"c_offset"', b'"c_odfset"', 1)


@pytest.mark.parametrize("edit, cause", [
    (_version, "RuntimeError: [enforce fail at inline_container.cc:215] . Couldn't parse the "
               "version x"),
    (_renamed_constant, "KeyError: 'c_odfset'"),
])
def test_a_damaged_archive_is_one_line_naming_the_cause(
    edit: Callable[[dict[str, bytes], str], None], cause: str, valid_pt2: Path,
    tmp_path: Path, capfd: pytest.CaptureFixture[str],
) -> None:
    # torch logs the cause with a traceback on stderr and raises "check the warnings above".
    bad = _rewrite(valid_pt2, tmp_path / "bad.pt2", edit)
    capfd.readouterr()
    with pytest.raises(InputError) as caught:
        load_program(bad, trust_program=True)
    assert cause in str(caught.value) and "\n" not in str(caught.value)
    assert capfd.readouterr().err == ""


@settings(FUZZ, max_examples=examples(30))
@given(data=st.data(), flips=flips)
def test_mutated_archives_load_or_are_input_errors(
    valid_pt2: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], data: st.DataObject,
    flips: list[tuple[int, int]],
) -> None:
    with zipfile.ZipFile(valid_pt2) as archive:
        member = data.draw(st.sampled_from(sorted(archive.namelist())))

    def flip(members: dict[str, bytes], root: str) -> None:
        content = bytearray(members[member])
        for where, value in flips if content else ():
            content[where % len(content)] = value
        members[member] = bytes(content)

    bad = _rewrite(valid_pt2, tmp_path / "mutated.pt2", flip)
    capfd.readouterr()
    try:
        load_program(bad, trust_program=True)
    except InputError as exc:
        assert "\n" not in str(exc)
    assert capfd.readouterr().err == "", "torch printed to stderr"


# --------------------------------------------------------------------------- trust (issue 16)


def test_an_untrusted_program_is_refused_before_torch_reads_it(
        valid_pt2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a .pt2 evaluates text from it (sympy parses its symbolic sizes): without
    trust_program nothing of the file may reach torch, not even the archive check's reader."""
    reached: list[str] = []
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: reached.append("export.load"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: reached.append("load"))
    monkeypatch.setattr(program_module, "check_program_archive",
                        lambda path: reached.append("archive"))
    with pytest.raises(InputError) as caught:
        load_program(valid_pt2)
    message = str(caught.value)
    assert str(valid_pt2) in message and "trust_program=True" in message
    assert "a .pt2 is a program" in message and "evaluates code from the file" in message
    assert reached == []


def test_a_trusted_program_still_may_not_call_from_file(tmp_path: Path) -> None:
    """The reported attack: a graph that maps a file outside the folder writable
    (aten.from_file with shared=True), or creates one."""
    victim = tmp_path / "outside" / "victim.bin"
    victim.parent.mkdir()
    victim.write_bytes(b"precious bytes, not zeros")
    missing = tmp_path / "outside" / "created.bin"
    for target in (victim, missing):
        program = save_program(programs.Ones(), tmp_path / "evil.pt2", torch.randn(4),
                               edit=programs.reads_file(target))
        with pytest.raises(InputError) as caught:
            load_program(program, trust_program=True)
        message = str(caught.value)
        assert "aten.from_file.default" in message and "files" in message
        assert "even with trust_program=True" in message and "\n" not in message
    assert victim.read_bytes() == b"precious bytes, not zeros"
    assert not missing.exists()


@pytest.mark.parametrize("module, named", [
    (programs.Custom(), "wnconvert_tests.shift.default"),
    (programs.NonCore(), "aten.digamma.default"),
])
def test_a_trusted_program_may_not_call_custom_or_non_core_operators(
        module: torch.nn.Module, named: str, tmp_path: Path) -> None:
    program = save_program(module, tmp_path / "p.pt2", torch.rand(4) + 0.5)
    with pytest.raises(InputError, match="refused: the program calls " + named.replace(".", r"\.")):
        load_program(program, trust_program=True)


def test_nested_graphs_are_checked_too(tmp_path: Path) -> None:
    clean = save_program(programs.Branches(), tmp_path / "clean.pt2", torch.randn(4))
    assert load_program(clean, trust_program=True) is not None
    target = tmp_path / "created.bin"
    evil = save_program(programs.Branches(), tmp_path / "evil.pt2", torch.randn(4),
                        edit=programs.reads_file(target))
    with pytest.raises(InputError, match=r"aten\.from_file\.default"):
        load_program(evil, trust_program=True)
    assert not target.exists()


@pytest.mark.parametrize("module, args, dynamic", [
    (programs.Linear(), (torch.randn(2, 8),), None),
    (programs.Plumbing(), (torch.randn(5, 2),), ({0: torch.export.Dim.AUTO},)),
])
def test_clean_programs_load_and_run_when_trusted(module: torch.nn.Module,
                                                  args: tuple[torch.Tensor, ...],
                                                  dynamic: Any, tmp_path: Path) -> None:
    path = save_program(module, tmp_path / "clean.pt2", *args, dynamic_shapes=dynamic)
    prepared = prepare_program(path, trust_program=True)
    torch.testing.assert_close(prepared.reference(*args), module(*args))
