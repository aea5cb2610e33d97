"""PLeaS's least-squares step: the kernel against hand-made systems, and ``method: pleas`` after
``align:`` from a merge YAML against a hand computation on the digits MLP."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import DIGITS
from safetensors.torch import load_file, save_file

from evomerge.core.plugins import load_object
from evomerge.interface.cli import main
from evomerge.ops.alignment import PermutationSpec, align
from evomerge.ops.least_squares import pleas
from evomerge.ops.statistics import split
from evomerge.spaces.recipe import RecipeSection

T = torch.tensor
DIGITS_SPEC = {"hidden": {"layers.0.weight": 1, "layers.0.bias": 0, "layers.1.weight": 0}}


def _stats(xm, xo):
    return torch.stack([xm.T @ xm, xm.T @ xo])


def test_one_input_by_hand():
    """One input, (out=1, in=1): model 1 sees x=[1,2] where the merge sees [1,1]; model 2 sees
    [3,0] where the merge sees [2,0]. Targets 1*[1,2] and 2*[3,0]: the merged weight w minimises
    (w-1)^2 + (w-2)^2 + (2w-6)^2 + 0 -> 6w = 15, w = 2.5."""
    s1 = _stats(T([[1.0], [1.0]]), T([[1.0], [2.0]]))  # G* = 2, C = 3
    s2 = _stats(T([[2.0], [0.0]]), T([[3.0], [0.0]]))  # G* = 4, C = 6
    assert s1[:, 0, 0].tolist() == [2.0, 3.0] and s2[:, 0, 0].tolist() == [4.0, 6.0]
    w = [{"weight": 1.0}, {"weight": 1.0}]
    out = pleas(None, [T([[1.0]]), T([[2.0]])], w, {"ridge": 0.0}, None, statistics=[s1, s2])
    assert out.item() == pytest.approx(2.5)  # (1*3 + 2*6) / (2 + 4)


@pytest.mark.parametrize("axis", [1, 0])
def test_kernel_is_the_least_squares_solution(axis):
    """Against torch.linalg.lstsq on the stacked system sqrt(w_i) X*_i W^T = sqrt(w_i) X_i W_i^T,
    for (out, in) and (in, out) storage."""
    gen = torch.Generator().manual_seed(0)
    xs_m = [torch.randn(20, 4, generator=gen, dtype=torch.float64) for _ in range(3)]
    xs_o = [torch.randn(20, 4, generator=gen, dtype=torch.float64) for _ in range(3)]
    ws = [torch.randn(3, 4, generator=gen, dtype=torch.float64) for _ in range(3)]  # (out, in)
    lam = [1.0, 0.5, 2.0]
    a = torch.cat([c**0.5 * x for c, x in zip(lam, xs_m, strict=True)])
    b = torch.cat([c**0.5 * x @ w.T for c, x, w in zip(lam, xs_o, ws, strict=True)])
    want = torch.linalg.lstsq(a, b).solution.T  # (out, in)
    stats = [_stats(m, o) for m, o in zip(xs_m, xs_o, strict=True)]
    models = ws if axis == 1 else [w.T.contiguous() for w in ws]
    params = [{"weight": x} for x in lam]
    got = pleas(None, models, params, {"ridge": 0.0}, None, statistics=stats)
    torch.testing.assert_close(got if axis == 1 else got.T, want, atol=1e-10, rtol=1e-10)
    # with the merged inputs equal to each model's own, it is RegMean (alpha = 1)
    same = [_stats(o, o) for o in xs_o]
    got = pleas(None, ws, params, {"ridge": 0.0}, None, statistics=same)
    g = [x.T @ x for x in xs_o]
    regmean = sum(c * w @ gi for c, w, gi in zip(lam, ws, g, strict=True)) @ torch.linalg.inv(
        sum(c * gi for c, gi in zip(lam, g, strict=True))
    )
    torch.testing.assert_close(got, regmean, atol=1e-10, rtol=1e-10)


def test_kernel_averages_tensors_without_statistics_and_checks_shapes():
    w = [{"weight": 1.0}, {"weight": 3.0}]
    out = pleas(None, [T([1.0, 1.0]), T([5.0, 1.0])], w, {"ridge": 0.0}, None, [None, None])
    assert out.tolist() == [4.0, 1.0]
    with pytest.raises(ValueError, match="expected \\(2, 2, 2\\)"):
        pleas(
            None,
            [torch.ones(3, 2)] * 2,
            w,
            {"ridge": 0.0},
            None,
            [torch.ones(2, 2, 2), torch.ones(2, 2)],
        )
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        pleas(None, [torch.ones(3, 2)] * 2, w, {"ridge": -1.0}, None, [torch.ones(2, 2, 2)] * 2)


LIMIT = 60
RIDGE = 1e-3


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    root = tmp_path_factory.mktemp("pleas")
    digits = load_object(DIGITS)()
    digits.setup(torch.device("cpu"))
    seeds = digits.make_seeds(2, 0, steps=30)  # separate inits
    layout = digits.param_layout()
    for name, flat in zip(("low", "high"), seeds, strict=True):
        tensors = {n: t.contiguous() for n, t in split(flat, layout).items()}
        save_file(tensors, root / f"{name}.safetensors")
    return root, digits, [split(s, layout) for s in seeds]


def _solve(ws, xms, xos):
    """(in, out) weights: A^-1 sum C_i W_i with A = sum G*_i + ridge mean(diag) I."""
    a = sum(x.T @ x for x in xms)
    a = a + RIDGE * torch.diagonal(a).mean() * torch.eye(a.shape[0], dtype=a.dtype)
    b = sum(xm.T @ xo @ w for xm, xo, w in zip(xms, xos, ws, strict=True))
    return torch.linalg.solve(a, b)


def test_pleas_from_a_merge_yaml_after_alignment(experts):
    root, digits, (low, high) = experts
    cfg = {
        "method": "pleas",
        "models": [{"path": str(root / f"{m}.safetensors")} for m in ("low", "high")],
        "params": {"ridge": RIDGE},
        "align": {"permutations": DIGITS_SPEC},
        "statistics": {"plugin": DIGITS, "examples": ["0-4", "5-9"], "limit": LIMIT},
    }
    path = root / "pleas.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(path), "--out", str(root / "out"), "-q"]) == 0
    got = load_file(root / "out" / "model.safetensors")
    moved = align(low, high, PermutationSpec(DIGITS_SPEC))
    models = [{n: t.double() for n, t in m.items()} for m in (low, moved)]
    groups = digits.example_groups()
    xs = [digits.x_train[groups[g][:LIMIT]].double() for g in ("0-4", "5-9")]
    # layer 1: the pixels are every model's and the merge's inputs alike
    w1 = _solve([m["layers.0.weight"] for m in models], xs, xs)
    b1 = (models[0]["layers.0.bias"] + models[1]["layers.0.bias"]) / 2
    # layer 2: inputs through the merged layer 1, targets through each model's own layer 1
    # (through the merge's own float32 layer 1, so that its rounding is not compared)
    merged_h = [torch.relu(x @ got["layers.0.weight"].double() + b1) for x in xs]
    own_h = [
        torch.relu(x @ m["layers.0.weight"] + m["layers.0.bias"])
        for x, m in zip(xs, models, strict=True)
    ]
    w2 = _solve([m["layers.1.weight"] for m in models], merged_h, own_h)
    torch.testing.assert_close(got["layers.0.weight"].double(), w1, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(got["layers.0.bias"].double(), b1, atol=1e-6, rtol=0)
    # the system's condition number is ~1e5 and the merge stores its Grams in float32: the
    # weights agree to ~1e-3 of their scale, the layer's outputs on the examples far closer
    w2_got = got["layers.1.weight"].double()
    torch.testing.assert_close(w2_got, w2, atol=2e-3 * w2.abs().max().item(), rtol=0)
    for h in merged_h:
        out = h @ w2
        torch.testing.assert_close(h @ w2_got, out, atol=1e-4 * out.abs().max().item(), rtol=0)

    # the fitted layer 2 reproduces the models' own layer-2 outputs better than RegMean++'s
    # (which fits the merged inputs to themselves) would: its residual is the least
    def residual(w):
        return sum(
            ((h @ w - o @ m["layers.1.weight"]) ** 2).sum()
            for h, o, m in zip(merged_h, own_h, models, strict=True)
        )

    avg = (models[0]["layers.1.weight"] + models[1]["layers.1.weight"]) / 2
    assert residual(w2) < residual(avg)


def test_pleas_is_refused_in_a_recipe_search():
    with pytest.raises(ValueError, match="through the merge itself"):
        RecipeSection(method="pleas", genes={}, statistics={})
