"""CMA-adaptive mutation and sep-CMA-ES: update rules by the numbers, and exact resumes."""

import math

import pytest
import torch

from evomerge.search import adaptive_mutation as am
from evomerge.search.m2n2 import M2N2, M2N2Config
from evomerge.search.sep_cmaes import SepCMAES, SepCMAESConfig, _Rates
from evomerge.spaces.genomes import LineageSpace
from evomerge.spaces.lineage import Lineage


def test_rank_mu_update_by_the_numbers():
    cfg = am.AdaptiveMutationConfig(sigma0=0.1, update_every=2, diagonal=False)
    state = am.initial(cfg, 2)
    assert torch.equal(state.cov, torch.eye(2, dtype=torch.float64))
    steps = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 3.0]])]
    state = am.update(cfg, state, steps[0], kept=True)
    assert state.count == 1 and torch.equal(state.cov, torch.eye(2, dtype=torch.float64))
    state = am.update(cfg, state, None, kept=False)  # a dropped child changes no covariance
    assert state.count == 1
    state = am.update(cfg, state, steps[1], kept=True)
    rate = am.c_mu(2, 2, diagonal=False)
    assert rate == pytest.approx(2 * (2 - 2 + 0.5) / (16 + 2))
    mean_outer = torch.tensor([[4.0, 0.0], [0.0, 0.0]]) + torch.tensor([[0.0, 0.0], [0.0, 5.0]])
    expected = (1 - rate) * torch.eye(2, dtype=torch.float64) + rate * mean_outer.double() / 2
    assert torch.allclose(state.cov, expected) and state.count == 0
    assert state.sigma == 0.1  # no success rule by default
    p = 0.0  # success smoothing: kept, dropped, kept
    for kept in (True, False, True):
        p = (11 / 12) * p + (1 / 12) * kept
    assert state.success == pytest.approx(p)


def test_success_rule_moves_sigma_by_its_formula():
    cfg = am.AdaptiveMutationConfig(sigma0=1.0, success_rule=True, damping=2.0)
    state = am.initial(cfg, 3)
    state = am.update(cfg, state, None, kept=False)
    t = 2 / 11
    assert state.sigma == pytest.approx(math.exp((0 - t) / (2.0 * (1 - t))))
    state = am.update(cfg, state, torch.ones(1, 3), kept=True)
    p = 1 / 12
    assert state.sigma == pytest.approx(
        math.exp((0 - t) / (2.0 * (1 - t))) * math.exp((p - t) / (2.0 * (1 - t)))
    )


def test_diagonal_for_long_vectors_and_samples_follow_the_covariance():
    cfg = am.AdaptiveMutationConfig()
    assert am.initial(cfg, 5000).diagonal and not am.initial(cfg, 10).diagonal
    state = am.MutationState(
        1.0, torch.tensor([[4.0, 1.0], [1.0, 1.0]], dtype=torch.float64), torch.zeros(2, 2), 0, 0
    )
    y = am.sample(state, 20000, torch.Generator().manual_seed(0))
    assert torch.allclose(torch.cov(y.T), state.cov, atol=0.1)


def test_lineage_children_stay_exact_mixes_and_the_state_round_trips():
    seeds = torch.randn(2, 50, generator=torch.Generator().manual_seed(0))
    space = LineageSpace.from_seeds(seeds)
    cfg = M2N2Config(archive_size=4, space="lineage", adaptive_mutation={"sigma0": 0.2})
    s = M2N2(cfg, seed=3)
    s.use_space(space)
    scores = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    state = s.init(space.seed_genomes(), scores)
    assert state.mutation.cov.shape == (2, 2)
    kids = s.ask(state, 3)
    for child, y in zip(kids.params, kids.steps, strict=True):
        assert isinstance(child, Lineage) and y.shape == (child.num_regions, 2)
    state = s.tell(state, kids, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    tensors, meta = s.state_to_tensors(state)
    again = s.state_from_tensors(tensors, meta)
    m, n = state.mutation, again.mutation
    assert torch.equal(m.cov, n.cov) and torch.equal(m.pending, n.pending)
    assert (m.sigma, m.count, m.success) == (n.sigma, n.count, n.success)
    a, b = s.ask(state, 2), s.ask(again, 2)
    assert all(x == y for x, y in zip(a.params, b.params, strict=True))


def test_keep_sum_steps_leave_every_region_coefficient_sum_unchanged():
    seeds = torch.randn(3, 60, generator=torch.Generator().manual_seed(1))
    space = LineageSpace.from_seeds(seeds)
    scores = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    sums = {}
    for keep in (False, True):
        cfg = M2N2Config(
            archive_size=4,
            space="lineage",
            crossover=False,  # a child is its parent plus the step: sums start at exactly 1
            adaptive_mutation={"sigma0": 0.3, "keep_sum": keep},
        )
        s = M2N2(cfg, seed=5)
        s.use_space(space)
        kids = s.ask(s.init(space.seed_genomes(), scores), 6)
        for y in kids.steps:
            row_sums = y.sum(dim=1)
            assert torch.allclose(row_sums, torch.zeros_like(row_sums), atol=1e-12) == keep
        sums[keep] = [torch.tensor(c.coeffs).sum(dim=1) for c in kids.params]
    assert all(torch.allclose(x, torch.ones_like(x), atol=1e-12) for x in sums[True])
    assert any((x - 1).abs().max() > 0.05 for x in sums[False])  # without it the sums wander


def test_sep_cmaes_rates_are_cmas_defaults():
    r = _Rates.of(19210, None)
    assert r.lam == 4 + int(3 * math.log(19210)) == 33
    assert len(r.weights) == 16 and r.weights.sum().item() == pytest.approx(1.0)
    assert r.chi_n == pytest.approx(math.sqrt(19210), rel=1e-4)


def ellipsoid(x: torch.Tensor) -> torch.Tensor:
    scale = torch.logspace(0, 3, x.shape[1], dtype=torch.float64)
    return -((x.double() ** 2) * scale).sum(dim=1, keepdim=True).float()


def test_sep_cmaes_solves_an_ill_conditioned_ellipsoid():
    s = SepCMAES(SepCMAESConfig(sigma0=0.5), seed=0)
    state = s.init(torch.full((2, 20), 3.0), ellipsoid(torch.full((2, 20), 3.0)))
    for _ in range(600):
        kids = s.ask(state, 1)
        state = s.tell(state, kids, ellipsoid(kids.params))
    assert state.best.scores.item() > -1e-6  # from -5e4: conditioning 1e3 learnt
    assert state.diag[-1] < state.diag[0] / 50  # the steep axes got small variances


def test_sep_cmaes_resume_is_bit_identical():
    x0 = torch.full((2, 30), 1.0)
    s = SepCMAES(SepCMAESConfig(), seed=5)
    state = s.init(x0, ellipsoid(x0))
    for g in range(40):
        if g == 20:
            tensors, meta = s.state_to_tensors(state)
            tensors = {k: v.clone() for k, v in tensors.items()}
            resumed = SepCMAES(SepCMAESConfig(), seed=5).state_from_tensors(tensors, dict(meta))
        kids = s.ask(state, 1)
        state = s.tell(state, kids, ellipsoid(kids.params))
    s2 = SepCMAES(SepCMAESConfig(), seed=5)
    for _ in range(20):
        kids = s2.ask(resumed, 1)
        resumed = s2.tell(resumed, kids, ellipsoid(kids.params))
    for name in ("mean", "diag", "path_c", "path_s"):
        assert torch.equal(getattr(state, name), getattr(resumed, name)), name
    assert state.sigma == resumed.sigma and state.best.id == resumed.best.id
    early = s.ask(s.init(x0, ellipsoid(x0)), 1)
    with pytest.raises(ValueError, match="whole generation"):
        s.tell(state, early, ellipsoid(early.params))
