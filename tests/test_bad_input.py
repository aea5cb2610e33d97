"""Bad input: one clear line on stderr, a non-zero exit code, and nothing half-written."""

import re

import pytest
from conftest import PLUGINS, base_config

from evomerge.interface.cli import main


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def one_line(err):
    """Exactly one error line, no traceback (progress lines may precede it)."""
    errors = [line for line in err if line.startswith("evomerge: error: ")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    return errors[0]


BAD_CONFIGS = [
    ({"stratgy": {"name": "m2n2"}}, r"stratgy: unknown key; did you mean 'strategy'\?"),
    ({"budget": {"evaluations": "lots"}}, r"budget\.evaluations: .*valid integer.*'lots'"),
    ({"batch": 0}, r"batch: .*greater than or equal to 1"),
    (
        {"strategy": {"name": "m2n3"}},
        r"strategy\.name: .*'m2n3'; did you mean 'm2n2'",
    ),
    (
        {"strategy": {"name": "m2n2", "alfa": 1}},
        r"strategy\.alfa: unknown key; .*'alpha'",
    ),
    ({"strategy": {"name": "ga", "attraction": True}}, r"strategy\.attraction: unknown key"),
    ({"strategy": {"name": "m2n2", "alpha": -1}}, r"strategy\.alpha: .*greater than or equal to 0"),
    ({"seeds": {"kind": "gaussian", "count": 30}}, r"seeds\.count: 30 seeds do not fit"),
    ({"evaluator": {"kind": "ray", "workers": 0}}, r"evaluator\.workers: .*greater than or equal"),
    ({"evaluator": {"kind": "slurm"}}, r"evaluator: .*'local', 'ray'"),
    ({"fitness": {"plugin": "digits"}}, r"fitness\.plugin: 'digits' is not 'path/to/file\.py"),
]


@pytest.mark.parametrize("change, message", BAD_CONFIGS)
def test_config_errors_name_the_field(change, message, tmp_path, write_config, capsys):
    cfg = base_config()
    cfg.update(change)
    if "stratgy" in change:
        del cfg["strategy"]
    out = tmp_path / "run"
    code, err = run_cli(["run", str(write_config(cfg)), "--out", str(out)], capsys)
    assert code == 2
    assert re.search(message, one_line(err)), err
    assert not out.exists()


def test_missing_seed_and_budget(tmp_path, write_config, capsys):
    cfg = base_config()
    del cfg["seed"], cfg["budget"]
    code, err = run_cli(["run", str(write_config(cfg))], capsys)
    assert code == 2
    line = one_line(err)
    assert "seed: required key is missing" in line and "budget: required key is missing" in line


def test_yaml_syntax_error_names_the_line(write_config, capsys):
    code, err = run_cli(["run", str(write_config("seed: 0\nbudget: [1,\n"))], capsys)
    assert code == 2 and "not valid YAML" in one_line(err) and "line 3" in err[0]


def test_bad_set_override(write_config, capsys):
    code, err = run_cli(["run", str(write_config(base_config())), "--set", "seed"], capsys)
    assert code == 2 and "expected KEY=VALUE" in one_line(err)


def test_missing_config_file(tmp_path, capsys):
    code, err = run_cli(["run", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "config file not found" in one_line(err)


PLUGIN_CASES = [
    ("missing.py:Small", 2, r"file .*missing\.py not found"),
    ("bad.py:Smal", 2, r"has no 'Smal'; did you mean 'Small'\?"),
    ("bad.py:NotAFitness", 2, r"not a subclass of evomerge\.Fitness"),
    ("bad.py:SetupRaises", 1, r"setup\(\) raised FileNotFoundError: data/train\.jsonl"),
    ("bad.py:Raises", 1, r"score\(\) raised ValueError: the data server is down"),
    (
        "bad.py:WrongShape",
        1,
        r"returned \(2,\) for 2 candidates; expected shape \(2, 6\)",
    ),
    ("bad.py:ReturnsNaN", 1, r"score\(\) returned nan for candidate 0, example 2"),
    ("bad.py:Negative", 1, r"negative; resource competition \(alpha > 0\) needs scores >= 0"),
]


@pytest.mark.parametrize("plugin, code_expected, message", PLUGIN_CASES)
def test_plugin_errors(plugin, code_expected, message, tmp_path, write_config, capsys):
    cfg = base_config(fitness={"plugin": str(PLUGINS / plugin)})
    out = tmp_path / "run"
    code, err = run_cli(["run", str(write_config(cfg)), "--out", str(out)], capsys)
    assert code == code_expected
    assert re.search(message, one_line(err)), err
    assert not out.exists()  # failures at start leave nothing behind


def test_plugin_options_rejected(tmp_path, write_config, capsys):
    cfg = base_config(fitness={"plugin": str(PLUGINS / "bad.py:Small"), "options": {"x": 1}})
    code, err = run_cli(["run", str(write_config(cfg)), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "fitness.options" in one_line(err)


def test_failure_mid_run_keeps_the_last_checkpoint(tmp_path, write_config, capsys):
    """A plug-in failing after start leaves a resumable run, not a half-written one."""
    cfg = base_config(fitness={"plugin": str(PLUGINS / "bad.py:Small")}, checkpoint_every=10)
    out = tmp_path / "run"
    assert run_cli(["run", str(write_config(cfg)), "--out", str(out), "-q"], capsys)[0] == 0
    (out / "summary.json").unlink()
    bad = (out / "config.yaml").read_text().replace(":Small", ":Raises")
    (out / "config.yaml").write_text(bad)
    code, err = run_cli(["resume", str(out)], capsys)
    assert code == 2 and "config.yaml differs" in one_line(err)


def test_resume_something_that_is_not_a_run(tmp_path, capsys):
    code, err = run_cli(["resume", str(tmp_path)], capsys)
    assert code == 2 and "is not an evomerge run" in one_line(err)
    code, err = run_cli(["resume", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "does not exist" in one_line(err)


def test_run_refuses_an_existing_run_directory(tmp_path, write_config, capsys):
    cfg = write_config(base_config(budget={"evaluations": 10}))
    out = tmp_path / "run"
    assert run_cli(["run", str(cfg), "--out", str(out), "-q"], capsys)[0] == 0
    before = (out / "history.jsonl").read_text()
    code, err = run_cli(["run", str(cfg), "--out", str(out)], capsys)
    assert code == 2 and "already exists" in one_line(err)
    assert (out / "history.jsonl").read_text() == before


def test_a_pool_the_cluster_cannot_hold_is_refused(tmp_path, write_config, capsys, ray_local):
    """Ray would wait forever for GPUs that are not there: refuse in one line instead."""
    cfg = base_config(evaluator={"kind": "ray", "workers": 2, "num_gpus": 0.5})
    out = tmp_path / "run"
    code, err = run_cli(["run", str(write_config(cfg)), "--out", str(out)], capsys)
    assert code == 2
    line = one_line(err)
    assert re.search(r"evaluator: 2 workers need 2 CPUs and 1 GPUs, the Ray cluster has", line)
    assert "0 GPUs" in line and not out.exists()
