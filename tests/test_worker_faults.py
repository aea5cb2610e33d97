"""Worker faults on a real Ray: a worker that hangs, and a node that disappears mid-run.

Either way the run finishes, every candidate is scored exactly once into the result, and the
archive is the one a fault-free run makes. (A worker process that dies is in test_search.py.)
"""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import PLUGINS, base_config
from test_bad_input import one_line, run_cli
from test_cluster import ENV, RAY, free_port, stop
from test_search import assert_same_archive

from evomerge.interface.cli import main


def test_a_hung_worker_is_killed_restarted_and_its_candidates_retried(tmp_path, write_config):
    marker = tmp_path / "hung"
    plugin = {"plugin": str(PLUGINS / "bad.py:HangOnce"), "options": {"marker": str(marker)}}
    common = dict(batch=4, budget={"evaluations": 80}, fitness=plugin)
    ray_cfg = base_config(**common, evaluator={"kind": "ray", "workers": 2, "timeout_s": 1.5})
    t0 = time.time()
    ray_path = write_config(ray_cfg, "ray.yaml")
    assert main(["run", str(ray_path), "--out", str(tmp_path / "ray"), "-q"]) == 0
    assert marker.exists()  # a worker really hung (and was killed: the run ended)
    local_cfg = write_config(base_config(**common), "local.yaml")  # marker present: no hang
    assert main(["run", str(local_cfg), "--out", str(tmp_path / "local"), "-q"]) == 0
    assert_same_archive(tmp_path / "local", tmp_path / "ray")
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["evaluations"] == 80
    assert sum(w["evaluated"] for w in summary["workers"]) == 80 + 2  # none lost or doubled
    assert time.time() - t0 < 120


def test_a_hung_metrics_call_is_retried_on_a_restarted_worker(tmp_path, write_config):
    marker = tmp_path / "hung"
    plugin = {"plugin": str(PLUGINS / "bad.py:MetricsHangOnce"), "options": {"marker": str(marker)}}
    ev = {"kind": "ray", "workers": 1, "timeout_s": 1.5}
    cfg = write_config(base_config(fitness=plugin, budget={"evaluations": 8}, evaluator=ev))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "-q"]) == 0
    assert marker.exists()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "held_out" in summary["metrics"]


def test_a_worker_that_never_returns_stops_the_run_in_one_line(tmp_path, write_config, capsys):
    cfg = base_config(
        fitness={"plugin": str(PLUGINS / "bad.py:Hangs")},
        evaluator={"kind": "ray", "workers": 1, "timeout_s": 1, "max_restarts": 1},
    )
    out = tmp_path / "run"
    code, err = run_cli(["run", str(write_config(cfg)), "--out", str(out)], capsys)
    assert code == 1
    line = one_line(err)
    assert "fitness bad.py:Hangs: score() did not return within 1 s per candidate" in line
    assert "raise evaluator.timeout_s" in line and not out.exists()


# The cluster notices a lost node within ~2 s instead of Ray's default ~30 s (a test budget).
FAST_HEALTH = {
    **ENV,
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "3",
}


def ray_start(*args: str) -> subprocess.Popen:
    """A real Ray node in its own process group (killing the group is losing the node)."""
    return subprocess.Popen(
        [RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args],
        env=FAST_HEALTH,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def test_a_node_that_disappears_mid_run(tmp_path, write_config):
    """Head and node B, one CPU each, hold the two workers; a third node C joins, then B is
    killed (SIGKILL of its raylet and workers): B's worker is restarted on C, its chunk
    retried, and the run ends as a fault-free one."""
    port = free_port()
    head = ray_start("--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false")
    nodes = [head]
    try:
        b = ray_start(f"--address=127.0.0.1:{port}", "--num-cpus=1")
        nodes.append(b)
        slow = {"plugin": str(PLUGINS / "bad.py:Slow"), "options": {"delay": 0.1}}
        common = dict(batch=4, budget={"evaluations": 160}, checkpoint_every=40)
        cfg = write_config(
            base_config(**common, fitness=slow, evaluator={"kind": "ray", "workers": 2}), "c.yaml"
        )
        out = tmp_path / "run"
        cmd = [sys.executable, "-m", "evomerge", "run", str(cfg), "--out", str(out), "-q"]
        deadline = time.time() + 120
        while True:  # until B has joined: a pool of 2 needs both CPUs
            proc = subprocess.Popen(
                [*cmd, "--address", f"127.0.0.1:{port}"], env=ENV, stderr=subprocess.PIPE
            )
            while proc.poll() is None and not (out / "checkpoints").is_dir():
                time.sleep(0.1)
            if proc.poll() is None or time.time() > deadline:
                break
            time.sleep(2)
        assert proc.poll() is None, proc.stderr.read().decode()
        nodes.append(ray_start(f"--address=127.0.0.1:{port}", "--num-cpus=1"))
        time.sleep(3)
        os.killpg(b.pid, signal.SIGKILL)  # node B disappears: raylet, workers, all at once
        b.wait(timeout=30)
        nodes.remove(b)
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err.decode()
        summary = json.loads((out / "summary.json").read_text())
        assert sum(w["evaluated"] for w in summary["workers"]) == 160 + 2
        fast = dict(slow, options={"delay": 0.0})
        ref = write_config(base_config(**common, fitness=fast), "ref.yaml")
        assert main(["run", str(ref), "--out", str(tmp_path / "ref"), "-q"]) == 0
        assert_same_archive(tmp_path / "ref", out)
    finally:
        stop(*nodes)


def test_sigterm_on_a_ray_run_checkpoints_and_exits_130(tmp_path, write_config):
    """ray.init puts its own SIGTERM handler in the driver (exit 15, nothing saved); the
    evaluator puts evomerge's back, so a scheduler's stop still checkpoints first."""
    cfg = write_config(
        base_config(
            budget={"evaluations": 10**6},
            batch=16,
            checkpoint_every=10**5,
            evaluator={"kind": "ray", "workers": 2},
        )
    )
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "evomerge", "run", str(cfg), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while (
        not (out / "history.jsonl").exists()
        or len((out / "history.jsonl").read_text().splitlines()) < 3
    ):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "checkpoint saved" in err, err
    assert len(list((out / "checkpoints").iterdir())) == 2  # the first, and the one at the stop
