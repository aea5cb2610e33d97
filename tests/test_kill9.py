"""Kill -9 anywhere, the fast variant of bench/kill9.py: a real Ray run, SIGKILLed three times
(during start-up, in the loop, during a checkpoint write), resumed each time, ends exactly as an
uninterrupted run does."""

import argparse
import importlib.util
import random
import shutil

import yaml
from conftest import ROOT, base_config

from evomerge.interface.cli import main

spec = importlib.util.spec_from_file_location("kill9", ROOT / "bench" / "kill9.py")
kill9 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kill9)


def test_sigkilled_driver_resumes_to_the_uninterrupted_result(tmp_path, write_config):
    cfg = kill9.make_config(tmp_path / "ray.yaml", seed=3, evaluations=800, every=80)
    # the reference runs in-process on the local evaluator: scores, and so results, are the
    # same on Ray (tests/test_evaluators.py), and the run identity ignores the evaluator
    local = yaml.safe_load(cfg.read_text())
    local["evaluator"] = {"kind": "local"}
    ref = tmp_path / "ref"
    assert main(["run", str(write_config(local, "local.yaml")), "--out", str(ref), "-q"]) == 0

    args = argparse.Namespace(delay=(0.5, 3.0), loop_delay=(0.2, 1.5), timeout=120.0, shares=None)
    logs = tmp_path / "logs"
    logs.mkdir()
    out = tmp_path / "killed"
    modes = ["timer", "checkpoint", "loop"]
    counts = kill9.killed_run(cfg, out, 3, random.Random(0), args, logs, modes=modes)
    assert counts["kills"] == 3 and counts["completed"] == 1, counts
    assert counts["resumes"] + counts["starts"] == 4, counts
    assert kill9.compare(out, ref) == [], counts


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path, write_config):
    """Killed between writing config.yaml and completing checkpoint 0: resume starts the run
    again from its seeds (same draws, same result); a config write cut short is no run."""
    cfg = write_config(base_config(budget={"evaluations": 60}, checkpoint_every=20))
    ref = tmp_path / "ref"
    assert main(["run", str(cfg), "--out", str(ref), "-q"]) == 0

    out = tmp_path / "cut"
    assert main(["run", str(cfg), "--out", str(out), "-q"]) == 0
    shutil.rmtree(out / "checkpoints")
    (out / "checkpoints" / ".tmp-0000000000-999999").mkdir(parents=True)
    (out / "summary.json").unlink()
    with open(out / "history.jsonl", "a") as f:
        f.write('{"evaluations": 0, "cut sho')
    assert main(["resume", str(out), "-q"]) == 0
    assert kill9.compare(out, ref) == []

    early = tmp_path / "early"
    early.mkdir()
    (early / ".config.yaml.tmp-999999").write_text("seed: 0\nbudg")
    assert main(["run", str(cfg), "--out", str(early), "-q"]) == 0
    assert kill9.compare(early, ref) == []
