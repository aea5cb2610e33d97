"""Fresh subsets (evaluation: {schedule: subset, fresh: true, refresh_every}): a new subset of
the training examples every ``refresh_every`` evaluations, the strategy's members re-scored on
each: every score a strategy holds is on the current subset, the re-scoring is counted, and a
resume is bit-identical."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import base_config, digits_plugin, whole_and_resumed
from safetensors.torch import load_file
from test_search import assert_same_archive

from evomerge.interface.cli import main
from evomerge.run import checkpoint
from evomerge.search.fresh_subset import draw_fresh
from evomerge.search.niche_archives import MapElitesConfig

FRESH = {"schedule": "subset", "size": 100, "stratify": "task", "fresh": True,
         "refresh_every": 10}  # fmt: skip
PRETRAINED = {"kind": "plugin", "count": 2, "options": {"experts": [[0, 1, 2, 3, 4],
                                                                    [5, 6, 7, 8, 9]],
                                                        "steps": 10, "lr": 0.003}}  # fmt: skip


@pytest.fixture(scope="module")
def digits():
    return digits_plugin()


def checkpoints(run):
    out = []
    for path in checkpoint.list_checkpoints(run / "checkpoints"):
        meta = json.loads((path / "state.json").read_text())
        out.append((meta, load_file(path / "state.safetensors")))
    return out


def members(tensors):
    """Filled rows: (row numbers, their genomes)."""
    rows = [r for r, i in enumerate(tensors["ids"].tolist()) if i >= 0]
    return rows, tensors["params"][rows]


def run(cfg, out, write_config):
    assert main(["run", str(write_config(cfg, f"{out.name}.yaml")), "--out", str(out), "-q"]) == 0
    return json.loads((out / "summary.json").read_text())


def test_every_member_is_scored_on_the_subset_of_its_checkpoint(tmp_path, write_config, digits):
    """At each checkpoint every archive row holds the member's real scores on the subset in
    use (subset e serves evaluations [10e, 10e + 10); the members re-scored as it starts)."""
    cfg = base_config(budget={"evaluations": 25}, checkpoint_every=5, seeds=PRETRAINED,
                      strategy={"name": "m2n2", "archive_size": 4}, evaluation=FRESH)  # fmt: skip
    s = run(cfg, tmp_path / "run", write_config)
    groups = digits.example_groups()
    seen = []
    for meta, tensors in checkpoints(tmp_path / "run"):
        e = meta["evaluations"]
        epoch = meta["subset_epoch"]
        assert epoch == max(e - 1, 0) // 10  # a batch of 1: a new subset once e passes 10k
        columns, layout = draw_fresh(1437, 100, groups, 0, epoch)
        rows, params = members(tensors)
        assert len(rows) == 4
        assert torch.equal(tensors["scores"][rows], digits.score(params, columns))
        seen.append(columns)
        # each class keeps its count and its columns from one subset to the next
        assert [(n, cols) for _, n, cols in layout] == [
            (n, cols) for _, n, cols in draw_fresh(1437, 100, groups, 0, 0)[1]
        ]
    assert not torch.equal(seen[0], seen[-1])  # subsets 0 and 2 differ
    # 25 children on 100 examples each, and 4 members re-scored at 10 and at 20 evaluations
    assert s["example_evaluations"] == 25 * 100 + 2 * 4 * 100
    assert 0 < s["best_train_score_se"] < 0.1
    history = [json.loads(x) for x in (tmp_path / "run/history.jsonl").read_text().splitlines()]
    assert [(r["evaluations"], r["subset_epoch"]) for r in history] == [(0, 0), (25, 2)]


@pytest.mark.parametrize("stop_at", [15, 20])  # inside a subset, and where one ends
def test_fresh_subset_resume_is_bit_identical(tmp_path, write_config, stop_at):
    cfg = base_config(budget={"evaluations": 30}, checkpoint_every=5, seeds=PRETRAINED,
                      strategy={"name": "m2n2", "archive_size": 4}, evaluation=FRESH)  # fmt: skip
    whole, cut = whole_and_resumed(cfg, stop_at, tmp_path, write_config)
    assert_same_archive(whole, cut)
    a = json.loads((whole / "summary.json").read_text())
    b = json.loads((cut / "summary.json").read_text())
    assert a["example_evaluations"] == b["example_evaluations"] == 30 * 100 + 2 * 4 * 100
    assert (a["member"], a["best_train_score_se"]) == (b["member"], b["best_train_score_se"])


def test_map_elites_members_are_re_placed_by_their_new_scores(tmp_path, write_config, digits):
    strategy = {"name": "map_elites", "descriptors": ["even", "odd"], "cells": 3,
                "mutation_std": 0.01}  # fmt: skip
    cfg = base_config(budget={"evaluations": 40}, checkpoint_every=40, seeds=PRETRAINED,
                      strategy=strategy, evaluation=FRESH)  # fmt: skip
    s = run(cfg, tmp_path / "run", write_config)
    meta, tensors = checkpoints(tmp_path / "run")[-1]
    groups = digits.example_groups()
    columns, _ = draw_fresh(1437, 100, groups, 0, meta["subset_epoch"])
    rows, params = members(tensors)
    assert torch.equal(tensors["scores"][rows], digits.score(params, columns))
    grid = MapElitesConfig(**strategy).archive(
        {g: [c for c, i in enumerate(columns.tolist()) if i in set(ids)]
         for g, ids in groups.items()}
    )  # fmt: skip
    assert [grid.cell(tensors["scores"][r]) for r in rows] == rows  # each in its own cell
    assert s["example_evaluations"] > 40 * 100  # and the re-scoring was counted


def test_cmaes_best_so_far_is_re_scored(tmp_path, write_config):
    cfg = base_config(budget={"evaluations": 24}, batch=4, checkpoint_every=24,
                      seeds={"kind": "gaussian", "count": 2, "std": 0.01},
                      strategy={"name": "sep_cmaes", "sigma0": 0.01, "popsize": 4},
                      evaluation=FRESH)  # fmt: skip
    s = run(cfg, tmp_path / "run", write_config)
    # 24 children; the best so far re-scored as subsets 1 and 2 start (at 12 and 20)
    assert s["example_evaluations"] == 24 * 100 + 2 * 100


def test_fresh_subset_on_ray_equals_local(tmp_path, write_config, ray_local):
    cfg = base_config(budget={"evaluations": 24}, batch=4, checkpoint_every=24,
                      seeds=PRETRAINED, strategy={"name": "m2n2", "archive_size": 4},
                      evaluation=FRESH)  # fmt: skip
    local = run(cfg, tmp_path / "local", write_config)
    ray_cfg = {**cfg, "evaluator": {"kind": "ray", "workers": 2, "num_cpus": 1}}
    on_ray = run(ray_cfg, tmp_path / "ray", write_config)
    assert_same_archive(tmp_path / "local", tmp_path / "ray")
    assert local["example_evaluations"] == on_ray["example_evaluations"]


@pytest.mark.parametrize(
    "section, strategy, word",
    [
        ({**FRESH, "refresh_every": None}, None, "refresh_every"),
        ({**FRESH, "fresh": False}, None, "refresh_every"),
        ({**FRESH, "stratify": "none"}, None, "stratify"),
        (FRESH, {"name": "map", "objectives": ["even", "odd"]}, "fresh"),
    ],
)
def test_bad_fresh_sections_are_refused_in_one_line(
    tmp_path, write_config, capsys, section, strategy, word
):
    cfg = base_config(evaluation={k: v for k, v in section.items() if v is not None})
    if strategy is not None:
        cfg["strategy"] = strategy
    out = tmp_path / "run"
    assert main(["run", str(write_config(cfg)), "--out", str(out), "-q"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("evomerge: error")]
    assert len(err) == 1 and f"evaluation.{word}" in err[0] and not out.exists()


@pytest.mark.parametrize(
    "section, word",
    [
        ({"schedule": "race", "fresh": True}, "fresh"),
        ({"schedule": "full", "size": 100}, "size"),
        ({"schedule": "subset", "size": 100, "first_stage": 8}, "first_stage"),
    ],
)
def test_a_key_another_schedule_reads_is_refused(tmp_path, write_config, capsys, section, word):
    out = tmp_path / "run"
    cfg = base_config(evaluation=section)
    assert main(["run", str(write_config(cfg)), "--out", str(out), "-q"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("evomerge: error")]
    assert len(err) == 1 and f"evaluation.{word}: only with schedule" in err[0]
    assert not out.exists()
