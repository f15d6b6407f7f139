"""The one atomic writer (``wnconvert.formats.atomic``) and every writer built on it.

* ``check_output``: an output is never an input, however spelled (``..``, symlink, hard link),
  even with ``force``; an existing file (also a dangling symlink) needs ``force``;
* publishing never replaces a file that appeared at the output path while the run worked,
  unless ``force``; a multi-file set (shards + index, model + data file) is published whole or
  not at all, with ``force`` too (the old files come back); nothing is left in the folder on
  refusal or failure;
* the byte-range copier copies exactly, with and without ``copy_file_range``;
* torch's writer keeps the real error (a full disk, Ctrl-C) instead of its "enforce fail".
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from tests.formats.faults import FailingFile
from tests.onnx_graph.builders import save, weight_norm_model
from wnconvert.errors import InputError
from wnconvert.formats import atomic, load_checkpoint, save_checkpoint, write_checkpoint
from wnconvert.formats import torch_pickle as tp
from wnconvert.formats.source import PlannedTensor


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def no_debris(folder: Path) -> None:
    left = [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert left == [], f"temp files or staging folders left behind: {left}"


# --------------------------------------------------------------------------- check_output


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "hardlink", "symlinked-dir"])
@pytest.mark.parametrize("force", [False, True])
def test_an_input_is_never_an_output(spelling, force, tmp_path):
    source = tmp_path / "in.pt"
    source.write_bytes(b"input")
    if spelling == "same":
        output = source
    elif spelling == "dotdot":
        (tmp_path / "sub").mkdir()
        output = tmp_path / "sub" / ".." / "in.pt"
    elif spelling == "symlink":
        output = tmp_path / "link.pt"
        output.symlink_to(source)
    elif spelling == "hardlink":
        output = tmp_path / "hard.pt"
        os.link(source, output)
    else:
        (tmp_path / "alias").symlink_to(tmp_path, target_is_directory=True)
        output = tmp_path / "alias" / "in.pt"
    with pytest.raises(InputError, match="this is an input file"):
        atomic.check_output(output, force=force, inputs=[tmp_path / "other.pt", source])


def test_other_existing_files_need_force(tmp_path):
    source = tmp_path / "in.pt"
    source.write_bytes(b"input")
    existing = tmp_path / "out.pt"
    existing.write_bytes(b"old")
    with pytest.raises(InputError, match="force=True"):
        atomic.check_output(existing, force=False, inputs=[source])
    atomic.check_output(existing, force=True, inputs=[source])
    atomic.check_output(tmp_path / "new.pt", force=False, inputs=[source])


def test_a_dangling_symlink_is_an_existing_output(tmp_path):
    output = tmp_path / "out.pt"
    output.symlink_to(tmp_path / "nowhere.pt")
    with pytest.raises(InputError, match="already exists"):
        atomic.check_output(output, force=False)


# --------------------------------------------------------------------------- publishing


def test_a_file_that_appears_meanwhile_is_kept(tmp_path):
    output = tmp_path / "out.bin"
    with (
        pytest.raises(InputError, match="appeared while writing.*force=True"),
        atomic.atomic_file(output) as handle,
    ):
        handle.write(b"ours")
        output.write_bytes(b"theirs")  # another run finished first
    assert output.read_bytes() == b"theirs"
    no_debris(tmp_path)


def test_force_replaces_a_file_that_appears_meanwhile(tmp_path):
    output = tmp_path / "out.bin"
    with atomic.atomic_file(output, force=True) as handle:
        handle.write(b"ours")
        output.write_bytes(b"theirs")
    assert output.read_bytes() == b"ours"
    no_debris(tmp_path)


def test_a_set_is_published_whole_or_not_at_all(tmp_path):
    shard, index = tmp_path / "m-00001-of-00001.safetensors", tmp_path / "m.index.json"
    with (
        pytest.raises(InputError, match="m.index.json: appeared while writing"),
        atomic.atomic_files([shard, index]) as (shard_tmp, index_tmp),
    ):
        shard_tmp.write_bytes(b"shard")
        index_tmp.write_bytes(b"index")
        index.write_bytes(b"someone else's index")
    # The shard was published first, then taken back: no half set is left.
    assert listing(tmp_path) == {"m.index.json": b"someone else's index"}
    no_debris(tmp_path)


@pytest.mark.parametrize("failure", [OSError(errno.EIO, "I/O error"), KeyboardInterrupt()],
                         ids=["error", "ctrl-c"])
@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_force_puts_every_old_file_back_when_the_set_fails_part_way(failure, links, tmp_path,
                                                                    monkeypatch):
    # A model and its data file from two runs would be a corrupt pair: the data file is
    # replaced first, so the model's replacement failing must bring the old data file back
    # (kept as a hard link, or as a copy where the file system has none).
    data, model = tmp_path / "a.onnx.data", tmp_path / "a.onnx"
    data.write_bytes(b"old data")
    model.write_bytes(b"old model")
    real = os.replace

    def replace(src: object, dst: object) -> None:
        if Path(str(dst)) == model and ".tmp" in str(src):
            raise failure
        real(src, dst)

    def no_links(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "hard links not supported here")

    monkeypatch.setattr(atomic.os, "replace", replace)
    if not links:
        monkeypatch.setattr(atomic.os, "link", no_links)
    with (
        pytest.raises(type(failure)),
        atomic.atomic_files([data, model], force=True) as temps,
    ):
        for tmp in temps:
            tmp.write_bytes(b"new")
    assert listing(tmp_path) == {"a.onnx": b"old model", "a.onnx.data": b"old data"}
    no_debris(tmp_path)


def test_rollback_leaves_a_file_that_is_not_ours(tmp_path, monkeypatch):
    first, second = tmp_path / "a.data", tmp_path / "a.onnx"
    real = atomic.move_no_replace

    def move(staged: Path, final: Path) -> None:
        real(staged, final)
        if final == first:  # someone replaces our fresh file, then the second name is taken
            os.unlink(first)
            first.write_bytes(b"other a.data")
            second.write_bytes(b"other a.onnx")

    monkeypatch.setattr(atomic, "move_no_replace", move)
    with (
        pytest.raises(InputError, match="appeared while writing"),
        atomic.atomic_files([first, second]) as temps,
    ):
        for tmp in temps:
            tmp.write_bytes(b"ours")
    assert listing(tmp_path) == {"a.data": b"other a.data", "a.onnx": b"other a.onnx"}
    no_debris(tmp_path)


@pytest.mark.parametrize("layer", ["link", "renameat2", "rename"])
def test_every_no_replace_fallback_refuses_an_existing_file(layer, tmp_path, monkeypatch):
    if layer != "link":
        def no_link(*args, **kwargs):
            raise PermissionError(errno.EPERM, "hard links not supported")

        monkeypatch.setattr(atomic.os, "link", no_link)
    if layer == "rename":
        monkeypatch.setattr(atomic, "_renameat2_noreplace", lambda staged, final: False)
    output = tmp_path / "out.bin"
    with atomic.atomic_file(output) as handle:
        handle.write(b"first")
    assert output.read_bytes() == b"first"
    with (
        pytest.raises(InputError, match="appeared while writing"),
        atomic.atomic_file(output) as handle,
    ):
        handle.write(b"second")
    assert output.read_bytes() == b"first"
    no_debris(tmp_path)


def test_failure_inside_the_block_leaves_nothing(tmp_path):
    output = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="boom"), atomic.atomic_file(output) as handle:
        handle.write(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_interrupt_inside_the_block_leaves_nothing(tmp_path):
    with (
        pytest.raises(KeyboardInterrupt),
        atomic.atomic_files([tmp_path / "a", tmp_path / "b"]) as temps,
    ):
        temps[0].write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_write_error_names_the_output(tmp_path, monkeypatch):
    output = tmp_path / "out.pt"

    class Full:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as caught, atomic.atomic_file(output):
        Full().write(b"x")
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(output)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- writers


def test_checkpoint_writer_refuses_an_output_that_appeared(tmp_path):
    source = tmp_path / "in.pt"
    torch.save({"a": torch.ones(3), "b": torch.zeros(2)}, source)
    checkpoint = load_checkpoint(source)
    plan = [PlannedTensor(k, checkpoint.info(k), k) for k in checkpoint.state_dict]
    for fmt, name in (("pt", "out.pt"), ("safetensors", "out.safetensors")):
        output = tmp_path / name

        def appear(key: str, output: Path = output) -> None:
            if not output.exists():
                output.write_bytes(b"theirs")

        with pytest.raises(InputError, match="appeared while writing"):
            write_checkpoint(checkpoint, plan, output, fmt=fmt, on_tensor=appear)
        assert output.read_bytes() == b"theirs"
    no_debris(tmp_path)


def test_sharded_writer_takes_back_its_shards_when_the_index_appeared(tmp_path, save_sharded):
    index = save_sharded([{"a": torch.ones(3)}, {"b": torch.zeros(2)}])
    checkpoint = load_checkpoint(index)
    plan = [PlannedTensor(k, checkpoint.info(k), k) for k in checkpoint.state_dict]
    output = tmp_path / "out.safetensors.index.json"
    before = listing(tmp_path)

    def appear(key: str) -> None:
        output.write_text("{}")

    with pytest.raises(InputError, match="appeared while writing"):
        write_checkpoint(checkpoint, plan, output, fmt="safetensors", on_tensor=appear)
    assert listing(tmp_path) == {**before, output.name: b"{}"}
    no_debris(tmp_path)


def test_checkpoint_writer_never_writes_over_an_extra_input(tmp_path):
    source = tmp_path / "in.pt"
    torch.save({"a": torch.ones(3)}, source)
    template = tmp_path / "template.pt"
    template.write_bytes(b"template")
    checkpoint = load_checkpoint(source)
    plan = [PlannedTensor("a", checkpoint.info("a"), "a")]
    with pytest.raises(InputError, match="input file"):
        write_checkpoint(checkpoint, plan, template, fmt="pt", force=True, inputs=[template])
    assert template.read_bytes() == b"template"


def test_onnx_fold_refuses_an_output_that_appeared(tmp_path):
    from wnconvert.onnx_graph import fold_file

    model, _, _ = weight_norm_model((4, 3), 0)
    source = save(model, tmp_path / "m.onnx", external=True)
    output = tmp_path / "folded.onnx"
    data = tmp_path / "folded.onnx.data"
    before = listing(tmp_path)

    def appear(name: str, done: int, total: int) -> None:
        output.write_bytes(b"theirs")

    with pytest.raises(InputError, match="folded.onnx: appeared while writing"):
        fold_file(source, output, force=False, on_tensor=appear)
    assert output.read_bytes() == b"theirs"
    assert not data.exists()  # the data file was published, then taken back
    assert listing(tmp_path) == {**before, "folded.onnx": b"theirs"}
    no_debris(tmp_path)
    # With force the new model and its data file replace whatever is there.
    outcome = fold_file(source, output, force=True, on_tensor=appear)
    assert outcome.files == [data, output]
    assert output.read_bytes() != b"theirs"
    no_debris(tmp_path)


@pytest.mark.parametrize("external", [False, True])
def test_export_save_refuses_an_output_that_appeared(external, tmp_path):
    import onnx_ir as ir

    from wnconvert.export.onnx_export import _save_atomic

    model, _, _ = weight_norm_model((4, 3), 0)
    loaded = ir.from_proto(model)
    output = tmp_path / "model.onnx"
    data = tmp_path / "model.onnx.data" if external else None
    # Created after the command's check_output and before the publish.
    (data or output).write_bytes(b"theirs")
    with pytest.raises(InputError, match="appeared while writing"):
        _save_atomic(loaded, output, data, force=False)
    assert listing(tmp_path) == {(data or output).name: b"theirs"}
    no_debris(tmp_path)
    _save_atomic(loaded, output, data, force=True)
    assert output.stat().st_size > 0 and (data is None or data.read_bytes() != b"theirs")
    no_debris(tmp_path)


# --------------------------------------------------------------------------- torch.save


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 KeyboardInterrupt()], ids=["enospc", "ctrl-c"])
def test_torch_save_keeps_the_real_error(exc, tmp_path):
    state = {f"w{i}": torch.randn(64, 64) for i in range(4)}
    # Control: torch alone turns the error into its own enforce-fail RuntimeError.
    handle = FailingFile(tmp_path / "a.pt", "wb", exc, fail_at=4)
    with pytest.raises(RuntimeError, match="enforce fail"):
        torch.save(state, handle)
    handle.close()
    handle = FailingFile(tmp_path / "b.pt", "wb", exc, fail_at=4)
    with pytest.raises(type(exc)) as caught:
        tp.save_pickle(state, handle)
    handle.close()
    assert caught.value is exc


def test_torch_runtime_error_about_a_full_disk_becomes_an_os_error(monkeypatch, tmp_path):
    def save(obj, handle):
        raise RuntimeError("[enforce fail at inline_container.cc:1] . file write failed: "
                           "No space left on device")

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError) as caught:
        save_checkpoint({"a": torch.ones(2)}, tmp_path / "out.pt")
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(tmp_path / "out.pt")
    assert list(tmp_path.iterdir()) == []


def test_index_written_last_points_at_published_shards(tmp_path, save_sharded):
    index = save_sharded([{"a": torch.ones(3)}, {"b": torch.zeros(2)}])
    output = tmp_path / "copy.safetensors.index.json"
    checkpoint = load_checkpoint(index)
    plan = [PlannedTensor(k, checkpoint.info(k), k) for k in checkpoint.state_dict]
    write_checkpoint(checkpoint, plan, output, fmt="safetensors")
    weight_map = json.loads(output.read_text())["weight_map"]
    assert all((tmp_path / name).is_file() for name in weight_map.values())
    no_debris(tmp_path)


def test_a_signal_during_cleanup_waits_for_its_end(tmp_path):
    import signal

    class Stop(BaseException):
        pass

    def stop(signum, frame):
        raise Stop

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        steps = []
        with pytest.raises(Stop), atomic.signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("cleanup finished")  # not cut short by the signal
        assert steps == ["cleanup finished"]
        assert signal.getsignal(signal.SIGTERM) is stop  # the handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_write_error_names_the_final_path_not_the_staged_one(tmp_path):
    data, model = tmp_path / "m.onnx.data", tmp_path / "m.onnx"
    with pytest.raises(OSError) as caught, atomic.Staging([data, model], force=False) as staging:
        raise OSError(errno.ENOSPC, "No space left on device", str(staging.path(data)))
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(data)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- --force sets


def _write_set(folder: Path, generation: str, shards: list[str]) -> None:
    """A tiny sharded set: each shard's bytes say which run wrote it (``generation``)."""
    for name in shards:
        (folder / name).write_bytes(f"{generation}:{name}".encode())
    weight_map = {f"t{i}": name for i, name in enumerate(shards)}
    (folder / "m.safetensors.index.json").write_text(
        json.dumps({"metadata": {"generation": generation}, "weight_map": weight_map}))


def _read_set(folder: Path) -> str:
    """The generation of the set a reader sees now; fails on a missing or mixed payload."""
    index = json.loads((folder / "m.safetensors.index.json").read_text())
    generation = index["metadata"]["generation"]
    for name in index["weight_map"].values():
        content = (folder / name).read_bytes().decode()
        assert content.startswith(f"{generation}:"), f"{name} is {content}, index {generation}"
    return generation


def _shards(count: int) -> list[str]:
    return [f"m-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def _publish_set(folder: Path, shards: list[str]) -> None:
    from wnconvert.formats import ShardIndexLayout

    index = folder / "m.safetensors.index.json"
    outputs = [folder / name for name in shards]
    with atomic.atomic_files([*outputs, index], force=True, layout=ShardIndexLayout()) as temps:
        for tmp, name in zip(temps, shards, strict=False):
            tmp.write_bytes(f"new:{name}".encode())
        temps[-1].write_text(json.dumps(
            {"metadata": {"generation": "new"},
             "weight_map": {f"t{i}": name for i, name in enumerate(shards)}}))


@pytest.mark.parametrize("old,new", [(3, 3), (3, 2), (2, 3)], ids=["same", "fewer", "more"])
def test_force_shows_the_complete_old_or_new_set_at_every_instant(old, new, tmp_path,
                                                                  monkeypatch):
    # A reader (or a SIGKILL) at any step of the publish finds the complete old set or the
    # complete new one, never an old index over new shard bytes.
    _write_set(tmp_path, "old", _shards(old))
    seen: list[str] = []
    for name in ("replace", "unlink", "link"):
        real = getattr(os, name)

        def step(*args: object, real: object = real, **kwargs: object) -> object:
            seen.append(_read_set(tmp_path))
            result = real(*args, **kwargs)  # type: ignore[operator]
            seen.append(_read_set(tmp_path))
            return result

        monkeypatch.setattr(atomic.os, name, step)
    _publish_set(tmp_path, _shards(new))
    monkeypatch.undo()
    assert seen[0] == "old" and set(seen) == {"old", "new"}
    assert _read_set(tmp_path) == "new"
    # The old set's shards the new one does not use went with it (a layout change).
    assert sorted(listing(tmp_path)) == sorted([*_shards(new), "m.safetensors.index.json"])
    no_debris(tmp_path)


def test_a_layout_change_removes_only_the_old_sets_own_files(tmp_path):
    _write_set(tmp_path, "old", [*_shards(3), "notes.bin"])  # the index also names notes.bin
    (tmp_path / "m-00009-of-00009.safetensors").write_bytes(b"not in the old index")
    _publish_set(tmp_path, _shards(2))
    assert sorted(listing(tmp_path)) == sorted(
        [*_shards(2), "m.safetensors.index.json", "notes.bin", "m-00009-of-00009.safetensors"])


def test_a_killed_replacement_is_cleaned_up_by_the_next_one(tmp_path):
    # What a SIGKILL between repointing the old index and the switch leaves: the old index
    # reads hidden backups (a complete old set), the new shard bytes, a staging folder, a lock.
    _write_set(tmp_path, "old", _shards(2))
    backups = [atomic.backup_name(tmp_path / "m.safetensors.index.json", "abcd1234", name)
               for name in _shards(2)]
    for name, backup in zip(_shards(2), backups, strict=True):
        os.rename(tmp_path / name, tmp_path / backup)
        (tmp_path / name).write_bytes(b"new bytes of the killed run")
    _write_set(tmp_path, "old", backups)
    (tmp_path / ".m.safetensors.index.json.k1ll3d_x.tmp").mkdir()
    (tmp_path / ".m.safetensors.index.json.k1ll3d_x.tmp" / "half").write_bytes(b"half")
    (tmp_path / ".m.safetensors.index.json.lock").write_bytes(b"")
    assert _read_set(tmp_path) == "old"
    _publish_set(tmp_path, _shards(2))
    assert _read_set(tmp_path) == "new"
    assert sorted(listing(tmp_path)) == sorted([*_shards(2), "m.safetensors.index.json"])
    no_debris(tmp_path)


@pytest.mark.parametrize("shards", [1, 2])
def test_a_signal_during_a_force_publish_waits_for_its_end(shards, tmp_path, monkeypatch):
    # SIGTERM while the entry is renamed used to roll back a half-published set and delete
    # the old output (single file) or the old index (sharded).
    import signal

    class Stop(BaseException):
        pass

    def stop(signum: int, frame: object) -> None:
        raise Stop

    names = _shards(shards) if shards > 1 else []
    if names:
        _write_set(tmp_path, "old", names)
    else:
        (tmp_path / "m.safetensors.index.json").write_bytes(b"old single file")
    real = os.replace

    def replace(src: object, dst: object) -> None:
        real(src, dst)
        if Path(str(dst)).name == "m.safetensors.index.json":
            os.kill(os.getpid(), signal.SIGTERM)  # lands right after the entry's rename

    monkeypatch.setattr(atomic.os, "replace", replace)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stop):
            if names:
                _publish_set(tmp_path, names)
            else:
                with atomic.atomic_file(tmp_path / "m.safetensors.index.json",
                                        force=True) as handle:
                    handle.write(b"new single file")
    finally:
        signal.signal(signal.SIGTERM, previous)
    if names:
        assert _read_set(tmp_path) == "new"
    else:
        assert listing(tmp_path) == {"m.safetensors.index.json": b"new single file"}
    no_debris(tmp_path)


def test_one_writer_per_output(tmp_path):
    output = tmp_path / "out.bin"
    with atomic.atomic_file(output) as handle:
        handle.write(b"first")
        with (
            pytest.raises(InputError, match="out.bin: another wnconvert is writing"),
            atomic.atomic_file(output, force=True),
        ):
            pass
    assert output.read_bytes() == b"first"
    no_debris(tmp_path)
    with atomic.atomic_file(output, force=True) as handle:  # the lock went with the first
        handle.write(b"second")
    assert output.read_bytes() == b"second"
    no_debris(tmp_path)


def _onnx_outputs(folder: Path) -> dict[str, bytes]:
    """The initializer bytes a reader of out.onnx gets now (external data read by hand:
    onnx.load refuses a data file with two hard links, which a publish has for an instant)."""
    import onnx

    model = onnx.load(str(folder / "out.onnx"), load_external_data=False)
    found = {}
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            found[tensor.name] = tensor.SerializeToString()
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        with open(folder / info["location"], "rb") as handle:
            handle.seek(int(info.get("offset", 0)))
            found[tensor.name] = handle.read(int(info["length"]))
            assert len(found[tensor.name]) == int(info["length"])
    return found


def test_onnx_force_keeps_model_and_data_whole_and_drops_data_it_no_longer_uses(tmp_path,
                                                                               monkeypatch):
    from wnconvert.onnx_graph import fold_file

    first, _, _ = weight_norm_model((4, 3), 0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = save(first, tmp_path / "a" / "m.onnx", external=True)
    b = save(weight_norm_model((6, 5), 1)[0], tmp_path / "b" / "m.onnx",
             external=True)  # another shape: a model reading the other data fails
    out = tmp_path / "out.onnx"
    fold_file(a, out, force=False)
    old = _onnx_outputs(tmp_path)
    assert (tmp_path / "out.onnx.data").exists()
    fold_file(b, tmp_path / "new.onnx", force=False)
    seen = []
    real = os.replace

    def replace(src: object, dst: object) -> None:
        seen.append(_onnx_outputs(tmp_path))
        real(src, dst)
        seen.append(_onnx_outputs(tmp_path))

    monkeypatch.setattr(atomic.os, "replace", replace)
    fold_file(b, out, force=True)  # the same data file name: the old model is repointed
    monkeypatch.undo()
    new = _onnx_outputs(tmp_path)
    assert old != new and seen[0] == old and seen[-1] == new
    assert all(state in (old, new) for state in seen), "a model read another run's data"
    no_debris(tmp_path)
    # Replaced by a model without external data: its old data file goes with it.
    fresh, _, _ = weight_norm_model((4, 3), 0)  # onnx.save made `first` external in place
    inline = save(fresh, tmp_path / "a" / "inline.onnx")
    fold_file(inline, out, force=True)
    assert not (tmp_path / "out.onnx.data").exists()
    assert (tmp_path / "new.onnx.data").exists()
    no_debris(tmp_path)


def test_a_full_disk_names_the_shard(tmp_path, save_sharded, monkeypatch):
    import wnconvert.formats as formats

    index = save_sharded([{"a": torch.ones(3)}, {"b": torch.zeros(2)}])
    checkpoint = load_checkpoint(index)
    plan = [PlannedTensor(k, checkpoint.info(k), k) for k in checkpoint.state_dict]
    full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(formats, "open", lambda path, mode: FailingFile(path, mode, full,
                                                                       fail_at=1),
                        raising=False)
    output = tmp_path / "out.safetensors.index.json"
    with pytest.raises(OSError) as caught:
        write_checkpoint(checkpoint, plan, output, fmt="safetensors")
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(tmp_path / "out-00001-of-00002.safetensors")
    no_debris(tmp_path)


def test_a_full_disk_names_the_onnx_data_file(tmp_path, monkeypatch):
    from wnconvert.onnx_graph import fold_file, protowrite

    model, _, _ = weight_norm_model((4, 3), 0)
    source = save(model, tmp_path / "m.onnx", external=True)
    full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(protowrite, "open", lambda path, mode: FailingFile(path, mode, full,
                                                                          fail_at=1),
                        raising=False)
    with pytest.raises(OSError) as caught:
        fold_file(source, tmp_path / "out.onnx", force=False)
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(tmp_path / "out.onnx.data")
    no_debris(tmp_path)
