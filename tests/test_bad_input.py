"""Bad input: one clear line on stderr, a non-zero exit code, and nothing half-written."""

import json
import os
import pickle
import re
import resource
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import PLUGINS, base_config
from safetensors.torch import save_file
from test_search import assert_same_archive

from evomerge.interface.cli import main
from evomerge.run import checkpoint


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
    ({"fitness": {"plugin": "digits.py"}}, r"fitness\.plugin: 'digits\.py' is not 'path/to/file"),
    (
        {"fitness": {"plugin": "digit"}},
        r"fitness\.plugin: 'digit' is not a bundled plug-in; did you mean 'digits'\?",
    ),
    ({"keep_last": 0}, r"keep_last: .*greater than or equal to 1"),
    ({"checkpoint_every": "often"}, r"checkpoint_every: .*valid integer.*'often'"),
    ({"seeds": {"kind": "gaussian", "std": -1}}, r"seeds\.std: .*greater than 0"),
    ({"evaluator": {"kind": "ray", "timeout_s": "soon"}}, r"evaluator\.timeout_s: .*valid number"),
    ({"evaluator": {"kind": "ray", "timout_s": 5}}, r"evaluator\.timout_s: .*'timeout_s'"),
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
    assert len(err) == 1 and "bundled: " in err[0] and "quickstart" in err[0]


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


@pytest.mark.parametrize(
    "plugin, message",
    [
        ("ResidentRaises", "resident_tensors() raised RuntimeError: CUDA out of memory"),
        ("StreamRaises", "load_tensors() raised RuntimeError: engine rejected the weights"),
    ],
)
def test_a_resident_model_that_fails_is_named_in_one_line(
    plugin, message, tmp_path, write_config, capsys
):
    """In lineage space candidates are written into the plug-in's model: a failure to reach
    it, or to take a candidate, is one line naming the plug-in and the call."""
    cfg = base_config(fitness={"plugin": str(PLUGINS / f"bad.py:{plugin}")}, space="lineage",
                      seeds={"kind": "plugin", "count": 2},
                      strategy={"name": "m2n2", "archive_size": 4})  # fmt: skip
    out = tmp_path / "run"
    code, err = run_cli(["run", str(write_config(cfg)), "--out", str(out)], capsys)
    assert code == 1 and f"fitness bad.py:{plugin}: {message}" in one_line(err), err
    assert not out.exists()


def test_lineage_space_with_gaussian_seeds_is_refused(tmp_path, write_config, capsys):
    """space: lineage merges seed models: random vectors are refused in one line naming the
    key, before the plug-in is asked for seeds it may not make."""
    cfg = base_config(fitness={"plugin": str(PLUGINS / "bad.py:Small")}, space="lineage")
    out = tmp_path / "run"
    code, err = run_cli(["run", str(write_config(cfg)), "--out", str(out)], capsys)
    assert code == 2 and "space: lineage genomes mix pre-trained seeds" in one_line(err), err
    assert "seeds.kind: plugin" in one_line(err) and not out.exists()


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
    assert re.search(r"evaluator: .*num_gpus 0\.5 each: no node can hold one worker", line)
    assert "2 CPU 0 GPU" in line and not out.exists()


# --- seed model files ------------------------------------------------------------------------


class Payload:
    """A pickle that, if ever unpickled, creates the file ``ran``."""

    def __init__(self, ran):
        self.ran = str(ran)

    def __reduce__(self):
        return (open, (self.ran, "w"))


def _seed(folder, damage=None, ran=None):
    folder.mkdir()
    w = torch.tensor([1.0, -1.0, 0.5, 2.0])
    if damage == "nan":
        w[1] = float("nan")
    if damage == "inf":
        w[3] = float("inf")
    tensors = {"v" if damage == "missing" else "w": w[:3] if damage == "shape" else w}
    path = folder / "model.safetensors"
    save_file(tensors, path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-5])
    if damage == "pickle":  # a seed shipped as a torch pickle, with a payload
        path.unlink()
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(ran)))
    if damage == "pickle-renamed":  # the same payload under the expected name
        path.write_bytes(pickle.dumps(Payload(ran)))
    return str(folder)


SEED_CASES = [
    ("missing", r"seed1: has no tensor 'w', which the fitness plug-in's model has"),
    ("shape", r"seed1: tensor 'w' has shape \(3,\), the fitness plug-in's model expects \(4,\)"),
    (
        "truncated",
        r"seed1/model\.safetensors: not a valid safetensors file \(.*\); it is truncated",
    ),
    ("pickle", r"seed1: expected a folder with .* one \.safetensors file; found .*: none"),
    ("pickle-renamed", r"seed1/model\.safetensors: not a valid safetensors file"),
    ("nan", r"seed1: the weights hold NaN or Inf values; .* replace it with a finite model"),
    ("inf", r"seed1: the weights hold NaN or Inf values"),
]


@pytest.mark.parametrize("damage, message", SEED_CASES, ids=[c[0] for c in SEED_CASES])
def test_bad_seed_models(damage, message, tmp_path, write_config, capsys):
    """Lineage seeds from model folders: each damage is one line, exit 2, nothing written,
    and a pickle is never unpickled."""
    ran = tmp_path / "payload-ran"
    folders = [_seed(tmp_path / "seed0"), _seed(tmp_path / "seed1", damage, ran)]
    cfg = base_config(
        fitness={"plugin": str(PLUGINS / "bad.py:FolderSeeds"), "options": {"folders": folders}},
        seeds={"kind": "plugin", "count": 2},
        strategy={"name": "m2n2", "archive_size": 8, "mutation_std": 0.0, "space": "lineage"},
        budget={"evaluations": 20},
    )
    out = tmp_path / "run"
    code, err = run_cli(["run", str(write_config(cfg)), "--out", str(out)], capsys)
    assert code == 2, err
    assert re.search(message, one_line(err)), err
    assert not out.exists() and not ran.exists()


def test_good_seed_models_run(tmp_path, write_config, capsys):
    folders = [_seed(tmp_path / "seed0"), _seed(tmp_path / "seed1")]
    cfg = base_config(
        fitness={"plugin": str(PLUGINS / "bad.py:FolderSeeds"), "options": {"folders": folders}},
        seeds={"kind": "plugin", "count": 2},
        strategy={"name": "m2n2", "archive_size": 8, "mutation_std": 0.0, "space": "lineage"},
        budget={"evaluations": 20},
    )
    assert (
        run_cli(["run", str(write_config(cfg)), "--out", str(tmp_path / "r"), "-q"], capsys)[0] == 0
    )


def test_seeds_made_with_nan_weights(tmp_path, write_config, capsys):
    cfg = base_config(
        fitness={"plugin": str(PLUGINS / "bad.py:NaNSeeds")}, seeds={"kind": "plugin", "count": 2}
    )
    out = tmp_path / "run"
    code, err = run_cli(["run", str(write_config(cfg)), "--out", str(out)], capsys)
    assert code == 1
    assert "make_seeds() returned NaN or Inf weights in seed 1" in one_line(err)
    assert not out.exists()


# --- failures mid-run --------------------------------------------------------------------


def test_plugin_failing_mid_run_stops_with_the_run_resumable(tmp_path, write_config, capsys):
    plugin = {"plugin": str(PLUGINS / "bad.py:RaisesLater"), "options": {"after": 40}}
    cfg = base_config(fitness=plugin, checkpoint_every=10, budget={"evaluations": 100})
    out = tmp_path / "run"
    code, err = run_cli(["run", str(write_config(cfg)), "--out", str(out)], capsys)
    assert code == 1
    line = one_line(err)
    assert "score() raised ConnectionError: lost the connection to the data server" in line
    assert re.search(rf"stopped at 3\d evaluations, .*'evomerge resume {out}'", line), line
    assert checkpoint.load_latest(out / "checkpoints").meta["evaluations"] == 30


def test_run_dir_from_another_version(tmp_path, write_config, capsys):
    """A checkpoint format this version does not know is refused, not misread."""
    out = tmp_path / "run"
    cfg = write_config(base_config(budget={"evaluations": 20}, checkpoint_every=10))
    assert run_cli(["run", str(cfg), "--out", str(out), "-q"], capsys)[0] == 0
    newest = checkpoint.list_checkpoints(out / "checkpoints")[-1]
    meta = json.loads((newest / "state.json").read_text())
    (newest / "state.json").write_text(json.dumps({**meta, "format": 99}))
    sums = {n: checkpoint.sha256_file(newest / n) for n in checkpoint.STATE_FILES}
    (newest / "manifest.json").write_text(json.dumps({"sha256": sums}))
    code, err = run_cli(["resume", str(out)], capsys)
    assert code == 2
    assert "checkpoint format 99 is not 1; resume it with the evomerge version" in one_line(err)


DENIED = "(Operation not permitted|Permission denied)"  # chattr +i (root) or chmod


@pytest.fixture
def read_only():
    """Make a folder unwritable, for root too (chattr +i), or skip."""
    made = []

    def make(path):
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            path.chmod(0o555)
        elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("no way to make a folder read-only for root here (chattr)")
        made.append(path)
        return path

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        path.chmod(0o755)


def test_no_write_permission_for_the_run_directory(tmp_path, write_config, capsys, read_only):
    parent = read_only(tmp_path / "locked")
    code, err = run_cli(
        ["run", str(write_config(base_config())), "--out", str(parent / "run")], capsys
    )
    assert code == 2
    assert re.search(
        rf"locked/run: cannot create the run directory \({DENIED}\)",
        one_line(err),
    )
    assert not (parent / "run").exists()


def test_checkpoints_unwritable_mid_run(tmp_path, write_config, capsys, read_only):
    """The disk refuses the next checkpoint: one line, exit 1, the previous ones intact; once
    writable again the run resumes to the uninterrupted result."""
    cfg = base_config(budget={"evaluations": 40}, checkpoint_every=20)
    out = tmp_path / "run"
    assert run_cli(["run", str(write_config(cfg)), "--out", str(out), "-q"], capsys)[0] == 0
    stored = yaml.safe_load((out / "config.yaml").read_text())
    stored["budget"]["evaluations"] = 80
    (out / "config.yaml").write_text(yaml.safe_dump(stored))
    read_only(out / "checkpoints")
    code, err = run_cli(["resume", str(out)], capsys)
    assert code == 1
    line = one_line(err)
    assert re.search(
        rf"checkpoints: cannot write checkpoint 0000000060 \({DENIED}\); the previous checkpoint",
        line,
    ), line
    assert f"'evomerge resume {out}'" in line
    subprocess.run(["chattr", "-i", str(out / "checkpoints")], capture_output=True)
    (out / "checkpoints").chmod(0o755)
    assert run_cli(["resume", str(out), "-q"], capsys)[0] == 0
    whole = tmp_path / "whole"
    cfg80 = write_config(base_config(budget={"evaluations": 80}, checkpoint_every=20), "w.yaml")
    assert run_cli(["run", str(cfg80), "--out", str(whole), "-q"], capsys)[0] == 0
    assert_same_archive(out, whole)


def _limited(limit_bytes):
    """In the child: files may not grow past ``limit_bytes`` (the kernel refuses the write,
    EFBIG, at the point a full disk would refuse it with ENOSPC)."""

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


def test_disk_full_while_writing_the_first_checkpoint(tmp_path, write_config):
    cfg = write_config(base_config())
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "evomerge", "run", str(cfg), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_limited(64 * 1024),
    )
    errors = [x for x in proc.stderr.splitlines() if x.startswith("evomerge: error: ")]
    assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr
    assert re.search(r"run: cannot write the run's first checkpoint \(File too large", errors[0])
    assert "nothing was kept" in errors[0]
    assert not out.exists()  # nothing half-written
