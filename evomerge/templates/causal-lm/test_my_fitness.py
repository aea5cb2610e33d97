"""Checks that my_fitness.py reads your task and keeps the plug-in contract, on two tiny
models made here (a character tokenizer over your data, random 2-layer Llamas), so they run
before any real model is downloaded. Run them with ``pytest`` in this folder.
"""

import json
from pathlib import Path

import pytest
import torch

from evomerge.interface.cli import main
from my_fitness import SEEDS, TASKS, MyFitness, here

transformers = pytest.importorskip("transformers")  # pip install "evomerge[llm]"
HERE = Path(__file__).resolve().parent
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]


def characters() -> list[str]:
    text = ""
    for task in TASKS:
        for split in ("train", "test"):
            if task.get(split):
                rows = Path(here(task[split])).read_text(encoding="utf-8").splitlines()
                text += "".join(json.loads(r)["prompt"] + json.loads(r)["answer"] for r in rows)
    return sorted(set(text))


@pytest.fixture(scope="module")
def tiny_seeds(tmp_path_factory):
    """Two random tiny Llamas with a character tokenizer over the task's text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    root = tmp_path_factory.mktemp("tiny")
    vocab = {t: i for i, t in enumerate(SPECIAL + characters())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    special = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    config = transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    folders = []
    for i in range(len(SEEDS)):
        torch.manual_seed(i)
        folder = root / f"expert-{i}"
        transformers.LlamaForCausalLM(config).save_pretrained(folder)
        fast.save_pretrained(folder)
        folders.append(str(folder))
    return folders


def test_scores_are_one_per_candidate_and_example_and_repeat(tiny_seeds):
    fitness = MyFitness(seeds=tiny_seeds)
    fitness.setup(torch.device("cpu"))
    seeds = fitness.make_seeds(len(tiny_seeds), seed=0)
    assert seeds.shape == (len(tiny_seeds), fitness.num_params)
    scores = fitness.score(seeds)
    assert scores.shape == (len(tiny_seeds), fitness.num_examples) and fitness.num_examples > 0
    assert ((scores >= 0) & (scores <= 1)).all()  # resource competition needs scores >= 0
    assert torch.equal(fitness.score(seeds), scores)  # deterministic
    ids = torch.tensor([0, fitness.num_examples - 1])
    assert torch.equal(fitness.score(seeds, ids), scores[:, ids])
    assert all(0 <= v <= 1 for v in fitness.metrics(seeds[0]).values())


def test_the_search_runs_on_the_tiny_models(tiny_seeds, tmp_path, monkeypatch):
    monkeypatch.chdir(HERE)
    out = tmp_path / "run"
    seeds = json.dumps(tiny_seeds)
    args = ["run", "search.yaml", "--out", str(out), "-q", "--set", "budget.evaluations=16",
            "--set", f"fitness.options.seeds={seeds}", "--set", "checkpoint_every=8"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluations"] == 16
    assert 0 <= summary["metrics"]["train_score"] <= 1
