"""``extensions:``: a user's merge method and strategy, defined in files the config names, run
on two real Ray workers; bad entries are one line; the merge-operator docs' example runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import DIGITS, ROOT, base_config
from safetensors.torch import load_file
from test_bad_input import one_line, run_cli

from evomerge.core import extensions
from evomerge.core.errors import ConfigError
from evomerge.interface.cli import main
from evomerge.ops.operators import MERGE_METHODS, BaseRole
from evomerge.run.config import validate
from evomerge.run.loop import config_digest
from evomerge.runtime.local import LocalEvaluator

EXAMPLE = ROOT / "docs" / "examples" / "merge_operator"
SEED_OPTIONS = {"shared_init": True, "include_base": True, "steps": 60, "lr": 0.01}
GRID = [0.0, 0.25, 0.5, 0.75, 1.0]

# base + sum_k w_k^2 (theta_k - base): no built-in method squares the weights. Each call
# appends its process id to PID_LOG (filled in by the test), so the test sees where it ran.
SQUARED_OPS = """
import os

PID_LOG = {pid_log!r}

from evomerge.ops.operators import BaseRole, MergeMethod, Parameters, register_merge_method


def squared_weights(base, models, model_params, params, generator):
    with open(PID_LOG, "a") as log:
        log.write(f"{{os.getpid()}}\\n")
    out = base.clone()
    for theta, p in zip(models, model_params):
        out += p["weight"] ** 2 * (theta - base)
    return out


register_merge_method(
    MergeMethod("squared_weights", squared_weights, BaseRole.REQUIRED, Parameters(("weight",)))
)
"""

# Candidate i of the run has every gene equal to values[i % len(values)].
GRID_STRATEGY = """
from dataclasses import replace
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from evomerge import register_strategy
from evomerge.search.m2n2 import Children
from evomerge.search.random_search import RandomSearch


class GridConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["grid"] = "grid"
    values: list[float]

    @property
    def alpha(self) -> float:
        return 0.0


class Grid(RandomSearch):
    def ask(self, state, n):
        dim = state.best.genes.numel()
        values = self.config.values
        rows = [
            torch.full((dim,), values[(state.evaluations + i) % len(values)])
            for i in range(n)
        ]
        ids = tuple(range(state.next_id, state.next_id + n))
        return Children(torch.stack(rows).float(), ids, ((-1, -1),) * n)


register_strategy("grid", GridConfig, Grid)
"""


def grid_config(**changes) -> dict:
    cfg = {
        "seed": 0,
        "extensions": ["ext/squared_ops.py", "ext/grid_strategy.py"],
        "budget": {"evaluations": 8},
        "batch": 4,
        "checkpoint_every": 8,
        "history_every": 4,
        "fitness": {"plugin": DIGITS},
        "seeds": {"kind": "plugin", "count": 3, "options": SEED_OPTIONS},
        "recipe": {
            "method": "squared_weights",
            "base": 0,
            "genes": {"weight": {"low": 0.0, "high": 1.0}},
        },
        "strategy": {"name": "grid", "values": GRID},
        "evaluator": {"kind": "ray", "workers": 2, "num_cpus": 1},
    }
    cfg.update(changes)
    return cfg


@pytest.fixture
def ext_dir(tmp_path):
    """The two extension files, in a folder beside the config (named relative to it)."""
    folder = tmp_path / "ext"
    folder.mkdir()
    (folder / "squared_ops.py").write_text(SQUARED_OPS.format(pid_log=str(tmp_path / "pids")))
    (folder / "grid_strategy.py").write_text(GRID_STRATEGY)
    return folder


def hand_scores(weight_of) -> dict[float, float]:
    """Per grid value v: the train score of base + f(v) * sum of the experts' task vectors,
    computed here on one thread as each Ray worker does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluator = LocalEvaluator(DIGITS, {}, "cpu")
        seeds = evaluator.make_seeds(3, 0, dict(SEED_OPTIONS))
        base = seeds[0]
        out = {}
        for v in GRID:
            merged = base.clone()
            for theta in seeds[1:]:
                merged += weight_of(v) * (theta - base)
            out[v] = evaluator.score(merged[None]).mean().item()
        return out
    finally:
        torch.set_num_threads(threads)


def test_user_merge_method_and_strategy_run_on_two_ray_workers(
    tmp_path, write_config, ext_dir, ray_local
):
    pid_log = tmp_path / "pids"
    path = write_config(grid_config())
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0

    # The operator ran in the two worker processes, never in the driver.
    pids = {int(x) for x in pid_log.read_text().split()}
    assert len(pids) == 2 and os.getpid() not in pids
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["workers"]) == 2 and all(w["evaluated"] > 0 for w in summary["workers"])

    # The grid strategy chose the candidates: every best weight is a grid value, and the best
    # score is the best of the hand-computed squared-weight merges on that grid.
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    squared = hand_scores(lambda v: v * v)
    assert history[-1]["best_train_score"] == pytest.approx(max(squared.values()), abs=1e-6)
    weights = {m["weight"] for g in summary["recipe"]["groups"].values() for m in g["models"]}
    assert len(weights) == 1 and squared[weights.pop()] == max(squared.values())
    # ... which the same weights, not squared (task_arithmetic), would not have given
    linear = hand_scores(lambda v: v)
    assert max(linear.values()) != pytest.approx(max(squared.values()), abs=1e-6)

    # The run directory records the resolved files; the digest covers them.
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["extensions"] == [
        str(ext_dir / "squared_ops.py"),
        str(ext_dir / "grid_strategy.py"),
    ]
    assert written["strategy"]["name"] == "grid"


def test_files_travel_as_text_and_import_once(tmp_path):
    path = tmp_path / "once_ops.py"
    path.write_text(
        "from evomerge.ops.operators import MergeMethod, register_merge_method\n"
        "register_merge_method(MergeMethod('first_model', lambda b, m, mp, p, g: m[0].clone()))\n"
    )
    shipped = extensions.package([str(path)])
    path.unlink()  # a worker on another node has no such file: the text is enough
    try:
        (module,) = extensions.load(shipped)
        assert extensions.load(shipped)[0] is module  # one import per process
        method = MERGE_METHODS["first_model"]
        assert method.base is BaseRole.NONE and method.mergekit is None
        assert torch.equal(method(None, [torch.ones(2), torch.zeros(2)]), torch.ones(2))
    finally:
        MERGE_METHODS.unregister("first_model")


def test_digest_changes_only_when_extensions_are_given(tmp_path, ext_dir):
    plain = base_config(fitness={"plugin": "my_pkg.task:Task"})
    digest = config_digest(validate(plain, "plain", bases=[tmp_path]))
    # the digest this config had before extensions existed: its old runs still resume
    assert digest == "688f61df96a43fff03131fba50e35c132321c29e168db5ba031c024bd67b68fa"
    ext = {**plain, "extensions": ["ext/grid_strategy.py"]}
    assert config_digest(validate(ext, "ext", bases=[tmp_path])) != digest


BAD_ENTRIES = [
    ("my_ops.py", r"extensions: expected a list"),
    (["nope.py"], r"extensions\[0\]: 'nope\.py' not found \(looked in .*\); give a \.py file"),
    (["ext/grid_strategy.py", "not a module!"], r"extensions\[1\]: 'not a module!' is neither"),
    ([3], r"extensions\[0\]: 3 is not a file or module name; give a \.py file"),
    (["no_such_pkg.ops"], r"extensions\[0\]: no module named 'no_such_pkg\.ops'; install it"),
    (["ext/boom.py"], r"extensions\[0\]: importing .*boom\.py failed: RuntimeError: no GPU here"),
    (["ext/data.txt"], r"extensions\[0\]: 'ext/data\.txt' is not a \.py file"),
]


@pytest.mark.parametrize(("entries", "pattern"), BAD_ENTRIES)
def test_bad_entries_are_one_line_naming_the_entry(
    tmp_path, write_config, ext_dir, capsys, entries, pattern
):
    (ext_dir / "boom.py").write_text("raise RuntimeError('no GPU here')\n")
    (ext_dir / "data.txt").write_text("not python\n")
    path = write_config(grid_config(extensions=entries))
    code, err = run_cli(["run", str(path), "--out", str(tmp_path / "r"), "-q"], capsys)
    assert code == 2
    assert re.search(pattern, one_line(err)), err
    assert not (tmp_path / "r").exists()


def test_a_name_defined_only_in_an_extension_is_unknown_without_it(tmp_path, ext_dir):
    from evomerge.ops.operators import MERGE_METHODS

    cfg = grid_config(extensions=["ext/grid_strategy.py"])  # the merge method is missing
    # an earlier test of this process may have imported the method's extension
    earlier = MERGE_METHODS.get("squared_weights") if "squared_weights" in MERGE_METHODS else None
    if earlier is not None:
        MERGE_METHODS.unregister("squared_weights")
    try:
        with pytest.raises(ConfigError, match=r"recipe: .*unknown merge method 'squared_weights'"):
            validate(cfg, "cfg", bases=[tmp_path])
    finally:
        if earlier is not None:
            MERGE_METHODS.register("squared_weights", earlier)


def test_merge_config_takes_extensions_and_refuses_bad_ones(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text(
        yaml.safe_dump({"extensions": ["missing.py"], "method": "linear", "models": []})
    )
    code, err = run_cli(["merge", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and re.search(r"extensions\[0\]: 'missing\.py' not found", one_line(err))


# --- the example of docs/merge-operator.md ----------------------------------------------------


def test_the_docs_show_the_example_files_verbatim():
    text = (ROOT / "docs" / "merge-operator.md").read_text(encoding="utf-8")
    python = re.findall(r"```python\n(.*?)```", text, re.S)
    yaml_blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert (EXAMPLE / "clipped_mean.py").read_text(encoding="utf-8") in python
    assert (EXAMPLE / "merge.yaml").read_text(encoding="utf-8") in yaml_blocks
    assert (EXAMPLE / "search.yaml").read_text(encoding="utf-8") in yaml_blocks


def test_the_docs_list_every_built_in_method_with_its_source():
    text = (ROOT / "docs" / "merge-operator.md").read_text(encoding="utf-8")
    from evomerge.ops.method_table import BUILT_IN

    for method in BUILT_IN:  # not the methods other tests of this process registered
        name = method.name
        row = re.search(rf"^\| `{name}` \|.*$", text, re.M)
        assert row, f"{name} is not in the docs' table of methods"
        arxiv = re.search(r"arXiv:\d{4}\.\d{5}", method.reference)
        assert (arxiv.group(0) if arxiv else method.reference.split(",")[0]) in row.group(0)


def test_the_docs_example_merges_and_searches(tmp_path, monkeypatch):
    """What docs/merge-operator.md tells a user to do, in a copy of the example folder."""
    work = tmp_path / "mine"
    shutil.copytree(EXAMPLE, work)
    monkeypatch.chdir(work)
    subprocess.run([sys.executable, "make_models.py"], check=True, capture_output=True)
    assert main(["merge", "merge.yaml", "--out", "merged", "-q"]) == 0
    merged = load_file(work / "merged" / "model.safetensors")
    base, a, b = (load_file(work / f"models/{n}.safetensors") for n in ("base", "a", "b"))
    for name, got in merged.items():
        ta = (a[name] - base[name]).clamp(-0.05, 0.05)
        tb = (b[name] - base[name]).clamp(-0.05, 0.05)
        assert torch.allclose(got, base[name] + (1.0 * ta + 0.5 * tb) / 2, atol=1e-7), name
    args = ["run", "search.yaml", "--out", "runs/clipped", "-q", "--set", "budget.evaluations=16"]
    assert main([*args, "--set", "evaluator={kind: local}"]) == 0
    summary = json.loads((work / "runs/clipped/summary.json").read_text())
    assert summary["evaluations"] == 16 and summary["recipe"]["groups"]
