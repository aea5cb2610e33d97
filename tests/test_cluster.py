"""Joining an existing Ray cluster: a real head started with `ray start`, evomerge run --address."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import base_config

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


def test_run_joins_a_running_cluster(tmp_path, write_config):
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        cfg = write_config(base_config(batch=4, budget={"evaluations": 40}))
        out = tmp_path / "run"
        cmd = [*run_cmd(cfg, out, f"127.0.0.1:{port}"), "-q"]
        deadline = time.time() + 90
        while True:  # the head takes a few seconds to accept drivers
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
            if proc.returncode == 0 or time.time() > deadline or "cannot join" not in proc.stderr:
                break
            time.sleep(2)
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
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)


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
