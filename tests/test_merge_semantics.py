"""`evomerge merge` reads mergekit YAMLs as mergekit does: parameter scopes and filters, dtype,
tokenizer_source, the new methods, and passthrough slices (layer stacking)."""

import json
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from evomerge.interface.cli import main
from evomerge.merge.merge_config import resolve_setting
from evomerge.merge.slices import SliceRange, plan_tensors, rename_layer, with_num_layers

NAMES = {
    "model.embed_tokens.weight": (6, 4),
    "model.layers.0.mlp.up_proj.weight": (4, 4),
    "model.layers.0.self_attn.q_proj.weight": (4, 4),
    "model.layers.1.mlp.up_proj.weight": (4, 4),
    "model.layers.1.self_attn.q_proj.weight": (4, 4),
    "model.norm.weight": (4,),
    "lm_head.weight": (6, 4),
}


@pytest.fixture
def seeds(tmp_path):
    """A bfloat16 base and two fine-tunes as folders with a config (2 layers)."""
    gen = torch.Generator().manual_seed(0)
    base = {n: torch.randn(s, generator=gen) for n, s in NAMES.items()}
    out = {"base": base}
    for i, name in enumerate(["a", "b"]):
        out[name] = {
            n: t + (i + 1) * 0.1 * torch.randn(t.shape, generator=gen) for n, t in base.items()
        }
    for name, tensors in out.items():
        folder = tmp_path / name
        folder.mkdir()
        out[name] = {n: t.bfloat16() for n, t in tensors.items()}
        save_file(out[name], folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "name": name}))
    return out


def merge(tmp_path, cfg: dict, out="out") -> tuple[int, dict]:
    path = tmp_path / f"{out}.yml"
    path.write_text(yaml.safe_dump(cfg))
    rc = main(["merge", str(path), "--out", str(tmp_path / out), "-q"])
    if rc != 0:
        return rc, {}
    return rc, load_file(tmp_path / out / "model.safetensors")


def mk(method, models, **extra):
    return {"merge_method": method, "models": [{"model": m} for m in models], **extra}


def test_global_weight_and_density_apply_to_every_model(tmp_path, seeds):
    rc, glob = merge(
        tmp_path,
        mk("ties", ["a", "b"], base_model="base", parameters={"weight": 0.5, "density": 0.5}),
        "glob",
    )
    per = mk("ties", [], base_model="base")
    per["models"] = [
        {"model": m, "parameters": {"weight": 0.5, "density": 0.5}} for m in ["a", "b"]
    ]
    rc2, own = merge(tmp_path, per, "own")
    assert rc == rc2 == 0
    for n in NAMES:
        assert torch.equal(glob[n], own[n]), n
    # a model's own value wins over the global one
    mixed = mk("linear", [], parameters={"weight": 1.0, "normalize": False})
    mixed["models"] = [{"model": "a"}, {"model": "b", "parameters": {"weight": 0.0}}]
    rc, out = merge(tmp_path, mixed, "mixed")
    assert rc == 0 and all(torch.equal(out[n], seeds["a"][n]) for n in NAMES)


def test_filter_lists_first_applying_entry_wins(tmp_path, seeds):
    assert resolve_setting([{"value": 0.2}, {"filter": "mlp", "value": 0.9}], "x.mlp.w", 0) == 0.2
    assert resolve_setting([{"filter": "mlp", "value": 0.9}, {"value": 0.2}], "x.mlp.w", 0) == 0.9
    assert resolve_setting([{"filter": "mlp", "value": 0.9}, {"value": 0.2}], "x.attn", 0) == 0.2
    assert resolve_setting([{"filter": "*", "value": [0.0, 1.0]}], "x", 0.25) == 0.25
    assert resolve_setting([{"filter": "mlp", "value": 0.9}], "x.attn", 0) is None
    assert resolve_setting({"filter": "attn", "value": 0.3}, "x.attn", 0) == 0.3
    # slerp t: an unfiltered entry first applies everywhere; a filter that matches nothing falls
    # through to the next scope (here none: the tensor falls back to... the global default)
    cfg = {
        "merge_method": "slerp",
        "base_model": "a",
        "models": [{"model": "a"}, {"model": "b"}],
        "parameters": {"t": [{"filter": "self_attn", "value": 1.0}, {"value": 0.0}]},
    }
    rc, out = merge(tmp_path, cfg)
    assert rc == 0
    for n in NAMES:
        want = seeds["b"][n] if "self_attn" in n else seeds["a"][n]
        assert torch.equal(out[n], want), n


def test_per_model_filter_that_matches_nothing_falls_through_to_global(tmp_path, seeds):
    cfg = mk("linear", [], parameters={"weight": 1.0, "normalize": False})
    cfg["models"] = [
        {"model": "a"},
        {"model": "b", "parameters": {"weight": [{"filter": "mlp", "value": 0.0}]}},
    ]
    rc, out = merge(tmp_path, cfg)
    assert rc == 0
    for n in NAMES:
        a, b = seeds["a"][n].float(), seeds["b"][n].float()
        want = a if "mlp" in n else a + b
        assert torch.equal(out[n], want.bfloat16()), n


def test_without_dtype_the_output_keeps_the_seeds_dtype(tmp_path, seeds):
    rc, out = merge(tmp_path, mk("linear", ["a", "b"], parameters={"weight": 0.5}), "plain")
    assert rc == 0 and all(t.dtype == torch.bfloat16 for t in out.values())
    rc, out = merge(
        tmp_path, mk("linear", ["a", "b"], parameters={"weight": 0.5}, dtype="float32"), "f32"
    )
    assert rc == 0 and all(t.dtype == torch.float32 for t in out.values())


def _tokenizer(folder, extra=()):
    vocab = {t: i for i, t in enumerate(["<unk>", "a", "b", "c", *extra])}
    doc = {"model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}, "added_tokens": []}
    (folder / "tokenizer.json").write_text(json.dumps(doc))


def test_tokenizer_source_accepted_for_one_vocabulary_refused_otherwise(tmp_path, seeds, capsys):
    cfg = mk("linear", ["a", "b"], parameters={"weight": 0.5}, tokenizer_source="union")
    rc, _ = merge(tmp_path, cfg, "none")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "no tokenizer files" in err[0]
    _tokenizer(tmp_path / "a")
    _tokenizer(tmp_path / "b")
    rc, out = merge(tmp_path, cfg, "same")
    assert rc == 0 and (tmp_path / "same/tokenizer.json").is_file()
    _tokenizer(tmp_path / "b", extra=["d"])
    rc, _ = merge(tmp_path, cfg, "differ")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "vocabularies" in err[0] and "differ" in err[0], err
    assert not (tmp_path / "differ").exists()


@pytest.mark.parametrize(
    "method, models, params",
    [
        ("della", ["a", "b"], {"weight": 0.5, "density": 0.6, "epsilon": 0.1}),
        ("della_linear", ["a", "b"], {"weight": 0.5, "density": 0.6}),
        ("model_stock", ["a", "b"], {}),
        ("nuslerp", ["a", "b"], {"weight": 0.5}),
        ("multislerp", ["a", "b"], {"weight": 0.5}),
        ("karcher", ["a", "b"], {}),
        ("sce", ["a", "b"], {"select_topk": 0.5}),
        ("nearswap", ["base", "a"], {"t": 0.01}),
    ],
)
def test_new_methods_merge_from_a_mergekit_yaml(tmp_path, seeds, method, models, params):
    from evomerge.ops.operators import get_merge_method

    m = get_merge_method(method)
    cfg = mk(method, models, parameters=params, random_seed=3)
    takes_base = m.base.takes_base
    if takes_base:
        cfg["base_model"] = "base"
    rc, out = merge(tmp_path, cfg)
    assert rc == 0 and set(out) == set(NAMES)
    per_model = {k: v for k, v in params.items() if k in m.model_params}
    glob = {k: v for k, v in params.items() if k in m.params}
    for n in NAMES:
        ins = [seeds[x][n] for x in models if not (takes_base and x == "base")]
        base = seeds["base"][n] if takes_base else None
        gen = torch.Generator().manual_seed(0)
        if m.random:  # the engine seeds tensor i with key(seed, i): compare shape/dtype only
            assert out[n].dtype == torch.bfloat16 and torch.isfinite(out[n].float()).all()
            continue
        want = m(base, ins, [dict(per_model) for _ in ins], glob, gen)
        assert torch.equal(out[n], want), n


def test_slices_plan_renames_layers_and_takes_outside_tensors_from_the_ends():
    names = {0: list(NAMES), 1: list(NAMES)}
    plan = plan_tensors(names, [[SliceRange(0, 0, 2)], [SliceRange(1, 1, 2)]])
    got = {(p.name, p.sources, p.t) for p in plan}
    assert (
        "model.layers.2.mlp.up_proj.weight",
        ((1, "model.layers.1.mlp.up_proj.weight"),),
        1.0,
    ) in got
    assert (
        "model.layers.1.mlp.up_proj.weight",
        ((0, "model.layers.1.mlp.up_proj.weight"),),
        1.0,
    ) in got
    assert (
        "model.layers.0.mlp.up_proj.weight",
        ((0, "model.layers.0.mlp.up_proj.weight"),),
        0.0,
    ) in got
    assert ("model.embed_tokens.weight", ((0, "model.embed_tokens.weight"),), 0.0) in got
    assert ("lm_head.weight", ((1, "lm_head.weight"),), 0.0) in got
    assert len(plan) == 3 * 2 + 3
    assert rename_layer("model.layers.12.mlp.w", 3) == "model.layers.3.mlp.w"
    cfg = with_num_layers({"num_hidden_layers": 2, "layer_types": ["s", "f"]}, 3, [0, 1, 1])
    assert cfg == {"num_hidden_layers": 3, "layer_types": ["s", "f", "f"]}
    with pytest.raises(ValueError, match="outside"):
        plan_tensors(names, [[SliceRange(0, 1, 3)]])
    with pytest.raises(ValueError, match="same non-empty"):
        plan_tensors(names, [[SliceRange(0, 0, 1), SliceRange(1, 0, 2)]])


def test_slices_recipes_and_the_dataflow_export_share_one_layer_naming():
    from evomerge.spaces.recipe import DEFAULT_LAYER_PATTERN
    from evomerge.tensors import layer_names
    from evomerge.tensors.layer_stack import stacked_config

    assert DEFAULT_LAYER_PATTERN == layer_names.LAYER_PATTERN  # recipes' layer parameters
    assert layer_names.layer_of("transformer.h.4.attn.c_attn.weight") == 4
    # the data-flow export stacks decoder layers only: a vision tower's blocks stay put
    assert layer_names.layer_of("vision.blocks.2.w", layer_names.DECODER_LAYER_PATTERN) is None
    assert with_num_layers({"n_layer": 2}, 5) == {"n_layer": 5}
    slots = [SimpleNamespace(layer=1), SimpleNamespace(layer=0)]
    base = {"num_hidden_layers": 2, "layer_types": ["s", "f"], "torch_dtype": "float32"}
    assert stacked_config(base, slots, torch.bfloat16) == {
        "num_hidden_layers": 2,
        "layer_types": ["f", "s"],
        "torch_dtype": "bfloat16",
        "dtype": "bfloat16",
    }
    odd = {0: list(NAMES), 1: [n for n in NAMES if "layers.1.mlp.up_proj" not in n]}
    with pytest.raises(ValueError, match=r"slices\[0\]: layer 1 of model 0 .* different tensors"):
        plan_tensors(odd, [[SliceRange(0, 1, 2), SliceRange(1, 1, 2)]])


def test_passthrough_slices_stack_layers_into_a_model_transformers_loads(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    models = [transformers.LlamaForCausalLM(cfg) for _ in range(2)]
    for i, m in enumerate(models):
        m.save_pretrained(tmp_path / f"m{i}")
    recipe = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": str(tmp_path / "m0"), "layer_range": [0, 2]}]},
            {"sources": [{"model": str(tmp_path / "m1"), "layer_range": [1, 3]}]},
        ],
    }
    (tmp_path / "mk.yml").write_text(yaml.safe_dump(recipe))
    assert main(["merge", str(tmp_path / "mk.yml"), "--out", str(tmp_path / "out"), "-q"]) == 0
    stacked = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out")
    assert stacked.config.num_hidden_layers == 4
    s0, s1, out = models[0].state_dict(), models[1].state_dict(), stacked.state_dict()
    for k, v in out.items():
        if ".layers." not in k:
            src = s0 if "embed" in k else s1
            assert torch.equal(v, src[k]), k
    for out_layer, (src, layer) in enumerate([(s0, 0), (s0, 1), (s1, 1), (s1, 2)]):
        key = f"model.layers.{out_layer}.mlp.down_proj.weight"
        assert torch.equal(out[key], src[f"model.layers.{layer}.mlp.down_proj.weight"])
    ids = torch.tensor([[1, 5, 9]])
    with torch.no_grad():
        assert torch.isfinite(stacked(ids).logits).all()


def test_slices_with_two_sources_merge_layer_by_layer(tmp_path, seeds):
    # slerp over slices: t is a gradient over each slice's layers (0 then 1 in a 2-layer slice)
    cfg = {
        "merge_method": "slerp",
        "base_model": "a",
        "slices": [
            {
                "sources": [
                    {"model": "a", "layer_range": [0, 2]},
                    {"model": "b", "layer_range": [0, 2]},
                ]
            }
        ],
        "parameters": {"t": [0.0, 1.0]},
    }
    rc, out = merge(tmp_path, cfg)
    assert rc == 0 and set(out) == set(NAMES)
    assert torch.equal(
        out["model.layers.0.mlp.up_proj.weight"], seeds["a"]["model.layers.0.mlp.up_proj.weight"]
    )
    assert torch.equal(
        out["model.layers.1.mlp.up_proj.weight"], seeds["b"]["model.layers.1.mlp.up_proj.weight"]
    )
    assert json.loads((tmp_path / "out/config.json").read_text())["num_hidden_layers"] == 2
