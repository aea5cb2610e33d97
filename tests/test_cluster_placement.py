"""Ray clusters that never wait silently: placement decided per node, a lost worker that
cannot be placed again replaced by the others, 'auto' as Ray reads it, named workers, and
a relative --out refused in a Ray job."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import PLUGINS, base_config
from test_bad_input import one_line, run_cli
from test_cluster import ENV, free_port, stop
from test_search import assert_same_archive
from test_worker_faults import ray_start

from evomerge.interface.cli import main
from evomerge.runtime.ray_cluster import JOB_ENV

LIST_NAMES = (
    "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
    "print(sorted(a['name'] for a in ray.util.list_named_actors(all_namespaces=True) "
    "if a['namespace'] == 'evomerge'))"
)


def stale_record(tmp_path):
    """A Ray temp dir whose record names a cluster that is gone."""
    (tmp_path / "raytmp" / "ray").mkdir(parents=True)
    (tmp_path / "raytmp" / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    return {**ENV, "RAY_TMPDIR": str(tmp_path / "raytmp")}


def test_a_stale_cluster_record_is_one_line(tmp_path, write_config):
    cfg = write_config(base_config())
    cmd = [sys.executable, "-m", "evomerge", "run", str(cfg), "--out", str(tmp_path / "r")]
    proc = subprocess.run(
        [*cmd, "--address", "auto"],
        env=stale_record(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [x for x in proc.stderr.splitlines() if x.startswith("evomerge: error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert "stale record" in errors[0] and "ray_current_cluster" in errors[0], errors[0]
    assert not (tmp_path / "r").exists()


def test_two_node_cluster_placement_loss_names_and_auto(tmp_path, write_config):
    """Head and node B, one CPU each. (1) A worker of 1.5 CPUs fits the cluster's 2 CPUs but
    no node: refused in one line (joined with --address auto through RAY_ADDRESS, a stale
    record notwithstanding). (2) Two workers, one per node, are named in the 'evomerge'
    namespace; B is killed and the head is full, so B's worker cannot be placed again: one
    warning line, the head's worker scores the rest, and the archive is a fault-free run's."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = ray_start("--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false")
    nodes = [head]
    try:
        b = ray_start(f"--address={address}", "--num-cpus=1")
        nodes.append(b)
        cfg = write_config(base_config(evaluator={"kind": "ray", "workers": 1, "num_cpus": 1.5}))
        env = {**stale_record(tmp_path), "RAY_ADDRESS": address}
        cmd = [sys.executable, "-m", "evomerge", "run", str(cfg), "--out", str(tmp_path / "x")]
        deadline = time.time() + 120
        while True:  # until B has joined: the refusal then lists two nodes of 1 CPU
            proc = subprocess.run(
                [*cmd, "--address", "auto"], env=env, capture_output=True, text=True, timeout=180
            )
            line = "".join(x for x in proc.stderr.splitlines() if x.startswith("evomerge: e"))
            if line.count("1 CPU") == 2 or time.time() > deadline:
                break
            time.sleep(2)
        assert proc.returncode == 2, proc.stderr
        assert "evaluator.workers 1 " in line and "num_cpus 1.5" in line, line
        assert "must fit on one node" in line and line.count(" 1 CPU 0 GPU") == 2, line
        assert not (tmp_path / "x").exists()

        slow = {"plugin": str(PLUGINS / "bad.py:Slow"), "options": {"delay": 0.1}}
        common = dict(batch=4, budget={"evaluations": 160}, checkpoint_every=40)
        ev = {"kind": "ray", "workers": 2, "address": address}
        run_cfg = write_config(base_config(**common, fitness=slow, evaluator=ev), "c.yaml")
        out = tmp_path / "lost"
        run = subprocess.Popen(
            [sys.executable, "-m", "evomerge", "run", str(run_cfg), "--out", str(out), "-q"],
            env=ENV,
            stderr=subprocess.PIPE,
            text=True,
        )
        while run.poll() is None and not (out / "checkpoints").is_dir():
            time.sleep(0.1)
        assert run.poll() is None, run.stderr.read()
        os.killpg(b.pid, signal.SIGKILL)  # node B is lost; the head's one CPU is in use
        b.wait(timeout=30)
        nodes.remove(b)
        names = subprocess.run(  # the lost worker keeps its name while it waits for a node
            [sys.executable, "-c", LIST_NAMES, address],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "['evomerge-lost-0', 'evomerge-lost-1']" in names.stdout, names.stderr
        _, err = run.communicate(timeout=240)
        assert run.returncode == 0, err
        warnings = [x for x in err.splitlines() if x.startswith("evomerge: warning: worker")]
        assert len(warnings) == 1 and "waiting for a node with 1 CPU free" in warnings[0], err
        summary = json.loads((out / "summary.json").read_text())
        assert sum(w["evaluated"] for w in summary["workers"]) == 160 + 2, summary["workers"]
        ref = write_config(base_config(**common, fitness=dict(slow, options={})), "ref.yaml")
        assert main(["run", str(ref), "--out", str(tmp_path / "ref"), "-q"]) == 0
        assert_same_archive(tmp_path / "ref", out)
    finally:
        stop(*nodes)


def test_two_pools_of_one_name_get_distinct_worker_names(ray_local):
    from evomerge.runtime.ray_pool import RayEvaluator

    spec = str(PLUGINS / "bad.py:Slow")
    one = RayEvaluator(spec, {}, workers=1, name="same")
    try:
        two = RayEvaluator(spec, {}, workers=1, name="same")
        try:
            assert one.names == ["evomerge-same-0"] and two.names == ["evomerge-same.2-0"]
            named = ray_local.util.list_named_actors(all_namespaces=True)
            assert {"name": "evomerge-same.2-0", "namespace": "evomerge"} in named
        finally:
            two.close()
    finally:
        one.close()


@pytest.mark.parametrize("out", [["--out", "populations/x"], []])
def test_a_relative_out_in_a_ray_job_is_refused(tmp_path, write_config, monkeypatch, capsys, out):
    monkeypatch.chdir(tmp_path)  # the job's working directory (Ray's copy of it)
    monkeypatch.setenv(JOB_ENV, json.dumps({"runtime_env": {"working_dir": "."}}))
    write_config(base_config())
    code, err = run_cli(["run", "config.yaml", *out], capsys)  # relative config: the job's dir
    line = one_line(err)
    assert code == 2 and "--out populations/" in line and "in a Ray job" in line, line
    assert "absolute path" in line and not (tmp_path / "populations").exists()
