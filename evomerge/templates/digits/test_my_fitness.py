"""Checks that my_fitness.py keeps the plug-in contract and that a short search learns.

Run them with ``pytest`` in this folder after every change to the fitness.
"""

import json
from pathlib import Path

import torch

from evomerge.interface.cli import main
from my_fitness import MyFitness

HERE = Path(__file__).resolve().parent


def made():
    fitness = MyFitness()
    fitness.setup(torch.device("cpu"))
    return fitness


def test_scores_are_one_per_candidate_and_example_and_repeat():
    fitness = made()
    assert fitness.num_params > 0 and fitness.num_examples > 0
    params = torch.randn(3, fitness.num_params, generator=torch.Generator().manual_seed(0))
    scores = fitness.score(params)
    assert scores.shape == (3, fitness.num_examples)
    assert ((scores >= 0) & (scores <= 1)).all()  # resource competition needs scores >= 0
    assert torch.equal(fitness.score(params), scores)  # deterministic
    ids = torch.tensor([0, 5, 7])
    assert torch.equal(fitness.score(params, ids), scores[:, ids])  # a subset is the same
    assert torch.equal(fitness.score(params[1:2]), scores[1:2])  # independent of the batch
    assert set(fitness.metrics(params[0])) == {"test_accuracy"}


def test_a_short_search_beats_chance(tmp_path, monkeypatch):
    monkeypatch.chdir(HERE)
    out = tmp_path / "run"
    args = ["run", "search.yaml", "--out", str(out), "-q", "--set", "budget.evaluations=1500"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    classes = int(made().y.max()) + 1
    assert summary["metrics"]["train_accuracy"] > 2.0 / classes
