"""mergekit's remaining methods against hand-computed tensors (their formulas), and in a search."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import DIGITS

from evomerge.interface.cli import main
from evomerge.ops.operators import MERGE_METHODS, get_merge_method
from evomerge.ops.task_vectors import _Draws16

T = torch.tensor
R2 = math.sqrt(0.5)


def merge(name, base, models, model_params=None, params=None, seed=None):
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return get_merge_method(name)(base, models, model_params, params, gen)


def close(actual, expected, atol=1e-6):
    expected = T(expected, dtype=actual.dtype) if not torch.is_tensor(expected) else expected
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, atol=atol, rtol=0), f"{actual} != {expected}"


def test_table_matches_mergekit_names_and_defaults():
    table = {
        n: (m.base.value, m.model_params.required, dict(m.model_params.defaults),
            m.params.required, dict(m.params.defaults), m.random)
        for n, m in MERGE_METHODS.items()
    }  # fmt: skip
    gta = {"rescale": True, "lambda": 1.0, "int8_mask": False}
    della_mp = {"density": 1.0, "epsilon": 0.15}
    w = ("weight",)
    assert table["della"] == ("required", w, della_mp, (), {"normalize": True, **gta}, True)
    assert table["della_linear"] == ("required", w, della_mp, (), {"normalize": False, **gta}, 1)
    assert table["model_stock"] == ("required", (), {}, (), {"filter_wise": False}, False)
    assert table["nuslerp"] == (
        "optional",
        w,
        {},
        (),
        {"nuslerp_flatten": True, "nuslerp_row_wise": False},
        False,
    )
    assert table["multislerp"] == (
        "optional",
        w,
        {},
        (),
        {"normalize_weights": True, "eps": 1e-8},
        False,
    )
    assert table["karcher"] == ("none", (), {}, (), {"max_iter": 10, "tol": 1e-5}, False)
    assert table["sce"] == ("required", (), {}, (), {"select_topk": 1.0, "int8_mask": False}, 0)
    assert table["nearswap"] == ("required", (), {}, ("t",), {}, False)
    assert table["passthrough"] == ("none", (), {"scale": 1.0}, (), {}, False)
    assert MERGE_METHODS["nuslerp"].optional_base and MERGE_METHODS["multislerp"].optional_base


# --- model_stock --------------------------------------------------------------------------------


def test_model_stock_interpolates_by_the_mean_cosine():
    base = T([1.0, 1.0, 1.0])
    # offsets [1, 1, 0] and [1, 0, 1]: cos 1/2, t = 2 * 0.5 / (1 + 0.5) = 2/3,
    # result = t * mean + (1 - t) * base = base + 2/3 * [1, 0.5, 0.5]
    out = merge("model_stock", base, [base + T([1.0, 1.0, 0.0]), base + T([1.0, 0.0, 1.0])])
    close(out, [1 + 2 / 3, 1 + 1 / 3, 1 + 1 / 3])


def test_model_stock_three_models_and_singular():
    base = torch.zeros(3)
    # pairwise cosines 0, 0, 0 -> t = 0: the base
    eye = [T([1.0, 0, 0]), T([0, 2.0, 0]), T([0, 0, 3.0])]
    close(merge("model_stock", base, eye), [0.0, 0.0, 0.0])
    # opposite offsets: cos -1, 1 + (2 - 1) * -1 = 0 -> the base, not inf
    close(merge("model_stock", base, [T([1.0, 0, 0]), T([-1.0, 0, 0])]), [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="at least two"):
        merge("model_stock", base, [eye[0]])


def test_model_stock_filter_wise_takes_one_t_per_row():
    base = torch.zeros(2, 2)
    a, b = T([[1.0, 0.0], [1.0, 1.0]]), T([[0.0, 1.0], [1.0, 1.0]])
    # row 0: cos 0 -> t 0 (base); row 1: cos 1 -> t = 2 / 2 = 1 (the mean)
    close(merge("model_stock", base, [a, b], params={"filter_wise": True}), [[0, 0], [1.0, 1.0]])
    # whole tensor: cos = 2 / (sqrt 3 * sqrt 3) = 2/3, t = (4/3) / (5/3) = 0.8
    close(merge("model_stock", base, [a, b]), 0.8 * (a + b) / 2)


# --- nuslerp ------------------------------------------------------------------------------------


def test_nuslerp_weights_give_t_and_base_is_subtracted():
    e1, e2 = T([1.0, 0.0]), T([0.0, 1.0])
    mp = [{"weight": 1.0}, {"weight": 3.0}]  # t = 3/4, angle pi/2
    expected = T([math.sin(math.pi / 8), math.sin(3 * math.pi / 8)])
    close(merge("nuslerp", None, [e1, e2], mp), expected)
    base = T([5.0, -1.0])
    close(merge("nuslerp", base, [base + e1, base + e2], mp), base + expected)
    # weights summing to zero: t = 0.5
    zero = [{"weight": 1.0}, {"weight": -1.0}]
    close(merge("nuslerp", None, [e1, e2], zero), [R2, R2])


def test_nuslerp_row_wise_and_colinear_rows():
    a = T([[1.0, 0.0], [2.0, 0.0]])
    b = T([[0.0, 1.0], [4.0, 0.0]])
    mp = [{"weight": 1.0}, {"weight": 1.0}]
    rows = merge("nuslerp", None, [a, b], mp, {"nuslerp_flatten": False})
    close(rows, [[R2, R2], [3.0, 0.0]])  # row 1 is colinear: linear
    # along dim 0: columns [1, 2] vs [0, 4] and [0, 0] vs [1, 0]
    cols = merge("nuslerp", None, [a, b], mp, {"nuslerp_flatten": False, "nuslerp_row_wise": True})
    c0 = T([1.0, 2.0]) / math.sqrt(5)
    c1 = T([0.0, 1.0])
    cos = float(c0 @ c1)
    th = math.acos(cos)
    k = math.sin(th / 2) / math.sin(th)
    col0 = k * T([1.0, 2.0]) + k * T([0.0, 4.0])
    col1 = T([R2, 0.0])  # [0, 0] vs [1, 0]: zero norm -> cos 0 -> sin(pi/4) * [1, 0]
    close(cols, torch.stack([col0, col1], dim=1), atol=1e-5)
    with pytest.raises(ValueError, match="exactly two"):
        merge("nuslerp", None, [a], [{"weight": 1.0}])


# --- multislerp ---------------------------------------------------------------------------------


def test_multislerp_mean_direction_times_mean_norm():
    a, b = T([3.0, 0.0]), T([0.0, 1.0])
    mp = [{"weight": 1.0}, {"weight": 1.0}]
    # unit vectors e1, e2, mean direction [1, 1] / sqrt 2, mean norm (3 + 1) / 2 = 2
    close(merge("multislerp", None, [a, b], mp), [2 * R2, 2 * R2])
    base = T([1.0, 2.0])
    close(merge("multislerp", base, [base + a, base + b], mp), base + T([2 * R2, 2 * R2]))
    # weights 1 and 3 (normalised 1/4, 3/4): direction [1, 3] / sqrt 10, norm 3/4 + 3/4 = 1.5
    mp13 = [{"weight": 1.0}, {"weight": 3.0}]
    close(merge("multislerp", None, [a, b], mp13), 1.5 * T([1.0, 3.0]) / math.sqrt(10))


def test_multislerp_edge_cases():
    a = T([1.0, 0.0])
    close(merge("multislerp", T([9.0, 9.0]), [a], [{"weight": 2.0}]), a)  # one model: itself
    mp = [{"weight": 1.0}, {"weight": 1.0}]
    close(merge("multislerp", None, [a, -a], mp), [0.0, 0.0])  # antipodal pair: linear
    with pytest.raises(ValueError, match="weighted sum"):
        merge("multislerp", None, [a, -a, a * 0 + T([0.0, 0.0])], mp + [{"weight": 0.0}])


# --- karcher ------------------------------------------------------------------------------------


def test_karcher_mean_on_the_circle():
    # directions at angles 0, 0 and pi/2: the Karcher mean is their mean angle, pi/6
    # (the Euclidean mean's direction would be atan(1/2)); norms 2, 1, 3 -> scale 2
    models = [T([2.0, 0.0]), T([1.0, 0.0]), T([0.0, 3.0])]
    out = merge("karcher", None, models)
    close(out, [2 * math.cos(math.pi / 6), 2 * math.sin(math.pi / 6)], atol=1e-5)
    # one step only: still the Euclidean mean direction moved once (not converged to pi/6)
    one = merge("karcher", None, models, params={"max_iter": 0})
    close(one, 2 * T([2.0, 1.0]) / math.sqrt(5), atol=1e-6)


def test_karcher_zero_models():
    # a zero tensor does not count in the direction but does in the scale
    close(merge("karcher", None, [T([0.0, 0.0]), T([2.0, 0.0])]), [1.0, 0.0])
    close(merge("karcher", None, [T([0.0, 0.0]), T([0.0, 0.0])]), [0.0, 0.0])
    close(merge("karcher", None, [T([4.0, 2.0])]), [4.0, 2.0])


# --- sce ----------------------------------------------------------------------------------------

SCE_TAUS = [T([1.0, -2.0, 0.5, 3.0]), T([1.0, 2.0, -0.5, 1.0])]


def test_sce_weights_by_mean_square_and_erases_disagreement():
    base = torch.zeros(4)
    out = merge("sce", base, SCE_TAUS)
    w1, w2 = 14.25 / 4, 6.25 / 4  # mean squares; normalising cancels in each entry
    w1, w2 = w1 / (w1 + w2), w2 / (w1 + w2)
    # signs of the sums [2, 0, 0, 4] elect + everywhere (a zero sum elects +)
    close(out, [1.0, 2.0, 0.5, (3 * w1 + 1 * w2) / (w1 + w2)])


def test_sce_select_topk_keeps_the_highest_variance_entries():
    base = T([1.0, 1.0, 1.0, 1.0])
    models = [base + t for t in SCE_TAUS]
    # variances [0, 4, 0.25, 1]: 3 nonzero, k = int(3 * 0.5) = 1 -> only entry 1 survives;
    # its values -2 and 2 sum to 0 -> +: the result there is 2
    out = merge("sce", base, models, params={"select_topk": 0.5})
    close(out, [1.0, 3.0, 1.0, 1.0])
    close(merge("sce", base, models, params={"select_topk": 0.0}), base)


def test_sce_on_a_large_tensor_keeps_the_top_fraction():
    gen = torch.Generator().manual_seed(0)
    base = torch.zeros(300_000)
    models = [torch.randn(300_000, generator=gen) for _ in range(3)]
    out = merge("sce", base, models, params={"select_topk": 0.1})
    var = torch.stack(models).var(dim=0, unbiased=False)
    top = torch.topk(var, 30_000).indices
    kept = torch.zeros(300_000, dtype=torch.bool)
    kept[top] = True
    assert torch.count_nonzero(out[~kept]) == 0
    assert torch.count_nonzero(out[kept]) == 30_000


# --- nearswap, passthrough ------------------------------------------------------------------------


def test_nearswap_moves_close_entries_all_the_way():
    base = T([0.0, 0.0, 0.0, 1.0])
    model = T([0.5, 0.05, -0.02, 1.0])
    # w = clamp(0.1 / |base - model|, 0, 1) = [0.2, 1, 1, 1 (|d| clamped to 1e-6)]
    close(merge("nearswap", base, [model], params={"t": 0.1}), [0.1, 0.05, -0.02, 1.0])


def test_passthrough_scales_its_one_model():
    a = T([1.0, -2.0]).bfloat16()
    assert torch.equal(merge("passthrough", None, [a]), a)
    close(merge("passthrough", None, [a], [{"scale": 0.5}]).float(), [0.5, -1.0])
    with pytest.raises(ValueError, match="exactly one"):
        merge("passthrough", None, [a, a])


# --- della --------------------------------------------------------------------------------------


def _della_mask(mags: torch.Tensor, density, epsilon, seed):
    """The documented MagPrune mask of one row: rank by magnitude, p linear in the rank."""
    gen = torch.Generator().manual_seed(seed)
    stream = int(torch.randint(0, 2**62, (), generator=gen))
    draws = _Draws16(stream).take(mags.numel()).astype(np.int64)
    rank = torch.empty(mags.numel(), dtype=torch.long)
    rank[torch.argsort(mags, stable=True)] = torch.arange(mags.numel())
    n = mags.numel()
    p = (density - epsilon) + rank.double() * (2 * epsilon / (n - 1))
    return torch.from_numpy(draws) < torch.round(p * 2**16)


def test_della_linear_is_the_rank_dependent_mask():
    tau = T([0.3, -0.1, 0.5, -0.2, 0.4, 0.05, -0.6, 0.25])
    base = torch.ones(8)
    mp = [{"weight": 1.0, "density": 0.5, "epsilon": 0.3}]
    out = merge("della_linear", base, [base + tau], mp, {"rescale": False}, seed=3)
    mask = _della_mask(tau.abs(), 0.5, 0.3, 3)
    close(out, base + tau * mask)
    # rescale (the default): the kept entries carry the task vector's L1 norm
    scaled = merge("della_linear", base, [base + tau], mp, seed=3)
    kept = tau * mask
    close(scaled, base + kept * (tau.abs().sum() / kept.abs().sum()), atol=1e-5)


def test_della_ranks_within_rows_and_keeps_large_entries_more_often():
    gen = torch.Generator().manual_seed(0)
    tau = torch.randn(2, 50_000, generator=gen)
    tau[1] *= 1000  # per-row ranks: the large row keeps the same fraction as the small one
    mp = [{"weight": 1.0, "density": 0.4, "epsilon": 0.2}]
    out = merge("della_linear", torch.zeros(2, 50_000), [tau], mp, {"rescale": False}, seed=1)
    kept = out != 0
    for row in range(2):
        assert abs(kept[row].float().mean().item() - 0.4) < 0.01
        order = torch.argsort(tau[row].abs())
        low, high = kept[row][order[:5000]], kept[row][order[-5000:]]
        assert abs(low.float().mean().item() - 0.22) < 0.02  # p from 0.2 up to 0.24
        assert abs(high.float().mean().item() - 0.58) < 0.02  # p from 0.56 up to 0.6
    again = merge("della_linear", torch.zeros(2, 50_000), [tau], mp, {"rescale": False}, seed=1)
    assert torch.equal(out, again)


def test_della_elects_signs_and_checks_epsilon():
    base = torch.zeros(4)
    models = [T([1.0, -1.0, 2.0, 0.5]), T([-3.0, -1.0, 1.0, 0.5])]
    full = [{"weight": 1.0, "density": 1.0}, {"weight": 1.0, "density": 1.0}]
    # density 1 keeps all: TIES disjoint mean of [1,-1,2,.5] and [-3,-1,1,.5]
    close(merge("della", base, models, full, seed=0), [-3.0, -1.0, 1.5, 0.5])
    close(merge("della_linear", base, models, full, seed=0), [-2.0, -2.0, 3.0, 1.0])
    bad = [{"weight": 1.0, "density": 0.5, "epsilon": 0.5}] * 2
    with pytest.raises(ValueError, match="epsilon"):
        merge("della", base, models, bad, seed=0)


# --- every new method: dtype round trip, inputs untouched ----------------------------------------

CASES = {
    "della": (True, 2, [{"weight": 0.5, "density": 0.5}] * 2, {}),
    "della_linear": (True, 2, [{"weight": 0.5, "density": 0.5}] * 2, {}),
    "model_stock": (True, 2, None, {}),
    "nuslerp": (True, 2, [{"weight": 0.5}] * 2, {}),
    "multislerp": (False, 3, [{"weight": 0.5}] * 3, {}),
    "karcher": (False, 3, None, {}),
    "sce": (True, 3, None, {"select_topk": 0.5}),
    "nearswap": (True, 1, None, {"t": 0.01}),
    "passthrough": (False, 1, None, {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_new_methods_keep_dtype_and_inputs(name):
    with_base, k, mp, params = CASES[name]
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=gen).bfloat16()
    models = [(base.float() + 0.1 * torch.randn(6, 5, generator=gen)).bfloat16() for _ in range(k)]
    copies = [m.clone() for m in [base, *models]]
    out = merge(name, base if with_base else None, models, mp, params, seed=0)
    assert out.dtype == torch.bfloat16 and out.shape == base.shape
    assert torch.isfinite(out.float()).all()
    for a, b in zip([base, *models], copies, strict=True):
        assert torch.equal(a, b)
    base32, models32 = base.float(), [m.float() for m in models]
    copies = [m.clone() for m in [base32, *models32]]
    f32 = merge(name, base32 if with_base else None, models32, mp, params, seed=0)
    assert torch.equal(out, f32.bfloat16())  # computed in float32, rounded once
    for a, b in zip([base32, *models32], copies, strict=True):
        assert torch.equal(a, b)  # float32 inputs are used without a copy: still untouched


# --- in a recipe search -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipe",
    [
        {
            "method": "della",
            "base": 0,
            "model_params": {"epsilon": 0.1},
            "genes": {"weight": {"low": 0.0, "high": 1.5}, "density": {"low": 0.3, "high": 0.8}},
        },
        {"method": "multislerp", "base": 0, "genes": {"weight": {"low": 0.1, "high": 1.0}}},
    ],
    ids=["della", "multislerp"],
)
def test_cmaes_recipe_search_with_new_methods(tmp_path, write_config, recipe):
    cfg = {
        "seed": 0,
        "budget": {"evaluations": 16},
        "batch": 8,
        "checkpoint_every": 16,
        "history_every": 8,
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
    assert summary["metrics"]["test_accuracy"] > 0.3  # chance is 0.1; a broken merge is near it
    groups = summary["recipe"]["groups"]
    for g in groups.values():
        for m in g["models"]:
            assert 0.0 <= m["weight"] <= 1.5
            if recipe["method"] == "della":
                assert 0.3 <= m["density"] <= 0.8 and m["epsilon"] == 0.1


def test_ties_keeps_at_least_one_entry_as_mergekit_does():
    # int(0.1 * 5) = 0, mergekit 0.1.5 keeps max(1, 0) = 1: the largest magnitude
    base = torch.zeros(5)
    tau = T([0.5, -3.0, 1.0, 2.0, -0.1])
    out = merge("ties", base, [tau], [{"weight": 1.0, "density": 0.1}])
    close(out, [0.0, -3.0, 0.0, 0.0, 0.0])
