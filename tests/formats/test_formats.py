"""load_checkpoint / write_checkpoint / save_checkpoint across formats, shards, atomic writes."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from wnconvert import (
    InputError,
    WeightNormWarning,
    decompose_state_dict,
    fold_state_dict,
)
from wnconvert.convert import plan_decompose, plan_fold, plan_restyle
from wnconvert.formats import (
    Checkpoint,
    LazyStateDict,
    PlannedTensor,
    TensorInfo,
    atomic_file,
    check_output,
    default_output,
    load_checkpoint,
    output_format,
    save_checkpoint,
    write_checkpoint,
)
from wnconvert.formats.atomic import atomic_files


def bits(t: torch.Tensor) -> bytes:
    return t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical: dtype, shape and bytes."""
    return a.dtype == b.dtype and a.shape == b.shape and bits(a) == bits(b)


def wn_shard(prefix: str, seed: int) -> OrderedDict:
    torch.manual_seed(seed)
    return OrderedDict([
        (f"{prefix}.parametrizations.weight.original0", torch.rand(4, 1, 1) + 0.5),
        (f"{prefix}.parametrizations.weight.original1", torch.randn(4, 3, 5)),
        (f"{prefix}.bias", torch.randn(4)),
    ])


def extras() -> OrderedDict:
    torch.manual_seed(9)
    return OrderedDict([
        ("emb.bf16", torch.randn(5, 3).to(torch.bfloat16)),
        ("emb.f16", torch.randn(6).to(torch.float16)),
        ("steps", torch.arange(4, dtype=torch.int64)),
        ("mask", torch.tensor([True, False, True])),
    ])


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- load


def test_load_fixtures(fixtures_dir):
    st = load_checkpoint(fixtures_dir / "tiny_hifigan.safetensors")
    assert st.format == "safetensors" and isinstance(st.state_dict, LazyStateDict)
    assert st.metadata == {"format": "pt", "source": "wnconvert fixtures"}
    pt = load_checkpoint(fixtures_dir / "tiny_hifigan_parametrize.pt")
    assert sorted(pt.state_dict) == sorted(st.state_dict)
    for key in pt.state_dict:
        assert same(st.state_dict[key], pt.state_dict[key])
    legacy = load_checkpoint(fixtures_dir / "tiny_hifigan_legacy.pt")
    assert legacy.key_path == ("generator",) and legacy.container["steps"] == 12500


def test_lazy_state_dict_is_a_read_only_mapping(save_st):
    ckpt = load_checkpoint(save_st(extras()))
    sd = ckpt.state_dict
    assert len(sd) == 4 and set(sd) == set(extras()) and "mask" in sd
    assert sd.info("emb.bf16") == TensorInfo((5, 3), "bfloat16")
    with pytest.raises(KeyError):
        sd["nope"]
    for key, tensor in extras().items():
        assert same(sd[key], tensor)
    assert list(ckpt.materialize()) == list(sd)


def test_in_memory_api_accepts_lazy_state_dicts(save_sharded):
    ckpt = load_checkpoint(sharded_input(save_sharded))
    memory = {k: ckpt.state_dict[k] for k in ckpt.state_dict}
    lazy = fold_state_dict(ckpt.state_dict)
    eager = fold_state_dict(memory)
    assert list(lazy) == list(eager)
    for key in eager:
        assert same(lazy[key], eager[key])


def test_unknown_suffix_and_key_on_safetensors(tmp_path, save_st):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"x")
    with pytest.raises(InputError, match="unknown checkpoint type"):
        load_checkpoint(path)
    with pytest.raises(InputError, match="key= applies to .pt containers"):
        load_checkpoint(save_st(extras()), key="state_dict")


def test_directory_input(tmp_path, save_sharded, save_st):
    index = save_sharded([wn_shard("a", 0), wn_shard("b", 1)], folder=tmp_path / "sharded")
    assert load_checkpoint(tmp_path / "sharded").path == index
    (tmp_path / "single").mkdir()
    single = save_st(extras(), name="single/model.safetensors")
    assert load_checkpoint(tmp_path / "single").path == single
    (tmp_path / "single" / "other.safetensors").write_bytes(single.read_bytes())
    with pytest.raises(InputError, match="name the checkpoint file itself"):
        load_checkpoint(tmp_path / "single")


# --------------------------------------------------------------------------- safetensors single


def test_safetensors_round_trip_keeps_metadata_and_bytes(tmp_path, save_st):
    tensors = OrderedDict([*wn_shard("conv", 0).items(), *extras().items()])
    path = save_st(tensors, metadata={"format": "pt", "author": "me"})
    ckpt = load_checkpoint(path)
    out = tmp_path / "folded.safetensors"
    conv = plan_fold(ckpt.state_dict)
    size = write_checkpoint(ckpt, conv.plan, out, fmt="safetensors")
    assert size == out.stat().st_size
    loaded = load_file(str(out))
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "author": "me"}
    expected = fold_state_dict(tensors)
    assert sorted(loaded) == sorted(expected)
    for key, tensor in expected.items():
        assert same(loaded[key], tensor), key  # pass-through bit-identical, fold as in memory
    assert no_temp_files(tmp_path)


def test_restyle_and_decompose_through_safetensors(tmp_path, save_st):
    tensors = OrderedDict([*wn_shard("conv", 0).items(), *extras().items()])
    ckpt = load_checkpoint(save_st(tensors))
    out = tmp_path / "legacy.safetensors"
    write_checkpoint(ckpt, plan_restyle(ckpt.state_dict, style="legacy").plan, out,
                     fmt="safetensors")
    loaded = load_file(str(out))
    assert same(loaded["conv.weight_g"], tensors["conv.parametrizations.weight.original0"])
    assert same(loaded["conv.weight_v"], tensors["conv.parametrizations.weight.original1"])
    plain = load_checkpoint(save_st({"lin.weight": torch.randn(3, 4).to(torch.bfloat16)},
                                    name="plain.safetensors"))
    out2 = tmp_path / "dec.safetensors"
    write_checkpoint(plain, plan_decompose(plain.state_dict, dim=None).plan, out2,
                     fmt="safetensors")
    loaded = load_file(str(out2))
    expected = decompose_state_dict({"lin.weight": plain.state_dict["lin.weight"]}, dim=None)
    assert loaded["lin.parametrizations.weight.original0"].shape == ()  # 0-d g stays 0-d
    for key in expected:
        assert same(loaded[key], expected[key])


def test_pt_to_safetensors_warns_about_dropped_container_entries(tmp_path, save_pt):
    ckpt = load_checkpoint(save_pt({"generator": wn_shard("conv", 0), "steps": 5, "epoch": 1}))
    out = tmp_path / "g.safetensors"
    with pytest.warns(WeightNormWarning, match="container entries steps, epoch are not written"):
        write_checkpoint(ckpt, plan_fold(ckpt.state_dict).plan, out, fmt="safetensors")
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert sorted(f.keys()) == ["conv.bias", "conv.weight"]


def test_safetensors_to_pt(tmp_path, save_st):
    tensors = OrderedDict([*wn_shard("conv", 0).items(), *extras().items()])
    ckpt = load_checkpoint(save_st(tensors))
    out = tmp_path / "out.pt"
    write_checkpoint(ckpt, plan_fold(ckpt.state_dict).plan, out, fmt="pt")
    loaded = torch.load(out, weights_only=True)
    for key, tensor in fold_state_dict(tensors).items():
        assert same(loaded[key], tensor)


# --------------------------------------------------------------------------- pt pass-through


def test_pt_round_trip_passes_every_dtype_through(tmp_path, save_pt):
    tensors = OrderedDict([*wn_shard("conv", 0).items(), *extras().items()])
    ckpt = load_checkpoint(save_pt({"state_dict": tensors, "epoch": 3,
                                    "callbacks": {"best": 0.5}}))
    out = tmp_path / "out.ckpt"
    write_checkpoint(ckpt, plan_fold(ckpt.state_dict).plan, out, fmt="pt")
    loaded = torch.load(out, weights_only=True)
    assert loaded["epoch"] == 3 and loaded["callbacks"] == {"best": 0.5}
    for key, tensor in extras().items():
        assert same(loaded["state_dict"][key], tensor)
    assert same(loaded["state_dict"]["conv.weight"], fold_state_dict(tensors)["conv.weight"])


# --------------------------------------------------------------------------- sharded


def read_index(path: Path) -> dict:
    return json.loads(path.read_text())


def sharded_input(save_sharded, folder: Path | None = None) -> Path:
    first = wn_shard("enc", 0)
    second = OrderedDict([*wn_shard("dec", 1).items(), *extras().items()])
    # A pair split across shards: g in the first, v in the second.
    torch.manual_seed(3)
    first["post.weight_g"] = torch.rand(2, 1) + 0.5
    second["post.weight_v"] = torch.randn(2, 6)
    return save_sharded([first, second], stem="model", metadata={"format": "pt"}, folder=folder)


def test_sharded_in_sharded_out_with_correct_index(tmp_path, save_sharded):
    index = sharded_input(save_sharded, tmp_path / "in")
    ckpt = load_checkpoint(index)
    assert ckpt.format == "sharded" and ckpt.metadata == {"format": "pt"}
    assert len(ckpt.input_files) == 3
    memory = {k: ckpt.state_dict[k] for k in ckpt.state_dict}
    (tmp_path / "out").mkdir()
    out_index = tmp_path / "out" / "folded.safetensors.index.json"
    conv = plan_fold(ckpt.state_dict)
    write_checkpoint(ckpt, conv.plan, out_index, fmt="safetensors")
    index_data = read_index(out_index)
    weight_map = index_data["weight_map"]
    expected = fold_state_dict(memory)
    assert sorted(weight_map) == sorted(expected)  # complete
    shards = sorted(set(weight_map.values()))
    assert shards == ["folded-00001-of-00002.safetensors", "folded-00002-of-00002.safetensors"]
    total = 0
    for shard in shards:
        path = out_index.parent / shard
        assert path.exists()
        loaded = load_file(str(path))
        assert sorted(loaded) == sorted(k for k, s in weight_map.items() if s == shard)
        for key, tensor in loaded.items():
            assert same(tensor, expected[key]), key
            total += tensor.numel() * tensor.element_size()
        with safe_open(str(path), framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
    assert index_data["metadata"]["total_size"] == total
    # Folded weights go to the shard of their v; pass-through tensors stay in their shard.
    assert weight_map["enc.weight"] == shards[0] and weight_map["dec.weight"] == shards[1]
    assert weight_map["post.weight"] == shards[1] and weight_map["mask"] == shards[1]
    assert no_temp_files(out_index.parent)
    # The output reads back as a sharded checkpoint.
    again = load_checkpoint(out_index)
    for key, tensor in expected.items():
        assert same(again.state_dict[key], tensor)


def test_sharded_index_metadata_is_kept(tmp_path, save_sharded):
    index = sharded_input(save_sharded)
    data = read_index(index)
    data["metadata"]["producer"] = "hf"
    index.write_text(json.dumps(data))
    ckpt = load_checkpoint(index)
    out = tmp_path / "x.safetensors.index.json"
    write_checkpoint(ckpt, plan_restyle(ckpt.state_dict, style="legacy").plan, out,
                     fmt="safetensors")
    meta = read_index(out)["metadata"]
    assert meta["producer"] == "hf" and isinstance(meta["total_size"], int)


def test_sharded_to_single_and_single_to_sharded(tmp_path, save_sharded, save_st):
    ckpt = load_checkpoint(sharded_input(save_sharded, tmp_path / "in"))
    single = tmp_path / "single.safetensors"
    write_checkpoint(ckpt, plan_fold(ckpt.state_dict).plan, single, fmt="safetensors")
    assert "post.weight" in load_file(str(single))
    one = load_checkpoint(save_st(wn_shard("c", 0), name="one.safetensors"))
    out = tmp_path / "split.safetensors.index.json"
    write_checkpoint(one, plan_fold(one.state_dict).plan, out, fmt="safetensors")
    weight_map = read_index(out)["weight_map"]
    assert set(weight_map.values()) == {"split-00001-of-00001.safetensors"}
    assert sorted(load_file(str(tmp_path / "split-00001-of-00001.safetensors"))) == [
        "c.bias", "c.weight"]


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda index: index.write_text("{not json"), "not a valid safetensors index"),
        (lambda index: index.write_text(json.dumps({"weight_map": [1]})),
         "not a valid safetensors index"),
        (lambda index: index.write_text(json.dumps({"metadata": {}})),
         "not a valid safetensors index"),
        (lambda index: (index.parent / "model-00002-of-00002.safetensors").unlink(),
         "shard 'model-00002-of-00002.safetensors' is missing"),
        (lambda index: index.write_text(json.dumps({"weight_map": {
            "ghost": "model-00001-of-00002.safetensors"}})), "index puts 'ghost' in"),
    ],
)
def test_bad_sharded_inputs(save_sharded, edit, words):
    index = sharded_input(save_sharded)
    edit(index)
    with pytest.raises(InputError, match=words):
        load_checkpoint(index)


def test_sharded_output_refuses_to_overwrite_an_input_shard(tmp_path, save_sharded):
    index = save_sharded([wn_shard("a", 0)], stem="out")  # shard: out-00001-of-00001
    renamed = index.with_name("in.safetensors.index.json")
    index.rename(renamed)
    ckpt = load_checkpoint(renamed)
    before = (tmp_path / "out-00001-of-00001.safetensors").read_bytes()
    with pytest.raises(InputError, match="this is an input file"):
        write_checkpoint(ckpt, plan_fold(ckpt.state_dict).plan,
                         tmp_path / "out.safetensors.index.json", fmt="safetensors", force=True)
    assert (tmp_path / "out-00001-of-00001.safetensors").read_bytes() == before


def test_sharded_output_does_not_clobber_existing_shard_files_without_force(tmp_path, save_st):
    """An existing file the sharded output would replace is refused like any existing output."""
    ckpt = load_checkpoint(save_st(wn_shard("c", 0), name="in.safetensors"))
    (tmp_path / "out").mkdir()
    precious = tmp_path / "out" / "out-00001-of-00001.safetensors"
    precious.write_bytes(b"someone else's file")
    with pytest.raises(InputError, match="already exists"):
        write_checkpoint(ckpt, plan_fold(ckpt.state_dict).plan,
                         tmp_path / "out" / "out.safetensors.index.json", fmt="safetensors")
    assert precious.read_bytes() == b"someone else's file"


# --------------------------------------------------------------------------- save_checkpoint


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_checkpoint(tmp_path, suffix):
    tensors = OrderedDict([*wn_shard("conv", 0).items(), *extras().items(),
                           ("scalar", torch.tensor(1.5))])
    path = tmp_path / f"m{suffix}"
    size = save_checkpoint(tensors, path, metadata={"k": "v"})
    assert size == path.stat().st_size
    if suffix == ".safetensors":
        loaded = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            assert f.metadata() == {"k": "v"}
    else:
        loaded = torch.load(path, weights_only=True)
    assert list(loaded) == list(tensors)  # order kept
    for key, tensor in tensors.items():
        assert same(loaded[key], tensor)
    with pytest.raises(InputError, match="already exists"):
        save_checkpoint(tensors, path)
    save_checkpoint({"x": torch.ones(1)}, path, force=True)
    assert list(load_checkpoint(path).state_dict) == ["x"]


def test_save_checkpoint_explicit_format_and_non_contiguous(tmp_path):
    t = torch.arange(12.0).reshape(3, 4).t()
    path = tmp_path / "weights.bin"
    save_checkpoint({"t": t}, path, fmt="safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert torch.equal(f.get_tensor("t"), t)


# --------------------------------------------------------------------------- atomic writes


class Boom(Exception):
    pass


def test_atomic_file_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "out.safetensors"
    with pytest.raises(Boom), atomic_file(out) as handle:
        handle.write(b"partial data" * 1000)
        raise Boom
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_keeps_previous_output_on_error(tmp_path):
    out = tmp_path / "out.pt"
    out.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_file(out) as handle:
        handle.write(b"new")
        raise KeyboardInterrupt
    assert out.read_bytes() == b"old"
    assert no_temp_files(tmp_path)


def test_atomic_file_success(tmp_path):
    out = tmp_path / "ok.bin"
    with atomic_file(out) as handle:
        handle.write(b"data")
        assert not out.exists()  # not visible until the block ends
    assert out.read_bytes() == b"data"
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)
    assert no_temp_files(tmp_path)


def test_atomic_files_all_or_nothing(tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(Boom), atomic_files(outs) as temps:
        temps[0].write_bytes(b"a")
        raise Boom
    assert list(tmp_path.iterdir()) == []
    with atomic_files(outs) as temps:
        for t in temps:
            t.write_bytes(t.name.encode())
    assert all(p.exists() for p in outs) and no_temp_files(tmp_path)


@pytest.mark.parametrize("output", ["out.safetensors", "out.pt", "out.safetensors.index.json"])
def test_failure_mid_write_leaves_no_output(tmp_path, save_st, output):
    ckpt = load_checkpoint(save_st(OrderedDict([*extras().items(), *wn_shard("c", 0).items()])))
    plan = plan_fold(ckpt.state_dict).plan

    def explode():
        raise Boom("mid-write")

    plan.append(PlannedTensor("late", TensorInfo((2,), "float32"), "steps", explode))
    (tmp_path / "o").mkdir()
    with pytest.raises(Boom):
        write_checkpoint(ckpt, plan, tmp_path / "o" / output,
                         fmt="pt" if output.endswith(".pt") else "safetensors")
    assert list((tmp_path / "o").iterdir()) == []


# --------------------------------------------------------------------------- check_output


def test_check_output(tmp_path):
    src = tmp_path / "in.pt"
    src.write_bytes(b"x")
    out = tmp_path / "out.pt"
    check_output(out, force=False, inputs=[src])
    out.write_bytes(b"y")
    with pytest.raises(InputError, match="already exists; use force=True"):
        check_output(out, force=False, inputs=[src])
    check_output(out, force=True, inputs=[src])
    for force in (False, True):
        with pytest.raises(InputError, match="this is an input file"):
            check_output(src, force=force, inputs=[src])
    link = tmp_path / "link.pt"
    os.symlink(src, link)
    with pytest.raises(InputError, match="this is an input file"):
        check_output(link, force=True, inputs=[src])
    with pytest.raises(InputError, match="is a directory"):
        check_output(tmp_path, force=True)
    with pytest.raises(InputError, match="does not exist; create it first"):
        check_output(tmp_path / "missing" / "o.pt", force=False)


def test_write_checkpoint_never_overwrites_its_input(save_st):
    path = save_st(wn_shard("c", 0))
    before = path.read_bytes()
    ckpt = load_checkpoint(path)
    with pytest.raises(InputError, match="this is an input file"):
        write_checkpoint(ckpt, plan_fold(ckpt.state_dict).plan, path, fmt="safetensors",
                         force=True)
    assert path.read_bytes() == before


# --------------------------------------------------------------------------- output naming


def test_output_format_and_default_output(tmp_path):
    pt = Checkpoint(tmp_path / "gen.pth", "pt", {})
    st = Checkpoint(tmp_path / "gen.safetensors", "safetensors", {})
    sh = Checkpoint(tmp_path / "gen.safetensors.index.json", "sharded", {})
    assert output_format(None, None, pt) == "pt"
    assert output_format(None, None, sh) == "safetensors"
    assert output_format(Path("x.safetensors"), None, pt) == "safetensors"
    assert output_format(Path("x.ckpt"), None, st) == "pt"
    assert output_format(Path("x.ckpt"), "safetensors", st) == "safetensors"
    with pytest.raises(InputError, match="to='onnx'"):
        output_format(None, "onnx", st)
    with pytest.raises(InputError, match="cannot tell the output format"):
        output_format(Path("x.weights"), None, st)
    assert default_output(pt, "fold", "pt") == tmp_path / "gen.fold.pth"
    assert default_output(pt, "fold", "safetensors") == tmp_path / "gen.fold.safetensors"
    assert default_output(st, "decompose", "pt") == tmp_path / "gen.decompose.pt"
    assert default_output(sh, "fold", "safetensors") == \
        tmp_path / "gen.fold.safetensors.index.json"


def test_sharded_fold_makes_the_index_totals_true(tmp_path, save_sharded):
    """Issue 11 §5: total_size and (when present) total_parameters describe the output."""
    import json

    from wnconvert.convert import plan_fold
    from wnconvert.formats import load_checkpoint, write_checkpoint

    torch.manual_seed(0)
    v = torch.randn(4, 3, 5)
    g = torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True)
    index = save_sharded([{"a.weight_g": g, "a.weight_v": v}, {"a.bias": torch.ones(4)}])
    meta = json.loads(index.read_text())
    meta["metadata"]["total_parameters"] = g.numel() + v.numel() + 4  # stale after a fold
    index.write_text(json.dumps(meta))
    checkpoint = load_checkpoint(index)
    out = tmp_path / "out" / "folded.safetensors.index.json"
    out.parent.mkdir()
    write_checkpoint(checkpoint, plan_fold(checkpoint.state_dict).plan, out, fmt="safetensors")
    written = json.loads(out.read_text())["metadata"]
    assert written["total_parameters"] == v.numel() + 4
    assert written["total_size"] == (v.numel() + 4) * 4
