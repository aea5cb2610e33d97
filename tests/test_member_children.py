"""Dense children sent to workers as recipes over archive members: built from a recipe, a
child is bit for bit the child the driver makes itself, and a worker's replica gets each
member's genome once."""

import pytest
import torch
from conftest import base_config
from test_search import assert_same_archive

from evomerge.interface.cli import main
from evomerge.search.m2n2 import M2N2Config
from evomerge.search.variation import VariationSearch
from evomerge.spaces.dense import DenseSpace
from evomerge.spaces.member_children import MemberReplica, MemberRows

N, E = 257, 30
PRETRAINED_SEEDS = {"kind": "plugin", "count": 2}


def filled_state(search, seed=0):
    """An archive of 6 members with varied scores (children told from two seeds)."""
    gen = torch.Generator().manual_seed(seed)
    seeds = torch.randn(2, N, generator=gen)
    state = search.init(seeds, (torch.rand(2, E, generator=gen) > 0.5).float())
    for _ in range(4):
        children = search.ask(state, 4)
        scores = (torch.rand(len(children.ids), E, generator=gen) > 0.4).float()
        state = search.tell(state, children, scores)
    return state


@pytest.mark.parametrize(
    "variation",
    [
        {"mutation_std": 0.01},
        {"mutation_std": 0.0},
        {"split_point": False, "mutation_std": 0.02},
        {"crossover": False, "mutation_std": 0.01},
    ],
)
def test_children_from_recipes_are_the_drivers_children(variation):
    cfg = M2N2Config(archive_size=6, **variation)
    eager = VariationSearch(cfg, seed=3)
    eager.use_space(DenseSpace())
    state = filled_state(eager)
    deferred = VariationSearch(cfg, seed=3)
    space = DenseSpace()
    space.defers_children = True
    deferred.use_space(space)
    want = eager.ask(state, 8)
    got = deferred.ask(state, 8)
    assert isinstance(got.params, MemberRows)
    assert got.ids == want.ids and got.parents == want.parents
    assert torch.equal(got.params.materialise(), want.params)
    # the same archive after the tell, whichever way the children were made
    scores = (torch.rand(8, E, generator=torch.Generator().manual_seed(9)) > 0.3).float()
    a, b = eager.tell(state, want, scores), deferred.tell(state, got, scores)
    assert a.ids == b.ids
    assert all(torch.equal(x, y) for x, y in zip(a.params, b.params, strict=True) if x is not None)


def test_a_replica_gets_each_genome_once_and_drops_members_that_left():
    cfg = M2N2Config(archive_size=6, mutation_std=0.01)
    search = VariationSearch(cfg, seed=1)
    space = DenseSpace()
    space.defers_children = True
    search.use_space(space)
    state = filled_state(search, seed=2)
    rows = search.ask(state, 8).params
    replica, held = MemberReplica(), set()
    first = rows.payload(held)
    assert set(first["genomes"]) == rows.parents()
    assert replica.missing({**first, "genomes": {}}) == sorted(rows.parents())
    built = replica.rows(first)
    assert torch.equal(torch.from_numpy(built), rows.materialise())
    held |= rows.parents()
    assert rows.payload(held)["genomes"] == {}  # nothing sent twice
    # a member that leaves the archive leaves the replica
    gone = next(iter(rows.parents()))
    kept = {m: g for m, g in rows.members.items() if m != gone}
    later = MemberRows((), kept).payload(held)
    replica.update(later)
    assert gone not in replica.members and set(replica.members) <= set(kept)


@pytest.mark.parametrize(
    "strategy, evaluation",
    [
        ({"name": "map_elites", "descriptors": ["even", "odd"], "cells": 3}, None),
        ({"name": "pareto", "objectives": ["0-4", "5-9"], "archive_size": 4}, None),
        ({"name": "m2n2", "archive_size": 4}, {"schedule": "race", "first_stage": 64}),
    ],
    ids=["map_elites", "pareto", "m2n2-raced"],
)
def test_archives_searched_on_ray_from_recipes_equal_local(
    tmp_path, write_config, ray_local, strategy, evaluation
):
    """Children sent as recipes (Ray) give every archive the members the driver's own
    children give it (local), raced batches included (a narrowed batch stays recipes)."""
    common = dict(
        budget={"evaluations": 48}, batch=8, seeds=PRETRAINED_SEEDS,
        strategy={**strategy, "mutation_std": 0.01},
        **({"evaluation": evaluation} if evaluation else {}),
    )  # fmt: skip
    local = write_config(base_config(**common), "local.yaml")
    ray = write_config(base_config(**common, evaluator={"kind": "ray", "workers": 2}), "ray.yaml")
    assert main(["run", str(local), "--out", str(tmp_path / "local"), "-q"]) == 0
    assert main(["run", str(ray), "--out", str(tmp_path / "ray"), "-q"]) == 0
    assert_same_archive(tmp_path / "local", tmp_path / "ray")
