"""The kit's worked example in docs/fitness-plugin.md: shown verbatim, and it does what the page
says on two tiny Llamas (the addition and reversal experts of tests/tiny_lm): scores, the
statistics hooks, a search and a Fisher merge, each from a copy of docs/examples/lm/."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file

from evomerge.core.plugin_loader import load_fitness
from evomerge.interface.cli import main
from evomerge.ops.statistics import compute, fisher_diagonal

pytest.importorskip("transformers")
EXAMPLE = ROOT / "docs" / "examples" / "lm"


def test_the_page_shows_the_example_files_verbatim():
    text = (ROOT / "docs" / "fitness-plugin.md").read_text(encoding="utf-8")
    python = re.findall(r"```python\n(.*?)```", text, re.S)
    yaml = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert (EXAMPLE / "choices.py").read_text(encoding="utf-8") in python
    for name in ("search.yaml", "merge.yaml"):
        assert (EXAMPLE / name).read_text(encoding="utf-8") in yaml


@pytest.fixture
def project(lm_dir, tmp_path, monkeypatch):
    """A copy of the example folder with the experts as its models (a: addition, b: reversal)."""
    work = tmp_path / "mc"
    shutil.copytree(EXAMPLE, work)
    shutil.copytree(lm_dir / "add", work / "models" / "expert-a")
    shutil.copytree(lm_dir / "reverse", work / "models" / "expert-b")
    monkeypatch.chdir(work)
    return work


def make(project, seeds=("expert-a", "expert-b")):
    options = {"seeds": [f"models/{s}" for s in seeds], "questions": "questions.jsonl"}
    fit = load_fitness(f"{project / 'choices.py'}:MultipleChoice", options)
    fit.setup(torch.device("cpu"))
    return fit


def test_a_question_is_right_when_its_answer_is_the_likeliest_choice(project):
    fit = make(project)
    assert fit.num_examples == 8 and fit.task_ranges() == [("questions", 0, 8)]
    seeds = fit.make_seeds(2, 0)
    scores = fit.score(seeds)
    assert scores[0].tolist() == [1.0] * 8  # the addition expert
    assert scores[1].sum() < 8  # the reversal expert forgot some sums
    # the same verdicts from the reversal expert's own forward passes, choice by choice
    model, tok = fit.model, fit.tokenizer
    fit.load_candidate(seeds[1])
    questions = [
        json.loads(line) for line in (project / "questions.jsonl").read_text().splitlines()
    ]
    for q, got in zip(questions, scores[1].tolist(), strict=True):
        prompt = tok(q["prompt"])["input_ids"]
        lls = []
        for choice in q["choices"]:
            ids = torch.tensor([prompt + tok(choice, add_special_tokens=False)["input_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
            lls.append(logp[len(prompt) - 1, ids[0, -1]].item())
        assert got == float(q["choices"][max(range(3), key=lls.__getitem__)] == q["answer"])
    ids = torch.tensor([7, 2, 5])
    assert torch.equal(fit.score(seeds, ids), scores[:, ids])


def test_its_statistics_hooks_feed_fisher_and_regmean(project):
    fit = make(project)
    params = fit.make_seeds(2, 0)[1]
    ids = torch.tensor([0, 3, 5])
    ll = fit.log_likelihoods(params, ids)
    fit.load_candidate(params)
    right = torch.stack([fit.choice_logps(i)[fit.right[i]] for i in ids.tolist()])
    torch.testing.assert_close(ll, right, rtol=1e-5, atol=1e-5)
    fisher = fisher_diagonal(fit, params, ids)
    assert fisher.shape == params.shape and fisher.sum() > 0
    grams = compute(fit, "gram", params, ids, batch_size=2)
    tokens = sum(len(fit.options[i][fit.right[i]].prefix) + 1 for i in ids.tolist())
    q = grams["model.layers.0.self_attn.q_proj.weight"]
    assert q.shape == (32, 32) and "lm_head.weight" in grams
    # the trace of X^T X is the sum of squares of every input row: one row per real token
    inputs = fit.linear_inputs(params, ids)["model.layers.0.self_attn.q_proj.weight"]
    assert inputs.shape[0] == tokens
    torch.testing.assert_close(q.trace(), inputs.pow(2).sum(), rtol=1e-4, atol=1e-4)


def test_the_search_and_the_merge_run_as_the_page_says(project):
    args = ["run", "search.yaml", "--out", "runs/mc", "-q"]
    assert main([*args, "--set", "budget.evaluations=8", "--set", "checkpoint_every=4"]) == 0
    summary = json.loads((project / "runs/mc/summary.json").read_text())
    assert summary["evaluations"] == 8 and summary["metrics"]["train_accuracy"] == 1.0
    assert main(["merge", "merge.yaml", "--out", "merged/fisher", "-q"]) == 0
    # a Fisher-weighted average: every merged weight lies between the two experts' weights
    merged = load_file(project / "merged" / "fisher" / "model.safetensors")
    a = load_file(project / "models" / "expert-a" / "model.safetensors")
    b = load_file(project / "models" / "expert-b" / "model.safetensors")
    for name, m in merged.items():
        low, high = torch.minimum(a[name], b[name]), torch.maximum(a[name], b[name])
        assert ((m >= low - 1e-6) & (m <= high + 1e-6)).all(), name
    assert not torch.equal(merged["lm_head.weight"], a["lm_head.weight"])
    stats = list((project / "merged" / ".evomerge-stats").glob("*/fisher.safetensors"))
    assert len(stats) == 2  # one per model, cached beside the output
