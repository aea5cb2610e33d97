"""evomerge status / ls: running, stopped and finished runs, read from the run directory alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import base_config

from evomerge.interface.cli import main
from evomerge.interface.status import run_state
from evomerge.run.heartbeat import LOCK


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    import yaml

    root = tmp_path_factory.mktemp("status")
    cfg = root / "c.yaml"
    cfg.write_text(yaml.safe_dump(base_config(budget={"evaluations": 100})))
    assert main(["run", str(cfg), "--out", str(root / "done"), "-q"]) == 0
    return root / "done"


def test_finished_run(finished, capsys):
    assert main(["status", str(finished)]) == 0
    text = capsys.readouterr().out
    assert "finished" in text and "100/100 evaluations (100%)" in text
    assert "test_accuracy" in text and "checkpoint   100 evaluations" in text
    assert "\033[" not in text  # not a terminal: no colours
    assert main(["status", str(finished), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["state"] == "finished" and info["evaluations"] == info["budget"] == 100
    assert info["best_train_score"] > 0 and info["evaluations_per_second"] > 0
    assert info["last_checkpoint"]["evaluations"] == 100


def test_stale_lock_is_a_stopped_run(finished, tmp_path, capsys):
    import shutil

    run = tmp_path / "crashed"
    shutil.copytree(finished, run)
    (run / "summary.json").unlink()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer exists
    (run / LOCK).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    assert run_state(run) == "stopped"
    assert main(["status", str(run)]) == 0
    text = capsys.readouterr().out
    assert "stopped" in text and f"evomerge resume {run}" in text


def test_not_a_run_is_bad_input(tmp_path, capsys):
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "evomerge: error:" in capsys.readouterr().err
    assert main(["ls", str(tmp_path / "nope")]) == 2


def test_running_then_stopped(finished, tmp_path, write_config, capsys):
    """A real search in another process: running while it works, stopped after SIGTERM."""
    cfg = write_config(
        base_config(budget={"evaluations": 1_000_000}, checkpoint_every=500), "live.yaml"
    )
    run = tmp_path / "live"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "evomerge", "run", str(cfg), "--out", str(run), "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not (run / LOCK).exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "the run never wrote running.json"
            time.sleep(0.2)
        time.sleep(1.5)
        assert main(["status", str(run), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["state"] == "running" and info["pid"] == proc.pid
        assert info["budget"] == 1_000_000 and info["workers"] == 1
        assert main(["ls", str(tmp_path)]) == 0
        listing = capsys.readouterr().out
        assert "live" in listing and "running" in listing
        assert main(["resume", str(run), "-q"]) == 2  # one process per run directory
        assert "is running now" in capsys.readouterr().err
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    assert code == 130
    assert not (run / LOCK).exists()
    assert run_state(run) == "stopped"
    assert main(["ls", str(tmp_path)]) == 0
    assert "stopped" in capsys.readouterr().out
