"""Approximate racing (evaluation: {schedule: race, mode: approximate, delta}): the unscored
examples bounded by a confidence interval from the scores seen, so fewer examples are scored
than in exact mode, a smaller delta never scores fewer, a stopped child is told its observed
mean, and a resume is bit-identical.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import CMAES_RECIPE, base_config, whole_and_resumed
from test_racing import PRETRAINED, summary
from test_search import assert_same_archive, final_state

from evomerge.interface.cli import main
from evomerge.run import loop
from evomerge.run.config import validate
from evomerge.run.rundir import RunDir
from evomerge.search.base import Children
from evomerge.search.confidence import (
    KAPPA,
    bernstein_serfling,
    hoeffding_serfling,
    mean_radius,
    rest_interval,
    rho,
)
from evomerge.search.schedules import EvaluationSection, make_schedule

RACE = {"schedule": "race", "first_stage": 32, "max_stage": 256}


def approximate(delta: float) -> dict:
    return {**RACE, "mode": "approximate", "delta": delta}


def run(tmp_path, write_config, cfg: dict, name: str):
    out = tmp_path / name
    assert main(["run", str(write_config(cfg, f"{name}.yaml")), "--out", str(out), "-q"]) == 0
    return out


# -- the bound, by hand ------------------------------------------------------------------------


def test_finite_population_factor():
    assert rho(4, 10) == pytest.approx(1 - 3 / 10)  # n <= N/2: 1 - (n - 1)/N
    assert rho(8, 10) == pytest.approx((1 - 8 / 10) * (1 + 1 / 8))  # above: (1 - n/N)(1 + 1/n)
    assert rho(10, 10) == 0.0  # the whole population seen


def test_small_sample_takes_the_hoeffding_serfling_radius():
    """[1, 0, 1, 1] of N = 10 in [0, 1], failure 0.2 (each side of each bound 0.05)."""
    known = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    hs = math.sqrt(0.7 * math.log(1 / 0.05) / 8)  # R sqrt(rho log(1/d) / 2n) = 0.5120
    std = math.sqrt(0.1875)  # 1/n normalisation: mean 0.75
    eb = std * math.sqrt(2 * 0.7 * math.log(100) / 4) + KAPPA * math.log(100) / 4  # 5.68
    assert hoeffding_serfling(4, 10, 1.0, 0.05) == pytest.approx(hs)
    assert float(bernstein_serfling(torch.tensor([std]), 4, 10, 1.0, 0.05)) == pytest.approx(eb)
    assert float(mean_radius(known, 10, 1.0, 0.2)) == pytest.approx(min(hs, eb))
    lo, hi = rest_interval(known, 10, 0.0, 1.0, 0.2)
    # the rest's mean: 0.75 -+ 0.512 * 10 / 6 = 0.75 -+ 0.853, clipped to [0, 1]
    assert float(lo) == 0.0 and float(hi) == 1.0


def test_large_quiet_sample_takes_the_bernstein_radius():
    """1000 of 10000 scores with sample std 0.1 (half at 0.4, half at 0.6), failure 0.05."""
    known = torch.tensor([[0.4, 0.6] * 500])
    d = 0.05 / 4
    eb = 0.1 * math.sqrt(2 * (1 - 999 / 10000) * math.log(5 / d) / 1000)
    eb += (7 / 3 + 3 / math.sqrt(2)) * math.log(5 / d) / 1000  # 0.0104 + 0.0267
    hs = math.sqrt((1 - 999 / 10000) * math.log(1 / d) / 2000)  # 0.0444
    assert eb < hs
    assert float(mean_radius(known, 10000, 1.0, 0.05)) == pytest.approx(eb)
    lo, hi = rest_interval(known, 10000, 0.0, 1.0, 0.05)
    assert float(lo) == pytest.approx(0.5 - eb * 10000 / 9000)
    assert float(hi) == pytest.approx(0.5 + eb * 10000 / 9000)
    lo, hi = rest_interval(2 * known + 10, 10000, 10.0, 12.0, 0.05)  # the range [10, 12]
    assert float(hi) == pytest.approx(11.0 + 2 * eb * 10000 / 9000)


def test_the_interval_holds_the_rest_mean_over_shuffles():
    """A 0/1 population of 400 (mean 0.85): over 500 shuffles the rest's mean after 40
    examples falls outside the interval in at most delta of them (far fewer: the bound is
    conservative), and a radius one third as wide fails far more often."""
    pop = (torch.arange(400) % 20 >= 3).float()
    gen = torch.Generator().manual_seed(0)
    misses, narrow = 0, 0
    for _ in range(500):
        x = pop[torch.randperm(400, generator=gen)]
        lo, hi = rest_interval(x[None, :40], 400, 0.0, 1.0, 0.2)
        rest = float(x[40:].mean())
        misses += not float(lo) <= rest <= float(hi)
        mid, half = float(x[:40].mean()), (float(hi) - float(lo)) / 6
        narrow += not mid - half <= rest <= mid + half
    assert misses <= 0.2 * 500 and narrow > misses + 10


# -- runs --------------------------------------------------------------------------------------


def test_approximate_scores_fewer_examples_than_exact(tmp_path, write_config):
    """GA from scratch: children close to the archive, decided by their mean score (covered by
    the interval); history and summary count the example evaluations."""
    cfg = base_config(budget={"evaluations": 150}, checkpoint_every=150, history_every=50,
                      strategy={"name": "ga", "archive_size": 8, "mutation_std": 0.01})  # fmt: skip
    exact = run(tmp_path, write_config, {**cfg, "evaluation": RACE}, "exact")
    approx = run(tmp_path, write_config, {**cfg, "evaluation": approximate(0.05)}, "approx")
    e, a = summary(exact)["example_evaluations"], summary(approx)["example_evaluations"]
    assert a < 0.9 * e and e < 150 * 1437
    history = [json.loads(x) for x in (approx / "history.jsonl").read_text().splitlines()]
    spent = [h["example_evaluations"] for h in history]
    assert [h["evaluations"] for h in history] == [0, 50, 100, 150]
    assert spent[0] == 0 and spent == sorted(spent) and spent[-1] == a
    assert summary(approx)["evaluations"] == 150


def test_approximate_resume_is_bit_identical(tmp_path, write_config):
    cfg = base_config(budget={"evaluations": 120}, checkpoint_every=40,
                      strategy={"name": "ga", "archive_size": 8, "mutation_std": 0.01},
                      evaluation=approximate(0.3))  # fmt: skip
    whole, cut = whole_and_resumed(cfg, 40, tmp_path, write_config)
    assert_same_archive(whole, cut)
    a, b = summary(whole), summary(cut)
    assert a["example_evaluations"] == b["example_evaluations"] < 0.9 * 120 * 1437
    assert (a["member"], a["metrics"]) == (b["member"], b["metrics"])


LINEAGE = {"name": "m2n2", "archive_size": 4, "space": "lineage"}
CASES = {
    "m2n2": dict(budget={"evaluations": 60}, seeds=PRETRAINED,
                 strategy={"name": "m2n2", "archive_size": 4}),
    "m2n2-lineage": dict(budget={"evaluations": 60}, batch=3, seeds=PRETRAINED, strategy=LINEAGE),
    "ga": dict(strategy={"name": "ga", "archive_size": 8, "mutation_std": 0.01}),
    "map_elites": dict(strategy={"name": "map_elites", "descriptors": ["even", "odd"],
                                 "cells": 3, "mutation_std": 0.01}),
    "pareto": dict(budget={"evaluations": 80}, seeds=PRETRAINED,
                   strategy={"name": "pareto", "objectives": ["0-4", "5-9"], "archive_size": 4}),
    "cmaes-recipe": CMAES_RECIPE,
    "sep_cmaes-recipe": {**CMAES_RECIPE,
                         "strategy": {"name": "sep_cmaes", "sigma0": 0.6, "popsize": 8}},
    "random-recipe": {**CMAES_RECIPE, "strategy": {"name": "random"}},
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_every_strategy_races_approximately(tmp_path, write_config, case):
    """A short run each: fewer examples than full scoring, and an archive that holds only
    fully scored members (digits scores are 0/1; a stopped child is told fractions)."""
    cfg = base_config(**{"budget": {"evaluations": 100}, "checkpoint_every": 200,
                         **CASES[case], "evaluation": approximate(0.2)})  # fmt: skip
    out = run(tmp_path, write_config, cfg, case)
    s = summary(out)
    assert s["example_evaluations"] < s["evaluations"] * 1437
    state = final_state(out)
    if "ids" in state:  # an archive: its members are never stopped children
        members = state["scores"][state["ids"] >= 0]
        assert len(members) > 0 and bool(((members == 0) | (members == 1)).all())


# -- one state, many children --------------------------------------------------------------------


@pytest.fixture(scope="module")
def ga_search(tmp_path_factory):
    """A GA from scratch after 200 evaluations, fully scored, and 16 children of its state."""
    cfg = validate(base_config(budget={"evaluations": 200}, checkpoint_every=200,
                               history_every=200,
                               strategy={"name": "ga", "archive_size": 8,
                                         "mutation_std": 0.01}), "ga")  # fmt: skip
    search = loop.start(cfg, RunDir(tmp_path_factory.mktemp("ga") / "run"))
    search.loop()
    batch = search.strategy.ask(search.state, 16)
    rows = [slice(i, i + 1) for i in range(16)]
    yield search, [Children(batch.params[r], batch.ids[r], batch.parents[r]) for r in rows]
    search.evaluator.close()


def spent_per_child(search, children, **section):
    schedule = make_schedule(
        EvaluationSection(**{**RACE, **section}), search.strategy, search.evaluator.info, 0
    )
    out = [schedule.evaluate(search.state, one, search.score) for one in children]
    return [spent for _, spent in out], [scores[0] for scores, _ in out]


def test_a_smaller_delta_never_scores_fewer_examples(ga_search):
    """Same state, same children: a smaller delta widens every interval, so no child stops
    sooner; exact mode (the whole range) stops latest."""
    search, children = ga_search
    exact, _ = spent_per_child(search, children)
    runs = [exact] + [
        spent_per_child(search, children, mode="approximate", delta=d)[0]
        for d in (0.001, 0.05, 0.3, 0.9)
    ]
    for wide, narrow in zip(runs[:-1], runs[1:], strict=True):
        assert all(w >= n for w, n in zip(wide, narrow, strict=True))
    assert sum(runs[0]) > sum(runs[1]) > sum(runs[-1])


def test_a_stopped_child_is_told_its_observed_mean(ga_search):
    search, children = ga_search
    spent, rows = spent_per_child(search, children, mode="approximate", delta=0.3)
    stopped = 0
    for n, row in zip(spent, rows, strict=True):
        if n == 1437:
            assert bool(((row == 0) | (row == 1)).all())  # fully scored
            continue
        stopped += 1
        binary = (row == 0) | (row == 1)
        assert int(binary.sum()) == n  # its scored examples, then one fill value
        fill = row[~binary].unique()
        assert len(fill) == 1 and float(fill) == pytest.approx(float(row[binary].mean()), 1e-6)
    assert stopped >= 4


# -- config --------------------------------------------------------------------------------------


def test_the_bundled_config_races_approximately():
    from conftest import ROOT

    from evomerge.run.config import read_yaml

    path = ROOT / "configs/racing_digits_approximate.yaml"
    section = validate(read_yaml(path), str(path), bases=[ROOT]).evaluation
    assert (section.schedule, section.mode, section.delta) == ("race", "approximate", 0.05)


@pytest.mark.parametrize(
    "evaluation,words",
    [
        ({**RACE, "mode": "approximate", "delta": 0.0}, r"evaluation\.delta: .*between 0 and 1"),
        ({**RACE, "mode": "approximate", "delta": 1.0}, r"evaluation\.delta: .*between 0 and 1"),
        ({**RACE, "delta": 0.05}, r"evaluation\.delta: only with mode: approximate"),
        ({**RACE, "mode": "aproximate"}, r"evaluation\.mode: .*did you mean 'approximate'"),
        ({"schedule": "subset", "size": 100, "mode": "approximate"},
         r"evaluation\.mode: approximate applies to schedule: race only"),
    ],
    ids=["zero", "one", "exact", "typo", "subset"],
)  # fmt: skip
def test_bad_settings_are_one_line(tmp_path, write_config, capsys, evaluation, words):
    import re

    cfg = write_config(base_config(evaluation=evaluation))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("evomerge: error")]
    assert len(err) == 1 and re.search(words, err[0]), err
