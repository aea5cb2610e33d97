"""Joining an existing Ray cluster: a real head started with `ray start`, evomerge run --address."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import base_config
from test_search import assert_same_archive

from evomerge.interface.cli import main

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cmd(cfg, out, address: str) -> list[str]:
    return [sys.executable, "-m", "evomerge", "run", str(cfg), "--out", str(out)] + [
        "--address",
        address,
    ]


ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
ENV.pop("RAY_ADDRESS", None)


def ray_start(*args: str) -> subprocess.Popen:
    """A real Ray node (``ray start --block``) in its own process group."""
    return subprocess.Popen(
        [RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(*nodes: subprocess.Popen) -> None:
    """Stop our nodes only (``ray stop`` would also stop the test session's own Ray)."""
    for node in reversed(nodes):
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=60)


def run_until_joined(cmd: list[str], seconds: float = 90) -> subprocess.CompletedProcess:
    """Run ``cmd``; retry while the fresh head does not accept drivers yet."""
    deadline = time.time() + seconds
    while True:
        proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=180)
        if proc.returncode == 0 or time.time() > deadline or "cannot join" not in proc.stderr:
            return proc
        time.sleep(2)


def test_run_joins_a_running_cluster(tmp_path, write_config):
    port = free_port()
    env = ENV
    head = ray_start("--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false")
    try:
        cfg = write_config(base_config(batch=4, budget={"evaluations": 40}))
        out = tmp_path / "run"
        proc = run_until_joined([*run_cmd(cfg, out, f"127.0.0.1:{port}"), "-q"])
        assert proc.returncode == 0, proc.stderr
        summary = json.loads((out / "summary.json").read_text())
        assert summary["evaluator"] == "ray" and summary["evaluations"] == 40
        resolved = (out / "config.yaml").read_text()
        assert f"address: 127.0.0.1:{port}" in resolved
        # 'auto' finds the same head through the record 'ray start' leaves on this machine
        auto = subprocess.run(
            [*run_cmd(cfg, tmp_path / "auto", "auto"), "-q"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert auto.returncode == 0, auto.stderr
        assert json.loads((tmp_path / "auto/summary.json").read_text())["evaluations"] == 40

        # a run made without the cluster continues on it, and ends as if never moved
        local = base_config(batch=4, budget={"evaluations": 40}, checkpoint_every=20)
        part = tmp_path / "part"
        assert main(["run", str(write_config(local, "local.yaml")), "--out", str(part), "-q"]) == 0
        stored = yaml.safe_load((part / "config.yaml").read_text())
        stored["budget"]["evaluations"] = 80  # the budget may grow on resume
        (part / "config.yaml").write_text(yaml.safe_dump(stored))
        resumed = subprocess.run(
            [sys.executable, "-m", "evomerge", "resume", str(part), "-q"]
            + ["--address", f"127.0.0.1:{port}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads((part / "summary.json").read_text())["evaluator"] == "ray"
        recorded = yaml.safe_load((part / "config.yaml").read_text())["evaluator"]
        assert recorded["address"] == f"127.0.0.1:{port}"  # a plain resume goes there again
        whole = dict(local, budget={"evaluations": 80})
        out80 = tmp_path / "whole"
        assert main(["run", str(write_config(whole, "whole.yaml")), "--out", str(out80), "-q"]) == 0
        assert_same_archive(part, out80)
    finally:
        stop(head)


def test_workers_evaluate_on_both_nodes_of_a_two_node_cluster(tmp_path, write_config):
    """A head and a second node with its own raylet, one CPU each: one worker lands on each
    node and both score candidates."""
    port = free_port()
    head = ray_start("--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false")
    nodes = [head]
    try:
        nodes.append(ray_start(f"--address=127.0.0.1:{port}", "--num-cpus=1"))
        cfg = write_config(
            base_config(
                batch=4,
                budget={"evaluations": 40},
                evaluator={"kind": "ray", "workers": 2, "num_cpus": 1},
            )
        )
        out = tmp_path / "run"
        deadline = time.time() + 90
        while True:  # wait until the second node has joined (2 CPUs in the cluster)
            proc = run_until_joined([*run_cmd(cfg, out, f"127.0.0.1:{port}"), "-q"])
            if proc.returncode == 0 or time.time() > deadline:
                break
            shutil.rmtree(out, ignore_errors=True)
            time.sleep(2)
        assert proc.returncode == 0, proc.stderr
        workers = json.loads((out / "summary.json").read_text())["workers"]
        assert len({w["node"] for w in workers}) == 2, workers
        assert all(w["evaluated"] > 0 for w in workers), workers
    finally:
        stop(*nodes)


def test_unreachable_cluster_is_one_line(tmp_path, write_config):
    cfg = write_config(base_config())
    proc = subprocess.run(
        run_cmd(cfg, tmp_path / "r", f"127.0.0.1:{free_port()}"),
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    errors = [x for x in proc.stderr.splitlines() if x.startswith("evomerge: error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert "cannot join Ray cluster" in errors[0]
    assert not (tmp_path / "r").exists()
