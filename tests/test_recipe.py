"""Recipe space: grouping by layer and kind, bounded gene transforms, in-memory materialisation,
and a CMA-ES recipe search on digits that improves, reports its recipe and resumes exactly."""

import json
import math

import pytest
import torch
from conftest import DIGITS
from pydantic import ValidationError
from safetensors.torch import load_file

from evomerge.interface.cli import main
from evomerge.run import loop
from evomerge.run.config import validate
from evomerge.run.rundir import RunDir
from evomerge.spaces.recipe import GeneRange, RecipeSection, RecipeSpace

LLM_LAYOUT = [
    ("model.embed_tokens.weight", (8, 4)),
    ("model.layers.0.self_attn.q_proj.weight", (4, 4)),
    ("model.layers.0.mlp.up_proj.weight", (4, 4)),
    ("model.layers.0.input_layernorm.weight", (4,)),
    ("model.layers.1.self_attn.q_proj.weight", (4, 4)),
    ("model.layers.1.mlp.up_proj.weight", (4, 4)),
    ("model.layers.1.input_layernorm.weight", (4,)),
    ("model.norm.weight", (4,)),
    ("lm_head.weight", (8, 4)),
]


def test_groups_by_layer_and_kind_with_embeddings_and_head_apart():
    section = RecipeSection(method="linear", genes={"weight": GeneRange()})
    space = RecipeSpace(section, LLM_LAYOUT, num_seeds=2)
    assert space.group_of == [
        "embedding",
        "layers.0/attention",
        "layers.0/mlp",
        "layers.0/norm",
        "layers.1/attention",
        "layers.1/mlp",
        "layers.1/norm",
        "norm",
        "head",
    ]
    assert space.dim == 9 * 2  # one weight gene per group and model
    two = RecipeSection(method="linear", groups={"layers_per_group": 2})
    assert RecipeSpace(two, LLM_LAYOUT, 2).group_of[1] == "layers.0-1/attention"


def test_gene_transforms_are_bounded_and_invertible():
    lin = GeneRange(low=0.1, high=0.9)
    assert lin.value(-3.0) == pytest.approx(0.1) and lin.value(7.0) == pytest.approx(0.9)
    assert lin.value(0.25) == pytest.approx(0.3)
    sig = GeneRange(low=-1.0, high=1.0, transform="sigmoid", init=0.5)
    assert sig.value(sig.initial_gene()) == pytest.approx(0.5)
    assert sig.value(0.0) == pytest.approx(0.0)
    assert -1.0 < sig.value(-10.0) < -0.999 and sig.value(-50.0) >= -1.0
    with pytest.raises(ValidationError):
        GeneRange(low=1.0, high=1.0)
    with pytest.raises(ValidationError):
        GeneRange(low=0.0, high=1.0, init=2.0)


def test_recipe_section_rejects_parameters_the_method_lacks():
    with pytest.raises(ValidationError, match="density"):
        RecipeSection(method="linear", genes={"density": GeneRange()})
    with pytest.raises(ValidationError, match="base"):
        RecipeSection(method="ties", genes={"weight": GeneRange()})


def test_materialize_is_the_linear_formula_per_group():
    layout = [("layers.0.weight", (2,)), ("layers.1.weight", (3,))]
    seeds = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 6.0, 9.0, 12.0, 15.0]])
    section = RecipeSection(
        method="linear", params={"normalize": True}, genes={"weight": GeneRange(low=0, high=2)}
    )
    space = RecipeSpace(section, layout, 2)
    assert space.dim == 4
    # group 0: weights 0.5, 1.5 (genes 0.25, 0.75); group 1: weights 2, 0 (genes 1, 0)
    out = space.materialize(seeds, [0.25, 0.75, 1.0, 0.0])
    expected = torch.tensor([(0.5 * 1 + 1.5 * 3) / 2, (0.5 * 2 + 1.5 * 6) / 2, 3.0, 4.0, 5.0])
    assert torch.allclose(out, expected)
    decoded = space.decode([0.25, 0.75, 1.0, 0.0])
    assert decoded["layers.0/other"]["models"] == [{"weight": 0.5}, {"weight": 1.5}]


def recipe_config(tmp_path, **changes):
    cfg = {
        "seed": 0,
        "budget": {"evaluations": 48},
        "batch": 8,
        "checkpoint_every": 16,
        "history_every": 16,
        "fitness": {"plugin": DIGITS},
        "seeds": {
            "kind": "plugin",
            "count": 3,
            "options": {"shared_init": True, "include_base": True, "steps": 60, "lr": 0.01},
        },
        "recipe": {
            "method": "task_arithmetic",
            "base": 0,
            "genes": {"weight": {"low": 0.0, "high": 1.5}},
        },
        "strategy": {"name": "cmaes", "sigma0": 0.3, "popsize": 8},
        "evaluator": {"kind": "local"},
    }
    cfg.update(changes)
    return cfg


def test_cmaes_recipe_search_improves_and_reports_its_recipe(tmp_path, write_config):
    path = write_config(recipe_config(tmp_path))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert history[-1]["best_train_score"] > history[0]["best_train_score"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluations"] == 48
    groups = summary["recipe"]["groups"]
    assert set(groups) == {"layers.0/other", "layers.1/other"}
    for g in groups.values():
        assert all(0.0 <= m["weight"] <= 1.5 for m in g["models"])
    assert math.isfinite(summary["metrics"]["test_accuracy"])


def test_cmaes_recipe_search_resumes_bit_identically(tmp_path, write_config):
    raw = recipe_config(tmp_path)
    whole = validate(raw, "whole", bases=[tmp_path])
    s = loop.start(whole, RunDir(tmp_path / "whole"))
    s.loop()
    half = validate({**raw, "budget": {"evaluations": 24}}, "half", bases=[tmp_path])
    s = loop.start(half, RunDir(tmp_path / "broken"))
    s.loop()
    s = loop.reopen(RunDir(tmp_path / "broken"), whole)
    s.loop()
    a = load_file(tmp_path / "whole/checkpoints/0000000048/state.safetensors")
    b = load_file(tmp_path / "broken/checkpoints/0000000048/state.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_recipe_needs_plugin_seeds(tmp_path, write_config):
    path = write_config(recipe_config(tmp_path, seeds={"kind": "gaussian", "count": 2}))
    assert main(["run", str(path), "--out", str(tmp_path / "r"), "-q"]) == 2
    assert not (tmp_path / "r").exists()
