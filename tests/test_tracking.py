"""Tracking: TensorBoard scalars and MLflow metrics are the history records, read back with the
trackers' own libraries; off by default; tracking does not change a checkpoint's identity."""

from __future__ import annotations

import json

import pytest
from conftest import base_config

from evomerge.interface.cli import main
from evomerge.run.config import validate
from evomerge.run.loop import config_digest
from evomerge.run.tracking import flatten


def history(run):
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_flatten_keeps_numbers_by_path():
    rec = {"evaluations": 50, "member": 7, "best_train_score": 0.5, "flag": True,
           "metrics": {"test_accuracy": 0.25}, "fitness": {"mean": 3}, "note": "x"}  # fmt: skip
    assert flatten(rec) == {
        "best_train_score": 0.5,
        "metrics/test_accuracy": 0.25,
        "fitness/mean": 3.0,
    }


def test_off_by_default_and_not_part_of_the_run_identity(tmp_path):
    plain = validate(base_config(), "c.yaml")
    tracked = validate(base_config(tracking={"tensorboard": True}), "c.yaml")
    assert plain.tracking is None and tracked.tracking.tensorboard is True
    assert config_digest(plain) == config_digest(tracked)  # resume may switch tracking on


def test_tensorboard_scalars_equal_the_history(tmp_path, write_config):
    pytest.importorskip("tensorboard", reason="pip install 'evomerge[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = write_config(base_config(budget={"evaluations": 100}))
    run = tmp_path / "run"
    args = ["run", str(cfg), "--out", str(run), "-q", "--set", "tracking.tensorboard=true"]
    assert main(args) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    records = history(run)
    assert "best_train_score" in events.Tags()["scalars"]
    for tag in ("best_train_score", "metrics/test_accuracy", "fitness/mean"):
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        want = [(r["evaluations"], pytest.approx(flatten(r)[tag])) for r in records]
        assert got == want, tag


def test_mlflow_metrics_equal_the_history(tmp_path, write_config, monkeypatch):
    pytest.importorskip("mlflow", reason="pip install 'evomerge[mlflow]'")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store, no server
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    cfg = write_config(
        base_config(
            name="digits",
            budget={"evaluations": 100},
            tracking={"mlflow": True, "mlflow_tracking_uri": uri},
        )
    )
    run = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(run), "-q"]) == 0
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("digits")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED"
    assert found.data.tags["evomerge.run_dir"] == str(run.resolve())
    assert found.data.params["strategy.name"] == "m2n2"
    got = [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, "fitness/mean")]
    want = [(r["evaluations"], pytest.approx(r["fitness"]["mean"])) for r in history(run)]
    assert sorted(got) == want
