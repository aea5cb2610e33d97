"""`evomerge merge`: one-shot merges of real safetensors files, from our YAML or mergekit's."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from evomerge.interface.cli import main

NAMES = {
    "model.embed_tokens.weight": (6, 4),
    "model.layers.0.mlp.up_proj.weight": (4, 4),
    "model.layers.1.mlp.up_proj.weight": (4, 4),
    "model.layers.2.mlp.up_proj.weight": (4, 4),
    "model.norm.weight": (4,),
}


@pytest.fixture
def models(tmp_path):
    """A base and two fine-tunes as HF-style folders (one of them sharded)."""
    gen = torch.Generator().manual_seed(0)
    base = {n: torch.randn(s, generator=gen) for n, s in NAMES.items()}
    out = {"base": base}
    for i, name in enumerate(["a", "b"]):
        out[name] = {
            n: t + (i + 1) * 0.1 * torch.randn(t.shape, generator=gen) for n, t in base.items()
        }
    paths = {}
    for name, tensors in out.items():
        folder = tmp_path / name
        folder.mkdir()
        if name == "b":  # sharded, with an index
            keys = list(tensors)
            save_file(
                {k: tensors[k] for k in keys[:2]}, folder / "model-00001-of-00002.safetensors"
            )
            save_file(
                {k: tensors[k] for k in keys[2:]}, folder / "model-00002-of-00002.safetensors"
            )
            weight_map = {
                k: f"model-0000{1 if i < 2 else 2}-of-00002.safetensors" for i, k in enumerate(keys)
            }
            (folder / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {}, "weight_map": weight_map})
            )
        else:
            save_file(tensors, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "name": name}))
        paths[name] = folder
    return out, paths


def merge(tmp_path, cfg: dict, name="merge.yaml", out="out") -> tuple[int, dict]:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    rc = main(["merge", str(path), "--out", str(tmp_path / out), "-q"])
    if rc != 0:
        return rc, {}
    folder = tmp_path / out
    tensors = {}
    for f in folder.glob("*.safetensors"):
        tensors.update(load_file(f))
    return rc, tensors


def test_task_arithmetic_is_the_formula_and_carries_the_base_config(tmp_path, models):
    t, p = models
    cfg = {
        "method": "task_arithmetic",
        "base": str(p["base"]),
        "models": [
            {"path": str(p["a"]), "params": {"weight": 0.7}},
            {"path": str(p["b"]), "params": {"weight": 0.4}},
        ],
        "params": {"lambda": 0.5},
    }
    rc, out = merge(tmp_path, cfg)
    assert rc == 0 and set(out) == set(NAMES)
    for n in NAMES:
        b = t["base"][n]
        expected = b + 0.5 * (0.7 * (t["a"][n] - b) + 0.4 * (t["b"][n] - b))
        assert torch.allclose(out[n], expected, atol=1e-6), n
    assert json.loads((tmp_path / "out/config.json").read_text())["name"] == "base"


def test_a_mergekit_yaml_gives_the_same_tensors_as_our_own(tmp_path, models):
    _, p = models
    ours = {
        "method": "ties",
        "base": str(p["base"]),
        "models": [
            {"path": str(p["a"]), "params": {"weight": 0.6, "density": 0.5}},
            {"path": str(p["b"]), "params": {"weight": 0.4, "density": 0.5}},
        ],
        "params": {"normalize": True},
    }
    mergekit = {
        "merge_method": "ties",
        "base_model": str(p["base"]),
        "models": [
            {"model": str(p["base"])},
            {"model": str(p["a"]), "parameters": {"weight": 0.6, "density": 0.5}},
            {"model": str(p["b"]), "parameters": {"weight": 0.4, "density": 0.5}},
        ],
        "parameters": {"normalize": True, "int8_mask": True},
        "dtype": "float32",
    }
    rc1, a = merge(tmp_path, ours, "ours.yaml", "ours")
    rc2, b = merge(tmp_path, mergekit, "mk.yaml", "mk")
    assert rc1 == rc2 == 0
    for n in NAMES:
        assert torch.equal(a[n], b[n]), n


def test_overrides_gradients_and_filters_apply_per_tensor(tmp_path, models):
    t, p = models
    cfg = {
        "method": "linear",
        "models": [
            {"path": str(p["a"]), "params": {"weight": [1.0, 0.0]}},  # gradient over layers
            {"path": str(p["b"]), "params": {"weight": [0.0, 1.0]}},
        ],
        "overrides": [
            {"match": r"embed_tokens", "model_params": [{"weight": 1.0}, {"weight": 0.0}]}
        ],
        "params": {"normalize": True},
    }
    rc, out = merge(tmp_path, cfg)
    assert rc == 0
    a, b = t["a"], t["b"]
    assert torch.allclose(
        out["model.layers.0.mlp.up_proj.weight"], a["model.layers.0.mlp.up_proj.weight"]
    )
    mid = "model.layers.1.mlp.up_proj.weight"
    assert torch.allclose(out[mid], 0.5 * a[mid] + 0.5 * b[mid], atol=1e-6)
    assert torch.allclose(
        out["model.layers.2.mlp.up_proj.weight"], b["model.layers.2.mlp.up_proj.weight"]
    )
    assert torch.equal(out["model.embed_tokens.weight"], a["model.embed_tokens.weight"])


def test_bfloat16_output_and_shards(tmp_path, models):
    _, p = models
    cfg = {
        "method": "slerp",
        "base": str(p["a"]),
        "models": [{"path": str(p["b"])}],
        "params": {"t": 0.3},
        "out_dtype": "bfloat16",
        "max_shard_size": "100B",
    }
    rc, out = merge(tmp_path, cfg)
    assert rc == 0 and all(v.dtype == torch.bfloat16 for v in out.values())
    index = json.loads((tmp_path / "out/model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(NAMES)
    assert len(set(index["weight_map"].values())) > 1


def test_mismatched_models_fail_in_one_line_and_write_nothing(tmp_path, models, capsys):
    _, p = models
    bad = tmp_path / "bad"
    bad.mkdir()
    t = {n: torch.zeros(s) for n, s in NAMES.items()}
    t["model.norm.weight"] = torch.zeros(5)
    save_file(t, bad / "model.safetensors")
    cfg = {
        "method": "linear",
        "models": [
            {"path": str(p["a"]), "params": {"weight": 1.0}},
            {"path": str(bad), "params": {"weight": 1.0}},
        ],
    }
    rc, _ = merge(tmp_path, cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "model.norm.weight" in err[0], err
    assert not (tmp_path / "out").exists()
    rc, _ = merge(tmp_path, {"method": "nope", "models": [{"path": str(p["a"])}]})
    assert rc == 2


def test_merged_llama_loads_with_from_pretrained(tmp_path):
    """A mergekit recipe over real (tiny) Llama folders gives a folder transformers loads, whose
    weights are the linear merge of the inputs."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    models = [transformers.LlamaForCausalLM(cfg) for _ in range(2)]
    for i, m in enumerate(models):
        m.save_pretrained(tmp_path / f"m{i}", max_shard_size="20KB")
    recipe = {
        "merge_method": "linear",
        "models": [
            {"model": str(tmp_path / "m0"), "parameters": {"weight": 0.25}},
            {"model": str(tmp_path / "m1"), "parameters": {"weight": 0.75}},
        ],
        "dtype": "float32",
    }
    (tmp_path / "mk.yml").write_text(yaml.safe_dump(recipe))
    assert main(["merge", str(tmp_path / "mk.yml"), "--out", str(tmp_path / "out"), "-q"]) == 0
    merged = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out")
    expected = transformers.LlamaForCausalLM(cfg)
    state = {
        k: 0.25 * v + 0.75 * models[1].state_dict()[k] for k, v in models[0].state_dict().items()
    }
    expected.load_state_dict(state)
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, expected(ids).logits, atol=1e-5)
