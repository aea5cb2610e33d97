"""lm-evaluation-harness tasks as a fitness, offline: YAML tasks over local JSONL defined here."""

import json

import pytest
import torch
import yaml
from conftest import ROOT
from tiny_lm import add_task

from evomerge.core.plugins import load_object

pytest.importorskip("transformers")
pytest.importorskip("lm_eval")


def write_tasks(root):
    """A multiple-choice and a generation task over the addition examples of tests/tiny_lm."""
    folder = root / "lm_tasks"
    folder.mkdir(exist_ok=True)
    rows = add_task()
    mc = [
        {
            "q": e["prompt"],
            "choices": [str((int(e["answer"]) + k) % 10) for k in (2, 0, 5)],
            "label": 1,
        }
        for e in rows
    ]
    (folder / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in mc))
    (folder / "gen.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    common = {"dataset_path": "json", "test_split": "test", "target_delimiter": ""}
    tasks = {
        "add_mc": {
            "dataset_kwargs": {"data_files": {"test": str(folder / "mc.jsonl")}},
            "output_type": "multiple_choice",
            "doc_to_text": "{{q}}",
            "doc_to_choice": "choices",
            "doc_to_target": "label",
            "metric_list": [{"metric": "acc"}],
        },
        "add_gen": {
            "dataset_kwargs": {"data_files": {"test": str(folder / "gen.jsonl")}},
            "output_type": "generate_until",
            "doc_to_text": "{{prompt}}",
            "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": ["="], "max_gen_toks": 4, "do_sample": False},
            "metric_list": [{"metric": "exact_match"}],
        },
    }
    for name, spec in tasks.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump({"task": name, **common, **spec}))
    return folder


def make(lm_dir, monkeypatch, **options):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(lm_dir / "hf-cache"))
    cls = load_object(f"{ROOT}/fitness/lm_harness.py:LmHarness")
    opts = {
        "seeds": [str(lm_dir / s) for s in ("reverse", "add")],
        "include_path": str(write_tasks(lm_dir)),
        "tasks": ["add_mc", "add_gen"],
        **options,
    }
    fit = cls(**opts)
    fit.setup(torch.device("cpu"))
    return fit


def test_lm_eval_tasks_score_each_document(lm_dir, monkeypatch):
    fit = make(lm_dir, monkeypatch, test_tasks=["add_gen"])
    assert fit.task_ranges() == [("add_mc", 0, 8), ("add_gen", 8, 16)]
    seeds = fit.make_seeds(2, 0)
    scores = fit.score(seeds)
    assert scores[1].tolist() == [1.0] * 16  # the addition expert: every choice and answer
    # generate_until's exact match is causal_lm.py's exact match, document by document
    causal = load_object(f"{ROOT}/fitness/causal_lm.py:CausalLM")(
        seeds=[str(lm_dir / "reverse")],
        tasks=[{"train": str(lm_dir / "lm_tasks" / "gen.jsonl"), "max_new_tokens": 4}],
    )
    causal.setup(torch.device("cpu"))
    torch.testing.assert_close(scores[:, 8:], causal.score(seeds))
    assert scores[0, 8:].mean() < 0.5  # the reversal expert does not add
    # multiple choice: acc is 1 where the right choice has the highest log-likelihood
    model, tok = fit.model, fit.tokenizer
    fit.load_candidate(seeds[0])
    for d, e in enumerate(add_task()):
        prompt = tok(e["prompt"])["input_ids"]
        lls = []
        for c in [str((int(e["answer"]) + k) % 10) for k in (2, 0, 5)]:
            ids = torch.tensor([prompt + tok(c, add_special_tokens=False)["input_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
            lls.append(logp[len(prompt) - 1, ids[0, -1]].item())
        assert scores[0, d].item() == float(max(range(3), key=lls.__getitem__) == 1)
    assert fit.metrics(seeds[1]) == {"test_add_gen_exact_match": 1.0}
    ids = torch.tensor([12, 3, 9, 0])
    assert torch.equal(fit.score(seeds, ids), scores[:, ids])


def test_limit_metric_and_bad_names(lm_dir, monkeypatch):
    fit = make(lm_dir, monkeypatch, tasks=["add_mc"], limit=3, metric={"add_mc": "acc"})
    assert fit.num_examples == 3
    with pytest.raises(
        ValueError, match=r"tasks: 'nope' is not a task in .*found: add_gen, add_mc"
    ):
        make(lm_dir, monkeypatch, tasks=["nope"])
    with pytest.raises(ValueError, match=r"metric\.add_mc: 'bleu' is not one of the task's"):
        make(lm_dir, monkeypatch, tasks=["add_mc"], metric={"add_mc": "bleu"})
