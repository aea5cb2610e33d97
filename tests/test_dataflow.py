"""Data-flow space (layer stacking): decoding, the stacked model, its export and a real search."""

import json

import pytest
import torch
import yaml
from conftest import ROOT

from evomerge.core.plugins import load_object
from evomerge.interface.cli import main
from evomerge.runtime.host import FitnessHost
from evomerge.spaces.dataflow import DataFlowSpace, Slot, contiguous_runs, passthrough_doc

transformers = pytest.importorskip("transformers")


# -- the genome ------------------------------------------------------------------------------
def test_choice_buckets_scales_and_seed_genomes():
    space = DataFlowSpace(num_seeds=2, num_layers=3, repeats=2, scales=True, scale_range=(0, 2))
    assert space.num_slots == 6 and space.dim == 12
    # three buckets of width 1/3: seed 0, seed 1, no layer; out-of-range genes are clamped
    assert [space.choice(g) for g in (0.0, 0.32, 0.34, 0.66, 0.67, 1.0, -3, 7)] == [
        0, 0, 1, 1, None, None, 0, None,
    ]  # fmt: skip
    genes = [0.1, 0.9, 0.5, 0.5, 0.0, 0.9] + [0.5, 0.0, 0.25, 1.0, 0.75, 0.3]
    assert space.decode(genes) == [
        Slot(0, 0, 1.0),  # slot 1 (layer 1) is empty
        Slot(1, 2, 0.5),
        Slot(1, 0, 2.0),  # repeat 1 runs layers 0 and 1 again
        Slot(0, 1, 1.5),
    ]
    for k in range(2):
        assert space.decode(space.seed_genome(k).tolist()) == [Slot(k, i, 1.0) for i in range(3)]
    with pytest.raises(ValueError, match="expected 12 genes, got 3"):
        space.decode([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="must contain 1"):
        DataFlowSpace(2, 3, scales=True, scale_range=(1.2, 2.0))


def test_passthrough_slices_join_consecutive_layers_and_refuse_scales():
    slots = [Slot(0, 0), Slot(0, 1), Slot(1, 2), Slot(1, 3), Slot(0, 1), Slot(0, 3)]
    assert contiguous_runs(slots) == [(0, 0, 2), (1, 2, 4), (0, 1, 2), (0, 3, 4)]
    doc = passthrough_doc(slots, ["a", "b"], 0, "bfloat16")
    assert doc["merge_method"] == "passthrough" and doc["base_model"] == "a"
    assert doc["slices"][1] == {"sources": [{"model": "b", "layer_range": [2, 4]}]}
    assert passthrough_doc([Slot(0, 0, 0.5)], ["a"], 0, "float32") is None
    assert passthrough_doc([], ["a"], 0, "float32") is None


# -- the stacked model -----------------------------------------------------------------------
DFS = f"{ROOT}/fitness/dataflow_lm.py:DataFlowLM"


def dfs_options(lm_dir, **options):
    tasks = [
        {"name": n, "train": str(lm_dir / f"{n}.jsonl"), "metric": "token_accuracy"}
        for n in ("reverse", "add")
    ]
    seeds = [str(lm_dir / s) for s in ("reverse", "add")]
    return {"seeds": seeds, "tasks": tasks, **options}


def make_dfs(lm_dir, **options):
    fit = load_object(DFS)(**dfs_options(lm_dir, **options))
    fit.setup(torch.device("cpu"))
    return fit


def test_seed_genomes_score_as_the_seeds(lm_dir):
    """The base seed's genome is that seed: the same scores as the causal-LM fitness gives."""
    dfs = make_dfs(lm_dir, repeats=2, scales=True)
    causal = load_object(f"{ROOT}/fitness/causal_lm.py:CausalLM")(
        seeds=[str(p) for p in dfs.seed_paths],
        tasks=[
            {"name": t.name, "train": str(lm_dir / f"{t.name}.jsonl"), "metric": t.metric}
            for t in dfs.tasks
        ],
    )
    causal.setup(torch.device("cpu"))
    theirs = causal.score(causal.make_seeds(2, 0))
    mine = dfs.score(dfs.make_seeds(2, 0))
    assert torch.equal(mine[0], theirs[0])  # seed 0 is the base: its genome is the seed
    # seed 1's genome is its layers on the base's embeddings and head: not seed 1 itself
    assert not torch.equal(mine[1], theirs[1])
    assert torch.equal(dfs.make_seeds(1, 0), dfs.make_seeds(2, 0)[:1])  # count 1: the base's


def test_hub_ids_and_adapter_seeds_load_as_everywhere(lm_dir, tmp_path, monkeypatch):
    """Seeds given as a Hub id (from a cache laid out on disk, offline) and as BASE+ADAPTER:
    the stacked seeds are those models (the adapter merged in as PEFT merges it), and the base
    seed's genome scores as the causal-LM fitness scores the same seed."""
    from tiny_lora import hub_cache, make_adapter, peft_merged

    hub_cache(tmp_path / "hub", "tiny-org/reverse", lm_dir / "reverse", "c" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    adapter = make_adapter(lm_dir / "add", tmp_path / "lora", seed=3)
    seeds = ["tiny-org/reverse", f"{lm_dir / 'add'}+{adapter}"]
    options = {**dfs_options(lm_dir), "seeds": seeds}
    dfs = load_object(DFS)(**options)
    dfs.setup(torch.device("cpu"))
    reverse = transformers.LlamaForCausalLM.from_pretrained(lm_dir / "reverse").state_dict()
    merged = peft_merged(lm_dir / "add", adapter)
    for mine, theirs in zip(dfs.seed_models, (reverse, merged), strict=True):
        got = mine.state_dict()
        assert set(got) == set(theirs)
        for name, t in theirs.items():
            torch.testing.assert_close(got[name], t, rtol=1e-6, atol=1e-6)
    causal = load_object(f"{ROOT}/fitness/causal_lm.py:CausalLM")(
        seeds=seeds, tasks=options["tasks"]
    )
    causal.setup(torch.device("cpu"))
    assert torch.equal(dfs.score(dfs.make_seeds(1, 0))[0], causal.score(causal.make_seeds(2, 0))[0])
    assert dfs.export_info()["dtype"] == "float32"


def test_a_layer_in_two_slots_decodes_with_the_cache_as_without(lm_dir):
    """Each slot has its own KV-cache entry: a cached decoding step gives the logits of a full
    forward pass (with the seeds' own layer indices, two slots would share an entry)."""
    dfs = make_dfs(lm_dir, repeats=2)
    s = dfs.flow
    genes = [s.choice_gene(0), s.choice_gene(1), s.choice_gene(1), s.choice_gene(None)]
    slots = dfs.stack(genes)
    assert [(x.seed, x.layer) for x in slots] == [(0, 0), (1, 1), (1, 0)]
    ids = torch.tensor([dfs.tokenizer("ab+c=12")["input_ids"]])
    with torch.no_grad():
        full = dfs.model(input_ids=ids, use_cache=False).logits[0, -1]
        first = dfs.model(input_ids=ids[:, :-1], use_cache=True)
        step = dfs.model(input_ids=ids[:, -1:], cache=first.cache, use_cache=True).logits[0, -1]
    assert (full - step).abs().max().item() < 1e-5  # 0.71 when slots 0 and 2 share index 0
    # the seeds' own layers keep their indices
    assert [lay.self_attn.layer_idx for lay in dfs.seed_layers[1]] == [0, 1]


def test_export_loads_and_gives_the_stacked_model_s_logits(lm_dir, tmp_path):
    dfs = make_dfs(lm_dir, repeats=2, scales=True)
    s = dfs.flow
    choices = [s.choice_gene(k) for k in (1, 0, None, 1)]  # 3 layers: (1,0) (0,1) (1,1)
    scales = [s.scale_gene(v) for v in (0.5, 1.0, 1.0, 1.75)]
    slots = dfs.stack(choices + scales)
    ids = torch.tensor([dfs.tokenizer("ab+cd=efgh")["input_ids"]])
    with torch.no_grad():
        in_search = dfs.model(input_ids=ids).logits
        gen_search = dfs.model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    out = tmp_path / "stack"
    host = FitnessHost(DFS, dfs_options(lm_dir, repeats=2, scales=True))  # the plug-in's space
    assert host.info()["space"] == "dataflow"
    done = host.export(torch.tensor(choices + scales), out, "float32", {"member": 3})
    assert done["layers"] == 3 and len(slots) == 3
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert model.config.num_hidden_layers == 3
    with torch.no_grad():
        exported = model(input_ids=ids).logits
        gen_exported = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(in_search, exported)
    assert torch.equal(gen_search, gen_exported)
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["space"] == "dataflow" and recipe["dataflow"]["slots"][0] == {
        "seed": 1, "layer": 0, "scale": 0.5,
    }  # fmt: skip
    assert not (out / "mergekit.yaml").exists()  # scales: not expressible in mergekit
    transformers.AutoTokenizer.from_pretrained(out)


# -- a search from a config, and its export ---------------------------------------------------
def dfs_config(lm_dir, tmp_path, strategy, evaluations=24, merge=False, **options):
    """A data-flow search over the two experts' layers, scored on both tasks; with ``merge``,
    parameter space first: a task-arithmetic merge of the experts (made by ``evomerge merge``)
    is seed 0 as well, and the stack uses its embeddings and head (``base: 0``)."""
    seeds = [str(lm_dir / s) for s in EXPERTS]
    if merge:
        recipe = tmp_path / "ta.yaml"
        recipe.write_text(
            yaml.safe_dump(
                {
                    "method": "task_arithmetic",
                    "base": str(lm_dir / "base"),
                    "models": [
                        {"path": str(lm_dir / m), "params": {"weight": 1.0}} for m in EXPERTS
                    ],
                    "params": {"lambda": 1.0},
                    "dtype": "float32",
                }
            )
        )
        assert main(["merge", str(recipe), "--out", str(tmp_path / "ta"), "-q"]) == 0
        seeds.insert(0, str(tmp_path / "ta"))
    cfg = {
        "seed": 0,
        "budget": {"evaluations": evaluations},
        "batch": 4,
        "checkpoint_every": evaluations,
        "history_every": 8,
        "fitness": {
            "plugin": f"{ROOT}/fitness/dataflow_lm.py:DataFlowLM",
            "options": {
                "seeds": seeds,
                "tasks": [
                    {"name": n, "train": str(lm_dir / f"{n}.jsonl"), "metric": "token_accuracy"}
                    for n in EXPERTS
                ],
                **options,
            },
        },
        "seeds": {"kind": "plugin", "count": len(seeds)},
        "strategy": strategy,
        "evaluator": {"kind": "local"},
    }
    path = tmp_path / "dfs.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


EXPERTS = ("reverse", "add")


@pytest.mark.parametrize(
    "strategy, scales, merge",
    [
        ({"name": "cmaes", "sigma0": 0.25, "popsize": 8}, True, False),
        ({"name": "m2n2", "archive_size": 6, "mutation_std": 0.1}, False, True),
    ],
    ids=["cmaes", "m2n2-after-a-merge"],
)
def test_dfs_search_beats_the_seeds_and_exports(lm_dir, tmp_path, strategy, scales, merge):
    path = dfs_config(lm_dir, tmp_path, strategy, evaluations=48, scales=scales, merge=merge)
    run = tmp_path / "run"
    assert main(["run", str(path), "--out", str(run), "-q"]) == 0
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    best = [h["best_train_score"] for h in history]
    # each expert knows one task (about half the tokens); stacking their layers does better
    assert 0.5 <= best[0] < 0.6 or merge
    assert best == sorted(best)  # the best member is never lost
    if not merge:
        assert summary["metrics"]["train_score"] >= best[0] + 1 / 16
    out = tmp_path / "best"
    assert main(["export", str(run), "--out", str(out), "-q"]) == 0
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    slots = recipe["dataflow"]["slots"]
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert model.config.num_hidden_layers == recipe["dataflow"]["layers"] == len(slots)
    if all(s["scale"] == 1.0 for s in slots):
        mergekit = yaml.safe_load((out / "mergekit.yaml").read_text())
        assert mergekit["merge_method"] == "passthrough"
        ranges = [sl["sources"][0]["layer_range"] for sl in mergekit["slices"]]
        assert sum(b - a for a, b in ranges) == len(slots)
    else:
        assert not (out / "mergekit.yaml").exists()
    # the exported folder scores as the search scored its best member
    cfg = yaml.safe_load(path.read_text())
    plain = load_object(f"{ROOT}/fitness/causal_lm.py:CausalLM")(
        seeds=[str(out)], tasks=cfg["fitness"]["options"]["tasks"]
    )
    plain.setup(torch.device("cpu"))
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert plain.score(flat[None]).mean().item() == pytest.approx(
        summary["metrics"]["train_score"], abs=1e-6
    )
