"""The causal-LM fitness on a tiny Llama and a character tokenizer made here, trained here."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT
from safetensors.torch import load_file

from evomerge.core.plugins import load_object
from evomerge.interface.cli import main

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


def make_fitness(root, seeds=("reverse", "add"), batch_size=16, **task_changes):
    cls = load_object(f"{ROOT}/fitness/causal_lm.py:CausalLM")
    tasks = [
        {
            "name": "reverse",
            "train": str(root / "reverse.jsonl"),
            "test": str(root / "reverse.jsonl"),
        },
        {"name": "add", "train": str(root / "add.jsonl"), "metric": "exact_match", **task_changes},
    ]
    fit = cls(seeds=[str(root / s) for s in seeds], tasks=tasks, batch_size=batch_size)
    fit.setup(torch.device("cpu"))
    return fit


def test_experts_score_on_their_own_task(lm_dir):
    fit = make_fitness(lm_dir)
    assert fit.task_ranges() == [("reverse", 0, 8), ("add", 8, 16)]
    seeds = fit.make_seeds(2, 0)
    scores = fit.score(seeds)
    assert scores.shape == (2, 16)
    assert scores[0, :8].mean() == 1.0 and scores[1, 8:].mean() == 1.0  # each its own task
    assert scores[0, 8:].mean() < 0.5 and scores[1, :8].mean() < 0.5  # not the other's
    assert fit.metrics(seeds[0]) == {"test_reverse_exact_match": 1.0}


def test_make_seeds_returns_the_saved_weights(lm_dir):
    fit = make_fitness(lm_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(lm_dir / "add")
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.equal(fit.make_seeds(2, 0)[1], flat)
    assert [n for n, _ in fit.param_layout()] == [n for n, _ in model.named_parameters()]


@pytest.mark.parametrize("metric", ["exact_match", "token_accuracy", "likelihood"])
def test_padding_never_changes_a_score(lm_dir, metric):
    seeds = make_fitness(lm_dir).make_seeds(2, 0)
    one = make_fitness(lm_dir, batch_size=1, metric=metric).score(seeds)
    batched = make_fitness(lm_dir, batch_size=5, metric=metric).score(seeds)
    torch.testing.assert_close(batched, one, rtol=1e-5, atol=1e-6)
    assert ((0 <= one) & (one <= 1)).all()


def test_teacher_forced_metrics(lm_dir):
    fit = make_fitness(lm_dir, metric="token_accuracy")
    seeds = fit.make_seeds(2, 0)
    assert fit.score(seeds[1:])[0, 8:].mean() == 1.0
    fit = make_fitness(lm_dir, metric="likelihood")
    good, bad = fit.score(seeds[1:])[0, 8:], fit.score(seeds[:1])[0, 8:]
    assert good.min() > 0.5 and bad.max() < good.min()


def test_example_ids_select_across_tasks(lm_dir):
    fit = make_fitness(lm_dir)
    seeds = fit.make_seeds(2, 0)
    ids = torch.tensor([9, 2, 15, 0])
    assert torch.equal(fit.score(seeds, ids), fit.score(seeds)[:, ids])


def test_bad_task_files_are_named(lm_dir, tmp_path):
    cls = load_object(f"{ROOT}/fitness/causal_lm.py:CausalLM")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: needs string fields"):
        cls(seeds=[str(lm_dir / "add")], tasks=[{"train": str(bad)}])
    with pytest.raises(ValueError, match=r"tasks\[0\]\.metric: 'bleu'"):
        cls(seeds=[str(lm_dir / "add")], tasks=[{"train": str(bad), "metric": "bleu"}])


def lm_run(tmp_path, seeds: list, tasks: list, **changes) -> Path:
    """Run a search over the LM seed folders ``seeds`` (``evomerge run``); returns its folder."""
    cfg = {
        "seed": 0,
        "budget": {"evaluations": 60},
        "batch": 4,
        "checkpoint_every": 60,
        "history_every": 20,
        "fitness": {
            "plugin": f"{ROOT}/fitness/causal_lm.py:CausalLM",
            "options": {"seeds": [str(s) for s in seeds], "tasks": tasks},
        },
        "seeds": {"kind": "plugin", "count": len(seeds)},
        "strategy": {"name": "m2n2", "archive_size": 6},
        "evaluator": {"kind": "local"},
        **changes,
    }
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["run", str(path), "--out", str(run), "-q"]) == 0
    return run


def token_tasks(root) -> list[dict]:
    return [
        {"name": n, "train": str(root / f"{n}.jsonl"), "metric": "token_accuracy"}
        for n in ("reverse", "add")
    ]


def test_m2n2_merges_the_two_experts(lm_dir, tmp_path):
    """A real search over the two experts improves on both of them (each knows one task)."""
    run = lm_run(tmp_path, [lm_dir / "reverse", lm_dir / "add"], token_tasks(lm_dir))
    summary = json.loads((run / "summary.json").read_text())
    # each expert alone gets about half the examples right
    assert summary["metrics"]["train_score"] > 0.6


def test_cmaes_ties_recipe_over_the_experts(lm_dir, tmp_path):
    """CMA-ES over a per-layer TIES recipe (base + two experts) beats both experts."""
    seeds = [lm_dir / s for s in ("base", "reverse", "add")]
    recipe = {
        "method": "ties",
        "base": 0,
        "genes": {"weight": {"low": 0.0, "high": 1.5}, "density": {"low": 0.1, "high": 1.0}},
    }
    lm_run(
        tmp_path,
        seeds,
        token_tasks(lm_dir),
        budget={"evaluations": 48},
        batch=8,
        checkpoint_every=48,
        history_every=16,
        recipe=recipe,
        strategy={"name": "cmaes", "sigma0": 0.3, "popsize": 8},
    )
    cfg = yaml.safe_load((tmp_path / "lm.yaml").read_text())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["metrics"]["train_score"] > 0.6
    groups = summary["recipe"]["groups"]
    assert any("layers.1" in g for g in groups) and any("embed" in g for g in groups)
    # export the best recipe: a folder transformers loads, the member's own weights, and a
    # mergekit.yaml that gives the same tensors through 'evomerge merge'
    out = tmp_path / "best"
    assert main(["export", str(tmp_path / "run"), "--out", str(out), "-q"]) == 0
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(out)
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["space"] == "recipe" and recipe["member"] == summary["member"]
    fit = load_object(cfg["fitness"]["plugin"])(**cfg["fitness"]["options"])
    fit.setup(torch.device("cpu"))
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert fit.score(flat[None]).mean().item() == pytest.approx(summary["metrics"]["train_score"])
    again = tmp_path / "again"
    assert main(["merge", str(out / "mergekit.yaml"), "--out", str(again), "-q"]) == 0
    mine = load_file(str(out / "model.safetensors"))
    theirs = load_file(str(again / "model.safetensors"))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_export_a_dense_member_and_refuse_unknown_ones(lm_dir, tmp_path, capsys):
    run = lm_run(
        tmp_path,
        [lm_dir / "reverse", lm_dir / "add"],
        [{"train": str(lm_dir / "add.jsonl"), "metric": "likelihood"}],
        budget={"evaluations": 8},
        checkpoint_every=8,
        strategy={"name": "m2n2", "archive_size": 12},  # room for all: no seed is displaced
    )
    assert main(["export", str(run), "--member", "1", "--out", str(tmp_path / "m1"), "-q"]) == 0
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m1")
    add = transformers.AutoModelForCausalLM.from_pretrained(lm_dir / "add")  # member 1: a seed
    pairs = zip(exported.parameters(), add.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert not (tmp_path / "m1" / "mergekit.yaml").exists()
    capsys.readouterr()
    assert main(["export", str(run), "--member", "77", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--member: 77 is not in the run's last checkpoint; members:" in err
    assert not (tmp_path / "x").exists()


def test_limit_and_a_held_out_metric_of_its_own(lm_dir):
    cls = load_object(f"{ROOT}/fitness/causal_lm.py:CausalLM")
    task = {
        "name": "add",
        "train": str(lm_dir / "add.jsonl"),
        "test": str(lm_dir / "add.jsonl"),
        "metric": "likelihood",
        "test_metric": "exact_match",
        "limit": 3,
    }
    fit = cls(seeds=[str(lm_dir / "add")], tasks=[task])
    fit.setup(torch.device("cpu"))
    assert fit.num_examples == 3
    seeds = fit.make_seeds(1, 0)
    assert fit.metrics(seeds[0]) == {"test_add_exact_match": 1.0}
    assert fit.score(seeds).shape == (1, 3)
