"""M2N2 / GA ask-tell: determinism from explicit keys, batch semantics, archive rules."""

import pytest
import torch

from evomerge.search.archives import Status
from evomerge.search.m2n2 import M2N2, GAConfig, M2N2Config


def small_state(strategy, n=6):
    params = torch.randn(3, n, generator=torch.Generator().manual_seed(0))
    scores = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 0]])
    return strategy.init(params, scores)


def test_init_inserts_seeds_by_the_replacement_rule():
    s = M2N2(M2N2Config(archive_size=4), seed=0)
    state = small_state(s)
    assert state.ids == (0, 1, 2, -1)
    assert state.params[3] is None and state.next_id == 3 and state.evaluations == 0
    assert state.scores[3].sum() == 0


def test_ask_is_a_pure_function_of_seed_and_state():
    s = M2N2(M2N2Config(archive_size=4, mutation_std=0.01), seed=7)
    state = small_state(s)
    a, b = s.ask(state, 3), s.ask(state, 3)
    assert torch.equal(a.params, b.params) and a.parents == b.parents
    assert a.ids == (3, 4, 5)
    other = M2N2(M2N2Config(archive_size=4, mutation_std=0.01), seed=8).ask(state, 3)
    assert not torch.equal(a.params, other.params)
    # child i of a batch uses key (seed, evaluations + i): the first equals a batch of one
    assert torch.equal(s.ask(state, 1).params[0], a.params[0])


def test_tell_inserts_in_order_and_does_not_modify_the_old_state():
    s = M2N2(M2N2Config(archive_size=3), seed=0)
    state = small_state(s)
    before = state.scores.clone()
    children = s.ask(state, 2)
    # child 3 solves examples 0-2 (better than all), child 4 solves nothing
    scores = torch.tensor([[1.0, 1, 1, 0], [0, 0, 0, 0]])
    new = s.tell(state, children, scores)
    assert torch.equal(state.scores, before)
    assert new.evaluations == 2 and new.next_id == 5
    assert 3 in new.ids and 4 not in new.ids
    row = new.ids.index(3)
    assert torch.equal(new.scores[row], scores[0])
    assert torch.equal(new.params[row], children.params[0])


def sweep(draw, n=1200):
    """How often each row is drawn over ``n`` evenly spaced uniform numbers (inverse CDF:
    each count is within 1 of ``n`` times the row's probability)."""
    counts = [0, 0, 0]
    for j in range(n):
        counts[draw((j + 0.5) / n)] += 1
    return [c / n for c in counts]


def test_parents_follow_fitness_and_attraction_exactly():
    # Columns sums 2, 1, 1, 1: 1/z = (0.5, 1, 1, 1). Fitness f = S @ (1/z) = (1.5, 2, 0.5).
    # Attraction g(A, B) = sum_j max(0, s_Bj - s_Aj) / z_j:
    #   A=0: g = (0, 2, 0)        -> B is member 1
    #   A=1: g = (1.5, 0, 0.5)    -> B is 0 with 3/4, 2 with 1/4
    #   A=2: g = (1, 2, 0)        -> B is 0 with 1/3, 1 with 2/3
    s = M2N2(M2N2Config(archive_size=3, mutation_std=0.0), seed=1)
    params = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    scores = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1], [1.0, 0, 0, 0]])
    state = s.init(params, scores)
    assert state.ids == (0, 1, 2)
    sample = s.archive.sample_parents
    tol = 1 / 1200
    assert sweep(lambda u: sample(state, u, 0.5)[0]) == pytest.approx([0.375, 0.5, 0.125], abs=tol)
    a_of = {0: 0.1, 1: 0.5, 2: 0.95}  # u_a that picks each A (cumulative 0.375, 0.875, 1)
    expected_b = {0: [0, 1, 0], 1: [0.75, 0, 0.25], 2: [1 / 3, 2 / 3, 0]}
    for a, u_a in a_of.items():
        assert sample(state, u_a, 0.5)[0] == a
        got = sweep(lambda u, u_a=u_a: sample(state, u_a, u)[1])
        assert got == pytest.approx(expected_b[a], abs=tol), a
    # Without attraction B follows fitness, like A.
    plain = M2N2(M2N2Config(archive_size=3, attraction=False), seed=1)
    got = sweep(lambda u: plain.archive.sample_parents(state, 0.1, u)[1])
    assert got == pytest.approx([0.375, 0.5, 0.125], abs=tol)


def test_attraction_falls_back_to_fitness_when_nobody_adds_anything():
    s = M2N2(M2N2Config(archive_size=3), seed=0)
    params = torch.randn(2, 4)
    state = s.init(params, torch.tensor([[1.0, 1, 0, 0], [1.0, 1, 0, 0]]))
    # identical members: every g is zero; fitness 1 each, so B is uniform over the two
    got = sweep(lambda u: s.archive.sample_parents(state, 0.3, u)[1])
    assert got == pytest.approx([0.5, 0.5, 0.0], abs=1 / 1200)


def test_competition_archive_says_what_became_of_a_child():
    s = M2N2(M2N2Config(archive_size=2), seed=0)
    state = s.init(torch.randn(1, 3), torch.tensor([[1.0, 0, 0]]))
    add = s.archive.add
    state, status = add(state, 5, torch.ones(3), torch.tensor([0.0, 1, 0]))
    assert status is Status.NEW and state.ids == (0, 5)
    state, status = add(state, 6, torch.ones(3), torch.tensor([0.0, 0, 0]))
    assert status is Status.NOT_KEPT and state.ids == (0, 5) and not status
    state, status = add(state, 7, torch.ones(3), torch.tensor([1.0, 1, 1]))
    assert status is Status.IMPROVED and 7 in state.ids


def test_ga_has_no_competition_or_attraction_and_rejects_those_keys():
    s = M2N2(GAConfig(archive_size=5), seed=0)
    assert s.archive.alpha == 0.0 and s.archive.attraction is False
    assert s.needs_nonnegative_scores is False
    assert M2N2(M2N2Config(), seed=0).needs_nonnegative_scores is True
    assert M2N2(M2N2Config(alpha=0.0), seed=0).needs_nonnegative_scores is False
    with pytest.raises(ValueError):
        GAConfig(alpha=1.0)


def test_checkpoint_tensors_round_trip():
    s = M2N2(M2N2Config(archive_size=4, mutation_std=0.01), seed=3)
    state = small_state(s)
    state = s.tell(state, s.ask(state, 2), torch.rand(2, 4).round())
    tensors, meta = s.state_to_tensors(state)
    back = s.state_from_tensors(tensors, meta)
    assert back.ids == state.ids and back.evaluations == state.evaluations
    assert torch.equal(back.scores, state.scores)
    assert torch.equal(s.ask(back, 2).params, s.ask(state, 2).params)
