"""M2N2 / GA ask-tell: determinism from explicit keys, batch semantics, archive rules."""

import os
from dataclasses import replace

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


# -- the examples of docs/strategy.md ----------------------------------------------------------
def _examples():
    from conftest import ROOT

    return ROOT / "docs" / "examples" / "strategy"


def test_the_strategy_docs_show_the_example_files_verbatim():
    import re

    text = (_examples().parent.parent / "strategy.md").read_text(encoding="utf-8")
    shown = re.findall(r"```python\n(.*?)```", text, re.S)
    for name in ("hill.py", "top_k.py", "run_mine.py"):
        assert (_examples() / name).read_text(encoding="utf-8") in shown, name


def test_the_documented_hill_climber_climbs_and_resumes(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    monkeypatch.syspath_prepend(str(_examples()))
    from hill import Hill, HillConfig

    target = torch.linspace(-1, 1, 8)

    def score(p):  # four examples, each closer to the target as p is
        return (-((p[:, None, :] - target) ** 2).sum(-1) * torch.tensor([1, 2, 3, 4])).float()

    def run(s, state, until):
        while state.evaluations < until:
            kids = s.ask(state, 3)
            assert kids.ids == tuple(range(state.next_id, state.next_id + 3))
            assert kids.parents == ((state.best.id, -1),) * 3
            state = s.tell(state, kids, score(kids.params))
        return state

    s = Hill(HillConfig(std=0.1), seed=4)
    seed = torch.zeros(1, 8)
    whole = run(s, s.init(seed, score(seed)), 300)
    assert whole.evaluations == 300 and whole.next_id == 301
    assert s.best(whole)[2].mean() > 0.5 * score(seed).mean()  # squared error more than halved
    part = run(s, s.init(seed, score(seed)), 150)
    tensors, meta = s.state_to_tensors(part)
    assert set(tensors) == {"best_genes", "best_scores"} and set(meta) == {
        "best_id",
        "evaluations",
        "next_id",
    }
    save_file(tensors, str(tmp_path / "state.safetensors"))
    fresh = Hill(HillConfig(std=0.1), seed=4)
    loaded = fresh.state_from_tensors(load_file(tmp_path / "state.safetensors"), meta)
    resumed = run(fresh, loaded, 300)
    assert s.best(whole)[0] == fresh.best(resumed)[0]
    assert torch.equal(s.best(whole)[1], fresh.best(resumed)[1])


def test_the_documented_top_k_archive_keeps_the_best(monkeypatch):
    monkeypatch.syspath_prepend(str(_examples()))
    from top_k import TopKConfig

    from evomerge.search.variation import VariationSearch

    s = VariationSearch(TopKConfig(archive_size=2), seed=0)
    state = s.init(torch.zeros(1, 3), torch.tensor([[0.5, 0.5]]))
    add = s.archive.add
    state, status = add(state, 1, torch.ones(3), torch.tensor([0.0, 0.0]))
    assert status is Status.NEW and state.ids == (0, 1)
    state, status = add(state, 2, torch.ones(3), torch.tensor([0.0, 0.0]))
    assert status is Status.NOT_KEPT and state.ids == (0, 1)  # no better than the worst
    state, status = add(state, 3, torch.ones(3), torch.tensor([1.0, 0.0]))
    assert status is Status.IMPROVED and state.ids == (0, 3)
    state = replace(state, next_id=4)  # ids 1-3 were used by hand
    kids = s.ask(state, 4)
    assert all(a in (0, 3) and b in (0, 3) for a, b in kids.parents)
    state = s.tell(state, kids, torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    assert state.ids == (4, 3) and state.evaluations == 4 and state.next_id == 8


def test_the_documented_launcher_runs_and_resumes_a_registered_strategy(tmp_path):
    """docs/strategy.md's launcher, as a user runs it: in its own process (the registrations
    stay there), a run stopped at 20 evaluations and resumed to 40 equals a 40 run."""
    import shutil
    import subprocess
    import sys

    import yaml
    from conftest import DIGITS, ROOT
    from test_search import assert_same_archive

    work = tmp_path / "mine"
    shutil.copytree(_examples(), work)
    cfg = {
        "seed": 0,
        "budget": {"evaluations": 40},
        "checkpoint_every": 20,
        "history_every": 20,
        "fitness": {"plugin": DIGITS},
        "seeds": {"kind": "gaussian", "count": 2, "std": 0.01},
        "strategy": {"name": "top_k", "archive_size": 4, "mutation_std": 0.01},
    }

    def launch(*args):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "run_mine.py", *args, "-q"], cwd=work, env=env, capture_output=True
        )
        assert done.returncode == 0, done.stderr.decode()

    (work / "whole.yaml").write_text(yaml.safe_dump(cfg))
    (work / "part.yaml").write_text(yaml.safe_dump({**cfg, "budget": {"evaluations": 20}}))
    launch("run", "whole.yaml", "--out", "whole")
    launch("run", "part.yaml", "--out", "part")
    raw = yaml.safe_load((work / "part" / "config.yaml").read_text())
    raw["budget"]["evaluations"] = 40
    (work / "part" / "config.yaml").write_text(yaml.safe_dump(raw))
    launch("resume", "part")
    assert_same_archive(work / "whole", work / "part")
    history = (work / "whole" / "history.jsonl").read_text().splitlines()
    assert '"evaluations": 40' in history[-1] and '"archive_size": 4' in history[-1]
