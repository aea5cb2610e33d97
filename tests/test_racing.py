"""Exact racing (evaluation.schedule: race) and the example-evaluation count.

Racing must leave the search where full scoring leaves it (bit for bit) at fewer example
evaluations; each strategy's "can it still matter" answer must be sound for every score vector
in the box it is asked about.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CMAES_RECIPE, DIGITS, PLUGINS, base_config, whole_and_resumed
from test_search import assert_same_archive, final_state

from evomerge.interface.cli import main
from evomerge.search import competition
from evomerge.search.archives import (
    CompetitionArchive,
    ExampleGroups,
    GridArchive,
    ParetoArchive,
    Status,
    empty_state,
)
from evomerge.search.racing import rank_isolated, stage_sizes

RACE = {"schedule": "race", "first_stage": 32, "max_stage": 256}
PRETRAINED = {"kind": "plugin", "count": 2, "options": {"experts": [[0, 1, 2, 3, 4],
                                                                    [5, 6, 7, 8, 9]],
                                                        "steps": 10, "lr": 0.003}}  # fmt: skip


def summary(run):
    return json.loads((run / "summary.json").read_text())


def run_both(tmp_path, write_config, cfg: dict, name: str):
    """The same config scored fully and raced; both run directories."""
    full, race = tmp_path / f"{name}-full", tmp_path / f"{name}-race"
    assert main(["run", str(write_config(cfg, f"{name}.yaml")), "--out", str(full), "-q"]) == 0
    raced = write_config({**cfg, "evaluation": RACE}, f"{name}-race.yaml")
    assert main(["run", str(raced), "--out", str(race), "-q"]) == 0
    return full, race


def assert_same_state(full, race):
    """Bit for bit (empty MAP-Elites cells are NaN in the report's grid)."""
    a, b = final_state(full), final_state(race)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.allclose(a[k], b[k], 0, 0, equal_nan=True), k


def assert_same_result_cheaper(full, race, strictly=True):
    assert_same_state(full, race)
    a, b = summary(full), summary(race)
    assert (a["member"], a["metrics"], a["evaluations"]) == (
        b["member"],
        b["metrics"],
        b["evaluations"],
    )
    e = a["example_evaluations"]
    assert e == a["evaluations"] * 1437  # full scoring: every child on every example
    assert b["example_evaluations"] < e if strictly else b["example_evaluations"] <= e
    return b["example_evaluations"] / e


@pytest.mark.parametrize(
    "space,batch", [("dense", 1), ("lineage", 3)], ids=["dense", "lineage-batch3"]
)
def test_m2n2_raced_is_bit_identical_and_cheaper(tmp_path, write_config, space, batch):
    cfg = base_config(
        budget={"evaluations": 60},
        batch=batch,
        checkpoint_every=30,
        history_every=20,
        seeds=PRETRAINED,
        strategy={"name": "m2n2", "archive_size": 4, "space": space},
    )
    full, race = run_both(tmp_path, write_config, cfg, space)
    assert_same_result_cheaper(full, race)
    history = [json.loads(x) for x in (race / "history.jsonl").read_text().splitlines()]
    spent = [h["example_evaluations"] for h in history]
    assert (
        spent[0] == 0
        and spent == sorted(spent)
        and spent[-1] == summary(race)["example_evaluations"]
    )


def test_map_elites_raced_is_bit_identical_and_cheaper(tmp_path, write_config):
    cfg = base_config(
        budget={"evaluations": 50},
        checkpoint_every=25,
        strategy={"name": "map_elites", "descriptors": ["even", "odd"], "cells": 3,
                  "mutation_std": 0.01},
    )  # fmt: skip
    full, race = run_both(tmp_path, write_config, cfg, "me")
    assert_same_result_cheaper(full, race)


def test_cmaes_recipe_raced_asks_the_same_generations(tmp_path, write_config):
    """CMA-ES: a child stops only once its rank is settled, so the ES asks the same
    solutions every generation and keeps the same best; the objective it recorded for a
    stopped child is its best case (not compared)."""
    cfg = base_config(**CMAES_RECIPE, checkpoint_every=16)
    full, race = tmp_path / "full", tmp_path / "race"
    assert main(["run", str(write_config(cfg, "c.yaml")), "--out", str(full), "-q"]) == 0
    raced = write_config({**cfg, "evaluation": RACE}, "cr.yaml")
    assert main(["run", str(raced), "--out", str(race), "-q"]) == 0
    a, b = final_state(full), final_state(race)
    for k in ("x0", "solutions", "best_genes", "best_scores"):
        assert a[k].equal(b[k]), k
    sa, sb = summary(full), summary(race)
    assert (sa["member"], sa["metrics"]) == (sb["member"], sb["metrics"])
    assert sb["example_evaluations"] <= sa["example_evaluations"] == 32 * 1437


def test_raced_resume_is_bit_identical(tmp_path, write_config):
    cfg = base_config(
        budget={"evaluations": 50},
        checkpoint_every=20,
        seeds=PRETRAINED,
        strategy={"name": "m2n2", "archive_size": 4},
        evaluation=RACE,
    )
    whole, cut = whole_and_resumed(cfg, 30, tmp_path, write_config)
    assert_same_archive(whole, cut)
    a, b = summary(whole), summary(cut)
    assert a["example_evaluations"] == b["example_evaluations"] < 50 * 1437
    assert a["member"] == b["member"]
    from evomerge.interface.report import load_run, summary_rows

    assert summary_rows([load_run(cut)])[0]["example_evaluations"] == b["example_evaluations"]


def test_example_budget_stops_the_run(tmp_path, write_config, capsys):
    cfg = base_config(budget={"example_evaluations": 20 * 1437}, strategy={"name": "m2n2",
                      "archive_size": 4, "mutation_std": 0.01})  # fmt: skip
    out = tmp_path / "run"
    assert main(["run", str(write_config(cfg)), "--out", str(out), "-q"]) == 0
    s = summary(out)
    assert s["evaluations"] == 20 and s["example_evaluations"] == 20 * 1437
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "28740/28740 example evaluations" in text


def test_racing_refuses_unbounded_scores_in_one_line(tmp_path, write_config, capsys):
    plugin = tmp_path / "unbounded.py"
    plugin.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(DIGITS.rsplit('/', 1)[0])!r})\n"
        "from digits import Digits\n"
        "class Unbounded(Digits):\n"
        "    score_range = None\n"
    )
    cfg = base_config(fitness={"plugin": f"{plugin}:Unbounded"}, evaluation=RACE)
    out = tmp_path / "run"
    assert main(["run", str(write_config(cfg)), "--out", str(out), "-q"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("evomerge: error")]
    assert len(err) == 1 and "score_range" in err[0] and not out.exists()


def test_stages_cover_every_example_once():
    sizes = stage_sizes(1437, 64, 2.0, None)
    assert sum(sizes) == 1437 and sizes[:2] == [64, 90] and max(sizes) == 90
    assert stage_sizes(10, 4, 1.0, 100) == [4, 4, 2]


# -- soundness of the answers, on random boxes -----------------------------------------------


def random_box(gen, e, p=0.6):
    """A box around a 0/1 score vector (each 1 with probability ``p``): most examples known,
    the rest anywhere in [0, 1]."""
    s = (torch.rand(e, generator=gen) < p).float()
    known = torch.rand(e, generator=gen) < 0.6 + 0.4 * torch.rand(1, generator=gen)
    low = torch.where(known, s, torch.zeros(e))
    high = torch.where(known, s, torch.ones(e))
    return s, low, high


def filled(archive, gen, e, count):
    state = empty_state(archive.size, e)
    for i in range(count):
        state, _ = archive.add(state, i, None, (torch.rand(e, generator=gen) < 0.6).float())
    return state


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_a_child_surely_worst_is_dropped_for_any_scores_in_its_box(alpha):
    gen = torch.Generator().manual_seed(1)
    archive, sure = CompetitionArchive(6, alpha, True), 0
    for _ in range(300):
        state = filled(archive, gen, 40, 6)
        s, low, high = random_box(gen, 40, p=0.35)
        if not archive.can_matter(state, low, high):
            sure += 1
            for v in (s, high, low + (high - low) * torch.rand(40, generator=gen).round()):
                assert competition.worst_index(state.scores, v, alpha) == 6
    assert sure > 20  # the check said "no" often enough to be tested


def test_grid_and_pareto_answers_are_sound():
    gen = torch.Generator().manual_seed(2)
    groups = {"a": list(range(0, 20)), "b": list(range(20, 40))}
    grid = GridArchive(ExampleGroups("t", "d", ["a", "b"], groups), 3, (0.0, 1.0))
    pareto = ParetoArchive(ExampleGroups("t", "o", ["a", "b"], groups), 6)
    for archive in (grid, pareto):
        sure = 0
        for _ in range(300):
            state = filled(archive, gen, 40, 12)
            s, low, high = random_box(gen, 40)
            if not archive.can_matter(state, low, high):
                sure += 1
                for v in (s, high):
                    new, status = archive.add(state, 99, None, v)
                    assert status == Status.NOT_KEPT and new.ids == state.ids
                    assert new.scores.equal(state.scores)
        assert sure > 20, type(archive).__name__


def test_rank_isolation():
    lo, hi = torch.tensor([0.1, 0.5, 0.52]), torch.tensor([0.2, 0.6, 0.7])
    assert rank_isolated(0, lo, hi) and not rank_isolated(1, lo, hi)


def test_stages_score_the_same_on_ray_workers_and_locally(ray_local):
    """A stage (a subset of the examples) scores on the Ray pool as in one local full pass."""
    from evomerge.runtime.local import LocalEvaluator
    from evomerge.runtime.ray_pool import RayEvaluator

    params = torch.randn(5, 19_210, generator=torch.Generator().manual_seed(3)) * 0.05
    ids = torch.randperm(1437, generator=torch.Generator().manual_seed(4))[:90]
    local = LocalEvaluator(DIGITS, {})
    pool = RayEvaluator(DIGITS, {}, workers=2, num_cpus=1)
    try:
        full = local.score(params)
        assert torch.equal(local.score(params, example_ids=ids), full[:, ids])
        assert torch.equal(pool.score(params, example_ids=ids), full[:, ids])
    finally:
        pool.close()


def test_the_progress_line_counts_example_evaluations():
    import io

    from evomerge.interface.progress import Progress

    out = io.StringIO()
    progress = Progress(stream=out, interval=0)
    progress.start(10, 0, "local evaluator")
    progress.update(10, 0.5, examples=14370)
    assert "10/10 evaluations (100%)" in out.getvalue()
    assert "14370 examples scored" in out.getvalue()
    only = io.StringIO()
    progress = Progress(stream=only, interval=0)
    progress.start(1000, 0, "local evaluator", unit="example evaluations")
    progress.update(1000, 0.5, examples=1000)
    assert "1000/1000 example evaluations (100%)" in only.getvalue()


@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "ga", "archive_size": 4},
        {"name": "pareto", "objectives": ["0-4", "5-9"], "archive_size": 4},
    ],
    ids=["ga", "pareto"],
)
def test_ga_and_pareto_raced_are_bit_identical(tmp_path, write_config, strategy):
    cfg = base_config(
        budget={"evaluations": 60}, checkpoint_every=30, seeds=PRETRAINED, strategy=strategy
    )
    full, race = run_both(tmp_path, write_config, cfg, strategy["name"])
    assert_same_result_cheaper(full, race)


SPACES = {
    "lineage": dict(space="lineage", strategy={"name": "m2n2", "archive_size": 3,
                                                "mutation_std": 0.0}),
    "recipe": dict(recipe={"method": "linear", "genes": {"weight": {"low": 0.0, "high": 1.0}}},
                   strategy={"name": "m2n2", "archive_size": 3, "mutation_std": 0.1}),
}  # fmt: skip


@pytest.mark.parametrize("space", sorted(SPACES))
def test_a_child_is_written_into_the_model_once_for_all_its_stages(space, tmp_path, write_config):
    """Lineage and recipe workers write one candidate into the plug-in's model: racing runs
    each child through its stages before the next, and the worker keeps the child written, so
    a raced child costs one write as under full scoring, not one per stage."""

    def run(name, evaluation):
        log = tmp_path / f"{name}.log"
        cfg = base_config(
            fitness={"plugin": str(PLUGINS / "bad.py:CountsWrites"), "options": {"log": str(log)}},
            seeds={"kind": "plugin", "count": 2}, batch=4,
            budget={"evaluations": 24}, history_every=24, checkpoint_every=24, **SPACES[space],
        )  # fmt: skip
        if evaluation:
            cfg["evaluation"] = evaluation
        out = tmp_path / name
        assert main(["run", str(write_config(cfg, f"{name}.yaml")), "--out", str(out), "-q"]) == 0
        lines = log.read_text().split()
        return lines.count("write"), lines.count("score"), out

    full_writes, full_calls, full = run("full", None)
    race = {"schedule": "race", "first_stage": 2, "growth": 1.0, "max_stage": 2}
    writes, calls, raced = run("race", race)
    assert calls > full_calls  # three stages a child: more scoring calls ...
    assert writes == full_writes  # ... but each child written once
    assert_same_archive(full, raced)
    # order: stage (for a pool of workers) writes a child once a stage, the result the same
    stage_writes, _, by_stage = run("stage", {**race, "order": "stage"})
    assert stage_writes > 2 * full_writes
    assert_same_archive(full, by_stage)
