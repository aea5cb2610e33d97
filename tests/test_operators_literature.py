"""The literature's merge methods: mergekit 0.1.5's arcee_fusion, ram and ramplus_tl against its
own outputs, PCB-merging and TALL masks / consensus merging against hand-computed tensors, and
each from a YAML merge config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from evomerge.interface.cli import main
from evomerge.ops.operators import MERGE_METHODS, get_merge_method

T = torch.tensor
CASES = Path(__file__).parent / "fixtures" / "mergekit_0_1_5" / "cases.json"


def merge(name, base, models, model_params=None, params=None):
    return get_merge_method(name)(base, models, model_params, params, None)


def close(actual, expected, atol=1e-6):
    expected = T(expected, dtype=actual.dtype) if not torch.is_tensor(expected) else expected
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, atol=atol, rtol=0), f"{actual} != {expected}"


# --- mergekit 0.1.5's last three ----------------------------------------------------------------


def _fixture_cases():
    return json.loads(CASES.read_text(encoding="utf-8"))["cases"]


@pytest.mark.parametrize("case", _fixture_cases(), ids=lambda c: f"{c['method']}{c['shape']}")
def test_mergekit_methods_give_mergekit_0_1_5_outputs(case):
    """cases.json holds mergekit 0.1.5's own outputs (tests/fixtures/mergekit_0_1_5)."""
    shape = case["shape"]
    base = T(case["base"]).view(shape)
    models = [T(m).view(shape) for m in case["models"]]
    out = merge(case["method"], base, models, None, case["params"])
    expected = T(case["expected"]).view(shape)
    assert torch.equal(out, expected), (out - expected).abs().max()  # bit for bit


def test_mergekit_fixtures_cover_each_rule():
    cases = _fixture_cases()
    fusion = [c for c in cases if c["method"] == "arcee_fusion"]
    for c in fusion:  # the mask is neither empty nor full: the threshold decides
        kept = sum(e == m for e, m in zip(c["expected"], c["models"][0], strict=True))
        assert 0 < kept < len(c["expected"])
    assert {c["method"] for c in cases} == {"arcee_fusion", "ram", "ramplus_tl"}


def test_ram_keeps_unique_changes_and_averages_shared_ones():
    base = torch.zeros(5)
    m1, m2 = T([1.0, 0.0, 2.0, 3.0, 1e-6]), T([0.0, 1.0, 4.0, -1.0, 0.0])
    # unique: 1 (m1), 1 (m2); shared: (2 + 4) / 2, (3 - 1) / 2; under epsilon: dropped
    close(merge("ram", base, [m1, m2]), [1.0, 1.0, 3.0, 1.0, 0.0])
    close(merge("ram", base, [m1, m2], None, {"epsilon": 1.5}), [0.0, 0.0, 3.0, 3.0, 0.0])
    # RAM+: each model shares 2 entries and owns 1: rho = 2, clamped to alpha = 1.5,
    # lambda = 1 + 0.5 * 1.5 = 1.75 on the unique entries only
    plus = merge("ramplus_tl", base, [m1, m2], None, {"r": 0.5, "alpha": 1.5})
    close(plus, [1.75, 1.75, 3.0, 1.0, 0.0])
    # defaults r = 0.1, alpha = 0.2: lambda = 1.02
    close(merge("ramplus_tl", base, [m1, m2]), [1.02, 1.02, 3.0, 1.0, 0.0])


def test_arcee_fusion_keeps_only_the_outlying_importances():
    # one row: softmaxes differ, KL > 0 is one number, so importance ranks by |m - b|;
    # sorted |diff| = [0, 0, 0, 0.1, 0.1, 0.1, 0.1, 2]: q1 = s[1] = 0, median = s[3] = 0.1,
    # q3 = s[5] = 0.1, threshold 0.1 + 1.5 * 0.1: only the change of 2 passes
    base = torch.zeros(8)
    model = T([0.0, 0.1, 2.0, 0.0, 0.1, 0.0, 0.1, 0.1])
    close(merge("arcee_fusion", base, [model]), [0, 0, 2.0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="a base and one model"):
        merge("arcee_fusion", base, [model, model])


# --- PCB-merging (the released code's formulas) ------------------------------------------------

BASE4 = torch.zeros(4)
TAU1, TAU2 = T([1.0, -1.0, 0.0, 2.0]), T([0.0, 2.0, 0.0, -2.0])


def test_pcb_balances_and_drops_by_the_released_code():
    # |tau| clamped per row at its sorted value int(4 * 0.9999 - 1) = 2: tau1's 2 becomes 1.
    # inter = tanh(tau * (tau1 + tau2)), with tau1 + tau2 = [1, 1, 0, 0]:
    #   tau1 -> [t1, -t1, 0, 0], tau2 -> [0, t2, 0, 0]; intra multiplies by e^(2 x^2) > 0.
    # pcb_ratio = 1 drops nothing: min-max per row gives scale1 = [1, 0, 1/2, 1/2],
    # scale2 = [0, 1, 0, 0]; merged = sum tau~ scale / sum scale:
    #   [1, 2 (tau2 alone), 0, 1 (tau1's clamped 1; tau2's -2 has scale 0)]
    close(merge("pcb", BASE4, [TAU1, TAU2], None, {"pcb_ratio": 1.0}), [1.0, 2.0, 0.0, 1.0])
    # pcb_ratio = 0.5: each row clamped from below at its sorted value at int(4 * 0.5) = 2
    # (0 in both rows): scale1 = [1, 0, 0, 0], scale2 = [0, 1, 0, 0]
    close(merge("pcb", BASE4, [TAU1, TAU2], None, {"pcb_ratio": 0.5}), [1.0, 2.0, 0.0, 0.0])
    # weights multiply each task's share, lambda the sum
    mp = [{"weight": 2.0}, {"weight": 1.0}]
    out = merge("pcb", BASE4 + 1, [TAU1 + 1, TAU2 + 1], mp, {"pcb_ratio": 1.0, "lambda": 0.5})
    close(out, [2.0, 2.0, 1.0, 2.0])


def test_pcb_intra_balancing_is_exp_of_n_times_the_squared_min_max():
    # tau1 = [0.5, 1, 0, 2]: clamped |tau1| = [0.5, 1, 0, 1], min-max [0.5, 1, 0, 1];
    # tau2 = [1, 1, 1, 1] (no range: scaled 0, intra 1). sum = [1.5, 2, 1, 3].
    tau1, tau2 = T([0.5, 1.0, 0.0, 2.0]), T([1.0, 1.0, 1.0, 1.0])
    e = math.exp
    s1 = [e(2 * 0.25) * math.tanh(0.75), e(2) * math.tanh(2.0), 0.0, e(2) * math.tanh(6.0)]
    s2 = [math.tanh(1.5), math.tanh(2.0), math.tanh(1.0), math.tanh(3.0)]

    def minmax(x):
        lo, hi = min(x), max(x)
        return [(v - lo) / (hi - lo) for v in x]

    a, b = minmax(s1), minmax(s2)
    clamped1 = [0.5, 1.0, 0.0, 1.0]
    expected = [
        (c * u + 1.0 * v) / max(u + v, 1e-12) for c, u, v in zip(clamped1, a, b, strict=True)
    ]
    out = merge("pcb", torch.zeros(4), [tau1, tau2], None, {"pcb_ratio": 1.0})
    close(out, expected, atol=1e-6)
    with pytest.raises(ValueError, match="pcb_ratio must lie in"):
        merge("pcb", torch.zeros(4), [tau1, tau2], None, {"pcb_ratio": 0.0})


# --- TALL masks and consensus merging ------------------------------------------------------------

Z = torch.zeros(4)
TAUS = [T([1.0, 0.0, 2.0, 0.1]), T([1.0, 1.0, 0.0, 0.1]), T([0.0, 1.0, 0.0, -3.0])]
# tv = [2, 2, 2, -2.8]; masks |tau_k| > 0.4 |tv - tau_k|:
#   m1 = [1, 0, 1, 0], m2 = [1, 1, 0, 0], m3 = [0, 1, 0, 1]; counts [2, 2, 1, 1]


def test_consensus_keeps_the_entries_enough_tasks_use():
    close(merge("consensus_ta", Z, TAUS), [2.0, 2.0, 0.0, 0.0])  # k = 2
    close(merge("consensus_ta", Z, TAUS, None, {"k": 1}), [2.0, 2.0, 2.0, -2.8])
    close(merge("consensus_ta", Z, TAUS, None, {"k": 0, "lambda": 0.5}), [1.0, 1.0, 1.0, -1.4])
    close(merge("consensus_ta", Z, TAUS, None, {"k": 3}), [0.0, 0.0, 0.0, 0.0])
    # tall_mask_lambda = 0: every entry a task changes is in its mask: counts [2, 2, 1, 3]
    close(merge("consensus_ta", Z, TAUS, None, {"tall_mask_lambda": 0.0}), [2, 2, 0, -2.8])
    # TIES's disjoint sum elects - at the last entry: only tau3's -3 agrees
    close(merge("consensus_ties", Z, TAUS, [{"density": 1.0}] * 3, {"k": 1}), [2, 2, 2, -3.0])
    close(merge("consensus_ties", Z, TAUS, [{"density": 1.0}] * 3), [2.0, 2.0, 0.0, 0.0])


def test_tall_masks_rebuild_each_task_from_the_merged_vector():
    for task, mask in enumerate([[1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 0, 1]]):
        out = merge("tall_masks", Z + 1, [t + 1 for t in TAUS], None, {"task": task})
        close(out, [1 + m * v for m, v in zip(mask, [2.0, 2.0, 2.0, -2.8], strict=True)])
    with pytest.raises(ValueError, match="task must index the models"):
        merge("tall_masks", Z, TAUS, None, {"task": 3})


# --- every new method: from a YAML config, dtype kept ---------------------------------------------

NEW = {
    "arcee_fusion": ({}, 1),
    "ram": ({}, 2),
    "ramplus_tl": ({"r": 0.5}, 2),
    "pcb": ({"pcb_ratio": 0.5}, 2),
    "consensus_ta": ({"k": 1}, 2),
    "consensus_ties": ({"k": 1}, 2),
    "tall_masks": ({"task": 1}, 2),
}


@pytest.mark.parametrize("name", sorted(NEW))
def test_each_new_method_merges_from_a_yaml_config(tmp_path, name):
    params, k = NEW[name]
    gen = torch.Generator().manual_seed(1)
    names = {"w": (5, 6), "b": (6,)}
    base = {n: torch.randn(s, generator=gen) for n, s in names.items()}
    sparse = {n: torch.rand(s, generator=gen) < 0.5 for n, s in names.items()}
    models = [
        {n: base[n] + 0.3 * torch.randn(s, generator=gen) * sparse[n] for n, s in names.items()}
        for _ in range(k)
    ]
    paths = []
    for i, tensors in enumerate([base, *models]):
        path = tmp_path / f"m{i}.safetensors"
        save_file({n: t.bfloat16() for n, t in tensors.items()}, path)
        paths.append(str(path))
    cfg = {
        "method": name,
        "base": paths[0],
        "models": [{"path": p} for p in paths[1:]],
        "params": params,
    }
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(tmp_path / "merge.yaml"), "--out", str(tmp_path / "out"), "-q"]) == 0
    out = load_file(tmp_path / "out" / "model.safetensors")
    method = MERGE_METHODS[name]
    for n in names:
        assert out[n].dtype == torch.bfloat16
        loaded = [load_file(p)[n] for p in paths]
        expected = method(loaded[0], loaded[1:], None, params)
        assert torch.equal(out[n], expected), n
        assert not torch.equal(out[n], loaded[0]), n  # the merge changed something


# --- in a recipe search: their coefficients evolve ----------------------------------------------


@pytest.mark.parametrize(
    "recipe",
    [
        {
            "method": "pcb",
            "base": 0,
            "genes": {"weight": {"low": 0.5, "high": 1.5}, "pcb_ratio": {"low": 0.05, "high": 1}},
        },
        {
            "method": "consensus_ta",
            "base": 0,
            "params": {"k": 1},
            "genes": {
                "lambda": {"low": 0.3, "high": 1.2},
                "tall_mask_lambda": {"low": 0, "high": 1},
            },
        },
    ],
    ids=["pcb", "consensus_ta"],
)
def test_recipe_search_evolves_the_new_methods_coefficients(tmp_path, write_config, recipe):
    from conftest import DIGITS

    cfg = {
        "seed": 0,
        "budget": {"evaluations": 16},
        "batch": 8,
        "fitness": {"plugin": DIGITS},
        "seeds": {
            "kind": "plugin",
            "count": 3,
            "options": {"shared_init": True, "include_base": True, "steps": 60, "lr": 0.01},
        },
        "recipe": recipe,
        "strategy": {"name": "cmaes", "sigma0": 0.3, "popsize": 8},
        "evaluator": {"kind": "local"},
    }
    out = tmp_path / "run"
    assert main(["run", str(write_config(cfg)), "--out", str(out), "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluations"] == 16
    assert summary["metrics"]["test_accuracy"] > 0.3  # chance is 0.1
    for group in summary["recipe"]["groups"].values():
        for name, gene in recipe["genes"].items():
            values = (
                [m[name] for m in group["models"]] if name == "weight" else [group["params"][name]]
            )
            assert all(gene["low"] <= v <= gene["high"] for v in values), (name, values)
