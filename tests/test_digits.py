"""The digits fitness reproduces the reference task: split, model size, flattening order."""

import sys

import pytest
import torch
from conftest import ROOT

from evomerge.core.plugins import load_object

# loaded as users name it (a file plug-in), not by putting fitness/ on sys.path
Digits = load_object(f"{ROOT / 'fitness' / 'digits.py'}:Digits")
digits = sys.modules[Digits.__module__]


@pytest.fixture(scope="module")
def fit():
    f = Digits()
    f.setup(torch.device("cpu"))
    return f


def test_split_and_sizes(fit):
    assert fit.num_examples == 1437 and len(fit.y_test) == 360
    assert fit.num_params == 19_210
    assert float(fit.x_train.max()) == 16.0  # raw pixel values, not normalised


def test_flattening_matches_torch_linear_transposed(fit):
    torch.manual_seed(0)
    l1, l2 = torch.nn.Linear(64, 256), torch.nn.Linear(256, 10)
    flat = torch.cat([l1.weight.T.reshape(-1), l1.bias, l2.weight.T.reshape(-1), l2.bias])
    with torch.no_grad():
        expected = l2(torch.relu(l1(fit.x_train))).argmax(1) == fit.y_train
        got = fit.score(flat[None].detach())
    assert torch.equal(got[0], expected.float())
    ref_logits = digits.logits(flat[None].detach(), fit.x_train)[0]
    assert torch.allclose(ref_logits, l2(torch.relu(l1(fit.x_train))).detach(), atol=1e-4)


def test_scores_do_not_depend_on_the_batch(fit):
    p = torch.randn(5, fit.num_params, generator=torch.Generator().manual_seed(2)) * 0.05
    together = fit.score(p)
    alone = torch.cat([fit.score(p[i : i + 1]) for i in range(5)])
    assert torch.equal(together, alone)
    ids = torch.tensor([3, 1, 400])
    assert torch.equal(fit.score(p, ids), together[:, ids])


def test_pretrained_experts_each_know_their_half(fit):
    seeds = fit.make_seeds(2, seed=0)
    low = fit.y_train < 5
    s = fit.score(seeds)
    assert s[0, low].mean() > 0.9 and s[0, ~low].mean() < 0.1
    assert s[1, ~low].mean() > 0.9 and s[1, low].mean() < 0.1
    assert torch.equal(seeds, fit.make_seeds(2, seed=5))  # fixed by init_seed, not the run seed
