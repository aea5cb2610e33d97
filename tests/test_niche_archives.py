"""MAP-Elites, the Pareto archive, diversity: their rules on hand-made score matrices."""

import json

import pytest
import torch

from evomerge.core.errors import EvomergeError
from evomerge.search.archives import Status
from evomerge.search.diversity import diversity
from evomerge.search.m2n2 import Children
from evomerge.search.niche_archives import (
    MapElites,
    MapElitesConfig,
    Pareto,
    ParetoConfig,
    crowding,
    dominates,
)

GROUPS = {"even": [0, 1], "odd": [2, 3], "all": [0, 1, 2, 3]}


def map_elites(**kw):
    return MapElites(MapElitesConfig(descriptors=["even", "odd"], cells=2, **kw), 0, GROUPS)


def pareto(size=3):
    return Pareto(ParetoConfig(objectives=["even", "odd"], archive_size=size), 0, GROUPS)


def params(n):
    return torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 5)


def tell_rows(strategy, state, rows):
    rows = torch.tensor(rows, dtype=torch.float32)
    ids = tuple(range(state.next_id, state.next_id + len(rows)))
    kids = Children(params(len(rows)) + 10, ids, ((0, 0),) * len(rows))
    return strategy.tell(state, kids, rows)


def test_map_elites_places_by_descriptor_and_keeps_the_better_occupant():
    s = map_elites()
    assert s.config.archive_size == s.archive.size == 4
    # even = mean of examples 0-1, odd = mean of 2-3; cells split [0, 1] at 0.5
    assert s.archive.cell(torch.tensor([0.0, 0.0, 0.0, 0.0])) == 0
    assert s.archive.cell(torch.tensor([1.0, 0.0, 0.0, 0.0])) == 2  # even 0.5 -> upper half
    assert s.archive.cell(torch.tensor([0.0, 0.0, 1.0, 1.0])) == 1
    assert s.archive.cell(torch.tensor([1.0, 1.0, 1.0, 1.0])) == 3  # the top edge is in the grid
    state = s.init(params(2), torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    assert state.ids == (0, -1, -1, 1)
    state = tell_rows(
        s,
        state,
        [
            [0.0, 0.0, 1.0, 0.0],  # even 0, odd 0.5: cell 1, empty: placed
            [0.0, 0.0, 0.0, 0.0],  # cell 0, not better than the occupant: dropped
            [1.0, 1.0, 0.0, 0.0],  # cell 2, empty: placed
            [1.0, 1.0, 1.0, 0.0],  # cell 3, worse than the seed there: dropped
        ],
    )
    assert state.ids == (0, 2, 4, 1)
    assert state.evaluations == 4
    stats = s.stats(state)
    assert stats["coverage"] == 1.0 and stats["archive_size"] == 4


def test_map_elites_parents_come_from_filled_cells_only():
    s = map_elites()
    state = s.init(params(2), torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    for u in (0.0, 0.3, 0.49, 0.5, 0.99):
        a, b = s.archive.sample_parents(state, u, 0.999 - u)
        assert state.ids[a] >= 0 and state.ids[b] >= 0


def test_unknown_groups_are_named():
    cfg = MapElitesConfig(descriptors=["even", "prime"])
    with pytest.raises(EvomergeError, match="strategy.descriptors: no example group 'prime'"):
        MapElites(cfg, seed=0, groups=GROUPS)
    with pytest.raises(EvomergeError, match="the plug-in defines no example_groups()"):
        MapElites(cfg, seed=0, groups={})
    # Without groups (an export reads the archive): only scoring by group needs them.
    s = MapElites(cfg, seed=0)
    with pytest.raises(EvomergeError, match="map_elites: example groups were never given"):
        s.archive.cell(torch.zeros(4))


def test_niche_archives_say_what_became_of_a_child():
    s, row = map_elites(), torch.zeros(5)
    state = s.init(params(1), torch.tensor([[0.0, 0.0, 0.0, 0.0]]))  # cell 0
    state, status = s.archive.add(state, 1, row, torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert status is Status.NEW and state.ids == (0, 1, -1, -1)  # cell 1 was empty
    state, status = s.archive.add(state, 2, row, torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert status is Status.NOT_KEPT and state.ids == (0, 1, -1, -1)  # a tie: occupant stays
    state, status = s.archive.add(state, 3, row, torch.tensor([0.0, 0.2, 1.0, 0.4]))
    assert status is Status.IMPROVED and state.ids == (0, 3, -1, -1)  # mean 0.4 > 0.25

    p = pareto(size=3)
    state = p.init(params(1), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))  # (0.5, 0)
    state, status = p.archive.add(state, 1, row, torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert status is Status.NEW and state.ids == (0, 1, -1)  # (0, 0.5) extends the front
    state, status = p.archive.add(state, 2, row, torch.tensor([0.0, 0.0, 0.0, 0.0]))
    assert status is Status.NOT_KEPT and state.ids == (0, 1, -1)  # dominated
    state, status = p.archive.add(state, 3, row, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert status is Status.IMPROVED and state.ids == (3, -1, -1)  # dominates both


def test_dominance_and_crowding_distance():
    a = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    assert dominates(a, torch.tensor([0.5, 0.5])).tolist() == [True, False, False]
    assert dominates(torch.tensor([0.5, 0.5]), a).tolist() == [False, False, False]
    objs = torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0], [0.4, 0.7]], dtype=torch.float64)
    # objective 0 sorted 0, .4, .5, 1; objective 1 sorted 0, .5, .7, 1 (spans 1)
    assert crowding(objs).tolist() == pytest.approx([float("inf"), 1.3, float("inf"), 1.0])


def test_pareto_archive_keeps_the_non_dominated_set():
    s = pareto(size=3)
    state = s.init(params(2), torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]))
    assert state.ids == (0, 1, -1)  # (0.5, 0) and (0, 0.5): neither dominates
    state = tell_rows(
        s,
        state,
        [
            [0.0, 0.0, 0.0, 0.0],  # (0, 0): dominated by both, dropped
            [1.0, 0.0, 1.0, 0.0],  # (0.5, 0.5): dominates both seeds, which leave
            [1.0, 1.0, 0.0, 0.0],  # (1, 0): non-dominated, joins
        ],
    )
    assert sorted(i for i in state.ids if i >= 0) == [3, 4]
    assert s.stats(state)["front_size"] == 2
    state = tell_rows(
        s,
        state,
        [
            [0.0, 0.0, 1.0, 1.0],  # (0, 1): joins, the archive is full
            [1.0, 0.0, 1.0, 1.0],  # (0.5, 1): dominates (0, 1) and (0.5, 0.5): they leave
        ],
    )
    objs = s.archive.groups.scores(state.scores[[i for i, m in enumerate(state.ids) if m >= 0]])
    assert sorted(map(tuple, objs.tolist())) == [(0.5, 1.0), (1.0, 0.0)]


def test_pareto_drops_the_most_crowded_when_full():
    s = pareto(size=3)
    rows = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0]])
    state = s.init(params(3), rows)  # (1, 0), (0, 1), (0.5, 0.5)
    state = tell_rows(s, state, [[1.0, 1.0, 0.0, 1.0]])  # (1, 0.5): dominates (1, 0)
    assert 0 not in state.ids and 3 in state.ids
    # one example per objective, to place members anywhere
    s2 = Pareto(ParetoConfig(objectives=["a", "b"], archive_size=3), 0, {"a": [0], "b": [1]})
    seeds = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.2, 0.5]])
    state = s2.init(params(3), seeds)
    # crowding with (0.1, 0.55): boundaries inf, (0.2, 0.5) 0.9 + 0.55, the child 0.2 + 0.5
    state = tell_rows(s2, state, [[0.1, 0.55]])
    assert state.ids == (0, 1, 2)  # the child is the most crowded: the archive is unchanged
    # with (0.6, 0.45): (0.2, 0.5) 0.6 + 0.55, the child 0.8 + 0.5: (0.2, 0.5) goes
    state = tell_rows(s2, state, [[0.6, 0.45]])
    assert state.ids == (0, 1, 4)


def test_diversity_on_a_hand_made_matrix():
    s = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    d = diversity(s)
    # pairs: (0,1) differ on 2 of 4, (0,2) on 1, (1,2) on 1 -> mean 4/12
    assert d["disagreement"] == pytest.approx(1 / 3)
    assert d["occupancy"] == 0.75  # example 3 is solved by nobody
    assert d["owners"] == 2  # members 0 and 1 each alone solve one example; member 2 none
    assert diversity(s[:1]) == {"disagreement": 0.0, "occupancy": 0.5, "owners": 1}


NEW_CONFIGS = [
    "map_elites_digits.yaml",
    "pareto_digits_pretrained.yaml",
    "sep_cmaes_digits.yaml",
    "m2n2_digits_adaptive.yaml",
    "m2n2_digits_lineage_adaptive.yaml",
]


@pytest.mark.parametrize("name", NEW_CONFIGS)
def test_each_config_runs_and_resumes_exactly(tmp_path, name):
    """Stop at 100 evaluations, raise the budget, resume to 240: the same as one 240 run."""
    import yaml
    from conftest import ROOT
    from safetensors.torch import load_file

    from evomerge.interface.cli import main
    from evomerge.run import checkpoint

    cfg = ROOT / "configs" / name
    sets = ["--set", "checkpoint_every=60", "--set", "history_every=60", "-q"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert (
        main(["run", str(cfg), "--out", str(whole), "--set", "budget.evaluations=240", *sets]) == 0
    )
    assert (
        main(["run", str(cfg), "--out", str(part), "--set", "budget.evaluations=100", *sets]) == 0
    )
    raw = yaml.safe_load((part / "config.yaml").read_text())
    raw["budget"]["evaluations"] = 240
    (part / "config.yaml").write_text(yaml.safe_dump(raw))
    assert main(["resume", str(part), "-q"]) == 0

    def last(run):
        return load_file(checkpoint.list_checkpoints(run / "checkpoints")[-1] / "state.safetensors")

    a, b = last(whole), last(part)
    assert a.keys() == b.keys()
    for k in a:  # bit for bit (empty MAP-Elites cells are NaN in the report's grid)
        assert a[k].dtype == b[k].dtype and torch.allclose(a[k], b[k], 0, 0, equal_nan=True), k
    history = [json.loads(x) for x in (whole / "history.jsonl").read_text().splitlines()]
    assert history[-1]["best_train_score"] > history[0]["best_train_score"]
    if "map_elites" in name:
        assert 0 < history[-1]["coverage"] <= 1
    if "pareto" in name:
        assert history[-1]["front_size"] >= 1
    if "sep_cmaes" not in name:
        assert set(history[-1]["diversity"]) == {"disagreement", "occupancy", "owners"}
