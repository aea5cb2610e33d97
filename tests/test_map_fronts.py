"""MAP (quadratic surrogates, NSGA-II on them, verified fronts): the surrogate fit recovers a
known quadratic, NSGA-II finds a known biobjective front, the strategy's verified archive lies on
the true front of a quadratic problem, and a resumed run makes the same children."""

from __future__ import annotations

import pytest
import torch

from evomerge.search.codec import decode, encode
from evomerge.search.nsga2 import front_ranks, nsga2, survivors
from evomerge.search.registry import STRATEGIES
from evomerge.search.surrogate import fit_quadratic, num_terms, predict, quadratic_features
from evomerge.search.surrogate_fronts import MapConfig, MapState, SurrogateFronts
from evomerge.spaces.vectors import VectorGenomes


def test_quadratic_features_by_hand():
    x = torch.tensor([[2.0, 3.0]])
    # [1, c1, c2, c1^2, c1 c2, c2^2]
    assert quadratic_features(x).tolist() == [[1.0, 2.0, 3.0, 4.0, 6.0, 9.0]]
    assert num_terms(2) == 6 and num_terms(3) == 10


def test_fit_recovers_a_known_quadratic_exactly():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, generator=gen, dtype=torch.float64)
    c1, c2, c3 = x.T
    y = torch.stack(
        [
            1.5
            - 2 * c1
            + 0.5 * c3
            + 3 * c1 * c2
            - c3**2,  # [1, c1, c2, c3, 11, 12, 13, 22, 23, 33]
            -((c1 - 0.25) ** 2) + c2 * c3,
        ],
        dim=1,
    )
    coef = fit_quadratic(x, y)
    want0 = [1.5, -2.0, 0.0, 0.5, 0.0, 3.0, 0.0, 0.0, 0.0, -1.0]
    want1 = [-0.0625, 0.5, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    torch.testing.assert_close(
        coef[:, 0], torch.tensor(want0, dtype=torch.float64), atol=1e-10, rtol=0
    )
    torch.testing.assert_close(
        coef[:, 1], torch.tensor(want1, dtype=torch.float64), atol=1e-10, rtol=0
    )
    z = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(predict(coef, z)[:, 1], -((z[:, 0] - 0.25) ** 2) + z[:, 1] * z[:, 2])
    with pytest.raises(ValueError, match="10 terms; 9 points"):
        fit_quadratic(x[:9], y[:9])


def test_front_ranks_and_survivors_by_hand():
    objs = torch.tensor([[3.0, 1.0], [1.0, 3.0], [2.0, 2.0], [1.0, 1.0], [0.0, 0.0], [2.0, 1.0]])
    assert front_ranks(objs).tolist() == [0, 0, 0, 2, 3, 1]
    # 4 survivors: the whole first front, then the only member of the second
    assert sorted(survivors(objs, 4).tolist()) == [0, 1, 2, 5]
    # 2 of the first front: the boundary rows (infinite crowding) before the middle one
    assert sorted(survivors(objs, 2).tolist()) == [0, 1]


def test_nsga2_finds_a_known_biobjective_front():
    """max -(x1^2 + x2^2) and -((x1 - 1)^2 + x2^2): the front is x2 = 0, x1 in [0, 1]."""

    def f(x):
        return torch.stack(
            [-(x[:, 0] ** 2 + x[:, 1] ** 2), -((x[:, 0] - 1) ** 2 + x[:, 1] ** 2)], dim=1
        )

    gen = torch.Generator().manual_seed(0)
    x, objs = nsga2(f, 2, (-2.0, 2.0), 40, 60, gen)
    assert len(x) >= 30  # the population has converged onto the front
    # a point (x1, x2) is dominated by (x1, 0), better by x2^2 on both objectives: every
    # member is within 0.015 of the true front (uniform points in the box: up to 4)
    assert (x[:, 1] ** 2).max() < 0.015
    assert x[:, 0].min() > -0.05 and x[:, 0].max() < 1.05
    assert x[:, 0].min() < 0.1 and x[:, 0].max() > 0.9  # and spreads along all of it
    torch.testing.assert_close(objs, f(x))
    again = nsga2(f, 2, (-2.0, 2.0), 40, 60, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], x)  # one generator, one answer


A = torch.tensor([0.2, 0.3], dtype=torch.float64)
B = torch.tensor([0.8, 0.7], dtype=torch.float64)


def _scores(params: torch.Tensor) -> torch.Tensor:
    """Two examples, one per objective group: quadratic bowls peaking at A and at B."""
    p = params.double()
    return torch.stack(
        [1 - ((p - A) ** 2).sum(dim=1), 1 - ((p - B) ** 2).sum(dim=1)], dim=1
    ).float()


def _strategy(**over):
    opts = {"samples": 8, "population": 32, "generations": 30, **over}
    cfg = MapConfig(objectives=["a", "b"], **opts)
    s = SurrogateFronts(cfg, seed=3, groups={"a": [0], "b": [1]})
    s.use_space(VectorGenomes())
    return s


def _run(strategy, state, steps, batch=4):
    for _ in range(steps):
        children = strategy.ask(state, batch)
        state = strategy.tell(state, children, _scores(children.params))
    return state


def test_map_verifies_the_true_front_of_a_quadratic_problem():
    s = _strategy()
    seed = torch.tensor([[0.9, 0.1]])
    state = s.init(seed, _scores(seed))
    state = _run(s, state, 2)  # the 8 uniform samples
    assert state.evaluations == 8
    sampled = state.archive
    state = _run(s, state, 3)  # three rounds of verified surrogate fronts
    assert state.evaluations == 20
    # the verified members lie on the segment A-B (the true Pareto set), up to NSGA-II's
    # precision on the surrogate (which here is exact): a member off it by d is worse than its
    # projection by d^2 on both objectives (uniform points in the box: d up to ~0.5)
    members = torch.stack([state.archive.params[i] for i in state.archive.filled]).double()
    t = ((members - A) @ (B - A)) / ((B - A) @ (B - A))
    off = members - (A + t[:, None] * (B - A))
    assert off.norm(dim=1).max() < 0.1 and off.norm(dim=1).median() < 0.02
    assert len(state.archive.filled) >= 8
    # better than the samples alone: each objective's best rises, and the best mean too
    before = s.groups.scores(sampled.scores[sampled.filled]).max(dim=0).values
    after = s.groups.scores(state.archive.scores[state.archive.filled]).max(dim=0).values
    assert bool((after > before).all())
    assert state.best.mean > float(_scores(seed).double().mean())
    assert s.stats(state)["front_size"] == len(state.archive.filled)


def test_map_resume_is_identical():
    s = _strategy()
    seed = torch.tensor([[0.5, 0.5]])
    state = _run(s, s.init(seed, _scores(seed)), 3)  # past the samples: surrogate phase
    tensors, meta = encode(state, s.codec_context())
    tensors = {k: v.clone() for k, v in tensors.items()}
    resumed = decode(MapState, tensors, meta, s.codec_context())
    fresh = _strategy()  # a new object, as after a restart
    a, b = _run(s, state, 2), _run(fresh, resumed, 2)
    assert torch.equal(a.points, b.points) and torch.equal(a.point_objectives, b.point_objectives)
    assert a.archive.ids == b.archive.ids and a.best.id == b.best.id
    # and the strategy's own checkpoint (with the report's views beside the state) round-trips
    t2, m2 = s.state_to_tensors(a)
    assert "objectives" in t2  # the report's front plot
    back = s.state_from_tensors(t2, m2)
    assert torch.equal(back.points, a.points) and back.archive.ids == a.archive.ids
    assert torch.equal(back.point_objectives, a.point_objectives)
    assert torch.equal(back.archive.scores, a.archive.scores)
    c, d = _run(s, a, 1), _run(fresh, back, 1)
    assert torch.equal(c.points, d.points)


def test_map_is_registered_and_checks_its_samples():
    entry = STRATEGIES.get("map")
    assert entry.config is MapConfig and entry.takes_groups
    s = _strategy(samples=2)
    seed = torch.zeros(1, 3)
    with pytest.raises(Exception, match="set samples >= 9"):
        s.init(seed, torch.zeros(1, 2))
    with pytest.raises(Exception, match="at most 64 genes"):
        s.init(torch.zeros(1, 65), torch.zeros(1, 2))


def test_map_digits_config_improves_on_its_start_and_resumes_exactly(tmp_path):
    """configs/map_digits_recipe.yaml (shortened: 30-step experts, 16 samples, 1 round of 8):
    the reported member beats the recipe's starting genes, and a run stopped after the samples
    and resumed ends with the same checkpoint as one run straight through."""
    import json

    import yaml
    from conftest import ROOT
    from safetensors.torch import load_file

    from evomerge.interface.cli import main
    from evomerge.run import checkpoint

    cfg = ROOT / "configs" / "map_digits_recipe.yaml"
    sets = [
        "--set",
        "seeds.options={shared_init: true, include_base: true, steps: 30, lr: 0.003}",
        "--set",
        "strategy.samples=16",
        "--set",
        "checkpoint_every=8",
        "--set",
        "history_every=8",
        "-q",
    ]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert (
        main(["run", str(cfg), "--out", str(whole), "--set", "budget.evaluations=24", *sets]) == 0
    )
    assert main(["run", str(cfg), "--out", str(part), "--set", "budget.evaluations=16", *sets]) == 0
    raw = yaml.safe_load((part / "config.yaml").read_text())
    raw["budget"]["evaluations"] = 24
    (part / "config.yaml").write_text(yaml.safe_dump(raw))
    assert main(["resume", str(part), "-q"]) == 0

    def last(run):
        return load_file(checkpoint.list_checkpoints(run / "checkpoints")[-1] / "state.safetensors")

    a, b = last(whole), last(part)
    assert a.keys() == b.keys() and len(a["points"]) == 1 + 24
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    history = [json.loads(x) for x in (whole / "history.jsonl").read_text().splitlines()]
    start = a["point_objectives"][0].mean().item()  # the recipe's initial genes (the seed row)
    assert history[-1]["best_train_score"] > start + 0.01
    assert history[-1]["front_size"] >= 2
