"""``.nemo`` archives (issue 18 §3): read in memory by member name, written back with the
converted weights and every other member byte for byte; unsafe members refused.

The layout is NeMo's ``SaveRestoreConnector``: ``tar.add(folder, arcname=".")`` of a folder
holding ``model_config.yaml`` and ``model_weights.ckpt`` (a ``torch.save`` of the model's flat
state dict: ``generator.*``, ``mpd.*``, ``msd.*`` for its HiFi-GAN), gzip'd.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from tests.checkpoints import read_pt
from tests.formats.payloads import RunsShell
from wnconvert.errors import InputError
from wnconvert.formats import load_checkpoint

CONFIG = b"target: nemo.collections.tts.models.HifiGanModel\nsample_rate: 22050\n"
EXTRA = b"\x00\x01 tokenizer bytes \xff"


def _member(tar: tarfile.TarFile, name: str, data: bytes, **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def _folder(tar: tarfile.TarFile, name: str = "./") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(info)


def make_nemo(path: Path, state_dict: object, *, compression: str = "gz",
              extra: list[tuple[str, bytes]] = ()) -> Path:
    weights = io.BytesIO()
    torch.save(state_dict, weights)
    mode = "w:gz" if compression == "gz" else "w:"
    with tarfile.open(path, mode) as tar:  # type: ignore[call-overload]
        _folder(tar)
        _member(tar, "./model_config.yaml", CONFIG)
        _member(tar, "./model_weights.ckpt", weights.getvalue())
        for name, data in extra:
            _member(tar, name, data)
    return path


def members(path: Path) -> list[tuple[str, bytes | None]]:
    with tarfile.open(path, "r:*") as tar:
        return [(m.name, tar.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
                for m in tar.getmembers()]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def hifigan_state(fixture_models) -> dict[str, torch.Tensor]:
    """NeMo's HifiGanModel state dict in miniature: the generator under ``generator.``."""
    generator = fixture_models.build_generator("legacy")
    return {f"generator.{k}": v for k, v in generator.state_dict().items()}


@pytest.fixture(params=["gz", ""], ids=["gzip", "plain-tar"])
def nemo_file(request, tmp_path, hifigan_state) -> Path:
    return make_nemo(tmp_path / "hifigan.nemo", hifigan_state, compression=request.param,
                     extra=[("./vocab/tokens.bin", EXTRA)])


@pytest.fixture
def never_extracted(monkeypatch):
    """Fail the test if anything extracts an archive member to disk."""
    def refuse(*args, **kwargs):
        raise AssertionError("an archive member was extracted to disk")

    monkeypatch.setattr(tarfile.TarFile, "extract", refuse)
    monkeypatch.setattr(tarfile.TarFile, "extractall", refuse)
    monkeypatch.setattr(tarfile.TarFile, "makefile", refuse)


def test_inspect_reads_the_weights_inside(nemo_file, cli, assert_ok, snapshot, never_extracted):
    before = snapshot(nemo_file.parent)
    result = assert_ok(cli("inspect", nemo_file))
    assert f"{nemo_file.name} (nemo)" in result.stdout
    assert "detected: tar archive with model_weights.ckpt" in result.stdout
    report = json.loads(assert_ok(cli("inspect", nemo_file, "--json")).stdout)
    container = report["container"]
    assert container["format"] == "nemo"
    assert container["members"] == [".", "./model_config.yaml", "./model_weights.ckpt",
                                    "./vocab/tokens.bin"]
    assert report["totals"]["pairs"] == 8
    assert snapshot(nemo_file.parent) == before  # nothing extracted, nothing written


def test_fold_writes_a_plain_pt_by_default(nemo_file, hifigan_state, fixture_models, cli,
                                           assert_ok, never_extracted):
    before = digest(nemo_file)
    assert_ok(cli("fold", nemo_file))
    folded = read_pt(nemo_file.with_name("hifigan.folded.pt"))
    plain = fixture_models.build_generator("none")
    plain.load_state_dict({k.removeprefix("generator."): v for k, v in folded.items()},
                          strict=True)
    reference = fixture_models.build_generator("legacy")
    mel = torch.randn(1, 16, 20)
    with torch.no_grad():
        torch.testing.assert_close(plain(mel), reference(mel), rtol=1e-5, atol=1e-6)
    assert digest(nemo_file) == before


def test_fold_to_nemo_keeps_every_other_member(nemo_file, cli, assert_ok, never_extracted):
    out = nemo_file.with_name("folded.nemo")
    assert_ok(cli("fold", nemo_file, "-o", out))
    original, written = members(nemo_file), members(out)
    assert [name for name, _ in written] == [name for name, _ in original]
    for (name, old), (_, new) in zip(original, written, strict=True):
        if name != "./model_weights.ckpt":
            assert new == old, name  # byte for byte
    gzip_magic = b"\x1f\x8b"  # same compression as the input
    assert (out.read_bytes()[:2] == gzip_magic) == (nemo_file.read_bytes()[:2] == gzip_magic)
    checkpoint = load_checkpoint(out)
    assert checkpoint.format == "nemo"
    assert "generator.conv_pre.weight" in checkpoint.state_dict
    assert not [k for k in checkpoint.state_dict if k.endswith(("_g", "_v"))]
    assert_ok(cli("fold", nemo_file, "-o", nemo_file.with_name("plain.pt")))
    plain = read_pt(nemo_file.with_name("plain.pt"))
    for key, tensor in plain.items():
        assert torch.equal(checkpoint.state_dict[key], tensor), key


def test_decompose_a_nemo(nemo_file, cli, assert_ok):
    folded = nemo_file.with_name("folded.nemo")
    assert_ok(cli("fold", nemo_file, "-o", folded))
    again = nemo_file.with_name("again.nemo")
    assert_ok(cli("decompose", folded, "-o", again, "--style", "legacy"))
    checkpoint = load_checkpoint(again)
    assert {k for k in checkpoint.state_dict if k.endswith("_g")} >= {
        "generator.conv_pre.weight_g", "generator.conv_post.weight_g"}
    assert_ok(cli("decompose", folded))  # default: a plain .pt beside it
    assert "generator.conv_pre.parametrizations.weight.original0" in read_pt(
        nemo_file.with_name("folded.decomposed.pt"))


def test_nemo_output_needs_a_nemo_input(tmp_path, save_pt, hifigan_state, cli,
                                        assert_input_error):
    path = save_pt(hifigan_state, "generator.pt")
    assert_input_error(cli("fold", path, "-o", tmp_path / "out.nemo"), "out.nemo", ".nemo input")
    assert not (tmp_path / "out.nemo").exists()


def test_existing_nemo_output_is_kept_without_force(nemo_file, cli, assert_input_error):
    out = nemo_file.with_name("out.nemo")
    out.write_bytes(b"keep me")
    assert_input_error(cli("fold", nemo_file, "-o", out), out)
    assert out.read_bytes() == b"keep me"


def _unsafe(kind: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo({"abs": "/etc/cron.d/x", "dotdot": "../outside.yaml"}.get(kind,
                                                                                  f"./{kind}"))
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "./model_config.yaml"
    elif kind == "chardev":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 5
    elif kind == "blockdev":
        info.type = tarfile.BLKTYPE
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE
    return info


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "chardev", "blockdev", "fifo", "abs",
                                  "dotdot"])
def test_unsafe_members_are_refused(kind, tmp_path, hifigan_state, cli, assert_input_error,
                                    snapshot):
    path = make_nemo(tmp_path / "bad.nemo", hifigan_state)
    with tarfile.open(path, "r:gz") as tar:
        kept = [(m, tar.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
                for m in tar.getmembers()]
    with tarfile.open(path, "w:gz") as tar:
        for info, data in kept:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        tar.addfile(_unsafe(kind), io.BytesIO(b"x") if kind in ("abs", "dotdot") else None)
    before = snapshot(tmp_path)
    for command in ("inspect", "fold"):
        line = assert_input_error(cli(command, path), path)
        assert "refused" in line
    assert snapshot(tmp_path) == before


def test_member_larger_than_the_archive_is_refused(tmp_path, hifigan_state):
    path = make_nemo(tmp_path / "cut.nemo", hifigan_state, compression="")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # model_weights.ckpt runs past the end
    with pytest.raises(InputError, match=r"cut.nemo: not a readable .nemo archive \(unexpected"):
        load_checkpoint(path)


@pytest.mark.parametrize("where", [0.3, 0.6, 0.9])
def test_damaged_gzip_is_an_input_error(where, tmp_path, hifigan_state, cli, assert_input_error):
    path = make_nemo(tmp_path / "damaged.nemo", hifigan_state)
    data = bytearray(path.read_bytes())
    at = int(len(data) * where)
    data[at:at + 16] = bytes(16)
    path.write_bytes(bytes(data))
    assert_input_error(cli("fold", path, "-o", tmp_path / "out.nemo"), path)
    assert not (tmp_path / "out.nemo").exists()


def test_without_model_weights(tmp_path):
    path = tmp_path / "config_only.nemo"
    with tarfile.open(path, "w:gz") as tar:
        _member(tar, "./model_config.yaml", CONFIG)
    with pytest.raises(InputError, match="without model_weights.ckpt"):
        load_checkpoint(path)


def test_code_in_the_weights_never_runs(tmp_path, cli, assert_input_error):
    marker = tmp_path / "pwned"
    path = make_nemo(tmp_path / "evil.nemo", {"hook": RunsShell(marker)})
    line = assert_input_error(cli("inspect", path), "evil.nemo:model_weights.ckpt")
    assert "nothing from it was run" in line
    assert not marker.exists()
