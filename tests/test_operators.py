"""Merge operators against hand-computed tensors (mergekit's formulas), edge cases, registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evomerge.ops.operators import (
    MERGE_METHODS,
    BaseRole,
    MergeMethod,
    Parameters,
    get_merge_method,
    register_merge_method,
)
from evomerge.ops.vectors import parent_angle, split_slerp

T = torch.tensor
GTA = ["task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties"]


def merge(name, base, models, model_params=None, params=None, seed=None):
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return get_merge_method(name)(base, models, model_params, params, gen)


def close(actual, expected, atol=1e-6):
    expected = T(expected, dtype=actual.dtype) if not torch.is_tensor(expected) else expected
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, atol=atol, rtol=0), f"{actual} != {expected}"


def trimmed(name, tau, **model_params):
    """The task vector ``tau`` after ``name``'s trim, seen through one model of weight 1."""
    base = torch.zeros_like(tau)
    return merge(name, base, [tau], [{"weight": 1.0, **model_params}], {"normalize": False})


# --- the contract: names, parameters, defaults ----------------------------------------------------


def declared(m):
    """A method's declaration: base role, (required, defaults) per model and global, random."""
    mp, gp = m.model_params, m.params
    return (
        m.base.value,
        (mp.required, dict(mp.defaults)),
        (gp.required, dict(gp.defaults)),
        m.random,
    )


def test_builtin_table_matches_mergekit_defaults():
    table = {name: declared(m) for name, m in MERGE_METHODS.items()}
    gta = {"lambda": 1.0, "int8_mask": False}
    wd = (("weight",), {"density": 1.0})
    assert table["linear"] == ("none", (("weight",), {}), ((), {"normalize": True}), False)
    assert table["task_arithmetic"] == (
        "required",
        wd,
        ((), {"normalize": False, "rescale": False, **gta}),
        0,
    )
    assert table["ties"] == ("required", wd, ((), {"normalize": True, "rescale": False, **gta}), 0)
    dare = ("required", wd, ((), {"normalize": False, "rescale": True, **gta}), True)
    assert table["dare_linear"] == dare
    assert table["dare_ties"] == dare
    crumbs = (
        "required",
        (("weight",), {"density": 1.0, "gamma": 0.01}),
        ((), {"normalize": False, "rescale": False, **gta}),
        False,
    )
    assert table["breadcrumbs"] == crumbs
    assert table["breadcrumbs_ties"] == crumbs
    assert table["slerp"] == ("endpoint", ((), {}), (("t",), {}), False)
    assert table["region_crossover"] == (
        "none",
        ((), {}),
        (("split", "w", "omega"), {"offset": 0}),
        False,
    )


def test_every_method_declares_its_mergekit_name_and_source():
    from evomerge.ops.method_table import BUILT_IN

    ours = {  # methods mergekit does not have
        "region_crossover",
        "fisher",
        "regmean",
        "regmean_plusplus",
        "pleas",
        "pcb",
        "consensus_ta",
        "consensus_ties",
        "tall_masks",
        "adamerging",
        "frank_wolfe",
    }
    for m in BUILT_IN:  # not the methods other tests of this process registered
        name = m.name
        assert m.mergekit == (None if name in ours else name), name
        assert m.reference, name


# --- linear ---------------------------------------------------------------------------------------


def test_linear_weighted_mean_and_sum():
    a, b = T([1.0, 2.0, 4.0]), T([3.0, 0.0, -2.0])
    mp = [{"weight": 1.0}, {"weight": 3.0}]
    close(merge("linear", None, [a, b], mp), [2.5, 0.5, -0.5])  # (a + 3b) / 4
    close(merge("linear", None, [a, b], mp, {"normalize": False}), [10.0, 2.0, -2.0])
    # A base is not a model of linear: it is ignored.
    close(merge("linear", T([9.0, 9.0, 9.0]), [a, b], mp), [2.5, 0.5, -0.5])


def test_linear_weights_summing_to_zero_do_not_divide_by_zero():
    a, b = T([1.0, 2.0]), T([3.0, 5.0])
    out = merge("linear", None, [a, b], [{"weight": 1.0}, {"weight": -1.0}])
    close(out, [-2.0, -3.0])  # divisor 0 -> 1: a - b


# --- generalized task arithmetic ------------------------------------------------------------------

BASE = T([1.0, 1.0, 1.0, 1.0])
M1, M2 = T([2.0, 0.0, 1.0, 3.0]), T([1.0, 3.0, 1.0, -1.0])  # tau1 [1,-1,0,2], tau2 [0,2,0,-2]


def test_task_arithmetic():
    mp = [{"weight": 0.5}, {"weight": 1.0}]
    # 0.5 tau1 + tau2 = [0.5, 1.5, 0, -1]
    close(merge("task_arithmetic", BASE, [M1, M2], mp), [1.5, 2.5, 1.0, 0.0])
    close(merge("task_arithmetic", BASE, [M1, M2], mp, {"lambda": 2.0}), [2.0, 4.0, 1.0, -1.0])
    normalized = merge("task_arithmetic", BASE, [M1, M2], mp, {"normalize": True})
    close(normalized, [1 + 1 / 3, 2.0, 1.0, 1 - 2 / 3])  # / (0.5 + 1)
    # density is accepted (mergekit lists it) and does nothing without a sparsifier.
    mp_d = [{"weight": 0.5, "density": 0.1}, {"weight": 1.0, "density": 0.1}]
    close(merge("task_arithmetic", BASE, [M1, M2], mp_d), [1.5, 2.5, 1.0, 0.0])


def test_task_arithmetic_weights_summing_to_zero_normalize():
    mp = [{"weight": 1.0}, {"weight": -1.0}]
    out = merge("task_arithmetic", BASE, [M1, M2], mp, {"normalize": True})
    close(out, [2.0, -2.0, 1.0, 5.0])  # divisor 0 -> 1: base + tau1 - tau2


# TIES: tau1 = [4, -3, 2, -6, 0.5] keeps 3 of 5 -> [4, -3, 0, -6, 0];
#       tau2 = [-1, -2, 3, 5, 0.1] keeps 3 of 5 -> [0, -2, 3, 5, 0].
# Weighted (1, 2): [4, -3, 0, -6, 0] and [0, -4, 6, 10, 0]; sum [4, -7, 6, 4, 0] elects + - + + +.
# Entry 3: -6 disagrees with the weighted majority (+10); unweighted (-6 + 5 < 0) it would win.
# Agreeing sums [4, -7, 6, 10, 0], agreeing weights [1, 3, 2, 2, 0 -> 1].
TIES_BASE = torch.ones(5)
TIES_TAUS = [T([4.0, -3.0, 2.0, -6.0, 0.5]), T([-1.0, -2.0, 3.0, 5.0, 0.1])]
TIES_MP = [{"weight": 1.0, "density": 0.6}, {"weight": 2.0, "density": 0.6}]


def ties(**params):
    return merge("ties", TIES_BASE, [TIES_BASE + t for t in TIES_TAUS], TIES_MP, params)


def test_ties_trim_elect_disjoint_mean():
    close(ties(), [5.0, 1 - 7 / 3, 4.0, 6.0, 1.0])
    close(ties(normalize=False), [5.0, -6.0, 7.0, 11.0, 1.0])
    close(ties(**{"lambda": 0.5}), [3.0, 1 - 7 / 6, 2.5, 3.5, 1.0])


def test_ties_weights_summing_to_zero():
    # Weighted values 1*1 and -1*-1 both elect +; their weights sum to 0 -> divisor 1.
    out = merge("ties", T([0.0]), [T([1.0]), T([-1.0])], [{"weight": 1.0}, {"weight": -1.0}])
    close(out, [2.0])


def test_ties_zero_sum_elects_positive():
    out = merge("ties", T([0.0]), [T([2.0]), T([-2.0])], [{"weight": 1.0}, {"weight": 1.0}])
    close(out, [2.0])  # sum 0 -> +: only the positive value counts, divided by its weight


def test_magnitude_ties_break_to_lower_index():
    tau = T([1.0, -2.0, 2.0, 1.0])
    close(trimmed("ties", tau, density=0.75), [1.0, -2.0, 2.0, 0.0])
    close(trimmed("ties", tau, density=0.25), [0.0, -2.0, 0.0, 0.0])
    close(trimmed("ties", tau, density=0.5), [0.0, -2.0, 2.0, 0.0])


def test_magnitude_keeps_exactly_k_with_many_ties():
    gen = torch.Generator().manual_seed(3)
    tau = torch.randint(-4, 5, (20_011,), generator=gen).float()
    density = 0.37
    k = int(density * tau.numel())
    out = trimmed("ties", tau, density=density)
    # Reference: a stable sort by decreasing magnitude keeps the lower index among equals.
    order = torch.sort(-tau.abs(), stable=True).indices
    expected = torch.zeros_like(tau)
    expected[order[:k]] = tau[order[:k]]
    assert torch.equal(out, expected)
    assert int(torch.count_nonzero(out)) == k  # no zero ranks inside the top k here


def test_magnitude_rounding_matches_mergekit():
    tau = torch.arange(1.0, 101.0)
    out = trimmed("ties", tau, density=0.29)  # int(0.29 * 100) == 28, not 29
    assert int(torch.count_nonzero(out)) == 28
    assert torch.equal(out[72:], tau[72:])


def test_density_one_and_zero():
    tau = T([0.5, -3.0, 2.0, 0.25])
    for name in ["ties", "breadcrumbs", "dare_linear"]:
        close(trimmed(name, tau, density=1.0), tau)
        close(trimmed(name, tau, density=0.0), [0.0, 0.0, 0.0, 0.0])
        assert not torch.isnan(trimmed(name, tau, density=0.0)).any()


def test_ties_rescale_restores_l1_norm():
    # keeps [4, -3, 0, 0] (L1 7 of 10), scaled by 10 / 7
    out = merge(
        "ties", torch.zeros(4), [T([4.0, -3.0, 2.0, -1.0])], [{"weight": 1.0, "density": 0.5}],
        {"rescale": True},
    )  # fmt: skip
    close(out, [40 / 7, -30 / 7, 0.0, 0.0], atol=1e-5)


@pytest.mark.parametrize("name", GTA)
def test_zero_task_vectors_give_the_base(name):
    base = T([[1.0, -2.0], [3.0, 0.5]])
    mp = [{"weight": 0.7, "density": 0.5}, {"weight": 0.3, "density": 0.5}]
    out = merge(name, base, [base.clone(), base.clone()], mp, {"normalize": True}, seed=0)
    assert torch.equal(out, base)


@pytest.mark.parametrize("name", GTA)
def test_no_models_give_the_base(name):
    base = T([1.0, 2.0])
    assert torch.equal(get_merge_method(name)(base, [], []), base)


def test_breadcrumbs_drops_outliers_and_small_values():
    tau = T([1.0, -2.0, 2.0, 1.0])  # ranks: -2 (1), 2 (2), 1 (0), 1 (3)
    close(trimmed("breadcrumbs", tau, density=0.5, gamma=0.25), [1.0, 0.0, 2.0, 0.0])
    tau = T([3.0, -10.0, 7.0, 1.0, -6.0, 9.0, 2.0, -8.0, 5.0, 4.0])
    # keep = int(0.5 * 10) = 5, top = int(0.1 * 10) = 1: drop 10, keep 9 8 7 6 5
    close(
        trimmed("breadcrumbs", tau, density=0.5, gamma=0.1),
        [0.0, 0.0, 7.0, 0.0, -6.0, 9.0, 0.0, -8.0, 5.0, 0.0],
    )
    # keep 9, top 2 do not fit in 10: only the largest is dropped
    out = trimmed("breadcrumbs", tau, density=0.95, gamma=0.2)
    close(out, torch.where(tau.abs() == 10, 0.0, tau))
    # gamma 0 keeps the top 5 (mergekit's [n_bot:-0] slice would keep nothing)
    close(
        trimmed("breadcrumbs", tau, density=0.5, gamma=0.0),
        [0.0, -10.0, 7.0, 0.0, -6.0, 9.0, 0.0, -8.0, 0.0, 0.0],
    )
    # density 1 keeps everything, outliers included, as mergekit does
    close(trimmed("breadcrumbs", tau, density=1.0, gamma=0.2), tau)


def test_breadcrumbs_default_gamma_rounding():
    tau = torch.arange(1.0, 201.0)  # gamma 0.01 -> int(2.0) = 2 outliers; density 0.5 -> 100
    out = trimmed("breadcrumbs", tau, density=0.5)
    expected = torch.where((tau > 98) & (tau <= 198), tau, 0.0)
    assert torch.equal(out, expected)


def test_breadcrumbs_ties():
    base = torch.zeros(4)
    taus = [T([1.0, -2.0, 2.0, 1.0]), T([-3.0, 1.0, 0.5, 2.0])]
    mp = [{"weight": 1.0, "density": 0.5, "gamma": 0.25}] * 2
    # trims: [1, 0, 2, 0] and [0, 1, 0, 2] (drop -3, keep 2 and 1); all signs agree (+)
    close(merge("breadcrumbs_ties", base, taus, mp), [1.0, 1.0, 2.0, 2.0])
    mp = [{"weight": 1.0, "density": 0.5, "gamma": 0.0}] * 2
    # trims: [0, -2, 2, 0] and [-3, 0, 0, 2]; sums elect - - + +
    close(merge("breadcrumbs_ties", base, taus, mp), [-3.0, -2.0, 2.0, 2.0])
    close(merge("breadcrumbs", base, taus, mp), [-3.0, -2.0, 2.0, 2.0])


# --- DARE -----------------------------------------------------------------------------------------


def test_dare_is_the_seeded_bernoulli_mask():
    base = torch.zeros(1000)
    tau = torch.linspace(-1.0, 1.0, 1000)
    out = merge("dare_linear", base, [tau], [{"weight": 2.0, "density": 0.4}], seed=7)
    seed = int(torch.randint(0, 2**62, (), generator=torch.Generator().manual_seed(7)))
    draws = np.random.SFC64(seed).random_raw(250).astype("<u8").view("<u2")
    keep = torch.from_numpy(draws < round(0.4 * 2**16))
    assert torch.allclose(out, torch.where(keep, tau / 0.4 * 2.0, 0.0), atol=1e-6)
    again = merge("dare_linear", base, [tau], [{"weight": 2.0, "density": 0.4}], seed=7)
    other = merge("dare_linear", base, [tau], [{"weight": 2.0, "density": 0.4}], seed=8)
    assert torch.equal(out, again)
    assert not torch.equal(out, other)


def test_dare_kept_fraction_and_rescale_on_a_large_tensor():
    n, density = 1_000_000, 0.3
    base, model = torch.zeros(n), torch.ones(n)
    mp = [{"weight": 1.0, "density": density}]
    out = merge("dare_linear", base, [model], mp, seed=0)
    kept = int(torch.count_nonzero(out))
    assert abs(kept / n - density) < 0.0025  # 5 standard deviations
    assert torch.allclose(out[out != 0], torch.full((kept,), 1 / density))
    assert abs(out.mean().item() - 1.0) < 0.01  # rescaling keeps the expectation
    plain = merge("dare_linear", base, [model], mp, {"rescale": False}, seed=0)
    assert torch.equal(plain != 0, out != 0) and torch.all(plain[plain != 0] == 1.0)


def test_dare_ties_elects_signs_after_dropping():
    # density 1 drops nothing: dare_ties is then TIES without trimming and without normalizing
    base = torch.zeros(3)
    taus = [T([1.0, -2.0, 3.0]), T([-4.0, -1.0, 1.0])]
    mp = [{"weight": 1.0, "density": 1.0}] * 2
    close(merge("dare_ties", base, taus, mp, seed=0), [-4.0, -3.0, 4.0])
    close(merge("dare_ties", base, taus, mp, {"normalize": True}, seed=0), [-4.0, -1.5, 2.0])


def test_dare_density_zero_is_the_base_without_nan():
    base = T([1.0, 2.0])
    out = merge("dare_ties", base, [T([5.0, 5.0])], [{"weight": 1.0, "density": 0.0}], seed=0)
    assert torch.equal(out, base)


# --- SLERP ----------------------------------------------------------------------------------------


def slerp(v0, v1, t):
    return merge("slerp", T(v0), [T(v1)], None, {"t": t})


def test_slerp_on_the_circle():
    close(slerp([2.0, 0.0], [0.0, 3.0], 0.5), [2 * math.sqrt(0.5), 3 * math.sqrt(0.5)])
    # 60 degrees apart, halfway: 30 degrees
    close(slerp([1.0, 0.0], [0.5, math.sqrt(3) / 2], 0.5), [math.sqrt(3) / 2, 0.5])
    close(slerp([1.0, 0.0], [0.0, 1.0], 1 / 3), [math.sqrt(3) / 2, 0.5])


def test_slerp_endpoints_are_exact():
    gen = torch.Generator().manual_seed(0)
    v0, v1 = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    assert torch.equal(merge("slerp", v0, [v1], None, {"t": 0.0}), v0)
    assert torch.equal(merge("slerp", v0, [v1], None, {"t": 1.0}), v1)


def test_slerp_parallel_and_antiparallel_interpolate_linearly():
    close(slerp([1.0, 2.0, 3.0], [2.0, 4.0, 6.0], 0.25), [1.25, 2.5, 3.75])
    close(slerp([1.0, 2.0, 3.0], [-2.0, -4.0, -6.0], 0.5), [-0.5, -1.0, -1.5])
    close(slerp([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 0.7), [1.0, 2.0, 3.0])


def test_slerp_zero_norm_follows_mergekit():
    # A zero tensor is not normalised: cosine 0, a quarter turn: sin(pi/4) * v1 at t = 0.5.
    close(slerp([0.0, 0.0], [3.0, 4.0], 0.5), [3 * math.sqrt(0.5), 4 * math.sqrt(0.5)])
    close(slerp([0.0, 0.0], [0.0, 0.0], 0.5), [0.0, 0.0])


def test_slerp_half_precision_and_errors():
    v0, v1 = T([[1.0, 0.0]], dtype=torch.bfloat16), T([[0.0, 1.0]], dtype=torch.bfloat16)
    out = merge("slerp", v0, [v1], None, {"t": 0.5})
    assert out.dtype == torch.bfloat16 and out.shape == (1, 2)
    assert torch.equal(out, T([[math.sqrt(0.5)] * 2]).to(torch.bfloat16))
    with pytest.raises(ValueError, match="slerp merges two tensors"):
        merge("slerp", None, [v0, v1], None, {"t": 0.5})
    with pytest.raises(ValueError, match="missing required parameter 't'"):
        merge("slerp", v0, [v1])


# --- region crossover -----------------------------------------------------------------------------

SHAPES = [(10, 20), (300,), (1,), (499,)]  # 1000 parameters


def crossover_by_tensor(a, b, split, w, omega):
    parts, offset = [], 0
    for shape in SHAPES:
        n = math.prod(shape)
        ta, tb = a[offset : offset + n].view(shape), b[offset : offset + n].view(shape)
        params = {"offset": offset, "split": split, "w": w, "omega": omega}
        out = merge("region_crossover", None, [ta, tb], None, params)
        assert out.shape == shape
        parts.append(out.reshape(-1))
        offset += n
    return torch.cat(parts)


@pytest.mark.parametrize("split", [0, 1000, 137, 200, 500, 501, 999])
def test_region_crossover_equals_split_slerp(split):
    gen = torch.Generator().manual_seed(split)
    a, b = torch.randn(1000, generator=gen), torch.randn(1000, generator=gen)
    omega, _ = parent_angle(a, b)
    assert torch.equal(crossover_by_tensor(a, b, split, 0.3, omega), split_slerp(a, b, split, 0.3))


def test_region_crossover_without_angle_is_linear():
    a, b = T([[1.0, 2.0]]), T([[3.0, 4.0]])
    out = merge("region_crossover", None, [a, b], None, {"split": 1, "w": 0.25, "omega": None})
    close(out, [[1.5, 3.5]])  # t = 0.25 then t = 0.75
    # The same tensor further in the model: the split is before it, so t = 0.75 throughout.
    params = {"offset": 5, "split": 3, "w": 0.25, "omega": None}
    close(merge("region_crossover", None, [a, b], None, params), [[2.5, 3.5]])
    # Parallel parents: parent_angle gives 0, the linear case of split_slerp.
    a = torch.linspace(-1.0, 1.0, 1000)
    omega, _ = parent_angle(a, 2 * a)
    assert torch.equal(
        crossover_by_tensor(a, 2 * a, 400, 0.3, omega), split_slerp(a, 2 * a, 400, 0.3)
    )
    assert torch.equal(
        crossover_by_tensor(a, 2 * a, 400, 0.3, None), split_slerp(a, 2 * a, 400, 0.3)
    )


# --- generic behaviour ----------------------------------------------------------------------------


def all_calls():
    gen = torch.Generator().manual_seed(1)
    base, m1, m2 = (torch.randn(4, 6, generator=gen) for _ in range(3))
    wd = [{"weight": 0.6, "density": 0.5}, {"weight": 0.4, "density": 0.5}]
    calls = [(name, base, [m1, m2], wd, {}) for name in GTA]
    calls.append(("linear", None, [m1, m2], [{"weight": 1.0}, {"weight": 2.0}], {}))
    calls.append(("slerp", base, [m1], None, {"t": 0.3}))
    cross = {"split": 10, "w": 0.3, "omega": 1.0}
    calls.append(("region_crossover", None, [m1, m2], None, cross))
    return calls


@pytest.mark.parametrize("call", all_calls(), ids=lambda c: c[0])
def test_inputs_are_not_modified_and_dtype_is_kept(call):
    name, base, models, mp, params = call
    before = [t.clone() for t in ([base] if base is not None else []) + models]
    out = merge(name, base, models, mp, params, seed=0)
    after = ([base] if base is not None else []) + models
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))
    assert out.shape == models[0].shape and out.dtype == torch.float32
    half = merge(
        name,
        None if base is None else base.to(torch.bfloat16),
        [m.to(torch.bfloat16) for m in models],
        mp,
        params,
        seed=0,
    )
    assert half.dtype == torch.bfloat16 and half.shape == out.shape
    assert torch.isfinite(half.float()).all()


def test_half_precision_is_computed_in_float32_and_rounded_once():
    base = T([1.0, 1.0, 1.0], dtype=torch.float16)
    models = [T([1.0009765625, 1.0, 1.0], dtype=torch.float16)] * 3  # 1 + 2**-10
    out = merge("task_arithmetic", base, models, [{"weight": 1 / 3}] * 3)
    # float32: 1 + 3 * (2**-10 / 3) rounds to 1 + 2**-10; summing in float16 would lose it.
    assert out.dtype == torch.float16 and out[0].item() == 1.0009765625


def test_unknown_method_lists_known_names():
    with pytest.raises(ValueError, match="unknown merge method 'tiez'.*linear.*ties"):
        get_merge_method("tiez")


def test_missing_and_unknown_parameters():
    base, m = torch.zeros(2), torch.ones(2)
    with pytest.raises(ValueError, match="ties: model 0: missing required parameter 'weight'"):
        merge("ties", base, [m], [{"density": 0.5}])
    with pytest.raises(ValueError, match="ties: model 0: unknown parameter 'densty'"):
        merge("ties", base, [m], [{"weight": 1.0, "densty": 0.5}])
    with pytest.raises(ValueError, match="ties: unknown parameter 'gamma'"):
        merge("ties", base, [m], [{"weight": 1.0}], {"gamma": 0.1})
    with pytest.raises(ValueError, match="parameter 'weight' must be a number"):
        merge("ties", base, [m], [{"weight": None}])
    with pytest.raises(ValueError, match="1 model_params for 2 models"):
        merge("ties", base, [m, m], [{"weight": 1.0}])
    with pytest.raises(ValueError, match="base tensor is required"):
        merge("ties", None, [m], [{"weight": 1.0}])
    with pytest.raises(ValueError, match="shapes differ"):
        merge("ties", base, [torch.ones(3)], [{"weight": 1.0}])
    with pytest.raises(ValueError, match="region_crossover: missing required parameter 'omega'"):
        merge("region_crossover", None, [m, m], None, {"split": 1, "w": 0.5})


def test_register_a_user_method():
    def scaled_mean(base, models, model_params, params, generator):
        total = sum(mp["scale"] * m for mp, m in zip(model_params, models, strict=True))
        return total / len(models) + params["shift"]

    method = MergeMethod(
        "scaled_mean",
        scaled_mean,
        BaseRole.NONE,
        Parameters(defaults={"scale": 1.0}),
        Parameters(required=("shift",)),
    )
    register_merge_method(method)
    try:
        got = get_merge_method("scaled_mean")
        assert got is method
        out = got(None, [T([2.0]), T([4.0])], [{}, {"scale": 0.5}], {"shift": 1.0})
        close(out, [3.0])  # (2 + 0.5 * 4) / 2 + 1
        with pytest.raises(ValueError, match="missing required parameter 'shift'"):
            got(None, [T([2.0])])
    finally:
        del MERGE_METHODS["scaled_mean"]
    with pytest.raises(ValueError, match="unknown merge method"):
        get_merge_method("scaled_mean")
    with pytest.raises(TypeError):
        register_merge_method(scaled_mean)


# --- the declaration carries the differences between methods -------------------------------------


def test_the_base_role_decides_what_configs_and_recipes_require(tmp_path):
    from pydantic import ValidationError

    from evomerge.core.errors import ConfigError
    from evomerge.merge.merge_config import from_mergekit, load_merge_config
    from evomerge.spaces.recipe import RecipeSection, RecipeSpace

    with pytest.raises(ValidationError, match="slerp interpolates from a base.*recipe.base"):
        RecipeSection(method="slerp", genes={"t": {}})
    endpoint = RecipeSection(method="slerp", base=0, genes={"t": {}})
    with pytest.raises(ValueError, match="slerp merges the base with one model, but 2 seeds"):
        RecipeSpace(endpoint, [("w", (2,))], num_seeds=3)
    assert RecipeSpace(endpoint, [("w", (2,))], num_seeds=2).models == [1]
    two = {"method": "slerp", "base": "b", "models": [{"path": "x"}, {"path": "y"}]}
    with pytest.raises(ConfigError, match="slerp merges two models: a base .* exactly one"):
        load_merge_config(tmp_path / "m.yaml", {**two, "params": {"t": 0.5}})
    # mergekit's base_model is the base of an endpoint or task-vector method, an input of linear
    mk = {"base_model": "b", "models": [{"model": "b"}, {"model": "x"}]}
    assert from_mergekit({**mk, "merge_method": "slerp"}, "s")["base"] == "b"
    linear = from_mergekit({**mk, "merge_method": "linear"}, "s")
    assert "base" not in linear and [m["path"] for m in linear["models"]] == ["b", "x"]


def test_the_earlier_constructor_form_maps_onto_the_declaration():
    def f(base, models, model_params, params, generator):
        return models[0]

    old = MergeMethod("old", f, True, {"weight": None, "density": 1.0}, {"t": None})
    assert old.base is BaseRole.REQUIRED and old.needs_base
    assert old.model_params == Parameters(("weight",), {"density": 1.0})
    assert old.params == Parameters(("t",))
    assert MergeMethod("o", f, needs_base=False, optional_base=True).base is BaseRole.OPTIONAL
    assert MergeMethod("e", f, "endpoint").base is BaseRole.ENDPOINT
    with pytest.raises(ValueError, match="base: 'sometimes' is not a base role"):
        MergeMethod("bad", f, "sometimes")
    with pytest.raises(ValueError, match="'t' is both required and has a default"):
        Parameters(("t",), {"t": 0.5})
