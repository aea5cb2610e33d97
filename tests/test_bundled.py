"""The ready plug-ins and configs by name: `plugin: digits`, `evomerge.fitness.digits:Digits`,
`evomerge run quickstart`, and the old path specs, all naming the same files."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, base_config

from evomerge.core import bundled
from evomerge.core.errors import ConfigError, PluginError
from evomerge.core.plugins import load_object, resolve_spec
from evomerge.interface.cli import main
from evomerge.run.config import load_config

DIGITS_FILE = f"{ROOT / 'fitness' / 'digits.py'}:Digits"
HARNESS = ROOT / "fitness" / "lm_harness.py"


def test_every_file_in_the_folders_is_bundled():
    assert set(bundled.plugins()) >= {"digits", "causal_lm"}
    names = {p.stem for p in (ROOT / "fitness").glob("*.py") if not p.stem.startswith("_")}
    assert set(bundled.plugins()) == names
    assert "quickstart" in bundled.configs() and "cluster" not in bundled.configs()


@pytest.mark.parametrize("name", sorted(bundled.configs()))
def test_every_bundled_config_validates(name):
    """A bundled config broken by a change of the config schema fails here, not for a user."""
    cfg = load_config(name)
    assert cfg.budget.evaluations or cfg.budget.example_evaluations


@pytest.mark.parametrize(
    "spec, resolved",
    [
        ("digits", DIGITS_FILE),
        ("evomerge.fitness.digits:Digits", DIGITS_FILE),
        ("evomerge.fitness.digits", DIGITS_FILE),
        ("fitness/digits.py:Digits", DIGITS_FILE),
        ("causal-lm", f"{ROOT / 'fitness' / 'causal_lm.py'}:CausalLM"),
        ("evomerge.search.registry:STRATEGIES", "evomerge.search.registry:STRATEGIES"),
        ("lm_harness", f"{HARNESS}:LmHarness"),
        # lm_eval.py was renamed lm_harness.py; every old way of naming it still works
        ("lm_eval", f"{HARNESS}:LmHarness"),
        ("lm-eval", f"{HARNESS}:LmHarness"),
        ("evomerge.fitness.lm_eval", f"{HARNESS}:LmHarness"),
        ("evomerge.fitness.lm_eval:LmEval", f"{HARNESS}:LmEval"),
        ("fitness/lm_eval.py:LmEval", f"{HARNESS}:LmEval"),
        (f"{ROOT / 'fitness' / 'lm_eval.py'}:LmEval", f"{HARNESS}:LmEval"),  # a run's config
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


def test_the_registry_names_each_plug_in_class_and_the_old_names():
    named = bundled.registry()
    assert named.target("digits") == "evomerge.fitness.digits:Digits"
    assert named.target("causal_lm") == "evomerge.fitness.causal_lm:CausalLM"
    assert named.target("lm_eval") == named.target("lm_harness")
    assert named.target("lm_harness") == "evomerge.fitness.lm_harness:LmHarness"
    assert named.get("digits").__module__ == "evomerge.fitness.digits"  # lazy: imported now


def test_the_renamed_plug_in_loads_under_its_old_names():
    import evomerge.fitness.lm_eval as old
    import evomerge.fitness.lm_harness as new

    assert old is new and new.LmEval is new.LmHarness
    by_file = load_object("fitness/lm_eval.py:LmEval")
    assert by_file is load_object("lm_eval") is load_object(f"{HARNESS}:LmHarness")
    assert by_file.__name__ == "LmHarness"
    with pytest.raises(PluginError, match=r"'lm_evl' is not a bundled plug-in; did you mean"):
        load_object("lm_evl")


def test_no_bundled_plug_in_shadows_an_installed_package():
    """fitness/ on sys.path (a user's PYTHONPATH, a test run from the folder) must not hide
    a package: lm_eval.py once hid lm-evaluation-harness's ``lm_eval``."""
    import importlib.util

    for name in bundled.plugins():
        assert importlib.util.find_spec(name) is None, name
