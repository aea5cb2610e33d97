"""docs/space.md: its example space is the example's file, and it runs, resumes and exports."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from conftest import ROOT

from evomerge.interface.cli import main

EXAMPLE = ROOT / "docs" / "examples" / "space"


def test_the_page_shows_the_example_files_verbatim():
    text = (ROOT / "docs" / "space.md").read_text(encoding="utf-8")
    assert (EXAMPLE / "soup_space.py").read_text(encoding="utf-8") in re.findall(
        r"```python\n(.*?)```", text, re.S
    )
    assert (EXAMPLE / "soup.yaml").read_text(encoding="utf-8") in re.findall(
        r"```yaml\n(.*?)```", text, re.S
    )


def test_a_space_of_ones_own_searches_resumes_and_exports(tmp_path, monkeypatch):
    work = tmp_path / "space"
    shutil.copytree(EXAMPLE, work)
    monkeypatch.chdir(work)
    assert main(["run", "soup.yaml", "--out", "runs/soup", "-q"]) == 0
    history = [json.loads(line) for line in open("runs/soup/history.jsonl")]
    seeds_best, final = history[0]["best_train_score"], history[-1]["best_train_score"]
    assert history[0]["evaluations"] == 0 and final > seeds_best + 0.1  # the soup beats each seed
    # a resume from the middle ends where the uninterrupted run did
    raw = yaml.safe_load(open("soup.yaml"))
    raw["budget"]["evaluations"] = 16
    with open("half.yaml", "w") as f:
        yaml.safe_dump(raw, f)
    assert main(["run", "half.yaml", "--out", "runs/half", "-q"]) == 0
    config = yaml.safe_load(open("runs/half/config.yaml"))
    config["budget"]["evaluations"] = 48
    with open("runs/half/config.yaml", "w") as f:
        yaml.safe_dump(config, f)
    assert main(["resume", "runs/half", "-q"]) == 0
    a = json.loads(open("runs/soup/summary.json").read())
    b = json.loads(open("runs/half/summary.json").read())
    assert (a["member"], a["metrics"]) == (b["member"], b["metrics"])
    # the export is the space's: a model folder and the weights in recipe.yaml
    assert main(["export", "runs/soup", "--out", "soup-model", "-q"]) == 0
    recipe = yaml.safe_load(open("soup-model/recipe.yaml"))
    assert recipe["space"] == "soup" and len(recipe["weights"]) == 2
    assert any(p.suffix == ".safetensors" for p in (work / "soup-model").iterdir())


def test_an_unknown_space_is_one_line(tmp_path, capsys):
    raw = yaml.safe_load((EXAMPLE / "soup.yaml").read_text())
    raw.pop("extensions")
    raw["space"] = "soop"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "space: unknown space 'soop'" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("clash", [{"strategy": {"name": "m2n2", "space": "lineage"}}])
def test_two_spaces_that_disagree_are_refused(tmp_path, capsys, clash):
    raw = {**yaml.safe_load((EXAMPLE / "soup.yaml").read_text()), **clash}
    raw["extensions"] = [str(EXAMPLE / "soup_space.py")]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "-q"]) == 2
    assert "space: 'soup' but strategy.space: lineage makes it 'lineage'" in capsys.readouterr().err
