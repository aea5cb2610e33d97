"""Checks that my_fitness.py keeps the plug-in contract and that the merge beats its parts.

Run them with ``pytest`` in this folder after every change to the fitness or the experts.
"""

import json
from pathlib import Path

import pytest
import torch

from evomerge.interface.cli import main
from my_fitness import MyFitness

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def fitness():
    made = MyFitness()
    made.setup(torch.device("cpu"))
    return made


def test_scores_are_one_per_candidate_and_example_and_repeat(fitness):
    params = torch.randn(3, fitness.num_params, generator=torch.Generator().manual_seed(0))
    scores = fitness.score(params)
    assert scores.shape == (3, fitness.num_examples)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert torch.equal(fitness.score(params), scores)
    ids = torch.tensor([0, 5, 7])
    assert torch.equal(fitness.score(params, ids), scores[:, ids])
    sizes = [torch.Size(shape).numel() for _, shape in fitness.param_layout()]
    assert sum(sizes) == fitness.num_params  # the layout covers the whole vector


def test_a_short_recipe_search_beats_every_seed(fitness, tmp_path, monkeypatch):
    seeds = fitness.make_seeds(3, seed=0)
    assert seeds.shape == (3, fitness.num_params)
    best_seed = fitness.score(seeds).mean(dim=1).max().item()
    monkeypatch.chdir(HERE)
    out = tmp_path / "run"
    args = ["run", "search.yaml", "--out", str(out), "-q", "--set", "budget.evaluations=80"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["train_accuracy"] > best_seed + 0.05
