"""CMA-ES and random search: they search, they are seeded, and they resume bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from evomerge.search.cmaes import CMAES, CMAESConfig
from evomerge.search.random_search import RandomConfig, RandomSearch
from evomerge.search.registry import STRATEGIES, make_strategy

D = 6
_g = torch.Generator().manual_seed(0)
# Four examples whose optima sit close together: the best recipe is a sharp compromise.
CENTRES = 0.3 + 0.4 * torch.rand(1, D, generator=_g, dtype=torch.float64)
CENTRES = CENTRES + 0.05 * torch.randn(4, D, generator=_g, dtype=torch.float64)


def score(params: torch.Tensor, centres: torch.Tensor = CENTRES) -> torch.Tensor:
    """Per-example scores (B, E): a Gaussian bump around each example's centre."""
    dist = ((params.double()[:, None, :] - centres[None]) ** 2).sum(-1)
    return torch.exp(-10 * dist).float()


def start(strategy, dim: int = D, fn=score):
    x0 = torch.full((1, dim), 0.5)
    return strategy.init(x0, fn(x0))


def run(strategy, state, evaluations: int, fn=score):
    while state.evaluations < evaluations:
        children = strategy.ask(state, 1)
        state = strategy.tell(state, children, fn(children.params))
    return state


def generations(strategy, state, count: int, fn=score):
    for _ in range(count):
        children = strategy.ask(state, 1)
        state = strategy.tell(state, children, fn(children.params))
    return state


def assert_same_state(strategy_a, a, strategy_b, b):
    ta, ma = strategy_a.state_to_tensors(a)
    tb, mb = strategy_b.state_to_tensors(b)
    assert ma == mb and ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k


def checkpoint_round_trip(strategy, state, path):
    """Through a real safetensors file into a brand-new strategy object."""
    tensors, meta = strategy.state_to_tensors(state)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    fresh = type(strategy)(strategy.config, strategy.seed)
    return fresh, fresh.state_from_tensors(load_file(str(path)), meta)


def best_mean(strategy, state) -> float:
    return strategy.best(state)[2].mean().item()


# -- search quality --------------------------------------------------------------------------
def test_cmaes_improves_and_beats_random_search_at_the_same_budget():
    init = score(torch.full((1, D), 0.5)).mean().item()
    cma, rnd = [], []
    for seed in range(3):
        s = CMAES(CMAESConfig(), seed)
        cma.append(best_mean(s, run(s, start(s), 300)))
        r = RandomSearch(RandomConfig(), seed)
        rnd.append(best_mean(r, run(r, start(r), 300)))
    assert min(cma) > init + 0.3  # about 0.39 -> 0.92 (the optimum is about 0.93)
    assert sum(cma) / 3 > sum(rnd) / 3 + 0.1


def test_ask_returns_one_whole_generation_whatever_n():
    s = CMAES(CMAESConfig(), 0)
    state = start(s)
    lam = 4 + int(3 * np.log(D))  # pycma's default popsize
    for n in (1, 3, 50):
        children = s.ask(state, n)
        assert children.params.shape == (lam, D) and children.params.dtype == torch.float32
    assert children.ids == tuple(range(1, 1 + lam)) and children.parents[0] == (-1, -1)
    assert len(CMAES(CMAESConfig(popsize=5), 0).ask(state, 1).ids) == 5


# -- determinism ----------------------------------------------------------------------------
def test_same_seed_same_search_and_other_seed_another():
    a, b, c = CMAES(CMAESConfig(), 3), CMAES(CMAESConfig(), 3), CMAES(CMAESConfig(), 4)
    sa, sb, sc = (generations(s, start(s), 6) for s in (a, b, c))
    assert_same_state(a, sa, b, sb)
    assert not torch.equal(
        a.state_to_tensors(sa)[0]["solutions"], c.state_to_tensors(sc)[0]["solutions"]
    )


def test_ask_is_pure_and_tell_leaves_the_old_state_alone():
    s = CMAES(CMAESConfig(), 0)
    state = generations(s, start(s), 2)
    before = {k: v.clone() for k, v in s.state_to_tensors(state)[0].items()}
    children = s.ask(state, 1)
    assert torch.equal(children.params, s.ask(state, 1).params)
    new = s.tell(state, children, score(children.params))
    assert new.evaluations == state.evaluations + len(children.ids)
    for k, v in s.state_to_tensors(state)[0].items():
        assert torch.equal(v, before[k]), k
    # The old state is still usable after the cache has moved on (replay), and gives the same.
    again = s.tell(state, s.ask(state, 1), score(children.params))
    assert_same_state(s, new, s, again)


def test_tell_refuses_children_from_another_state():
    s = CMAES(CMAESConfig(), 0)
    state = start(s)
    later = generations(s, state, 1)
    children = s.ask(later, 1)
    with pytest.raises(ValueError, match="whole generation"):
        s.tell(state, children, score(children.params))


def test_numpy_global_rng_is_left_as_it_was():
    np.random.seed(123)
    expected = np.random.rand(3)
    np.random.seed(123)
    s = CMAES(CMAESConfig(), 0)
    generations(s, start(s), 3)
    assert np.array_equal(np.random.rand(3), expected)


# -- resume ---------------------------------------------------------------------------------
def test_resume_from_a_safetensors_checkpoint_is_bit_identical(tmp_path):
    cfg = CMAESConfig(popsize=7)
    whole = CMAES(cfg, 11)
    expected = generations(whole, start(whole), 12)
    first = CMAES(cfg, 11)
    part = generations(first, start(first), 5)
    fresh, loaded = checkpoint_round_trip(first, part, tmp_path / "state.safetensors")
    assert_same_state(first, part, fresh, loaded)
    resumed = generations(fresh, loaded, 7)
    assert_same_state(whole, expected, fresh, resumed)
    assert fresh.best(resumed)[0] == whole.best(expected)[0]
    assert fresh.stats(resumed) == whole.stats(expected)


def test_resume_at_the_start_and_unbounded(tmp_path):
    cfg = CMAESConfig(bounds=None, sigma0=0.5)
    whole = CMAES(cfg, 2)
    expected = generations(whole, start(whole), 4)
    s = CMAES(cfg, 2)
    fresh, loaded = checkpoint_round_trip(s, start(s), tmp_path / "state.safetensors")
    assert_same_state(whole, expected, fresh, generations(fresh, loaded, 4))


def test_a_checkpoint_from_another_search_is_refused(tmp_path):
    s = CMAES(CMAESConfig(), 0)
    state = generations(s, start(s), 3)
    tensors, meta = s.state_to_tensors(state)
    tensors = dict(tensors, solutions=tensors["solutions"].clone())
    tensors["solutions"][-1, 0] += 1e-12  # one bit of the last generation
    fresh = CMAES(CMAESConfig(), 0)
    with pytest.raises(RuntimeError, match="pycma version or strategy config"):
        fresh.ask(fresh.state_from_tensors(tensors, meta), 1)
    other_seed = CMAES(CMAESConfig(), 1)
    with pytest.raises(RuntimeError, match="generation 0"):
        other_seed.ask(other_seed.state_from_tensors(*s.state_to_tensors(state)), 1)


def test_random_search_resume_is_bit_identical(tmp_path):
    whole = RandomSearch(RandomConfig(), 5)
    expected = run(whole, start(whole), 60)
    first = RandomSearch(RandomConfig(), 5)
    part = run(first, start(first), 25)
    fresh, loaded = checkpoint_round_trip(first, part, tmp_path / "state.safetensors")
    resumed = run(fresh, loaded, 60)
    assert_same_state(whole, expected, fresh, resumed)
    assert whole.stats(expected)["archive_size"] == 1


def test_random_candidate_i_depends_only_on_seed_and_index():
    s = RandomSearch(RandomConfig(bounds=(-2.0, 3.0)), 9)
    state = start(s)
    batch = s.ask(state, 4).params
    one_by_one = []
    for _ in range(4):
        children = s.ask(state, 1)
        one_by_one.append(children.params[0])
        state = s.tell(state, children, score(children.params))
    assert torch.equal(batch, torch.stack(one_by_one))
    assert bool((batch >= -2).all() and (batch <= 3).all())
    assert batch.min() < 0 and batch.max() > 1  # the whole box, not [0, 1]


def test_a_nan_score_never_becomes_the_best():
    for s in (CMAES(CMAESConfig(), 0), RandomSearch(RandomConfig(), 0)):
        state = s.init(torch.full((1, D), 0.5), torch.zeros(1, 4))
        children = s.ask(state, 4)
        scores = score(children.params) + 1
        scores[0, 0] = float("nan")
        state = s.tell(state, children, scores)
        member, _, best_scores = s.best(state)
        assert member != children.ids[0] and not best_scores.isnan().any()
        state = generations(s, state, 2)  # pycma copes with the nan it was told


# -- bounds, high dimension, files ----------------------------------------------------------
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-0.5, 0.3)])
def test_candidates_stay_inside_the_bounds(bounds):
    s = CMAES(CMAESConfig(sigma0=2.0, bounds=bounds), 0)  # a step far wider than the box
    state = start(s)
    low, high = bounds
    for _ in range(15):
        children = s.ask(state, 1)
        p = children.params
        assert bool((p >= low).all() and (p <= high).all())
        state = s.tell(state, children, score(p))
    touched = torch.cat(state.solutions)
    assert touched.min() < low + 0.01 or touched.max() > high - 0.01  # the bounds did bite


def test_diagonal_cmaes_in_200_dimensions():
    dim = 200
    target = torch.linspace(0.2, 0.8, dim, dtype=torch.float64)

    def fn(p):  # three examples, each caring about a third of the genes
        err = (p.double() - target) ** 2
        return torch.stack([-c.sum(1) for c in err.chunk(3, dim=1)], dim=1).float()

    s = CMAES(CMAESConfig(diagonal=True, sigma0=0.1), 0)
    state = start(s, dim, fn)
    init = best_mean(s, state)
    state = generations(s, state, 40, fn)
    assert state.evaluations == 40 * (4 + int(3 * np.log(dim)))
    assert best_mean(s, state) > init / 2  # squared error more than halved
    assert s._live.es.opts["CMA_diagonal"] is True  # separable: no D x D covariance


def test_pycma_writes_nothing_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = CMAES(CMAESConfig(), 0)
    state = generations(s, start(s), 5)
    fresh = CMAES(CMAESConfig(), 0)
    generations(fresh, fresh.state_from_tensors(*s.state_to_tensors(state)), 2)  # replay too
    assert list(tmp_path.iterdir()) == []


# -- views, registry, config ----------------------------------------------------------------
def test_best_and_stats_cover_the_last_generation_and_the_best():
    s = CMAES(CMAESConfig(popsize=6), 0)
    state = s.init(torch.full((1, D), 0.5), torch.zeros(1, 4))  # a seed every child beats
    assert s.best(state)[0] == 0 and s.stats(state)["archive_size"] == 1
    state = generations(s, state, 3)
    member, genes, scores = s.best(state)
    assert 1 <= member < state.next_id == 1 + 18 and genes.shape == (D,)
    assert torch.equal(score(genes[None])[0], scores)  # the genes that were scored
    stats = s.stats(state)
    assert stats["archive_size"] == 7
    assert stats["train_score"]["max"] == scores.mean().item()
    assert set(stats["fitness"]) == {"min", "mean", "max"}


def test_registered_under_their_names():
    assert STRATEGIES["cmaes"].config is CMAESConfig
    assert STRATEGIES["random"].config is RandomConfig
    assert isinstance(make_strategy(CMAESConfig.model_validate({"name": "cmaes"}), 0), CMAES)
    assert isinstance(make_strategy(RandomConfig(), 0), RandomSearch)
    cfg = CMAESConfig.model_validate({"name": "cmaes", "bounds": [0, 2], "popsize": 8})
    assert cfg.bounds == (0.0, 2.0) and cfg.diagonal is False
    assert make_strategy(cfg, 0).needs_nonnegative_scores is False  # any real score will do
    assert cfg.model_dump(mode="json")["bounds"] == [0.0, 2.0]


@pytest.mark.parametrize(
    "raw",
    [
        {"sigma": 0.3},
        {"sigma0": 0},
        {"sigma0": -1},
        {"bounds": [1, 1]},
        {"bounds": [1, 0]},
        {"bounds": [0, float("inf")]},
        {"popsize": 1},
        {"name": "random"},
    ],
)
def test_bad_cmaes_configs_are_refused(raw):
    with pytest.raises(ValidationError):
        CMAESConfig.model_validate(raw)


@pytest.mark.parametrize("raw", [{"sigma0": 0.3}, {"bounds": [0.5, 0.5]}, {"bounds": None}])
def test_bad_random_configs_are_refused(raw):
    with pytest.raises(ValidationError):
        RandomConfig.model_validate(raw)
