"""End to end through the CLI: a search improves, writes its run directory, and resumes exactly."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import PLUGINS, base_config
from safetensors.torch import load_file

from evomerge.interface.cli import main
from evomerge.run import checkpoint


def final_state(run_dir):
    last = checkpoint.list_checkpoints(run_dir / "checkpoints")[-1]
    return load_file(last / "state.safetensors")


def assert_same_archive(a, b):
    sa, sb = final_state(a), final_state(b)
    assert sa.keys() == sb.keys()
    for k in sa:  # NaN where both have NaN (MAP-Elites' empty cells) counts as equal
        same = torch.equal(sa[k].isnan(), sb[k].isnan()) if sa[k].is_floating_point() else True
        kept = ~sa[k].isnan() if sa[k].is_floating_point() else slice(None)
        assert sa[k].dtype == sb[k].dtype and same and sa[k][kept].equal(sb[k][kept]), k


def test_short_run_improves_and_writes_its_run_directory(tmp_path, write_config, capsys):
    cfg = write_config(base_config())
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--set", "budget.evaluations=400"]) == 0
    assert str(out / "summary.json") in capsys.readouterr().out
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["evaluations"] for h in history] == list(range(0, 401, 50))
    assert history[-1]["best_train_score"] > history[0]["best_train_score"] + 0.1
    for key in ("wall_seconds", "fitness", "archive_size", "metrics"):
        assert key in history[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluations"] == 400
    assert set(summary["metrics"]) == {"train_accuracy", "test_accuracy"}
    assert summary["metrics"]["train_accuracy"] == pytest.approx(history[-1]["best_train_score"])
    assert isinstance(summary["member"], int) and summary["wall_seconds"] > 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["budget"]["evaluations"] == 400  # --set lands in the resolved config
    names = [p.name for p in (out / "checkpoints").iterdir()]
    assert sorted(names) == ["0000000200", "0000000300", "0000000400"]  # keep_last 3


def test_same_seed_same_archive_and_batching(tmp_path, write_config):
    cfg = write_config(base_config(batch=4))
    for name in ("a", "b"):
        assert main(["run", str(cfg), "--out", str(tmp_path / name), "-q"]) == 0
    assert_same_archive(tmp_path / "a", tmp_path / "b")
    assert main(["run", str(cfg), "--out", str(tmp_path / "c"), "-q", "--set", "seed=1"]) == 0
    assert not final_state(tmp_path / "a")["params"].equal(final_state(tmp_path / "c")["params"])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_kill_then_resume_is_bit_identical(tmp_path, write_config, sig):
    """Kill a real run after its second checkpoint, resume it, compare with an unbroken run.

    SIGKILL loses the work since the last checkpoint; SIGTERM (a scheduler's stop) writes one
    where the run stood and exits 130.
    """
    cfg = write_config(
        base_config(budget={"evaluations": 3000}, checkpoint_every=300, history_every=300, batch=2)
    )
    assert main(["run", str(cfg), "--out", str(tmp_path / "whole"), "-q"]) == 0

    broken = tmp_path / "broken"
    cmd = [sys.executable, "-m", "evomerge", "run", str(cfg), "--out", str(broken), "-q"]
    proc = subprocess.Popen(
        cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while len(checkpoint.list_checkpoints(broken / "checkpoints")) < 3:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert not (broken / "summary.json").exists()
    if sig == signal.SIGTERM:
        assert proc.returncode == 130 and "checkpoint saved" in err, err
        newest = checkpoint.list_checkpoints(broken / "checkpoints")[-1]
        stopped_at = int(newest.name)
        assert 600 <= stopped_at < 3000 and f"interrupted at {stopped_at} evaluations" in err
    assert main(["resume", str(broken), "-q"]) == 0
    assert_same_archive(tmp_path / "whole", broken)
    whole_hist = (tmp_path / "whole" / "history.jsonl").read_text().splitlines()
    broken_hist = (broken / "history.jsonl").read_text().splitlines()
    assert [json.loads(x)["evaluations"] for x in broken_hist] == [
        json.loads(x)["evaluations"] for x in whole_hist
    ]
    assert (
        json.loads((broken / "summary.json").read_text())["member"]
        == json.loads((tmp_path / "whole" / "summary.json").read_text())["member"]
    )


@pytest.mark.parametrize("chunk_size", [None, 1])
def test_ray_run_equals_local_run(tmp_path, write_config, ray_local, chunk_size):
    local = write_config(base_config(batch=4), "local.yaml")
    evaluator = {"kind": "ray", "workers": 2, "num_cpus": 1, "chunk_size": chunk_size}
    ray_cfg = write_config(base_config(batch=4, evaluator=evaluator), "ray.yaml")
    assert main(["run", str(local), "--out", str(tmp_path / "local"), "-q"]) == 0
    assert main(["run", str(ray_cfg), "--out", str(tmp_path / "ray"), "-q"]) == 0
    assert_same_archive(tmp_path / "local", tmp_path / "ray")


def test_pretrained_seeds_ga_run(tmp_path, write_config):
    cfg = base_config(
        seeds={"kind": "plugin", "count": 2},
        strategy={"name": "ga", "archive_size": 6},
        budget={"evaluations": 100},
    )
    out = tmp_path / "ga"
    assert main(["run", str(write_config(cfg)), "--out", str(out), "-q"]) == 0
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert history[0]["archive_size"] == 2 and history[0]["best_train_score"] > 0.45
    assert history[-1]["best_train_score"] > history[0]["best_train_score"]


def test_a_worker_killed_mid_run_loses_nothing(tmp_path, write_config, ray_local):
    """A Ray worker process dies mid-evaluation: it is restarted, its candidates retried, and
    the run ends with the archive of a run where nothing died."""
    marker = tmp_path / "crashed"
    plugin = {"plugin": str(PLUGINS / "bad.py:CrashOnce"), "options": {"marker": str(marker)}}
    common = dict(batch=4, budget={"evaluations": 120}, fitness=plugin)
    ray_cfg = write_config(
        base_config(**common, evaluator={"kind": "ray", "workers": 2}), "ray.yaml"
    )
    assert main(["run", str(ray_cfg), "--out", str(tmp_path / "ray"), "-q"]) == 0
    assert marker.exists()  # a worker really died
    local_cfg = write_config(base_config(**common), "local.yaml")  # marker present: no crash
    assert main(["run", str(local_cfg), "--out", str(tmp_path / "local"), "-q"]) == 0
    assert_same_archive(tmp_path / "local", tmp_path / "ray")
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["evaluations"] == 120
    assert len(summary["workers"]) == 2
    # none lost, none counted twice: the 120 children and the 2 seeds, scored exactly once each
    assert sum(w["evaluated"] for w in summary["workers"]) == 120 + 2


def test_where_a_run_is_scored_is_not_part_of_its_identity():
    """A checkpoint resumes on any evaluator, worker count or cluster; not across devices."""
    from evomerge.run.config import validate
    from evomerge.run.loop import config_digest

    def digest(**evaluator):
        return config_digest(validate(base_config(evaluator=evaluator), "test"))

    local = digest(kind="local")
    assert digest(kind="ray", workers=5, num_cpus=2, address="10.0.0.1:6379") == local
    assert digest(kind="ray", max_restarts=0) == local
    assert digest(kind="ray", num_gpus=1) != local
    assert digest(kind="local", device="cuda:0") == digest(kind="ray", num_gpus=0.5)
