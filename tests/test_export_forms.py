"""`evomerge export --merged` asks the run's space for its merged form: a space that declares
none (every space but adapter) refuses in one line and writes nothing."""

from conftest import base_config

from evomerge.interface.cli import main


def test_merged_on_a_space_without_that_form_is_one_line(tmp_path, write_config, capsys):
    cfg = base_config(budget={"evaluations": 20}, checkpoint_every=10, history_every=10)
    run = tmp_path / "run"
    assert main(["run", str(write_config(cfg)), "--out", str(run), "-q"]) == 0
    capsys.readouterr()
    out = tmp_path / "merged"
    assert main(["export", str(run), "--merged", "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "evomerge: error: --merged: space dense exports its members in its own form only (it "
        "has no other form; --merged is for space adapter); drop --merged"
    ]
    assert not out.exists()
    assert main(["export", str(run), "--out", str(out), "-q"]) == 0  # its own form still works
    assert (out / "recipe.yaml").is_file()
