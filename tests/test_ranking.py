"""Exact magnitude ranks by sampled selection, and block-size invariance of the operators."""

import numpy as np
import pytest
import torch

from evomerge.ops import op_support, ranking
from evomerge.ops.operators import get_merge_method


def reference_top(x: torch.Tensor, k: int) -> torch.Tensor:
    """x with all but its top-k magnitudes zeroed; ties by lower flat index (a stable sort)."""
    flat = x.reshape(-1).numpy()
    order = np.lexsort((np.arange(flat.size), -np.abs(flat)))  # by |x| desc, then index
    keep = np.zeros(flat.size, dtype=bool)
    keep[order[:k]] = True
    return torch.from_numpy(np.where(keep, flat, 0.0).astype(flat.dtype))


def cuts_for(x: torch.Tensor, ks, block: int):
    flat = x.reshape(-1)

    def blocks():
        for start in range(0, flat.numel(), block):
            yield start, flat[start : start + block].abs()

    return ranking.rank_cuts(blocks, flat.numel(), ks, lambda idx: flat[idx].abs())


def apply_cut(cut, x: torch.Tensor, block: int) -> torch.Tensor:
    flat = x.reshape(-1)
    return torch.cat([cut.keep(s, flat[s : s + block]) for s in range(0, flat.numel(), block)])


@pytest.fixture
def tiny_limits(monkeypatch):
    """Force the sampled-bracket path on small tensors."""
    monkeypatch.setattr(ranking, "SMALL", 16)
    monkeypatch.setattr(ranking, "SAMPLE", 64)


@pytest.mark.parametrize("path", ["whole", "bracket", "fallback"])
def test_rank_cut_equals_a_stable_sort_with_heavy_ties(path, monkeypatch):
    if path != "whole":
        monkeypatch.setattr(ranking, "SMALL", 16)
        monkeypatch.setattr(ranking, "SAMPLE", 64)
    if path == "fallback":  # a sample that brackets nothing: selection over all entries
        monkeypatch.setattr(ranking, "_bracketed", lambda *a: {})
    gen = torch.Generator().manual_seed(3)
    # few distinct magnitudes, both signs, zeros: ties everywhere (as bf16 deltas have)
    x = (torch.randint(-6, 7, (2000,), generator=gen) * 0.25).float()
    ks = [1, 7, 333, 1000, 1500, 1999]
    for block in (1, 13, 2000):
        cuts = cuts_for(x, ks, block)
        for k in ks:
            assert torch.equal(apply_cut(cuts[k], x, block), reference_top(x, k)), (k, block)


def test_rank_cut_extremes(tiny_limits):
    x = torch.linspace(-1, 1, 101)
    cuts = cuts_for(x, [0, 101, 200], 10)
    assert torch.equal(apply_cut(cuts[0], x, 10), torch.zeros(101))
    assert torch.equal(apply_cut(cuts[101], x, 10), x)
    assert torch.equal(apply_cut(cuts[200], x, 10), x)


def test_rank_cut_float64_distinct_values(tiny_limits):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(777, generator=gen, dtype=torch.float64)
    cuts = cuts_for(x, [400], 50)
    assert torch.equal(apply_cut(cuts[400], x, 50), reference_top(x, 400))


CASES = [
    ("linear", [{"weight": 0.3}, {"weight": 0.9}], {}),
    ("task_arithmetic", [{"weight": 0.5}, {"weight": -0.7}], {"lambda": 1.3}),
    ("ties", [{"weight": 0.6, "density": 0.3}, {"weight": 0.8, "density": 0.55}], {}),
    ("ties", [{"weight": 0.6, "density": 0.3}, {"weight": 0.8, "density": 0.5}], {"rescale": True}),
    ("breadcrumbs", [{"weight": 1.0, "density": 0.6, "gamma": 0.05}] * 2, {}),
    ("breadcrumbs_ties", [{"weight": 0.5, "density": 0.7, "gamma": 0.1}] * 2, {"normalize": True}),
    ("dare_ties", [{"weight": 0.5, "density": 0.4}, {"weight": 0.5, "density": 0.9}], {}),
    ("dare_linear", [{"weight": 0.5, "density": 0.4}, {"weight": 0.5, "density": 0.0}], {}),
]


@pytest.mark.parametrize("name,model_params,params", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocks_do_not_change_the_merge(name, model_params, params, dtype, monkeypatch):
    """The fused block pass gives the same tensor for any block size (bf16: heavy ties)."""
    gen = torch.Generator().manual_seed(11)
    base = torch.randn(3001, generator=gen).to(dtype)
    models = [(base.float() + 0.1 * torch.randn(3001, generator=gen)).to(dtype) for _ in range(2)]
    method = get_merge_method(name)
    whole = method(base, models, model_params, params, torch.Generator().manual_seed(1))
    monkeypatch.setattr(op_support, "BLOCK", 7)
    monkeypatch.setattr(ranking, "SMALL", 32)
    monkeypatch.setattr(ranking, "SAMPLE", 128)
    blocked = method(base, models, model_params, params, torch.Generator().manual_seed(1))
    if params.get("rescale"):  # the L1 norms are summed block by block: last-bit differences
        torch.testing.assert_close(blocked, whole, rtol=1e-6, atol=1e-7)
    else:
        assert torch.equal(blocked, whole)


def test_ties_matches_a_sort_based_reference_on_a_large_bf16_tensor():
    """Against a plain implementation of the docstring's convention, by sorting, at 300k."""
    gen = torch.Generator().manual_seed(2)
    n = 300_000
    base = torch.randn(n, generator=gen).bfloat16()
    models = [(base.float() + 0.02 * torch.randn(n, generator=gen)).bfloat16() for _ in range(2)]
    w, dens = [0.7, 0.4], [0.35, 0.6]
    got = get_merge_method("ties")(
        base, models, [{"weight": w[i], "density": dens[i]} for i in range(2)], {}
    )
    b = base.float()
    taus = [reference_top(m.float() - b, int(dens[i] * n)) * w[i] for i, m in enumerate(models)]
    total = taus[0] + taus[1]
    positive = total >= 0
    agree = [torch.where(positive, t > 0, t < 0) for t in taus]
    mixed = sum(torch.where(a, t, 0.0) for a, t in zip(agree, taus, strict=True))
    divisor = sum(a.float() * wi for a, wi in zip(agree, w, strict=True))
    divisor[divisor == 0] = 1.0
    expected = (b + mixed / divisor).bfloat16()
    assert torch.equal(got, expected)
