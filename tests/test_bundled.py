"""The ready plug-ins and configs by name: `plugin: digits`, `evomerge.fitness.digits:Digits`,
`evomerge run quickstart`, and the old path specs, all naming the same files."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, base_config

from evomerge.core import bundled
from evomerge.core.errors import ConfigError
from evomerge.core.plugins import load_object, resolve_spec
from evomerge.interface.cli import main
from evomerge.run.config import load_config

DIGITS_FILE = f"{ROOT / 'fitness' / 'digits.py'}:Digits"


def test_every_file_in_the_folders_is_bundled():
    assert set(bundled.plugins()) >= {"digits", "causal_lm"}
    names = {p.stem for p in (ROOT / "fitness").glob("*.py") if not p.stem.startswith("_")}
    assert set(bundled.plugins()) == names
    assert "quickstart" in bundled.configs() and "cluster" not in bundled.configs()


@pytest.mark.parametrize(
    "spec, resolved",
    [
        ("digits", DIGITS_FILE),
        ("evomerge.fitness.digits:Digits", DIGITS_FILE),
        ("evomerge.fitness.digits", DIGITS_FILE),
        ("fitness/digits.py:Digits", DIGITS_FILE),
        ("causal-lm", f"{ROOT / 'fitness' / 'causal_lm.py'}:CausalLM"),
        ("evomerge.search.registry:STRATEGIES", "evomerge.search.registry:STRATEGIES"),
    ],
)
def test_names_resolve_to_the_bundled_files(spec, resolved):
    assert resolve_spec(spec, [ROOT / "nowhere"]) == resolved


def test_the_module_is_the_bundled_file():
    import evomerge.fitness.digits as module

    assert module.__file__ == str(ROOT / "fitness" / "digits.py")
    assert load_object("digits").__name__ == module.Digits.__name__ == "Digits"


def test_a_bundled_config_by_name_runs_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("quickstart")
    assert cfg.fitness.plugin == DIGITS_FILE and cfg.name == "quickstart"
    assert load_config("configs/quickstart.yaml").fitness.plugin == DIGITS_FILE
    (tmp_path / "short.yaml").write_text(json.dumps(base_config(fitness={"plugin": "digits"})))
    args = ["run", "short.yaml", "--out", "run", "-q", "--set", "budget.evaluations=100"]
    assert main(args) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["evaluations"] == 100


def test_an_unknown_config_name_lists_the_bundled_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"quikstart: config file not found, .*quickstart"):
        load_config("quikstart")
