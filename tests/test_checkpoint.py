"""Checkpoints: safetensors + JSON with a manifest; damage is detected and skipped."""

import json
import subprocess
import sys

import pytest
import torch

from evomerge.core.errors import RunDirError
from evomerge.run import checkpoint


def save(root, evaluations, keep_last=5):
    tensors = {"params": torch.full((2, 3), float(evaluations)), "ids": torch.tensor([0, 1])}
    return checkpoint.save(root, tensors, {"evaluations": evaluations}, keep_last)


def test_round_trip_and_pruning(tmp_path):
    for e in (0, 10, 20, 30):
        save(tmp_path, e, keep_last=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["0000000020", "0000000030"]
    ck = checkpoint.load_latest(tmp_path)
    assert ck.meta["evaluations"] == 30 and ck.tensors["params"][0, 0] == 30.0
    manifest = json.loads((ck.path / "manifest.json").read_text())["sha256"]
    assert set(manifest) == {"state.safetensors", "state.json"}


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_manifest"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    save(tmp_path, 10)
    newest = save(tmp_path, 20)
    target = newest / "state.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:40])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        (newest / "manifest.json").unlink()
    warnings = []
    ck = checkpoint.load_latest(tmp_path, warn=warnings.append)
    assert ck.meta["evaluations"] == 10
    assert len(warnings) == 1 and "0000000020" in warnings[0]


def test_no_usable_checkpoint_is_a_clear_error(tmp_path):
    newest = save(tmp_path, 10)
    (newest / "state.json").write_text("{}")
    with pytest.raises(RunDirError, match="no usable checkpoint"):
        checkpoint.load_latest(tmp_path)


def test_a_pickle_where_the_state_should_be_is_refused_without_running(tmp_path):
    import pickle

    ran = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(ran), "w"))

    newest = save(tmp_path, 10)
    (newest / "state.safetensors").write_bytes(pickle.dumps(Payload()))
    # even with a manifest that matches, safetensors refuses to parse a pickle
    manifest = {n: checkpoint.sha256_file(newest / n) for n in checkpoint.STATE_FILES}
    (newest / "manifest.json").write_text(json.dumps({"sha256": manifest}))
    with pytest.raises(RunDirError, match="unreadable checkpoint"):
        checkpoint.load(newest)
    assert not ran.exists()


def test_leftover_temporary_folders_are_ignored(tmp_path):
    save(tmp_path, 10)
    (tmp_path / ".tmp-0000000020-999").mkdir()
    assert checkpoint.load_latest(tmp_path).meta["evaluations"] == 10


def test_a_killed_writers_temporary_folder_is_cleaned_up(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    orphan = tmp_path / f".tmp-0000000010-{dead.stdout.strip()}"
    orphan.mkdir()
    (orphan / "state.safetensors").write_bytes(b"half")
    save(tmp_path, 10)
    assert not orphan.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["0000000010"]


def test_an_intact_checkpoint_is_never_deleted_to_write_the_same_one(tmp_path):
    """The end of a run is saved twice; with keep_last 1 a kill between deleting the old copy
    and renaming the new one would have left no checkpoint. The intact one is kept instead."""
    first = save(tmp_path, 10, keep_last=1)
    inode = (first / "state.safetensors").stat().st_ino
    assert save(tmp_path, 10, keep_last=1) == first
    assert (first / "state.safetensors").stat().st_ino == inode
    assert [p.name for p in tmp_path.iterdir()] == ["0000000010"]


def test_a_damaged_checkpoint_of_the_same_name_is_replaced(tmp_path):
    first = save(tmp_path, 10, keep_last=1)
    (first / "state.json").write_text("{}")
    save(tmp_path, 10, keep_last=1)
    assert checkpoint.verify(first) is None
    assert [p.name for p in tmp_path.iterdir()] == ["0000000010"]


def test_damaged_newer_checkpoints_do_not_outlive_their_replacements(tmp_path):
    """Resumed from 10 past a damaged 20: with keep_last 1, saving 15 must keep 15 (not prune
    it in favour of the damaged 20), and the damaged one goes once the run is past it."""
    save(tmp_path, 10, keep_last=2)
    damaged = save(tmp_path, 20, keep_last=2)
    (damaged / "state.json").write_text("{}")
    assert checkpoint.load_latest(tmp_path, warn=lambda m: None).meta["evaluations"] == 10
    save(tmp_path, 15, keep_last=1)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["0000000015"]
    assert checkpoint.load_latest(tmp_path).meta["evaluations"] == 15


def test_pruning_waits_for_the_newer_checkpoint(tmp_path, monkeypatch):
    """If writing the newer checkpoint fails half-way, the older ones are all still there."""
    save(tmp_path, 10, keep_last=1)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", fail)
    with pytest.raises(
        RunDirError, match=r"checkpoint 0000000020 \(No space left on device\); the"
    ):
        save(tmp_path, 20, keep_last=1)
    assert [p.name for p in tmp_path.iterdir()] == ["0000000010"]  # no temporary folder left
    assert checkpoint.load_latest(tmp_path).meta["evaluations"] == 10


def test_resume_past_a_damaged_checkpoint_through_the_cli(tmp_path, write_config, capsys):
    """Truncated newest checkpoint: one line says so, the previous one is used, and the run
    ends as an undamaged one; with every checkpoint damaged, one clear error."""
    from conftest import base_config
    from test_search import assert_same_archive

    from evomerge.interface.cli import main

    cfg = write_config(base_config(budget={"evaluations": 60}, checkpoint_every=20))
    whole, hurt = tmp_path / "whole", tmp_path / "hurt"
    assert main(["run", str(cfg), "--out", str(whole), "-q"]) == 0
    assert main(["run", str(cfg), "--out", str(hurt), "-q"]) == 0
    newest = checkpoint.list_checkpoints(hurt / "checkpoints")[-1]
    data = (newest / "state.safetensors").read_bytes()
    (newest / "state.safetensors").write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert main(["resume", str(hurt)]) == 0
    err = capsys.readouterr().err.splitlines()
    damaged = [x for x in err if "skipping damaged checkpoint" in x]
    assert len(damaged) == 1 and "0000000060: state.safetensors does not match" in damaged[0]
    assert any("resuming" in x and "at 40 evaluations" in x for x in err), err
    assert_same_archive(whole, hurt)

    for ck in checkpoint.list_checkpoints(hurt / "checkpoints"):
        (ck / "state.json").write_text("{}")
    assert main(["resume", str(hurt)]) == 2
    err = capsys.readouterr().err.splitlines()
    errors = [x for x in err if x.startswith("evomerge: error: ")]
    assert len(errors) == 1 and "no usable checkpoint; the run cannot be resumed" in errors[0]


OLD_RUNS = ["m2n2", "map_elites", "pareto", "cmaes", "sep_cmaes", "random"]


@pytest.mark.parametrize("name", OLD_RUNS)
def test_a_run_written_before_the_strategy_base_class_resumes_exactly(tmp_path, name):
    """tests/fixtures/old_runs: 24 evaluations of each strategy (recipe genes over digits,
    53 training examples) written by the code before the Strategy base class and the state
    codec (commit cc0889d). Resumed to 40 by today's code, it ends as a 40-evaluation run of
    today's code does.

    Bit for bit only where this machine's CPU computes the first 24 evaluations as the one
    that wrote the fixture did (float rounding differs between instruction sets, and M2N2's
    archive or sep-CMA's path can follow a 1-ulp difference); elsewhere the resumed state is
    checked to be today's layout and to resume deterministically."""
    import shutil

    import yaml
    from conftest import DIGITS, ROOT
    from safetensors.torch import load_file
    from test_search import final_state

    from evomerge.interface.cli import main
    from evomerge.run.config import validate
    from evomerge.run.loop import config_digest

    fixture = ROOT / "tests" / "fixtures" / "old_runs" / name
    old = tmp_path / "old"
    shutil.copytree(fixture, old)
    raw = yaml.safe_load((old / "config.yaml").read_text())
    ck = checkpoint.load_latest(old / "checkpoints")
    assert ck.meta["evaluations"] == 24 and ck.meta["strategy"] == name
    # The strategy's config dumps as it did: the recorded digest is today's digest.
    assert ck.meta["config_sha256"] == config_digest(validate(raw, "config.yaml"))
    # Move the run to this checkout (the plug-in path is absolute, so it is in the digest).
    raw["fitness"]["plugin"] = DIGITS
    raw["budget"]["evaluations"] = 40
    raw["keep_last"] = 3  # the fresh run keeps its 24-evaluation checkpoint to compare
    (old / "config.yaml").write_text(yaml.safe_dump(raw))
    meta = {**ck.meta, "config_sha256": config_digest(validate(raw, "config.yaml"))}
    shutil.rmtree(ck.path)  # save() keeps an intact checkpoint of the same name as it is
    checkpoint.save(old / "checkpoints", ck.tensors, meta, keep_last=1)
    again = tmp_path / "again"
    shutil.copytree(old, again)
    assert main(["resume", str(old), "-q"]) == 0

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["run", str(config), "--out", str(tmp_path / "new"), "-q"]) == 0
    a, b = final_state(old), final_state(tmp_path / "new")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    fresh24 = load_file(tmp_path / "new" / "checkpoints" / "0000000024" / "state.safetensors")
    fixture24 = load_file(fixture / "checkpoints" / "0000000024" / "state.safetensors")
    same_cpu = fixture24.keys() == fresh24.keys() and all(
        torch.equal(fixture24[k], fresh24[k]) for k in fixture24
    )
    if same_cpu:
        for k in a:  # bit for bit (empty MAP-Elites cells are NaN in the report's grid)
            assert torch.allclose(a[k], b[k], 0, 0, equal_nan=True), k
    else:  # the old run resumed again ends the same, bit for bit
        assert main(["resume", str(again), "-q"]) == 0
        c = final_state(again)
        assert a.keys() == c.keys()
        for k in a:
            assert torch.allclose(a[k], c[k], 0, 0, equal_nan=True), k
    newest = checkpoint.list_checkpoints(old / "checkpoints")[-1]
    assert json.loads((newest / "state.json").read_text())["evaluations"] == 40
    assert main(["export", str(old), "--out", str(tmp_path / "export"), "-q"]) == 0
    assert (tmp_path / "export" / "recipe.yaml").is_file()
