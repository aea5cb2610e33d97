"""Lazy safetensors seeds and the streaming sharded writer, on real files (no mocks)."""

from __future__ import annotations

import gc
import json
import random
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from evomerge.core.errors import EvomergeError
from evomerge.tensors.safetensors_io import INDEX_NAME, SeedModel, ShardedWriter, check_seeds


def model_tensors(scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A small model with mixed dtypes and shapes, values distinct per tensor."""
    g = torch.Generator().manual_seed(int(scale * 10))
    return {
        "embed.weight": torch.randn(8, 4, generator=g) * scale,
        "layers.0.w": torch.randn(4, 4, generator=g) * scale,
        "layers.1.w": (torch.randn(4, 4, generator=g) * scale).to(torch.bfloat16),
        "norm.weight": (torch.randn(4, generator=g) * scale).to(torch.float16),
        "ids": torch.arange(3, dtype=torch.int64),
    }


SHARDS = [["embed.weight", "layers.0.w"], ["layers.1.w", "norm.weight", "ids"]]


def make_sharded(folder, tensors, groups=SHARDS):
    """A Hugging Face style sharded folder, with side files a merge should or should not copy."""
    folder.mkdir(parents=True)
    weight_map = {}
    for i, group in enumerate(groups, 1):
        fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: tensors[n] for n in group}, str(folder / fname))
        weight_map.update(dict.fromkeys(group, fname))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index))
    for side in ("config.json", "tokenizer.json", "README.md", "pytorch_model.bin"):
        (folder / side).write_text("{}")
    return folder


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.contiguous(), b.contiguous()
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and bytes(a.reshape(-1).view(torch.uint8).numpy())
        == bytes(b.reshape(-1).view(torch.uint8).numpy())
    )


# ---- reading --------------------------------------------------------------------------------


def test_single_file_names_shapes_dtypes_and_get(tmp_path):
    tensors = model_tensors()
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path))
    with SeedModel(path) as m:
        assert m.files == [path] and m.path == path
        assert sorted(m.names()) == sorted(tensors)
        for name, t in tensors.items():
            assert m.shape(name) == tuple(t.shape)
            assert m.dtype(name) == t.dtype
            assert m.nbytes(name) == t.numel() * t.element_size()
            assert m.file_of(name) == path
            assert same_bits(m.get(name), t)
        assert m.dtype("layers.1.w") == torch.bfloat16
        as_f32 = m.get("layers.1.w", dtype=torch.float32)
        assert as_f32.dtype == torch.float32 and torch.equal(as_f32, tensors["layers.1.w"].float())
        assert m.extra_files() == []  # a lone file's folder may hold anything


def test_sharded_folder_reads_each_tensor_from_its_shard(tmp_path):
    tensors = model_tensors()
    folder = make_sharded(tmp_path / "sharded", tensors)
    m = SeedModel(folder)
    shard1, shard2 = sorted(folder.glob("model-*.safetensors"))
    assert m.files == [shard1, shard2]
    # Files in order, and within a file the order of the data in it.
    in_file_order = []
    for shard in (shard1, shard2):
        with safe_open(str(shard), "pt") as f:
            in_file_order += f.offset_keys()
    assert m.names() == in_file_order
    for name in tensors:
        shard = shard1 if name in SHARDS[0] else shard2
        assert m.file_of(name) == shard
        assert same_bits(m.get(name), load_file(str(shard))[name])
        assert same_bits(m.get(name), tensors[name])
    assert [p.name for p in m.extra_files()] == ["config.json", "tokenizer.json"]
    m.close()
    with pytest.raises(EvomergeError, match="closed"):
        m.get("ids")


def test_folder_with_one_safetensors_file(tmp_path):
    tensors = model_tensors()
    (tmp_path / "one").mkdir()
    save_file(tensors, str(tmp_path / "one" / "weights.safetensors"))
    (tmp_path / "one" / "config.json").write_text("{}")
    with SeedModel(tmp_path / "one") as m:
        assert m.files == [tmp_path / "one" / "weights.safetensors"]
        assert same_bits(m.get("layers.1.w"), tensors["layers.1.w"])
        assert m.extra_files() == [tmp_path / "one" / "config.json"]


def test_check_seeds_returns_common_names_and_allows_dtype_differences(tmp_path):
    a, b = model_tensors(1.0), model_tensors(2.0)
    b["embed.weight"] = b["embed.weight"].to(torch.float16)
    save_file(a, str(tmp_path / "a.safetensors"))
    sharded = make_sharded(tmp_path / "b", b)
    seeds = [SeedModel(tmp_path / "a.safetensors"), SeedModel(sharded)]
    assert check_seeds(seeds) == seeds[0].names()
    assert check_seeds(seeds[:1]) == seeds[0].names()


def test_check_seeds_names_a_missing_tensor(tmp_path):
    a, b = model_tensors(), model_tensors()
    del b["layers.0.w"], b["norm.weight"]
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    seeds = [SeedModel(tmp_path / "a.safetensors"), SeedModel(tmp_path / "b.safetensors")]
    with pytest.raises(EvomergeError) as err:
        check_seeds(seeds, labels=["base", "other"])
    msg = str(err.value)
    assert "\n" not in msg and err.value.exit_code == 2
    missing = [n for n in seeds[0].names() if n in ("layers.0.w", "norm.weight")][0]
    assert f"tensor '{missing}'" in msg and "model 'other'" in msg
    assert str(tmp_path / "b.safetensors") in msg and "1 other tensor is missing" in msg
    # A tensor only the later model has is missing from the first.
    with pytest.raises(EvomergeError, match="is missing from model 'other'"):
        check_seeds(seeds[::-1], labels=["base", "other"][::-1])


def test_check_seeds_names_a_shape_mismatch(tmp_path):
    a, b = model_tensors(), model_tensors()
    b["layers.0.w"] = torch.zeros(4, 5)
    save_file(a, str(tmp_path / "a.safetensors"))
    folder = make_sharded(tmp_path / "b", b)
    seeds = [SeedModel(tmp_path / "a.safetensors"), SeedModel(folder)]
    with pytest.raises(EvomergeError) as err:
        check_seeds(seeds)
    msg = str(err.value)
    assert "tensor 'layers.0.w'" in msg and "[4, 5]" in msg and "[4, 4]" in msg
    assert str(tmp_path / "a.safetensors") in msg
    assert str(folder / "model-00001-of-00002.safetensors") in msg


def _truncated(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file(model_tensors(), str(path))
    path.write_bytes(path.read_bytes()[:-10])
    return path


def _garbage(tmp_path):
    path = tmp_path / "g.safetensors"
    path.write_bytes(struct.pack("<Q", 12) + b"not json at all")
    return path


def _tiny(tmp_path):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x01\x02")
    return path


def _missing_shard(tmp_path):
    folder = make_sharded(tmp_path / "s", model_tensors())
    (folder / "model-00002-of-00002.safetensors").unlink()
    return folder


def _bad_index(tmp_path):
    folder = make_sharded(tmp_path / "s", model_tensors())
    (folder / INDEX_NAME).write_text("{")
    return folder


def _index_lies(tmp_path):
    folder = make_sharded(tmp_path / "s", model_tensors())
    index = json.loads((folder / INDEX_NAME).read_text())
    index["weight_map"]["ids"] = "model-00001-of-00002.safetensors"
    (folder / INDEX_NAME).write_text(json.dumps(index))
    return folder


def _two_files(tmp_path):
    (tmp_path / "two").mkdir()
    for n in ("a", "b"):
        save_file(model_tensors(), str(tmp_path / "two" / f"{n}.safetensors"))
    return tmp_path / "two"


def _pickle(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"\x80\x04")
    return path


def test_get_is_bit_exact_for_every_dtype_and_odd_shapes(tmp_path):
    g = torch.Generator().manual_seed(3)
    tensors = {
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "flags": torch.tensor([True, False, True]),
        "bytes": torch.arange(7, dtype=torch.uint8),
        "i8": torch.arange(-3, 4, dtype=torch.int8),
        "i16": torch.arange(5, dtype=torch.int16),
        "i32": torch.arange(5, dtype=torch.int32),
        "f64": torch.randn(3, 2, generator=g, dtype=torch.float64),
        "f16": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(2, 3, 5, generator=g).bfloat16(),
        "c64": torch.randn(3, generator=g, dtype=torch.complex64),
    }
    if hasattr(torch, "float8_e4m3fn"):
        tensors["f8"] = torch.randn(9, generator=g).to(torch.float8_e4m3fn)
    path = tmp_path / "all.safetensors"
    save_file(tensors, str(path))
    loaded = load_file(str(path))
    with SeedModel(path) as m:
        for name, t in tensors.items():
            got = m.get(name)
            assert same_bits(got, loaded[name]) and same_bits(got, t), name
        assert m.get("scalar", dtype=torch.float64).item() == 2.5
        a, b = m.get("f64"), m.get("f64")
        a.add_(1)  # every get is its own memory
        assert same_bits(b, tensors["f64"])


def _rewrite_header(path, edit):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def _overlap(header):  # move the last tensor one element earlier, onto its neighbour
    last = max(
        (e for k, e in header.items() if k != "__metadata__"), key=lambda e: e["data_offsets"]
    )
    last["data_offsets"] = [last["data_offsets"][0] - 4, last["data_offsets"][1] - 4]


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: _rewrite_header(path, _overlap),
        lambda path: path.write_bytes(path.read_bytes() + b"extra bytes"),
    ],
    ids=["overlap", "trailing"],
)
def test_offsets_must_tile_the_data_exactly(tmp_path, damage):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(4), "b": torch.ones(4)}, str(path))
    damage(path)
    with pytest.raises(EvomergeError) as err:
        SeedModel(path)
    assert "truncated or corrupt" in str(err.value) and "\n" not in str(err.value)


def test_a_file_cut_short_after_opening_is_one_clear_line(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(16), "b": torch.ones(16)}, str(path))
    with SeedModel(path) as m:
        last = m.names()[-1]
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size - 8)
        with pytest.raises(EvomergeError) as err:
            m.get(last)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "make, named, pattern",
    [
        (lambda p: p / "nope", "nope", "does not exist"),
        (_pickle, "pytorch_model.bin", "not a .safetensors file"),
        (_two_files, "two", "exactly one"),
        (_truncated, "t.safetensors", "truncated or corrupt"),
        (_garbage, "g.safetensors", "truncated or corrupt"),
        (_tiny, "tiny.safetensors", "truncated or corrupt"),
        (_missing_shard, "model-00002-of-00002.safetensors", "incomplete"),
        (_bad_index, INDEX_NAME, "not a valid safetensors index"),
        (_index_lies, INDEX_NAME, "does not contain it"),
    ],
    ids=["no-path", "pickle", "two-files", "truncated", "garbage", "tiny", "shard", "index", "lie"],
)
def test_bad_models_are_one_clear_line(tmp_path, make, named, pattern):
    with pytest.raises(EvomergeError) as err:
        SeedModel(make(tmp_path))
    msg = str(err.value)
    assert named in msg and pattern in msg and "\n" not in msg


# ---- writing --------------------------------------------------------------------------------


def plan_of(tensors):
    return [(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]


def test_writer_single_shard_round_trip(tmp_path):
    tensors = model_tensors()
    out = tmp_path / "out"
    with ShardedWriter(out, plan_of(tensors), metadata={"merged_by": "evomerge"}) as w:
        for name in reversed(list(tensors)):
            w.write(name, tensors[name])
        assert w.commit() == out
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    loaded = load_file(str(out / "model.safetensors"))
    assert loaded.keys() == tensors.keys()
    assert all(same_bits(loaded[n], t) for n, t in tensors.items())
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt", "merged_by": "evomerge"}
    raw = (out / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and raw[8 + n - 1 : 8 + n] in (b" ", b"}")
    header = json.loads(raw[8 : 8 + n])
    for name, t in tensors.items():  # every tensor aligned to its element size
        assert (8 + n + header[name]["data_offsets"][0]) % t.element_size() == 0
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_writer_several_shards_any_order_and_index(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {f"t{i:02d}": torch.randn(16 + i, generator=g) for i in range(12)}
    tensors["half"] = torch.randn(33, generator=g).to(torch.bfloat16)
    tensors["big"] = torch.randn(200, generator=g)  # larger than a shard: a shard of its own
    out = tmp_path / "out"
    order = list(tensors)
    random.Random(1).shuffle(order)
    with ShardedWriter(out, plan_of(tensors), max_shard_bytes=256) as w:
        for name in order:
            w.write(name, tensors[name])
        w.commit()
    shards = sorted(out.glob("model-*.safetensors"))
    count = len(shards)
    assert count > 3 and not (out / "model.safetensors").exists()
    assert [p.name for p in shards] == [
        f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)
    ]
    index = json.loads((out / INDEX_NAME).read_text())
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in tensors.values()
    )
    assert set(index["weight_map"]) == set(tensors)
    for shard in shards:
        loaded = load_file(str(shard))
        nbytes = sum(t.numel() * t.element_size() for t in loaded.values())
        assert nbytes <= 256 or list(loaded) == ["big"]
        for name, t in loaded.items():
            assert index["weight_map"][name] == shard.name and same_bits(t, tensors[name])
    with SeedModel(out) as m:  # and the folder reads back as a seed
        assert m.names() == list(tensors)
        assert all(same_bits(m.get(n), t) for n, t in tensors.items())


def test_writer_converts_to_the_planned_dtype(tmp_path):
    x = torch.randn(5, 3)
    plan = [("x", (5, 3), torch.bfloat16), ("y", (2,), torch.float32)]
    with ShardedWriter(tmp_path / "out", plan) as w:
        w.write("x", x.t().contiguous().t())  # non-contiguous input
        w.write("y", torch.tensor([1, 2], dtype=torch.int32))
        w.commit()
    loaded = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert same_bits(loaded["x"], x.to(torch.bfloat16))
    assert same_bits(loaded["y"], torch.tensor([1.0, 2.0]))


def test_writer_refuses_a_wrong_shape_unknown_or_repeated_tensor(tmp_path):
    with ShardedWriter(tmp_path / "out", [("x", (2, 3), torch.float32)]) as w:
        with pytest.raises(
            EvomergeError, match=r"'x' has shape \[3, 2\] but the plan says \[2, 3\]"
        ):
            w.write("x", torch.zeros(3, 2))
        with pytest.raises(EvomergeError, match="not in the output plan"):
            w.write("y", torch.zeros(2, 3))
        w.write("x", torch.zeros(2, 3))
        with pytest.raises(EvomergeError, match="already written"):
            w.write("x", torch.zeros(2, 3))


def test_commit_with_a_missing_tensor_fails_and_leaves_nothing(tmp_path):
    plan = [("a", (2,), torch.float32), ("b", (2,), torch.float32), ("c", (1,), torch.float32)]
    with pytest.raises(EvomergeError, match=r"tensor 'b' and 1 other planned tensors were never"):
        with ShardedWriter(tmp_path / "out", plan) as w:
            w.write("a", torch.zeros(2))
            w.commit()
    assert list(tmp_path.iterdir()) == []


def test_exception_inside_with_leaves_no_output_and_no_temp_folder(tmp_path):
    plan = [(f"t{i}", (64,), torch.float32) for i in range(4)]
    with pytest.raises(RuntimeError, match="boom"):
        with ShardedWriter(tmp_path / "out", plan, max_shard_bytes=256) as w:
            w.write("t0", torch.ones(64))
            assert w.tmp_dir.is_dir() and w.tmp_dir.name.startswith(".out.tmp-")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with ShardedWriter(tmp_path / "out2", plan) as w:  # leaving without commit also aborts
        w.write("t0", torch.ones(64))
    assert list(tmp_path.iterdir()) == []


def test_existing_output_folder_must_be_empty(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(EvomergeError, match="already exists and is not an empty folder"):
        ShardedWriter(out, [("x", (1,), torch.float32)])
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "keep.txt").exists()
    (out / "keep.txt").unlink()
    with ShardedWriter(out, [("x", (1,), torch.float32)]) as w:
        w.write("x", torch.ones(1))
        w.copy_files([])
        w.commit()
    assert same_bits(load_file(str(out / "model.safetensors"))["x"], torch.ones(1))


def test_copy_files_carries_side_files_and_refuses_name_clashes(tmp_path):
    folder = make_sharded(tmp_path / "src", model_tensors())
    with SeedModel(folder) as seed:
        plan = [(n, seed.shape(n), seed.dtype(n)) for n in seed.names()]
        with ShardedWriter(tmp_path / "out", plan) as w:
            for n in seed.names():
                w.write(n, seed.get(n))
            w.copy_files(seed.extra_files())
            with pytest.raises(EvomergeError, match="already taken"):
                w.copy_files([folder / "config.json"])
            w.commit()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]


# ---- end to end and memory ------------------------------------------------------------------


def test_llama_round_trip_through_seed_and_writer(tmp_path):
    pytest.importorskip("transformers")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config).eval()
    src, out = tmp_path / "src", tmp_path / "out"
    model.save_pretrained(src, max_shard_size="20KB")
    assert (src / INDEX_NAME).exists() and len(list(src.glob("*.safetensors"))) > 1
    with SeedModel(src) as seed:
        names = seed.names()
        plan = [(n, seed.shape(n), seed.dtype(n)) for n in names]
        with ShardedWriter(out, plan, max_shard_bytes=12 * 1024) as w:
            for n in reversed(names):
                w.write(n, seed.get(n))
            w.copy_files(seed.extra_files())
            w.commit()
    assert len(list(out.glob("model-*.safetensors"))) > len(list(src.glob("*.safetensors")))
    loaded, info = LlamaForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = torch.arange(12).reshape(1, 12)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded.eval()(ids).logits)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs /proc")
def test_get_of_one_small_tensor_does_not_load_the_file(tmp_path):
    """A 200 MB file: reading its small tensor grows RSS by far less; reading the big one does."""
    big_count, small = 50_000_000, np.arange(256, dtype=np.float32)
    header = {
        "small": {"dtype": "F32", "shape": [256], "data_offsets": [0, 1024]},
        "big": {"dtype": "F32", "shape": [big_count], "data_offsets": [1024, 1024 + 4 * big_count]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:  # real data, written in chunks so the test never holds it all
        f.write(struct.pack("<Q", len(raw)) + raw + small.tobytes())
        chunk = np.ones(2**21, dtype=np.float32).tobytes()
        for _ in range(big_count // 2**21):
            f.write(chunk)
        f.write(np.ones(big_count % 2**21, dtype=np.float32).tobytes())
    size = path.stat().st_size
    gc.collect()
    before = rss_bytes()
    with SeedModel(path) as m:
        t = m.get("small")
        grown = rss_bytes() - before
        assert torch.equal(t, torch.from_numpy(small)) and grown < size / 8, (grown, size)
        big = m.get("big")
        assert float(big[-1]) == 1.0 and big.sum().item() == big_count
        assert rss_bytes() - before > size / 2  # the measurement does see a real read
        del big
        gc.collect()
        # No memory map: once the tensor is dropped, none of the file stays in the process.
        assert rss_bytes() - before < size / 8, (rss_bytes() - before, size)
