"""Subset fitness (evaluation.schedule: subset): every candidate, the seeds included, scored on
one fixed subset of the training examples; the count of example evaluations, the subset mean's
standard error, the stratified draw and the resume."""

from __future__ import annotations

import json
import math

import torch
from conftest import base_config, digits_plugin, whole_and_resumed
from test_search import assert_same_archive

from evomerge.interface.cli import main
from evomerge.run import checkpoint
from evomerge.search.subset import draw_subset
from evomerge.search.subset_draw import allocate, standard_error, strata

SUBSET = {"schedule": "subset", "size": 100, "stratify": "task"}
PRETRAINED = {"kind": "plugin", "count": 2, "options": {"experts": [[0, 1, 2, 3, 4],
                                                                    [5, 6, 7, 8, 9]],
                                                        "steps": 10, "lr": 0.003}}  # fmt: skip


def summary(run):
    return json.loads((run / "summary.json").read_text())


def first_state(run):
    from safetensors.torch import load_file

    first = checkpoint.list_checkpoints(run / "checkpoints")[0]
    return load_file(first / "state.safetensors")


def digits_groups() -> dict[str, list[int]]:
    """The digits plug-in's example groups, from the plug-in itself."""
    return digits_plugin().example_groups()


def test_counts_size_times_evaluations_and_records_the_error(tmp_path, write_config, capsys):
    cfg = base_config(budget={"evaluations": 40}, history_every=20, checkpoint_every=40,
                      seeds=PRETRAINED, strategy={"name": "m2n2", "archive_size": 4},
                      evaluation=SUBSET)  # fmt: skip
    out = tmp_path / "run"
    assert main(["run", str(write_config(cfg)), "--out", str(out), "-q"]) == 0
    s = summary(out)
    assert s["evaluations"] == 40 and s["example_evaluations"] == 40 * 100  # seeds not counted
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [r["example_evaluations"] for r in history] == [0, 20 * 100, 40 * 100]
    assert all(0 < r["best_train_score_se"] < 0.1 for r in history)
    assert s["best_train_score_se"] == history[-1]["best_train_score_se"]
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    best = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("best so far"))
    assert f"{s['best_train_score_se']:.4f} (subset estimate)" in best
    scores = first_state(out)["scores"]
    assert scores.shape[1] == 100  # the strategy is told the subset's columns only


def test_seeds_are_scored_on_the_subset_columns_only(tmp_path, write_config):
    """The archive holds each seed's real scores on the drawn examples, nothing invented."""
    cfg = base_config(budget={"evaluations": 1}, checkpoint_every=1, seeds=PRETRAINED,
                      strategy={"name": "m2n2", "archive_size": 4})  # fmt: skip
    full, sub = tmp_path / "full", tmp_path / "sub"
    assert main(["run", str(write_config(cfg)), "--out", str(full), "-q"]) == 0
    subset = write_config({**cfg, "evaluation": SUBSET}, "sub.yaml")
    assert main(["run", str(subset), "--out", str(sub), "-q"]) == 0
    a, b = first_state(full)["scores"], first_state(sub)["scores"]
    columns, _ = draw_subset(1437, 100, digits_groups(), 0)
    assert torch.equal(b[:2], a[:2, columns])
    assert summary(full)["example_evaluations"] == 1437 and "best_train_score_se" not in summary(
        full
    )


def test_standard_error_is_the_finite_population_formula():
    row = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    # plain subset of n = 8 from N = 40: s^2 = 0.2143 (6 ones, 2 zeros; n - 1 = 7)
    s2 = (6 * 0.25**2 + 2 * 0.75**2) / 7
    want = math.sqrt((1 - 8 / 40) * s2 / 8)
    assert math.isclose(standard_error(row, [(40, 8, list(range(8)))]), want, rel_tol=1e-9)
    # stratified: strata of 4 each, from 10 and 30 examples; weights n_h / n = 1/2
    h1, h2 = row[:4], row[4:]
    var = sum(
        0.25 * (1 - 4 / big) * part.double().var().item() / 4 for big, part in ((10, h1), (30, h2))
    )
    layout = [(10, 4, [0, 1, 2, 3]), (30, 4, [4, 5, 6, 7])]
    assert math.isclose(standard_error(row, layout), math.sqrt(var), rel_tol=1e-9)
    # a stratum scored in full has no error
    assert standard_error(row, [(8, 8, list(range(8)))]) == 0.0


def test_stratified_subset_has_the_right_per_group_counts():
    # 60 examples: classes a (30), b (20), c (10); "ab" overlaps a and b (same strata)
    groups = {"a": list(range(30)), "b": list(range(30, 50)), "c": list(range(50, 60)),
              "ab": list(range(50))}  # fmt: skip
    assert [len(p) for p in strata(60, groups)] == [30, 20, 10]
    columns, layout = draw_subset(60, 12, groups, 3)
    ids = columns.tolist()
    assert ids == sorted(set(ids)) and len(ids) == 12
    counts = [sum(i in set(groups[g]) for i in ids) for g in ("a", "b", "c")]
    assert counts == [6, 4, 2]  # in proportion 30 : 20 : 10
    assert [n for _, n, _ in layout] == [6, 4, 2]
    assert allocate([30, 20, 10], 7) == [4, 2, 1] and allocate([5, 1, 1], 3) == [1, 1, 1]
    assert draw_subset(60, 12, groups, 3)[0].equal(columns)  # drawn from the seed
    assert not draw_subset(60, 12, groups, 4)[0].equal(columns)


def test_subset_resume_is_bit_identical(tmp_path, write_config):
    cfg = base_config(budget={"evaluations": 50}, checkpoint_every=20, seeds=PRETRAINED,
                      strategy={"name": "m2n2", "archive_size": 4}, evaluation=SUBSET)  # fmt: skip
    whole, cut = whole_and_resumed(cfg, 30, tmp_path, write_config)
    assert_same_archive(whole, cut)
    a, b = summary(whole), summary(cut)
    assert a["example_evaluations"] == b["example_evaluations"] == 50 * 100
    assert (a["member"], a["best_train_score_se"]) == (b["member"], b["best_train_score_se"])


def test_a_missing_or_too_small_size_is_refused_in_one_line(tmp_path, write_config, capsys):
    map_elites = {"name": "map_elites", "descriptors": ["even", "odd"], "cells": 4}
    cases = [
        ({"schedule": "subset"}, "size", None),
        ({"schedule": "subset", "size": 3}, "size", map_elites),
    ]
    for section, word, strategy in cases:
        out = tmp_path / f"{word}{strategy is None}"
        cfg = base_config(evaluation=section)
        if strategy is not None:  # its descriptors are groups the 3 examples may miss
            cfg["strategy"] = strategy
        assert main(["run", str(write_config(cfg)), "--out", str(out), "-q"]) == 2
        err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("evomerge: error")]
        assert len(err) == 1 and f"evaluation.{word}" in err[0] and not out.exists()
