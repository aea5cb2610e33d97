"""Fisher merging and RegMean against their formulas, their statistics pass, YAML and search."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import DIGITS, ROOT, digits_recipe_config
from safetensors.torch import load_file, save_file

from evomerge.core.plugins import load_object
from evomerge.interface.cli import main
from evomerge.ops.operators import MERGE_METHODS, get_merge_method
from evomerge.ops.statistics import compute, fisher_diagonal, gram_matrices, split

T = torch.tensor


def merge(name, models, weights=None, params=None, statistics=None):
    mp = None if weights is None else [{"weight": w} for w in weights]
    return get_merge_method(name)(None, models, mp, params, None, statistics=statistics)


# --- fisher: the formula ----------------------------------------------------------------------


def test_fisher_is_the_fisher_weighted_average_with_a_floor():
    a, b = T([[1.0, 2.0], [3.0, -4.0]]), T([[5.0, 0.0], [-1.0, 8.0]])
    fa, fb = T([[1.0, 0.0], [2.0, 0.0]]), T([[3.0, 0.0], [0.5, 0.0]])
    out = merge("fisher", [a, b], [1.0, 2.0], {"fisher_floor": 1e-6}, [fa, fb])
    floor = 1e-6
    fa_, fb_ = fa.clamp_min(floor), fb.clamp_min(floor)
    expected = (1 * fa_ * a + 2 * fb_ * b) / (1 * fa_ + 2 * fb_)
    assert torch.allclose(out, expected, atol=1e-6)
    # hand values: entry (0, 0) = (1*1*1 + 2*3*5) / (1 + 6) = 31/7; zero Fisher -> (a + 2b)/3
    assert out[0, 0].item() == pytest.approx(31 / 7, abs=1e-6)
    assert out[0, 1].item() == pytest.approx((2.0 + 0.0) / 3, abs=1e-6)
    assert out[1, 1].item() == pytest.approx((-4.0 + 16.0) / 3, abs=1e-6)


def test_fisher_without_statistics_for_a_tensor_is_the_weighted_average():
    a, b = T([1.0, 2.0]), T([3.0, 6.0])
    out = merge("fisher", [a, b], [1.0, 3.0], None, [None, None])
    assert torch.allclose(out, (a + 3 * b) / 4)
    with pytest.raises(ValueError, match="statistics"):
        merge("fisher", [a, b], None, None, [T([1.0])])


def test_fisher_half_precision_rounds_once():
    a, b = T([1.0, 2.0]).bfloat16(), T([3.0, 6.0]).bfloat16()
    out = merge("fisher", [a, b], None, None, [T([1.0, 1.0]), T([3.0, 1.0])])
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, T([(1 + 9) / 4, 4.0]).bfloat16())


# --- fisher: the estimate -----------------------------------------------------------------


class Softmax:
    """A real linear softmax classifier ``p(y|x) = softmax(W x)`` with W (3, 4) flat."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(6, 4, generator=g)
        self.y = T([0, 1, 2, 0, 1, 2])
        self.num_examples = 6

    def param_layout(self):
        return [("linear.weight", (3, 4))]

    def example_groups(self):
        return {"first": [0, 1, 2], "all": list(range(6))}

    def log_likelihoods(self, params, ids):
        w = params.view(3, 4)
        return torch.log_softmax(self.x[ids] @ w.T, -1).gather(1, self.y[ids][:, None])[:, 0]

    def linear_inputs(self, params, ids):
        return {"linear.weight": self.x[ids]}


def test_fisher_diagonal_is_the_mean_squared_per_example_gradient_by_hand():
    m = Softmax()
    w = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    ids = T([0, 2, 3, 5])
    got = fisher_diagonal(m, w.reshape(-1), ids).view(3, 4)
    # d log softmax(Wx)_y / dW = (onehot(y) - softmax(Wx)) x^T
    expected = torch.zeros(3, 4)
    for i in ids.tolist():
        p = torch.softmax(w @ m.x[i], 0)
        g = torch.outer(torch.nn.functional.one_hot(m.y[i], 3).float() - p, m.x[i])
        expected += g * g / len(ids)
    assert torch.allclose(got, expected, atol=1e-6)
    # batches of 2: the squared gradient of each pair's sum, / 2, averaged over pairs
    grads = []
    for i in ids.tolist():
        p = torch.softmax(w @ m.x[i], 0)
        grads.append(torch.outer(torch.nn.functional.one_hot(m.y[i], 3).float() - p, m.x[i]))
    pairs = [(grads[0] + grads[1]) ** 2 / 2, (grads[2] + grads[3]) ** 2 / 2]
    got2 = fisher_diagonal(m, w.reshape(-1), ids, batch_size=2).view(3, 4)
    assert torch.allclose(got2, sum(pairs) / 2, atol=1e-6)


def test_gram_pass_sums_x_transpose_x():
    m = Softmax()
    ids = T([1, 2, 4])
    g = gram_matrices(m, torch.zeros(12), ids, batch_size=2)["linear.weight"]
    x = m.x[ids].double()
    assert torch.allclose(g.double(), x.T @ x, atol=1e-5)
    assert set(compute(m, "gram", torch.zeros(12), ids, 1)) == {"linear.weight"}


# --- regmean: the formula -----------------------------------------------------------------


def _reduce(g, alpha):
    return alpha * g + (1 - alpha) * torch.diag(torch.diagonal(g))


def test_regmean_is_the_closed_form_on_a_two_layer_mlp():
    gen = torch.Generator().manual_seed(0)
    mlps = [torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))]
    mlps.append(torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)))
    xs = [torch.randn(20, 4, generator=gen), torch.randn(30, 4, generator=gen) * 2 + 1]
    with torch.no_grad():
        grams0 = [x.T @ x for x in xs]
        hs = [mlp[1](mlp[0](x)) for mlp, x in zip(mlps, xs, strict=True)]
        grams1 = [h.T @ h for h in hs]
    for layer, grams in ((0, grams0), (2, grams1)):
        ws = [mlp[layer].weight.detach() for mlp in mlps]
        for alpha, weights in ((1.0, [1.0, 1.0]), (0.9, [1.0, 2.0])):
            out = merge("regmean", ws, weights, {"alpha": alpha}, grams)
            gt = [w * _reduce(g.double(), alpha) for w, g in zip(weights, grams, strict=True)]
            num = sum(wi.double() @ g for wi, g in zip(ws, gt, strict=True))
            inverse = torch.from_numpy(np.linalg.inv(sum(gt).numpy()))  # as the formula says
            assert torch.allclose(out.double(), num @ inverse, atol=1e-5)
            # the (in, out) layout (x @ W) gives the transpose
            out_t = merge("regmean", [w.T for w in ws], weights, {"alpha": alpha}, grams)
            assert torch.allclose(out_t, out.T, atol=1e-5)
        biases = [mlp[layer].bias.detach() for mlp in mlps]
        assert torch.allclose(merge("regmean", biases, None, None, [None, None]), sum(biases) / 2)


def test_regmean_properties():
    gen = torch.Generator().manual_seed(3)
    ws = [torch.randn(3, 4, generator=gen) for _ in range(3)]
    x = torch.randn(10, 4, generator=gen)
    g = x.T @ x
    same = merge("regmean", ws, [1.0, 2.0, 1.0], {"alpha": 0.7}, [g, g, g])
    assert torch.allclose(same, (ws[0] + 2 * ws[1] + ws[2]) / 4, atol=1e-5)
    dominant = merge("regmean", ws, None, {"alpha": 1.0}, [g * 1e6, g, g])
    assert torch.allclose(dominant, ws[0], atol=1e-4)
    # alpha 1: W* minimises sum_i ||X_i W^T - X_i W_i^T||^2 -> its gradient vanishes there
    xs = [torch.randn(8, 4, generator=gen).double() for _ in ws]
    ws = [w.double() for w in ws]
    out = merge("regmean", ws, None, {"alpha": 1.0}, [x.T @ x for x in xs])
    w = out.clone().requires_grad_(True)
    loss = sum(((x @ w.T - x @ wi.double().T) ** 2).sum() for x, wi in zip(xs, ws, strict=True))
    (grad,) = torch.autograd.grad(loss, w)
    assert grad.abs().max().item() < 1e-8 * max(1.0, loss.item())


def test_regmean_inputs_never_seen_take_the_average_column():
    ws = [T([[1.0, 2.0], [3.0, 4.0]]), T([[5.0, 6.0], [7.0, 8.0]])]
    grams = [T([[2.0, 0.0], [0.0, 0.0]]), T([[1.0, 0.0], [0.0, 0.0]])]
    out = merge("regmean", ws, None, {"alpha": 1.0}, grams)
    # column 0: (2 w0 + 1 w1) / 3; column 1 (no input): the plain average
    assert torch.allclose(out[:, 0], (2 * ws[0][:, 0] + ws[1][:, 0]) / 3)
    assert torch.allclose(out[:, 1], (ws[0][:, 1] + ws[1][:, 1]) / 2)


def test_registered_with_defaults():
    assert MERGE_METHODS["fisher"].statistics == "fisher"
    assert dict(MERGE_METHODS["fisher"].params.defaults) == {"fisher_floor": 1e-6}
    assert MERGE_METHODS["regmean"].statistics == "gram"
    assert dict(MERGE_METHODS["regmean"].params.defaults) == {"alpha": 0.9}


# --- evomerge merge from a YAML, on digits experts ------------------------------------------


@pytest.fixture(scope="module")
def digits_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    digits = load_object(DIGITS)()
    digits.setup(torch.device("cpu"))
    seeds = digits.make_seeds(2, 0, shared_init=True, steps=30)
    for name, flat in zip(("low", "high"), seeds, strict=True):
        tensors = {n: t.contiguous() for n, t in split(flat, digits.param_layout()).items()}
        save_file(tensors, root / f"{name}.safetensors")
    return root, digits, seeds


def _yaml(root, method, statistics, params=None):
    cfg = {
        "merge_method": method,
        "models": [
            {"model": str(root / "low.safetensors"), "parameters": {"weight": 1.0}},
            {"model": str(root / "high.safetensors"), "parameters": {"weight": 1.0}},
        ],
        "parameters": params or {},
    }
    if statistics is not None:
        cfg["statistics"] = statistics
    path = root / f"{method}.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("method,kind", [("fisher", "fisher"), ("regmean", "gram")])
def test_merge_yaml_equals_the_operator_over_the_statistics(digits_models, method, kind):
    root, digits, seeds = digits_models
    stats = {"plugin": DIGITS, "examples": ["0-4", "5-9"], "limit": 40, "cache": str(root / "c")}
    out = root / f"out-{method}"
    assert main(["merge", str(_yaml(root, method, stats)), "--out", str(out), "-q"]) == 0
    merged = load_file(out / "model.safetensors")
    groups = digits.example_groups()
    per_model = [
        compute(digits, kind, s, T(groups[g][:40]), 1)
        for s, g in zip(seeds, ["0-4", "5-9"], strict=True)
    ]
    layout = digits.param_layout()
    for name, _ in layout:
        models = [split(s, layout)[name] for s in seeds]
        expected = get_merge_method(method)(
            None, models, None, None, None, statistics=[d.get(name) for d in per_model]
        )
        assert torch.allclose(merged[name], expected, atol=1e-5), name
    files = sorted((root / "c").rglob(f"{kind}.safetensors"))
    assert len(files) == 2
    # a second merge reads the cached statistics (the files are not rewritten)
    mtimes = [f.stat().st_mtime_ns for f in files]
    out2 = root / f"out2-{method}"
    assert main(["merge", str(_yaml(root, method, stats)), "--out", str(out2), "-q"]) == 0
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert torch.equal(
        load_file(out2 / "model.safetensors")["layers.0.weight"], merged["layers.0.weight"]
    )


def test_merge_yaml_bad_data_source_is_one_line(digits_models, capsys):
    root, _, _ = digits_models
    cases = [
        (None, "statistics: fisher needs data"),
        ({"plugin": DIGITS, "examples": ["0-4"]}, "statistics.examples: 1 entries for 2 models"),
        (
            {"plugin": DIGITS, "examples": ["0-4", "nope"], "cache": str(root / "bad")},
            "no example group 'nope'",
        ),
        (
            {"plugin": DIGITS, "options": {"bogus": 1}, "cache": str(root / "bad")},
            "statistics.options",
        ),
        ({"plugin": "fitness/none.py:X"}, "statistics.plugin"),
        ({"plugin": DIGITS, "exemples": []}, "exemples"),
    ]
    for stats, message in cases:
        capsys.readouterr()
        code = main(["merge", str(_yaml(root, "fisher", stats)), "--out", str(root / "x"), "-q"])
        err = capsys.readouterr().err.strip()
        assert code == 2, (stats, err)
        assert message in err and len(err.splitlines()) == 1, err
    path = _yaml(root, "linear", {"plugin": DIGITS})
    assert main(["merge", str(path), "--out", str(root / "x"), "-q"]) == 2


# --- the causal-LM plug-in's statistics -------------------------------------------------------


def test_causal_lm_log_likelihoods_and_linear_inputs(lm_dir):
    cls = load_object(f"{ROOT / 'fitness/causal_lm.py'}:CausalLM")
    task = {"name": "add", "train": str(lm_dir / "add.jsonl"), "metric": "likelihood"}
    fit = cls(seeds=[str(lm_dir / "add")], tasks=[task], include_eos=True)
    fit.setup(torch.device("cpu"))
    params = fit.make_seeds(1, 0)[0]
    ids = T([0, 3, 5])
    ll = fit.log_likelihoods(params, ids)
    scores = fit.score(params[None], ids)[0]  # exp(mean log p) over answer + end
    n = T([len(fit.tasks[0].train_tok[i].answer) + 1 for i in ids.tolist()], dtype=torch.float)
    assert torch.allclose(ll, torch.log(scores) * n, atol=1e-4)
    fisher = fisher_diagonal(fit, params, ids)
    assert fisher.shape == params.shape and fisher.sum() > 0
    inputs = fit.linear_inputs(params, ids)
    tokens = sum(
        len(fit.tasks[0].train_tok[i].prefix + fit.tasks[0].train_tok[i].answer)
        for i in ids.tolist()
    )
    assert "model.layers.0.self_attn.q_proj.weight" in inputs and "lm_head.weight" in inputs
    assert all(x.shape[0] == tokens for x in inputs.values())


def test_causal_lm_merge_yaml_regmean(lm_dir, tmp_path):
    plugin = f"{ROOT / 'fitness/causal_lm.py'}:CausalLM"
    tasks = [
        {"name": n, "train": str(lm_dir / f"{n}.jsonl"), "metric": "token_accuracy"}
        for n in ("add", "reverse")
    ]
    cfg = {
        "merge_method": "regmean",
        "models": [{"model": str(lm_dir / "add")}, {"model": str(lm_dir / "reverse")}],
        "statistics": {
            "plugin": plugin,
            "options": {"seeds": [str(lm_dir / "add")], "tasks": tasks},
            "examples": ["add", "reverse"],
            "batch_size": 4,
        },
    }
    path = tmp_path / "m.yml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(path), "--out", str(tmp_path / "out"), "-q"]) == 0
    merged = load_file(tmp_path / "out" / "model.safetensors")
    a = load_file(lm_dir / "add" / "model.safetensors")
    r = load_file(lm_dir / "reverse" / "model.safetensors")
    norm = "model.norm.weight"
    assert torch.allclose(merged[norm], (a[norm] + r[norm]) / 2)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged[q], (a[q] + r[q]) / 2)
    # ... it is RegMean's closed form on q_proj's inputs: each expert's Gram X^T X over its
    # own task's examples (the plug-in's linear_inputs), off-diagonals times alpha (0.9), then
    # W* = (sum_i W_i G_i) (sum_i G_i)^-1
    fit = load_object(plugin)(**cfg["statistics"]["options"])
    fit.setup(torch.device("cpu"))
    groups = fit.example_groups()
    grams = []
    for expert, task in ((a, "add"), (r, "reverse")):
        flat = torch.cat([expert[n].float().reshape(-1) for n, _ in fit.param_layout()])
        x = fit.linear_inputs(flat, T(groups[task]))[q].double()
        grams.append(_reduce(x.T @ x, 0.9))
    num = a[q].double() @ grams[0] + r[q].double() @ grams[1]
    expected = num @ torch.from_numpy(np.linalg.inv((grams[0] + grams[1]).numpy()))
    assert torch.allclose(merged[q].double(), expected, rtol=1e-4, atol=1e-5)


# --- a recipe search with Fisher weights as genes ---------------------------------------------


def test_cmaes_recipe_search_with_fisher_weights(tmp_path):
    recipe = {
        "method": "fisher",
        "base": 0,
        "genes": {"weight": {"low": 0.0, "high": 1.0}},
        "statistics": {"examples": ["0-4", "5-9"], "limit": 60},
    }
    cfg = digits_recipe_config(16, 30, recipe=recipe)
    cfg["checkpoint_every"] = 16
    cfg["history_every"] = 8
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluations"] >= 16 and 0.0 < summary["metrics"]["test_accuracy"] <= 1.0


def test_recipe_space_hands_each_tensor_its_statistics():
    from evomerge.ops.statistics import per_seed
    from evomerge.spaces.recipe import RecipeSection, RecipeSpace

    m = Softmax()
    section = RecipeSection(
        method="regmean",
        genes={"weight": {"low": 0.0, "high": 2.0}},
        statistics={"examples": ["first", None]},
    )
    space = RecipeSpace(section, m.param_layout(), 2)
    seeds = torch.randn(2, 12, generator=torch.Generator().manual_seed(5))
    space.attach_statistics(per_seed(m, "gram", section.statistics, list(seeds)))
    genes = [0.25, 0.75]  # weights 0.5 and 1.5
    out = space.materialize(seeds, genes).view(3, 4)
    x0, x1 = m.x[:3], m.x
    grams = [x0.T @ x0, x1.T @ x1]
    expected = get_merge_method("regmean")(
        None,
        [s.view(3, 4) for s in seeds],
        [{"weight": 0.5}, {"weight": 1.5}],
        None,
        None,
        statistics=grams,
    )
    assert torch.allclose(out, expected, atol=1e-5)
    with pytest.raises(ValueError, match="statistics: fisher needs data"):
        RecipeSection(method="fisher", genes={"weight": {}})
    with pytest.raises(ValueError, match="1 entries for 2 merged seeds"):
        per_seed(
            m,
            "gram",
            RecipeSection(
                method="regmean", statistics={"examples": ["first"]}, genes={}
            ).statistics,
            list(seeds),
        )
