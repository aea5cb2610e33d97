"""`evomerge init`: every template makes a project whose own tests pass where it is written,
and a refused init writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from evomerge.interface.cli import main
from evomerge.interface.init_project import templates

FILES = {"search.yaml", "my_fitness.py", "test_my_fitness.py", "README.md"}


def test_the_templates_are_the_three_named():
    assert templates() == ["causal-lm", "digits", "merge"]


@pytest.mark.parametrize("template", ["digits", "merge", "causal-lm"])
def test_a_new_project_passes_its_own_tests(template, tmp_path):
    if template == "causal-lm":
        pytest.importorskip("transformers")
    project = tmp_path / "my-search"
    assert main(["init", str(project), "--template", template, "-q"]) == 0
    assert FILES <= {p.name for p in project.iterdir()}
    cfg = yaml.safe_load((project / "search.yaml").read_text())
    assert cfg["name"] == "my-search" and cfg["fitness"]["plugin"] == "my_fitness.py:MyFitness"
    assert "{{" not in (project / "README.md").read_text()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout.splitlines()[-1]


def test_a_non_empty_folder_is_refused_in_one_line(tmp_path, capsys):
    project = tmp_path / "busy"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    assert main(["init", str(project)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not empty" in err[0] and "--force" in err[0]
    assert [p.name for p in project.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["busy"]  # no staging folder left behind


def test_force_writes_into_a_folder_and_keeps_other_files(tmp_path):
    project = tmp_path / "busy"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    (project / "search.yaml").write_text("old")
    assert main(["init", str(project), "--force", "-q"]) == 0
    assert (project / "notes.txt").read_text() == "mine"
    assert "name: busy" in (project / "search.yaml").read_text()
    assert FILES | {"notes.txt"} == {p.name for p in project.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["busy"]


def test_an_unknown_template_is_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["init", str(tmp_path / "p"), "--template", "digitz"])
    assert exc.value.code == 2 and "invalid choice: 'digitz'" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
