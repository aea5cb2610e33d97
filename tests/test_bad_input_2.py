"""Bad input, round 2: one writer per run, damaged runs, hostile files, no garbage written."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import PLUGINS, base_config
from safetensors.torch import save_file
from test_bad_input import _limited, one_line, run_cli
from test_search import assert_same_archive

from evomerge.core.errors import ConfigError
from evomerge.interface.cli import main
from evomerge.run import checkpoint
from evomerge.run.config import validate

SMALL = str(PLUGINS / "bad.py:Small")


def small(**changes):
    cfg = base_config(fitness={"plugin": SMALL}, budget={"evaluations": 40}, checkpoint_every=20)
    cfg.update(changes)
    return cfg


def cli(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "evomerge", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def errors_of(stderr):
    lines = [x for x in stderr.splitlines() if x.startswith("evomerge: error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# --- 1. one writer per run directory -------------------------------------------------------


def test_two_resumes_at_once(tmp_path, write_config, capsys):
    """Both started together: one is refused in one line, the other gives the uninterrupted
    result, and history.jsonl has each record once."""
    slow = {"plugin": str(PLUGINS / "bad.py:Slow"), "options": {"delay": 0.03}}
    out = tmp_path / "run"
    cfg = write_config(base_config(fitness=slow, budget={"evaluations": 40}, checkpoint_every=20))
    assert run_cli(["run", str(cfg), "--out", str(out), "-q"], capsys)[0] == 0
    stored = yaml.safe_load((out / "config.yaml").read_text())
    stored["budget"]["evaluations"] = 120
    (out / "config.yaml").write_text(yaml.safe_dump(stored))
    procs = [cli("resume", out, "-q"), cli("resume", out, "-q")]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "is running now" in errors_of(refused)
    evals = [json.loads(x)["evaluations"] for x in (out / "history.jsonl").read_text().splitlines()]
    assert evals == sorted(set(evals)) and evals[-1] == 120
    whole = tmp_path / "whole"
    fast = {"plugin": str(PLUGINS / "bad.py:Slow"), "options": {"delay": 0.0}}
    cfg2 = base_config(fitness=fast, budget={"evaluations": 120}, checkpoint_every=20)
    assert (
        run_cli(["run", str(write_config(cfg2, "w.yaml")), "--out", str(whole), "-q"], capsys)[0]
        == 0
    )
    assert_same_archive(out, whole)


def test_a_stale_lock_whose_pid_is_another_live_process(tmp_path, write_config, capsys):
    """running.json and run.lock left by a dead run whose pid now belongs to a live process
    (here: this test's own pid; pid 1 in a container) block nothing."""
    out = tmp_path / "run"
    assert run_cli(["run", str(write_config(small())), "--out", str(out), "-q"], capsys)[0] == 0
    (out / "summary.json").unlink()
    stale = {"pid": os.getpid(), "host": socket.gethostname(), "updated": time.time()}
    (out / "running.json").write_text(json.dumps(stale))
    (out / "run.lock").write_text(json.dumps({"pid": 1, "host": socket.gethostname()}))
    assert main(["status", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "stopped"
    code, err = run_cli(["resume", str(out)], capsys)
    assert code == 0 and f"fitness plug-in (its code runs now): {SMALL}" in err[0]


def test_run_into_a_directory_being_written(tmp_path, write_config, capsys):
    """While one process holds a run directory, 'run --out' there is refused too."""
    from evomerge.run.rundir import RunDir

    out = tmp_path / "run"
    with RunDir(out).writer(create=True):  # another open file: refused even in this process
        code, err = run_cli(["run", str(write_config(small())), "--out", str(out)], capsys)
        assert code == 2 and "is running now" in one_line(err)
    assert not out.exists()  # no run was made: the lock file and folder are gone


# --- 2. damaged runs ---------------------------------------------------------------------


DAMAGE = {
    "summary": ("summary.json", b'["not", "a summary"]'),
    "history": ("history.jsonl", b'{"evaluations": 1}\n\xff\xfe garbage\n7\n{"evaluations": 2}\n'),
    "config": ("config.yaml", b"seed: [1,\n"),
    "lock": ("running.json", b"\x00\x01 not json"),
}


def test_ls_status_report_survive_a_damaged_run(tmp_path, write_config, capsys):
    good = tmp_path / "runs" / "good"
    assert run_cli(["run", str(write_config(small())), "--out", str(good), "-q"], capsys)[0] == 0
    for kind, (name, data) in DAMAGE.items():
        shutil.copytree(good, good.parent / kind)
        (good.parent / kind / name).write_bytes(data)
    assert main(["ls", str(good.parent), "--json"]) == 0
    rows = {os.path.basename(r["run"]): r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"good", *DAMAGE}
    assert rows["good"]["state"] == "finished"
    for kind in DAMAGE:
        assert rows[kind]["state"] == "damaged", rows[kind]
    assert main(["ls", str(good.parent)]) == 0 and "damaged" in capsys.readouterr().out
    code, err = run_cli(["status", str(good.parent / "config")], capsys)
    assert code == 2 and "config.yaml: damaged" in one_line(err)
    assert main(["status", str(good.parent / "history")]) == 0
    assert "2 damaged line(s)" in capsys.readouterr().out
    dirs = [str(good.parent / k) for k in ["good", *DAMAGE]]
    report = tmp_path / "report"
    assert main(["report", *dirs, "--out", str(report), "-q"]) == 0
    page = (report / "index.html").read_text()
    assert "damaged, left out" in page and "summary.json: damaged" in page


# --- 3. hostile and damaged inputs -------------------------------------------------------

BOMB = "\n".join(
    ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
)

HOSTILE_YAML = [
    ("alias-bomb", BOMB.encode(), r"expands to more than 200000 values"),
    ("recursive-alias", b"seed: &a [*a]\n", r"line 1: an alias refers to a node that contains it"),
    ("duplicate-key", b"seed: 0\nbatch: 1\nseed: 1\n", r"line 3: duplicate key 'seed' .*line 1"),
    ("deep", b"seed: " + b"[" * 400 + b"]" * 400 + b"\n", r"nested deeper than 64 levels"),
    ("not-utf8", b"seed: 0\nname: caf\xe9\n", r"byte 17 \(0xe9\) is not UTF-8 text"),
]


@pytest.mark.parametrize(
    "data, message", [c[1:] for c in HOSTILE_YAML], ids=[c[0] for c in HOSTILE_YAML]
)
def test_hostile_yaml(data, message, tmp_path, capsys):
    import re

    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    t0 = time.perf_counter()
    code, err = run_cli(["run", str(path), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and re.search(message, one_line(err)), err
    assert time.perf_counter() - t0 < 10 and not (tmp_path / "r").exists()
    merge = tmp_path / "merge.yaml"  # merge configs go through the same reader
    merge.write_bytes(data)
    code, err = run_cli(["merge", str(merge), "--out", str(tmp_path / "m")], capsys)
    assert code == 2 and re.search(message, one_line(err)), err


def test_set_value_that_is_not_yaml(write_config, capsys):
    code, err = run_cli(["run", str(write_config(small())), "--set", "name=[oops"], capsys)
    assert code == 2 and "--set 'name=[oops': the value is not YAML" in one_line(err)


@pytest.mark.parametrize("damage", ["list", "wrong-type"])
def test_checkpoint_json_of_the_wrong_shape(damage, tmp_path, write_config, capsys):
    """Valid JSON, matching sums, wrong contents: damaged, the previous checkpoint is used."""
    out, whole = tmp_path / "run", tmp_path / "whole"
    assert run_cli(["run", str(write_config(small())), "--out", str(out), "-q"], capsys)[0] == 0
    shutil.copytree(out, whole)
    newest = checkpoint.list_checkpoints(out / "checkpoints")[-1]
    meta = json.loads((newest / "state.json").read_text())
    bad = [meta] if damage == "list" else {**meta, "next_id": "many"}
    (newest / "state.json").write_text(json.dumps(bad))
    sums = {n: checkpoint.sha256_file(newest / n) for n in checkpoint.STATE_FILES}
    (newest / "manifest.json").write_text(json.dumps({"sha256": sums}))
    code, err = run_cli(["resume", str(out)], capsys)
    assert code == 0, err
    assert any(f"skipping damaged checkpoint {newest}" in line for line in err), err
    assert_same_archive(out, whole)


def _deep_safetensors(path, depth=100_000):
    header = b'{"w": ' + b"[" * depth + b"]" * depth + b"}"
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header)


def _merge_cfg(tmp_path, models, method="linear", **extra):
    cfg = {
        "method": method,
        "models": [{"path": str(m), "params": {"weight": 0.5}} for m in models],
    }
    cfg.update(extra)
    path = tmp_path / f"merge-{method}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _model(folder, nan=None, n=4):
    folder.mkdir()
    w = torch.arange(n, dtype=torch.float32)
    if nan is not None:
        w[1] = nan
    save_file({"layers.0.w": w, "layers.1.w": w + 1}, folder / "model.safetensors")
    return folder


def test_deeply_nested_safetensors_header_and_index(tmp_path, capsys):
    good = _model(tmp_path / "good")
    deep = tmp_path / "deep"
    deep.mkdir()
    _deep_safetensors(deep / "model.safetensors")
    code, err = run_cli(
        ["merge", str(_merge_cfg(tmp_path, [good, deep])), "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "header is JSON nested too deep" in one_line(err)
    index = tmp_path / "index"
    index.mkdir()
    (index / "model.safetensors.index.json").write_text("[" * 100_000 + "]" * 100_000)
    code, err = run_cli(
        ["merge", str(_merge_cfg(tmp_path, [good, index])), "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "not a valid safetensors index" in one_line(err)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "tpu0"])
def test_evaluator_device_that_does_not_exist(device, tmp_path, write_config, capsys):
    cfg = small(evaluator={"kind": "local", "device": device})
    code, err = run_cli(["run", str(write_config(cfg)), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and f"evaluator.device: '{device}'" in one_line(err)
    assert not (tmp_path / "r").exists()


def test_plugin_calling_sys_exit(tmp_path, write_config, capsys):
    at_import = small(fitness={"plugin": str(PLUGINS / "exits.py:Small")})
    code, err = run_cli(["run", str(write_config(at_import)), "--out", str(tmp_path / "r")], capsys)
    assert code == 1 and "importing" in one_line(err) and "SystemExit: 3" in one_line(err)
    in_setup = small(fitness={"plugin": str(PLUGINS / "bad.py:ExitsInSetup")})
    code, err = run_cli(["run", str(write_config(in_setup)), "--out", str(tmp_path / "r")], capsys)
    assert code == 1 and "setup() raised SystemExit: sys.exit(4)" in one_line(err)
    assert not (tmp_path / "r").exists()


def test_plugin_source_that_is_not_utf8(tmp_path, write_config, capsys):
    plugin = tmp_path / "latin1.py"
    plugin.write_bytes(b"# caf\xe9\nfrom evomerge import Fitness\n")
    cfg = small(fitness={"plugin": f"{plugin}:Small"})
    code, err = run_cli(["run", str(write_config(cfg)), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "latin1.py: byte 5 (0xe9) is not UTF-8 text" in one_line(err)


def test_out_too_long_or_a_file(tmp_path, write_config, capsys):
    cfg = str(write_config(small()))
    long = tmp_path / ("x" * 300)
    code, err = run_cli(["run", cfg, "--out", str(long)], capsys)
    assert code == 2 and "cannot create the run directory (File name too long" in one_line(err)
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    code, err = run_cli(["run", cfg, "--out", str(a_file)], capsys)
    assert code == 2 and "is a file, not a folder" in one_line(err)
    assert a_file.read_text() == "mine"
    m = _merge_cfg(tmp_path, [_model(tmp_path / "a"), _model(tmp_path / "b")])
    code, err = run_cli(["merge", str(m), "--out", str(long)], capsys)
    assert code == 2 and "more than the 255" in one_line(err)
    code, err = run_cli(["merge", str(m), "--out", str(a_file)], capsys)
    assert code == 2 and "already exists and is not an empty folder" in one_line(err)
    assert a_file.read_text() == "mine"


# --- 4. nothing garbage, nothing half-written --------------------------------------------


@pytest.mark.parametrize("method", ["linear", "ties"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_merge_seed_with_nan_or_inf(method, value, tmp_path, capsys):
    base = _model(tmp_path / "base")
    good, bad = _model(tmp_path / "good"), _model(tmp_path / "bad", nan=value)
    extra = {"base": str(base), "params": {"density": 0.5}} if method == "ties" else {}
    cfg = _merge_cfg(tmp_path, [good, bad], method, **extra)
    code, err = run_cli(["merge", str(cfg), "--out", str(tmp_path / "o")], capsys)
    line = one_line(err)
    assert code == 2 and "bad/model.safetensors: tensor 'layers.0.w' holds" in line
    assert ("NaN" if value != value else "Inf") in line
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]


def test_nan_held_out_metric_is_valid_json(tmp_path, write_config, capsys):
    out = tmp_path / "run"
    cfg = small(fitness={"plugin": str(PLUGINS / "bad.py:NaNMetric")})
    assert run_cli(["run", str(write_config(cfg)), "--out", str(out), "-q"], capsys)[0] == 0

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))

    summary = strict((out / "summary.json").read_text())
    assert summary["metrics"]["test_loss"] is None and summary["metrics"]["test_ok"] == 1.0
    assert summary["nonfinite_metrics"] == {"test_loss": "nan"}
    for line in (out / "history.jsonl").read_text().splitlines():
        assert strict(line)["nonfinite_metrics"] == {"test_loss": "nan"}
    assert main(["report", str(out), "-q"]) == 0 and main(["status", str(out)]) == 0


def _limited_run(args, limit, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "evomerge", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
        preexec_fn=_limited(limit),
        cwd=tmp_path,
    )
    return proc.returncode, errors_of(proc.stderr)


def test_disk_full_during_merge_and_report(tmp_path, write_config, capsys):
    a, b = _model(tmp_path / "a", n=40_000), _model(tmp_path / "b", n=40_000)
    out = tmp_path / "o"
    code, line = _limited_run(
        ["merge", _merge_cfg(tmp_path, [a, b]), "--out", out], 64 * 1024, tmp_path
    )
    assert code == 1 and "File too large" in line and "nothing was saved" in line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]
    run = tmp_path / "run"
    assert run_cli(["run", str(write_config(small())), "--out", str(run), "-q"], capsys)[0] == 0
    assert main(["report", str(run), "-q"]) == 0
    before = {p.name: p.read_bytes() for p in (run / "report").iterdir()}
    code, line = _limited_run(["report", run], 8 * 1024, tmp_path)
    assert code == 1 and "cannot write the report (File too large)" in line
    after = {p.name: p.read_bytes() for p in (run / "report").iterdir()}
    assert after == before  # the earlier report is intact, no file half-replaced
    assert not [p for p in run.iterdir() if p.name.startswith(".report.")]


# --- 5. recipe genes and bounds ----------------------------------------------------------


def test_sigmoid_genes_with_bounds_are_refused(tmp_path):
    recipe = {"method": "linear", "genes": {"weight": {"transform": "sigmoid"}}}
    raw = base_config(
        fitness={"plugin": SMALL},
        seeds={"kind": "plugin", "count": 2},
        recipe=recipe,
        strategy={"name": "cmaes", "bounds": [0.0, 1.0]},
    )
    with pytest.raises(
        ConfigError,
        match=r"recipe\.genes\.weight: transform 'sigmoid' with "
        r"strategy\.bounds \[0\.0, 1\.0\] reaches only 50-73 %",
    ):
        validate(raw, "c.yaml")
    validate({**raw, "strategy": {"name": "cmaes", "bounds": None}}, "c.yaml")  # unbounded
    linear = {**recipe, "genes": {"weight": {"transform": "linear"}}}
    validate({**raw, "recipe": linear}, "c.yaml")  # linear genes with bounds: fine
