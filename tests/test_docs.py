"""The documentation cannot drift: the config reference is generated, the worked example's code
in the docs is the example's files, the example runs end to end, and every link resolves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

from conftest import ROOT

from evomerge.interface.cli import main
from evomerge.interface.config_reference import config_reference

DOCS = ROOT / "docs"
EXAMPLE = DOCS / "examples" / "csv"


def test_config_reference_is_generated_from_the_code(tmp_path):
    committed = (DOCS / "config-reference.md").read_text(encoding="utf-8")
    # in a fresh process: strategies other tests of this one registered are not built-ins
    out = tmp_path / "reference.md"
    cmd = [sys.executable, "-m", "evomerge", "config-reference", "--out", str(out), "-q"]
    subprocess.run(cmd, check=True, capture_output=True)
    assert committed == out.read_text(encoding="utf-8"), (
        "docs/config-reference.md is out of date: run 'evomerge config-reference'"
    )


def test_config_reference_covers_every_section():
    text = config_reference()
    for heading in ("## Top level", "## `budget`", "## `fitness`", "## `evaluator` (kind: ray)",
                    "## `tracking`", "## `strategy` (name: m2n2)", "## `recipe`"):  # fmt: skip
        assert heading in text, heading


def test_readme_keeps_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert 'pip install -e ".[dev]" && evomerge run configs/quickstart.yaml' in readme
    assert 'pip install -e ".[dev]" && pytest' in readme


def test_every_relative_link_resolves():
    pages = [ROOT / "README.md", *DOCS.glob("*.md")]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_the_docs_show_the_example_files_verbatim():
    text = (DOCS / "fitness-plugin.md").read_text(encoding="utf-8")
    python = re.findall(r"```python\n(.*?)```", text, re.S)
    yaml = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert (EXAMPLE / "csv_task.py").read_text(encoding="utf-8") in python
    assert (EXAMPLE / "task.yaml").read_text(encoding="utf-8") in yaml


def test_worked_example_from_csv_to_report(tmp_path, monkeypatch):
    """What docs/fitness-plugin.md tells a new user to do, in a copy of the example folder."""
    work = tmp_path / "my-project"
    shutil.copytree(EXAMPLE, work)
    monkeypatch.chdir(work)
    subprocess.run([sys.executable, "make_data.py"], check=True, capture_output=True)
    assert (work / "wine.csv").read_text().startswith("alcohol,")
    args = ["run", "task.yaml", "--out", "runs/wine", "-q", "--set", "budget.evaluations=400"]
    assert main(args) == 0
    summary = json.loads((work / "runs/wine/summary.json").read_text())
    assert summary["metrics"]["train_accuracy"] > 0.7  # 3 classes: chance is about 0.4
    assert "test_accuracy" in summary["metrics"]
    assert main(["report", "runs/wine", "-q"]) == 0
    page = (work / "runs/wine/report/index.html").read_text()
    assert 'id="summary"' in page and "data:image/png;base64," in page
    assert main(["status", "runs/wine"]) == 0
    assert main(["export", "runs/wine", "--out", "best", "-q"]) == 0
    assert (work / "best" / "recipe.yaml").is_file()
