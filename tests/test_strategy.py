"""M2N2 / GA ask-tell: determinism from explicit keys, batch semantics, archive rules."""

import pytest
import torch

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


def test_attraction_picks_a_partner_that_adds_to_parent_a():
    # Two members with disjoint solved sets, one that solves nothing new: B must add to A.
    s = M2N2(M2N2Config(archive_size=3, mutation_std=0.0), seed=1)
    params = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    scores = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1], [1.0, 0, 0, 0]])
    state = s.init(params, scores)
    for j in range(50):
        a, b = s._parents(state, (j + 0.5) / 50, 0.5)
        assert a != b
        gain = (state.scores[b] - state.scores[a]).clamp(min=0).sum()
        assert gain > 0


def test_attraction_falls_back_to_fitness_when_nobody_adds_anything():
    s = M2N2(M2N2Config(archive_size=3), seed=0)
    params = torch.randn(2, 4)
    state = s.init(params, torch.ones(2, 4))  # identical members: every g is zero
    for u in (0.1, 0.6, 0.99):
        a, b = s._parents(state, 0.3, u)
        assert b in (0, 1) and a in (0, 1)


def test_ga_has_no_competition_or_attraction_and_rejects_those_keys():
    cfg = GAConfig(archive_size=5)
    assert cfg.alpha == 0.0 and cfg.attraction is False
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
