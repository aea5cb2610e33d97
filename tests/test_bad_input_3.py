"""Bad input, round 3: merge-method parameters, crafted tensor files, statistics, output paths,
edited checkpoints, and never a user's file removed. Grouped by command."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import DIGITS, digits_recipe_config
from safetensors.torch import load_file, save_file
from test_bad_input import one_line, read_only, run_cli  # noqa: F401  (a fixture)
from test_bad_input_2 import _merge_cfg, _model, small
from test_search import assert_same_archive

from evomerge.core.errors import ConfigError
from evomerge.core.files import publish
from evomerge.interface.cli import main
from evomerge.ops.method_table import BUILT_IN
from evomerge.ops.operators import get_merge_method
from evomerge.run import checkpoint
from evomerge.run.config import validate


def _no_output(tmp_path, name="o"):
    assert not (tmp_path / name).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{name}.")]


# --- merge: every parameter checked where the config is read ------------------------------

NAN, INF = float("nan"), float("inf")
FINITE = "it must be a finite number"
BAD_PARAMS = [
    ("linear", {"weight": [{"filter": "x", "value": "a"}]}, {}, rf"\.value: got .a.; {FINITE}"),
    ("linear", {"weight": NAN}, {}, rf"models\[0\]\.params\.weight: got nan; {FINITE}"),
    ("linear", {"weight": [0.1, INF]}, {}, r"weight\[1\]: got inf"),
    ("linear", {"weight": [{"filter": 3, "value": 0.2}]}, {}, r"\[0\]\.filter: 3 is not text"),
    ("linear", {"weight": [{"filter": "x"}]}, {}, r"\[0\]: a filter entry has no 'value'"),
    ("linear", {"weight": 0.5, "densty": 0.5}, {}, r"densty: is not a parameter of linear"),
    ("ties", {"weight": 1.0, "density": -0.5}, {}, rf"density: got -0.5; {FINITE} in \[0, 1\]"),
    ("della", {"weight": 1.0, "epsilon": 0.7}, {}, rf"epsilon: got 0.7; {FINITE} in \[0, 0.5\)"),
    ("karcher", {}, {"tol": NAN}, rf"params\.tol: got nan; {FINITE} > 0"),
    ("karcher", {}, {"max_iter": 2.5}, r"params\.max_iter: got 2.5; it must be a whole number"),
    ("multislerp", {"weight": 1.0}, {"eps": -1.0}, r"params\.eps: got -1.0"),
    ("slerp", {}, {"t": INF}, rf"params\.t: got inf; {FINITE} in \[0, 1\]"),
    ("ties", {"weight": 1.0}, {"normalize": 0.5}, r"params\.normalize: got 0.5; .* true or false"),
    ("sce", {}, {"select_topk": 1.5}, r"params\.select_topk: got 1.5"),
    ("della", {"weight": 1.0, "density": 0.1}, {"epsilon": 0.15},
     r"models\[0\] \(.*\): density 0.1 with epsilon 0.15: .* keep density within \(0.15, 0.85\)"),
    ("della", {"weight": 1.0, "density": [0.5, 0.9]}, {"epsilon": 0.15},
     r"density \[0.5, 0.9\] with epsilon 0.15"),
]  # fmt: skip


@pytest.mark.parametrize("method, model_params, params, message", BAD_PARAMS)
def test_merge_parameters_out_of_range(method, model_params, params, message, tmp_path, capsys):
    import re

    a, b, base = (_model(tmp_path / n) for n in ("a", "b", "base"))
    models = [a] if method == "slerp" else [a, b]
    cfg = {
        "method": method,
        "models": [{"path": str(m), "params": dict(model_params)} for m in models],
        "params": params,
    }
    if method in ("ties", "della", "slerp", "sce"):
        cfg["base"] = str(base)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, err = run_cli(["merge", str(path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and re.search(message, one_line(err)), err
    assert str(path) in one_line(err)
    _no_output(tmp_path)


def test_invalid_override_regex(tmp_path, capsys):
    m = _merge_cfg(
        tmp_path, [_model(tmp_path / "a"), _model(tmp_path / "b")], overrides=[{"match": "x.("}]
    )
    code, err = run_cli(["merge", str(m), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "overrides.0.match: 'x.(' is not a valid regular expression" in one_line(
        err
    )
    _no_output(tmp_path)


def test_every_declared_range_names_a_parameter():
    """The ranges live in the declarations: each names one of its method's parameters, and
    each method's defaults are inside their own ranges."""
    for method in BUILT_IN:
        for name in method.ranges:
            assert name in method.model_params or name in method.params, (method.name, name)
        for name, default in {**method.model_params.defaults, **method.params.defaults}.items():
            assert method.value_problem(name, default) is None, (method.name, name, default)


# --- run: recipe sections checked against the same declarations ---------------------------

BAD_RECIPES = [
    (
        {"method": "della", "base": 0, "genes": {"weight": {}, "density": {"low": -0.1}}},
        r"recipe\.genes\.density: the range \[-0.1, 1\] leaves what della accepts "
        r"\(a finite number in \[0, 1\]\)",
    ),
    ({"method": "ties", "base": 0, "params": {"lambda": NAN}}, r"recipe\.params\.lambda: got nan"),
    ({"method": "linear", "genes": {"weight": {"high": INF}}}, r"recipe\.genes\.weight: .*inf"),
    (
        {"method": "karcher", "genes": {"max_iter": {"low": 1, "high": 5}}},
        r"recipe\.genes\.max_iter: .*a whole number >= 1",
    ),
    (
        {"method": "della", "base": 0, "genes": {"weight": {}, "density": {"low": 0.05}}},
        r"recipe: genes/params: density \[0.05, 1\] with epsilon 0.15: .*\(0.15, 0.85\)",
    ),
    (
        {
            "method": "della",
            "base": 0,
            "params": {"epsilon": 0.3},
            "genes": {"density": {"low": 0.2, "high": 0.6}},
        },
        r"density \[0.2, 0.6\] with epsilon 0.3",
    ),
    (
        {"method": "regmean", "genes": {"alpha": {"low": 0.5, "high": 1.5}}},
        r"recipe\.genes\.alpha: the range \[0.5, 1.5\]",
    ),
]


def test_della_density_and_epsilon_that_fit_are_accepted():
    della = get_merge_method("della")
    for intervals in [
        {"density": (0.2, 0.8), "epsilon": (0.15, 0.15)},
        {"density": (1.0, 1.0), "epsilon": (0.4, 0.4)},  # keeps all: any epsilon
        {"density": (0.0, 0.0), "epsilon": (0.4, 0.4)},  # drops all
        {"density": (0.0, 1.0), "epsilon": (0.0, 0.0)},
        {"density": (0.3, 0.3)},  # epsilon's default, 0.15
    ]:
        assert della.joint_problem(intervals) is None, intervals
    assert della.joint_problem({"density": (0.1, 0.1)}) is not None
    raw = small(
        seeds={"kind": "plugin", "count": 3},
        recipe={"method": "della", "base": 0, "genes": {"density": {"low": 0.2, "high": 0.8}}},
        strategy={"name": "cmaes"},
    )
    validate(raw, "c.yaml")


@pytest.mark.parametrize("recipe, message", BAD_RECIPES)
def test_recipe_parameters_out_of_range(recipe, message):
    raw = small(seeds={"kind": "plugin", "count": 3}, recipe=recipe, strategy={"name": "cmaes"})
    with pytest.raises(ConfigError, match=message):
        validate(raw, "c.yaml")


# --- merge: crafted tensor files -----------------------------------------------------------


def _crafted(path, shape, offsets=(0, 0), dtype="F32"):
    header = json.dumps({"w": {"dtype": dtype, "shape": shape, "data_offsets": list(offsets)}})
    header = header.encode() + b" " * (-len(header) % 8)
    path.mkdir()
    (path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    return path


@pytest.mark.parametrize(
    "shape, offsets, message",
    [
        ([2**32, 2**32, 4], (0, 0), "too large for 64 bits"),
        ([0, 2**62, 2**62], (0, 0), "too large for 64 bits"),
        ([2**64], (0, 0), "not 64-bit counts"),
        ([2.5], (0, 0), "not 64-bit counts"),
        ([True, 2], (0, 0), "not 64-bit counts"),
        ([1] * 65, (0, 4), "more than 64"),
        ([2], (0, 2**70), "data offsets"),
    ],
)
def test_crafted_header_counts(shape, offsets, message, tmp_path, capsys):
    good, bad = _model(tmp_path / "good"), _crafted(tmp_path / "bad", shape, offsets)
    code, err = run_cli(
        ["merge", str(_merge_cfg(tmp_path, [good, bad])), "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2 and message in one_line(err) and "bad/model.safetensors" in one_line(err)
    _no_output(tmp_path)


# --- merge: Fisher / RegMean statistics -------------------------------------------------------


@pytest.fixture(scope="module")
def digits_experts(tmp_path_factory):
    from evomerge.core.plugins import load_object
    from evomerge.ops.statistics import split

    root = tmp_path_factory.mktemp("experts")
    digits = load_object(DIGITS)()
    digits.setup(torch.device("cpu"))
    for name, flat in zip(("low", "high"), digits.make_seeds(2, 0, steps=20), strict=True):
        tensors = {n: t.contiguous() for n, t in split(flat, digits.param_layout()).items()}
        save_file(tensors, root / f"{name}.safetensors")
    return root


def _stats_cfg(root, method, stats, params=None, name="s.yaml"):
    cfg = {
        "method": method,
        "models": [{"path": str(root / f"{m}.safetensors")} for m in ("low", "high")],
        "statistics": {"plugin": DIGITS, **stats},
        "params": params or {},
    }
    path = root / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_damaged_statistics_cache_is_computed_again(digits_experts, tmp_path, capsys):
    cache = tmp_path / "cache"
    stats = {"examples": ["0-4", "5-9"], "limit": 20, "cache": str(cache)}
    cfg = _stats_cfg(digits_experts, "fisher", stats)
    assert main(["merge", str(cfg), "--out", str(tmp_path / "a"), "-q"]) == 0
    first = (tmp_path / "a" / "model.safetensors").read_bytes()
    files = sorted(cache.rglob("fisher.safetensors"))
    assert len(files) == 2
    whole = files[0].read_bytes()
    kept = {k: v.clone() for k, v in load_file(files[0]).items()}  # not a view of the file
    files[0].write_bytes(whole[: len(whole) // 2])  # truncated
    files[1].write_bytes(b"\x00" * 64)  # not safetensors at all
    code, err = run_cli(["merge", str(cfg), "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert sum("damaged cached statistics" in line for line in err) == 2, err
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == first
    again = load_file(files[0])  # computed again, the same
    assert again.keys() == kept.keys() and all(torch.equal(again[k], kept[k]) for k in kept)


def test_regmean_near_singular_system_is_refused(digits_experts, tmp_path, capsys):
    """5 examples for 64 inputs with alpha 1: the Gram sum is singular; the merge says what
    to change and writes nothing. alpha 0.9 (the default) merges the same data."""
    stats = {"examples": ["0-4", "5-9"], "limit": 2, "cache": str(tmp_path / "c")}
    cfg = _stats_cfg(digits_experts, "regmean", stats, {"alpha": 1.0})
    code, err = run_cli(["merge", str(cfg), "--out", str(tmp_path / "o")], capsys)
    line = one_line(err)
    assert code == 2 and "near-singular" in line and "lower alpha (e.g. 0.9)" in line, line
    _no_output(tmp_path)
    cfg = _stats_cfg(digits_experts, "regmean", stats, {"alpha": 0.9})
    assert main(["merge", str(cfg), "--out", str(tmp_path / "o"), "-q"]) == 0


def _file_size_limit(limit: int):
    """A child process whose writes fail past ``limit`` bytes per file (EFBIG, as a full disk
    fails them with ENOSPC): the kernel's own fault, no patched function."""
    import resource

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_disk_that_fills_while_the_statistics_are_written(digits_experts, tmp_path):
    cache = tmp_path / "cache"
    stats = {"examples": ["0-4", "5-9"], "limit": 20, "cache": str(cache)}
    cfg = _stats_cfg(digits_experts, "fisher", stats)
    proc = subprocess.run(
        [sys.executable, "-m", "evomerge", "merge", str(cfg), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        preexec_fn=_file_size_limit(4096),
        timeout=300,
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot write the statistics (" in err[-1] and "File too large" in err[-1], err
    assert "free disk space or set statistics.cache to another folder" in err[-1]
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # no partial cache file
    _no_output(tmp_path)
    assert main(["merge", str(cfg), "--out", str(tmp_path / "o"), "-q"]) == 0  # room again


@pytest.mark.parametrize(
    "recipe", [{"params": {"alpha": 1.0}}, {"genes": {"weight": {}, "alpha": {"low": 0.5}}}]
)
def test_regmean_recipe_search_refuses_a_near_singular_system_at_start(recipe, tmp_path, capsys):
    """The same near-singular Grams in a recipe search: refused before the first candidate
    (the highest alpha a candidate can reach is checked), naming the tensor and the fix."""
    cfg = digits_recipe_config(4, 5, evaluator={"kind": "local"})
    stats = {"examples": ["0-4", "5-9", "0-4"], "limit": 2}
    cfg["recipe"] = {"method": "regmean", "statistics": stats, **recipe}
    cfg["recipe"].setdefault("genes", {"weight": {}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, err = run_cli(["run", str(path), "--out", str(tmp_path / "o")], capsys)
    line = one_line(err)
    assert code == 2 and "regmean on layers.0.weight: the Gram system" in line, line
    assert "with alpha 1;" in line and "lower alpha" in line
    _no_output(tmp_path)


def test_sigterm_during_the_statistics_pass(digits_experts, tmp_path):
    cache = tmp_path / "cache"
    stats = {"examples": ["0-4", "5-9"], "cache": str(cache)}  # every example: a long pass
    cfg = _stats_cfg(digits_experts, "fisher", stats)
    proc = subprocess.Popen(
        [sys.executable, "-m", "evomerge", "merge", str(cfg), "--out", str(tmp_path / "o")],
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        if "fisher statistics of" in line:  # the pass has begun (on a quiet machine it lasts
            break  # under a second: the signal is sent at once)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, rest
    # promptly: within one batch of the pass (45 s leaves room for a machine under load)
    assert time.monotonic() - t0 < 45 and "Traceback" not in rest
    from evomerge.ops.statistics import damage_of

    left = [p for p in cache.rglob("*") if p.is_file()]  # whole files only: no temporary one
    assert len(left) < 2 and all(p.name == "fisher.safetensors" for p in left), left
    assert all(damage_of(p, "fisher") is None for p in left)
    _no_output(tmp_path)


def test_missing_statistics_model(digits_experts, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(digits_experts, root)
    (root / "high.safetensors").unlink()
    cfg = _stats_cfg(root, "fisher", {"cache": str(tmp_path / "c")})
    code, err = run_cli(["merge", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "high.safetensors': no such file or folder" in one_line(err)
    _no_output(tmp_path)


# --- report: never a user's file -------------------------------------------------------------


@pytest.fixture
def finished_run(tmp_path, write_config, capsys):
    out = tmp_path / "run"
    assert run_cli(["run", str(write_config(small())), "--out", str(out), "-q"], capsys)[0] == 0
    return out


def test_report_never_removes_a_users_figures(finished_run, tmp_path, capsys):
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "fig1.png").write_bytes(b"\x89PNG mine")
    (figures / "index.html").write_text("<p>my page</p>")
    code, err = run_cli(["report", str(finished_run), "--out", str(figures)], capsys)
    assert code == 2 and "holds files that no evomerge report wrote" in one_line(err)
    assert sorted(os.listdir(figures)) == ["fig1.png", "index.html"]
    assert (figures / "fig1.png").read_bytes() == b"\x89PNG mine"


def test_report_rebuilds_only_its_own_folder(finished_run, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(finished_run), "--out", str(out), "-q"]) == 0
    marker = json.loads((out / ".evomerge-report").read_text())
    assert set(marker["files"]) == {p.name for p in out.iterdir()} - {".evomerge-report"}
    assert main(["report", str(finished_run), "--out", str(out), "-q"]) == 0  # its own: rebuilt
    (out / "notes.txt").write_text("mine")
    code, err = run_cli(["report", str(finished_run), "--out", str(out)], capsys)
    assert code == 2 and "holds 'notes.txt', which the earlier report did not write" in one_line(
        err
    )
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    (out / ".evomerge-report").write_text("{not json")
    code, err = run_cli(["report", str(finished_run), "--out", str(out)], capsys)
    assert code == 2 and ".evomerge-report is damaged" in one_line(err)
    assert (out / "index.html").is_file()


def test_sigterm_during_report(finished_run, tmp_path):
    out = tmp_path / "rep"
    assert main(["report", str(finished_run), "--out", str(out), "-q"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "evomerge", "report", str(finished_run), "--out", str(out)],
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stderr.readline()  # "report on 1 run(s)": plotting has started
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    code = proc.wait(timeout=60)
    assert code in (0, 130) and "Traceback" not in rest, rest
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    # the old report, or the new one whole: the same files, each listed in its marker
    assert set(after) == set(before)
    marker = json.loads(after[".evomerge-report"])
    assert set(marker["files"]) == set(after) - {".evomerge-report"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rep.")]


@pytest.mark.parametrize("old", [False, True])
def test_an_interrupt_while_publishing_waits_for_the_swap(tmp_path, monkeypatch, old):
    final, tmp = tmp_path / "out", tmp_path / ".out.tmp"
    if old:
        final.mkdir()
        (final / "a").write_text("old")
    tmp.mkdir()
    (tmp / "a").write_text("new")
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    real_replace = os.replace

    def replace_interrupted(src, dst):  # the signal lands between the two renames
        os.kill(os.getpid(), signal.SIGTERM)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            publish(tmp, final, aside=tmp_path / ".out.old")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (final / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- every writing command: output paths -----------------------------------------------------

NOT_UTF8 = os.fsdecode(b"\xff\xfe-out")


def _commands(tmp_path, finished_run, write_config):
    m = _merge_cfg(tmp_path, [_model(tmp_path / "a"), _model(tmp_path / "b")])
    return {
        "run": lambda out: ["run", str(write_config(small())), "--out", out],
        "merge": lambda out: ["merge", str(m), "--out", out],
        "export": lambda out: ["export", str(finished_run), "--out", out],
        "report": lambda out: ["report", str(finished_run), "--out", out],
        "init": lambda out: ["init", out],
        "config-reference": lambda out: ["config-reference", "--out", out],
    }


@pytest.mark.parametrize(
    "case, message",
    [
        ("not-utf8", "is not valid UTF-8; choose a UTF-8 name"),
        ("long-name", "(File name too long: "),
        ("long-path", "more than the 3841 this system leaves for it"),
        ("under-a-file", "afile: is a file, not a folder"),
        ("dangling-parent", "dangling: is a symbolic link to"),
    ],
)
def test_output_paths_of_every_writing_command(
    case, message, finished_run, tmp_path, write_config, capsys
):
    commands = _commands(tmp_path, finished_run, write_config)
    (tmp_path / "afile").write_text("mine")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    out = {
        "not-utf8": str(tmp_path / NOT_UTF8),
        "long-name": str(tmp_path / ("n" * 300)),
        "long-path": str(tmp_path.joinpath(*["p" * 200] * 20)),
        "under-a-file": str(tmp_path / "afile" / "x"),
        "dangling-parent": str(tmp_path / "dangling" / "x"),
    }[case]
    before = sorted(os.listdir(tmp_path))
    for name, args in commands.items():
        code, err = run_cli(args(out), capsys)
        assert code == 2 and message in one_line(err), (name, err)
        assert sorted(os.listdir(tmp_path)) == before, name
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_folder_where_a_file_is_expected(tmp_path, capsys):
    folder = tmp_path / "ref.md"
    folder.mkdir()
    code, err = run_cli(["config-reference", "--out", str(folder)], capsys)
    assert code == 2 and "is a folder, not a file" in one_line(err)
    assert folder.is_dir() and not list(folder.iterdir())


def test_read_only_parent(finished_run, tmp_path, write_config, capsys, read_only):  # noqa: F811
    ro = read_only(tmp_path / "ro")
    for name, args in _commands(tmp_path, finished_run, write_config).items():
        code, err = run_cli(args(str(ro / "x")), capsys)
        assert code == 2 and "ro/x: cannot create the" in one_line(err), (name, err)
        assert "(Permission denied); " in one_line(err) and not os.listdir(ro), (name, err)


# --- init --force: nothing replaced before everything can be written -------------------------


def test_init_force_checks_every_place_first(tmp_path, capsys):
    project = tmp_path / "p"
    project.mkdir()
    (project / "search.yaml").write_text("mine: 1\n")
    (project / "README.md").mkdir()  # a folder where the template has a file
    code, err = run_cli(["init", str(project), "--force"], capsys)
    assert code == 2 and "README.md: is a folder where the template has a file" in one_line(err)
    assert (project / "search.yaml").read_text() == "mine: 1\n"
    assert sorted(os.listdir(project)) == ["README.md", "search.yaml"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".p.init-")]
    (project / "README.md").rmdir()
    assert main(["init", str(project), "--force", "-q"]) == 0
    assert (project / "search.yaml").read_text() != "mine: 1\n"  # --force replaces, as asked


# --- resume: out-of-range checkpoint contents --------------------------------------------------


def _tamper(run, meta_change=None, tensor_change=None):
    newest = checkpoint.list_checkpoints(run / "checkpoints")[-1]
    if meta_change is not None:
        meta = json.loads((newest / "state.json").read_text())
        meta_change(meta)
        (newest / "state.json").write_text(json.dumps(meta))
    if tensor_change is not None:
        tensors = load_file(newest / "state.safetensors")
        tensor_change(tensors)
        save_file(tensors, newest / "state.safetensors")
    sums = {n: checkpoint.sha256_file(newest / n) for n in checkpoint.STATE_FILES}
    (newest / "manifest.json").write_text(json.dumps({"sha256": sums}))
    return newest


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


DAMAGE = {
    "id-beyond-int64": (_set("next_id", 2**70), None),
    "negative-next-id": (_set("next_id", -5), None),
    "infinite-time": (_set("wall_seconds", INF), None),
    "nan-time": (_set("wall_seconds", NAN), None),
    "evaluations-beyond-int64": (_set("evaluations", 2**64), None),
    "scores-columns": (None, lambda t: t.__setitem__("scores", t["scores"][:, :3].contiguous())),
    "scores-rows": (None, lambda t: t.__setitem__("scores", t["scores"][:5].contiguous())),
    "duplicate-ids": (None, lambda t: t.__setitem__("ids", t["ids"] * 0 + 7)),
    "nan-genes": (None, lambda t: t["params"].__setitem__(0, NAN)),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_refuses_out_of_range_checkpoints(damage, tmp_path, write_config, capsys):
    """The newest checkpoint is refused in one line and the previous one used: the same archive
    as a run never touched; summary.json and history.jsonl are strict JSON."""
    out, whole = tmp_path / "run", tmp_path / "whole"
    assert run_cli(["run", str(write_config(small())), "--out", str(out), "-q"], capsys)[0] == 0
    shutil.copytree(out, whole)
    newest = _tamper(out, *DAMAGE[damage])
    code, err = run_cli(["resume", str(out)], capsys)
    assert code == 0 and not any("Traceback" in line for line in err), err
    assert any(f"skipping damaged checkpoint {newest}" in line for line in err), err
    assert_same_archive(out, whole)

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))

    summary = strict((out / "summary.json").read_text())
    assert math.isfinite(summary["wall_seconds"]) and summary["evaluations"] == 40
    for line in (out / "history.jsonl").read_text().splitlines():
        strict(line)


# --- run: leftovers of round 2 -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value, message",
    [
        ("name=\x01", "character #x0001 is not allowed in YAML"),
        ("name=" + os.fsdecode(b"\xff"), "character #xdcff is not allowed in YAML"),
        ("name=@x", "the value is not YAML"),
    ],
)
def test_set_values_yaml_refuses(value, message, write_config, tmp_path, capsys):
    code, err = run_cli(["run", str(write_config(small())), "--set", value], capsys)
    line = one_line(err)
    assert code == 2 and message in line and line.isprintable()


def test_set_evaluator_kind_local_on_a_ray_config(tmp_path, write_config, capsys):
    cfg = small(evaluator={"kind": "ray", "workers": 2, "num_cpus": 1, "timeout_s": 30})
    out = tmp_path / "run"
    code, err = run_cli(
        ["run", str(write_config(cfg)), "--out", str(out), "--set", "evaluator.kind=local", "-q"],
        capsys,
    )
    assert code == 0, err
    dropped = "dropped evaluator.num_cpus, evaluator.timeout_s, evaluator.workers"
    assert any(dropped in line for line in err), err
    assert yaml.safe_load((out / "config.yaml").read_text())["evaluator"]["kind"] == "local"
    code, err = run_cli(
        [
            "run",
            str(write_config(cfg)),
            "--out",
            str(tmp_path / "r2"),
            "--set",
            "evaluator.kind=local",
            "--set",
            "evaluator.workers=3",
        ],
        capsys,
    )  # a key set after the switch is still checked
    assert code == 2 and "evaluator.workers: unknown key" in one_line(err)


def test_aliases_expanding_to_megabytes(tmp_path, capsys):
    items = ", ".join(["0.123456789"] * 1000)
    options = f"    k0: &b [{items}]\n" + "".join(f"    k{i}: *b\n" for i in range(1, 150))
    text = yaml.safe_dump(small()).replace("fitness:\n", "fitness:\n  options:\n" + options, 1)
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert path.stat().st_size < 20_000
    code, err = run_cli(["run", str(path), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "MiB when written to the run's config.yaml" in one_line(err)
    assert not (tmp_path / "run").exists()


def test_causal_lm_seed_folder_that_does_not_exist(tmp_path, write_config, capsys):
    fitness = {
        "plugin": "causal_lm",
        "options": {"seeds": [str(tmp_path / "models" / "nope")], "tasks": [{"train": "t.jsonl"}]},
    }
    cfg = small(fitness=fitness, seeds={"kind": "plugin", "count": 1})
    code, err = run_cli(["run", str(write_config(cfg)), "--out", str(tmp_path / "r")], capsys)
    line = one_line(err)
    assert code == 2 and "seeds[0]: '" in line and "models/nope' is not a folder" in line, line
    assert "Repo id" not in line
    assert not (tmp_path / "r").exists()


def test_a_plain_run_imports_no_task_code(tmp_path, write_config, capsys):
    """lm-eval task folders can run Python (``!function``): a run whose plug-in is not the
    lm-eval one never imports lm_eval, so no task folder is read."""
    code = (
        "import sys; from evomerge.interface.cli import main; "
        f"rc = main(['run', {str(write_config(small()))!r}, '--out', {str(tmp_path / 'r')!r}, "
        "'-q']); assert rc == 0; assert not any(m.startswith('lm_eval') for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
