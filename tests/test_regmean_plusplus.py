"""RegMean++ (inputs of layer l through the merged layers < l) against a hand computation on
the digits MLP, from a merge config; refused in recipe searches."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import DIGITS
from safetensors.torch import load_file, save_file

from evomerge.core.plugins import load_object
from evomerge.interface.cli import main
from evomerge.ops.statistics import split
from evomerge.spaces.recipe import RecipeSection

LIMIT = 60
ALPHA = 0.9  # off-diagonals scaled: 120 examples leave a 256-unit Gram singular


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    root = tmp_path_factory.mktemp("regmeanpp")
    digits = load_object(DIGITS)()
    digits.setup(torch.device("cpu"))
    seeds = digits.make_seeds(2, 0, steps=30)  # separate inits: RegMean and ++ differ
    layout = digits.param_layout()
    for name, flat in zip(("low", "high"), seeds, strict=True):
        tensors = {n: t.contiguous() for n, t in split(flat, layout).items()}
        save_file(tensors, root / f"{name}.safetensors")
    return root, digits, [split(s, layout) for s in seeds]


def _merge(root, method, out):
    cfg = {
        "method": method,
        "models": [{"path": str(root / f"{m}.safetensors")} for m in ("low", "high")],
        "params": {"alpha": ALPHA},
        "statistics": {
            "plugin": DIGITS,
            "examples": ["0-4", "5-9"],
            "limit": LIMIT,
            "cache": str(root / "cache"),
        },
    }
    path = root / f"{method}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(path), "--out", str(out), "-q"]) == 0
    return load_file(out / "model.safetensors")


def _solve(ws, grams):
    """RegMean for (in, out) weights: (sum G~_i)^-1 sum G~_i W_i, G~ = a G + (1 - a) diag(G);
    an input no example activates (a blank corner pixel, a dead ReLU) takes the average row."""
    grams = [ALPHA * g + (1 - ALPHA) * torch.diag(torch.diagonal(g)) for g in grams]
    a = sum(g for g in grams)
    b = sum(g @ w for g, w in zip(grams, ws, strict=True))
    dead = torch.diagonal(a) == 0
    a[dead, dead] = 1.0
    b[dead] = (sum(ws) / len(ws))[dead]
    return torch.linalg.solve(a, b)


def test_regmean_plusplus_takes_layer_2_inputs_from_the_merged_layer_1(experts):
    root, digits, (low, high) = experts
    got = _merge(root, "regmean_plusplus", root / "pp")
    plain = _merge(root, "regmean", root / "plain")
    groups = digits.example_groups()
    xs = [digits.x_train[groups[g][:LIMIT]].double() for g in ("0-4", "5-9")]
    models = [{n: t.double() for n, t in m.items()} for m in (low, high)]
    # layer 1: the pixels, as in RegMean
    w1 = _solve([m["layers.0.weight"] for m in models], [x.T @ x for x in xs])
    b1 = (models[0]["layers.0.bias"] + models[1]["layers.0.bias"]) / 2
    # layer 2: each model's examples through the *merged* layer 1
    hs = [torch.relu(x @ w1 + b1) for x in xs]
    w2 = _solve([m["layers.1.weight"] for m in models], [h.T @ h for h in hs])
    # RegMean: through each model's own layer 1
    own = [
        torch.relu(x @ m["layers.0.weight"] + m["layers.0.bias"])
        for x, m in zip(xs, models, strict=True)
    ]
    w2_plain = _solve([m["layers.1.weight"] for m in models], [h.T @ h for h in own])
    torch.testing.assert_close(got["layers.0.weight"].double(), w1, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["layers.0.weight"], plain["layers.0.weight"])
    torch.testing.assert_close(got["layers.0.bias"].double(), b1, atol=1e-6, rtol=0)
    torch.testing.assert_close(got["layers.1.weight"].double(), w2, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(plain["layers.1.weight"].double(), w2_plain, atol=1e-4, rtol=1e-3)
    assert (w2 - w2_plain).abs().max() > 1e-2  # the two methods really differ here


def test_regmean_plusplus_is_refused_in_a_recipe_search():
    with pytest.raises(ValueError, match="through the merge itself"):
        RecipeSection(method="regmean_plusplus", genes={}, statistics={})
