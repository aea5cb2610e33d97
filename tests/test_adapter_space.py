"""The adapter space: LoRA adapters over one base composed in factor space (checked against
PEFT's add_weighted_adapter), searched by CMA-ES and M2N2 from configs/adapter_tiny.yaml on a
tiny Llama with experts PEFT trains here, and exported as an adapter PEFT loads."""

import json
import shutil

import pytest
import torch
import yaml
from conftest import ROOT
from tiny_lora import make_lora_dir

from evomerge.interface.cli import main
from evomerge.ops.lora_compose import compose, composed_rank
from evomerge.tensors.adapted_model import LoraAdapter

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("kind", ["linear", "cat", "svd"])
def test_composition_is_peft_add_weighted_adapter(lora_pair, kind):
    """Factor-space composition equals PEFT's add_weighted_adapter (weights of both signs)."""
    weights = [0.7, -0.4]
    model = transformers.LlamaForCausalLM.from_pretrained(lora_pair / "base")
    pm = peft.PeftModel.from_pretrained(model, lora_pair / "a", adapter_name="a")
    pm.load_adapter(lora_pair / "b", adapter_name="b")
    pm.add_weighted_adapter(["a", "b"], weights, "mix", combination_type=kind, svd_rank=3)
    adapters = [LoraAdapter(lora_pair / x) for x in ("a", "b")]
    rank = composed_rank(kind, [4, 4], 3)
    checked = 0
    for name, module in pm.base_model.model.named_modules():
        if "mix" in getattr(module, "lora_A", {}):
            ta, tb = module.lora_A["mix"].weight, module.lora_B["mix"].weight
        elif "mix" in getattr(module, "lora_embedding_A", {}):
            ta, tb = module.lora_embedding_A["mix"], module.lora_embedding_B["mix"]
        else:
            continue
        factors = []
        for ad in adapters:
            f = ad.factors.get(f"{name}.weight")
            factors.append(
                None if f is None else (ad.weights.get(f.a), ad.weights.get(f.b), f.scale)
            )
        a, b = compose(kind, factors, weights, rank)
        if kind == "svd":  # singular vectors are defined up to sign: compare the update
            torch.testing.assert_close(b @ a, tb @ ta, rtol=1e-4, atol=1e-5)
        else:
            torch.testing.assert_close(a, ta.detach(), rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(b, tb.detach(), rtol=1e-6, atol=1e-7)
        checked += 1
    assert checked == 2 * 2 + 1  # q and v of 2 layers, and the embedding
    for ad in adapters:
        ad.close()


@pytest.fixture(scope="module")
def lora_dir(lm_dir, tmp_path_factory):
    return make_lora_dir(tmp_path_factory.mktemp("tiny") / "models" / "tiny-lora", lm_dir)


def run_config(lora_dir, tmp_path, monkeypatch, *sets) -> tuple:
    monkeypatch.chdir(lora_dir.parent.parent)  # the config's paths are models/tiny-lora/...
    run = tmp_path / "run"
    args = ["run", str(ROOT / "configs" / "adapter_tiny.yaml"), "--out", str(run), "-q"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return run, json.loads((run / "summary.json").read_text())


def seed_scores(lora_dir) -> list[float]:
    from evomerge.core.plugins import load_object

    cls = load_object("evomerge.fitness.causal_lm:CausalLM")
    out = []
    for name in ("reverse", "add", "noise"):
        tasks = [
            {"train": str(lora_dir / f"{t}.jsonl"), "metric": "token_accuracy"}
            for t in ("reverse", "add")
        ]
        fit = cls(seeds=[f"{lora_dir}/base+{lora_dir}/{name}"], tasks=tasks)
        fit.setup(torch.device("cpu"))
        out.append(fit.score(fit.make_seeds(1, 0)).mean().item())
    return out


def test_cmaes_search_over_adapters_and_its_peft_export(lora_dir, tmp_path, monkeypatch):
    """CMA-ES over the weights of two LoRA experts and a distractor (LoraHub's uniform start)
    keeps the best it met, scored as the member realised again scores; the exported adapter
    loads in PEFT and gives the search's logits."""
    alone = seed_scores(lora_dir)
    run, summary = run_config(lora_dir, tmp_path, monkeypatch)
    assert summary["metrics"]["train_score"] >= max(alone) - 1e-6, (summary, alone)
    weights = summary["adapter_weights"]
    assert len(weights) == 3 and all(len(w) == 1 for w in weights)
    out = tmp_path / "exports" / "adapter"  # a parent that does not exist yet is made
    assert main(["export", str(run), "--out", str(out), "-q"]) == 0
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["space"] == "adapter" and recipe["adapter"]["weights"] == weights
    assert recipe["adapter"]["combination"] == "linear"
    base = transformers.LlamaForCausalLM.from_pretrained(lora_dir / "base")
    loaded = peft.PeftModel.from_pretrained(base, out).eval()
    # the search's own resident model, with the member written in
    from evomerge.runtime.host import FitnessHost

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    spec = {"name": "adapter", "options": cfg["seeds"]["options"], "count": 3, "seed": 0}
    host = FitnessHost("evomerge.fitness.causal_lm:CausalLM", cfg["fitness"]["options"], space=spec)
    host.worker.realise([w[0] for w in weights])
    score = host.plugin.score_loaded(None).mean().item()
    assert score == pytest.approx(summary["metrics"]["train_score"], abs=1e-6)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        mine = host.plugin.model(input_ids=ids).logits
        theirs = loaded(input_ids=ids).logits
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    info = host.info()
    model_bytes = sum(t.numel() * t.element_size() for t in host.resident())
    assert info["candidate_bytes"] * 5 < model_bytes  # a candidate moves the adapter's bytes
    # --merged: the base with that adapter merged in, a plain model folder
    merged = tmp_path / "merged"
    assert main(["export", str(run), "--merged", "--out", str(merged), "-q"]) == 0
    assert not (merged / "adapter_config.json").exists()
    recipe = yaml.safe_load((merged / "recipe.yaml").read_text())
    assert recipe["adapter"]["weights"] == weights and recipe["adapter"]["merged"] is True
    full = transformers.AutoModelForCausalLM.from_pretrained(merged).eval()
    with torch.no_grad():
        torch.testing.assert_close(full(input_ids=ids).logits, mine, rtol=1e-5, atol=1e-5)
        plain = transformers.AutoModelForCausalLM.from_pretrained(lora_dir / "base").eval()
        assert not torch.allclose(plain(input_ids=ids).logits, mine, atol=1e-3)


def test_m2n2_per_layer_cat_over_adapters(lora_dir, tmp_path, monkeypatch):
    """M2N2 over per-layer-group coefficients, composed by concatenation; resume-safe vectors."""
    run, summary = run_config(
        lora_dir,
        tmp_path,
        monkeypatch,
        "strategy={name: m2n2, archive_size: 6}",
        "seeds.options={combination: cat, layer_groups: 2}",
        "budget.evaluations=16",
    )
    weights = summary["adapter_weights"]
    assert len(weights) == 3 and all(len(w) == 2 for w in weights)
    assert summary["metrics"]["train_score"] >= max(seed_scores(lora_dir)) - 1e-6
    out = tmp_path / "cat"
    assert main(["export", str(run), "--out", str(out), "-q"]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 12  # three rank-4 adapters, concatenated
    shutil.rmtree(out)


def test_ray_workers_score_the_adapter_space_as_the_local_evaluator(
    lora_dir, tmp_path, monkeypatch, ray_local
):
    """Two real Ray workers, each with its own resident model and PEFT layers, give the scores
    and the member the local evaluator gives, with DARE's random masks (drawn per module from
    the run's seed, so every process composes a candidate alike)."""
    seeds = [f"{lora_dir}/base+{lora_dir}/{n}" for n in ("reverse", "add", "noise")]
    tasks = [
        {"train": f"{lora_dir}/{n}.jsonl", "metric": "token_accuracy"} for n in ("reverse", "add")
    ]
    sets = [  # absolute paths: the session's Ray workers started in another folder
        f"fitness.options.seeds={json.dumps(seeds)}",
        f"fitness.options.tasks={json.dumps(tasks)}",
        "seeds.options={combination: dare_ties, density: 0.7}",
        "budget.evaluations=8",
        "batch=4",
    ]
    local, ls = run_config(lora_dir, tmp_path / "local", monkeypatch, *sets)
    ray, rs = run_config(
        lora_dir, tmp_path / "ray", monkeypatch, *sets, "evaluator={kind: ray, workers: 2}"
    )
    assert rs["evaluator"] == "ray" and ls["evaluator"] == "local"
    assert rs["evaluations"] == ls["evaluations"] == 8
    assert rs["metrics"] == ls["metrics"] and rs["adapter_weights"] == ls["adapter_weights"]

    def rows(run):  # what the archive held: best, min, mean and max score, without times
        out = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in out]

    assert rows(ray) == rows(local)
    assert rows(local)[-1]["fitness"]["min"] < rows(local)[-1]["fitness"]["max"]
    # the export draws the same masks: PEFT loads it with the logits of the member realised here
    out = tmp_path / "dare"
    assert main(["export", str(ray), "--out", str(out), "-q"]) == 0
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())["adapter"]
    assert (recipe["combination"], recipe["density"], recipe["mask_seed"]) == ("dare_ties", 0.7, 0)
    from evomerge.runtime.host import FitnessHost

    cfg = yaml.safe_load((ray / "config.yaml").read_text())
    spec = {"name": "adapter", "options": cfg["seeds"]["options"], "count": 3, "seed": 0}
    host = FitnessHost("evomerge.fitness.causal_lm:CausalLM", cfg["fitness"]["options"], space=spec)
    host.worker.realise([w[0] for w in rs["adapter_weights"]])
    assert host.plugin.score_loaded(None).mean().item() == rs["metrics"]["train_score"]
    base = transformers.LlamaForCausalLM.from_pretrained(lora_dir / "base")
    loaded = peft.PeftModel.from_pretrained(base, out).eval()
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        mine, theirs = host.plugin.model(input_ids=ids).logits, loaded(input_ids=ids).logits
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_a_bfloat16_resident_model(lora_dir, tmp_path, monkeypatch):
    """The resident model (base and PEFT's layers) in bfloat16: a member realised again scores
    exactly as in the search, and its export, loaded by PEFT over the bf16 base (or merged),
    gives the search's logits up to bfloat16 rounding: |diff| <= 4 bf16 steps (2^-8 relative)
    of the largest logit, since the resident model rounds every activation and its adapter
    branch to 8 significant bits while PEFT's loader runs the adapter branch in float32 and the
    merged model rounds W + B A once."""
    run, summary = run_config(
        lora_dir,
        tmp_path,
        monkeypatch,
        "fitness.options.dtype=bfloat16",
        "seeds.options={combination: ties, density: 0.8}",
        "budget.evaluations=8",
    )
    from evomerge.runtime.host import FitnessHost

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    spec = {"name": "adapter", "options": cfg["seeds"]["options"], "count": 3, "seed": 0}
    host = FitnessHost("evomerge.fitness.causal_lm:CausalLM", cfg["fitness"]["options"], space=spec)
    model = host.plugin.model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    host.worker.realise([w[0] for w in summary["adapter_weights"]])
    assert host.plugin.score_loaded(None).mean().item() == summary["metrics"]["train_score"]
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        mine = model(input_ids=ids).logits.float()
    tol = 4 * 2**-8 * mine.abs().max().item()
    out, merged = tmp_path / "adapter", tmp_path / "merged"
    assert main(["export", str(run), "--out", str(out), "-q"]) == 0
    assert yaml.safe_load((out / "recipe.yaml").read_text())["adapter"]["density"] == 0.8
    assert (
        main(["export", str(run), "--merged", "--dtype", "bfloat16", "--out", str(merged), "-q"])
        == 0
    )
    base = transformers.LlamaForCausalLM.from_pretrained(lora_dir / "base", dtype=torch.bfloat16)
    loaded = peft.PeftModel.from_pretrained(base, out).eval()
    full = transformers.AutoModelForCausalLM.from_pretrained(merged, dtype=torch.bfloat16).eval()
    plain = transformers.LlamaForCausalLM.from_pretrained(lora_dir / "base").eval()
    with torch.no_grad():
        for other in (loaded, full):
            torch.testing.assert_close(other(input_ids=ids).logits.float(), mine, rtol=0, atol=tol)
        assert (plain(input_ids=ids).logits - mine).abs().max() > 10 * tol  # the adapter matters
    from safetensors import safe_open

    with safe_open(str(next(merged.glob("*.safetensors"))), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}


@pytest.mark.parametrize(
    "options,line",
    [
        ("{combination: ties}", "seeds.options.density: combination ties prunes"),
        ("{combination: dare_ties, density: 1.5}", "seeds.options.density: 1.5 is not in (0, 1]"),
        ("{combination: tie}", "unknown composition 'tie'; did you mean 'ties'?"),
    ],
)
def test_composition_options_are_checked(lora_dir, tmp_path, monkeypatch, capsys, options, line):
    monkeypatch.chdir(lora_dir.parent.parent)
    run = tmp_path / "run"
    args = ["run", str(ROOT / "configs" / "adapter_tiny.yaml"), "--out", str(run), "-q"]
    assert main([*args, "--set", f"seeds.options={options}"]) == 2
    err = capsys.readouterr().err.strip()
    assert line in err and len(err.splitlines()) == 1 and not run.exists()


@pytest.mark.parametrize(
    "override,line",
    [
        ("seeds={kind: gaussian, count: 3, std: 0.01}",
         "seeds.kind: gaussian, but space adapter starts from the fitness plug-in's models; "
         "set seeds.kind: plugin"),
        ("seeds.count=2", "seeds.count is 2 but fitness causal_lm.py:CausalLM names 3 adapters"),
    ],
)  # fmt: skip
def test_seeds_that_disagree_with_the_adapters_are_refused(
    lora_dir, tmp_path, monkeypatch, capsys, override, line
):
    """The adapters seed the search: gaussian seeds or another count are refused in one line,
    not ignored."""
    monkeypatch.chdir(lora_dir.parent.parent)
    run = tmp_path / "run"
    args = ["run", str(ROOT / "configs" / "adapter_tiny.yaml"), "--out", str(run), "-q"]
    assert main([*args, "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert line in err and len(err.splitlines()) == 1 and not run.exists()
