"""AdaMerging and FW-Merging: their updates by hand, the oracle, convergence, YAML and search."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import DIGITS, ROOT, digits_recipe_config
from safetensors.torch import load_file, save_file

from evomerge.core.plugins import load_object
from evomerge.interface.cli import main
from evomerge.ops import adamerging, frank_wolfe
from evomerge.ops.adamerging import entropy
from evomerge.ops.frank_wolfe import ZERO, alignment, lmo
from evomerge.ops.learned_coefficients import Pool
from evomerge.ops.operators import get_merge_method
from evomerge.ops.statistics import example_ids, split
from evomerge.spaces.recipe import RecipeSection, RecipeSpace
from evomerge.spaces.recipe_start import learned_initial

T = torch.tensor


# --- AdaMerging: one linear softmax layer, the gradient and Adam's steps by hand ----------------


def _hand_entropy_grad(w, taus, xs):
    """d/d lambda_k of sum_tasks mean_rows H(softmax(W x)): dH/dz_j = -p_j (log p_j + H)."""
    grads = torch.zeros(len(taus), dtype=torch.float64)
    total = 0.0
    for x in xs:
        z = x @ w.T
        logp = torch.log_softmax(z, dim=1)
        p = logp.exp()
        h = -(p * logp).sum(dim=1, keepdim=True)
        total += float(h.mean())
        dz = -p * (logp + h)
        for k, tau in enumerate(taus):
            grads[k] += float((dz * (x @ tau.T)).sum(dim=1).mean())
    return total, grads


def test_adamerging_two_adam_steps_equal_the_hand_derived_updates():
    gen = torch.Generator().manual_seed(0)
    c, d = 3, 4
    base = torch.randn(c, d, generator=gen, dtype=torch.float64)
    models = [base + torch.randn(c, d, generator=gen, dtype=torch.float64) for _ in range(2)]
    xs = [torch.randn(5, d, generator=gen, dtype=torch.float64) for _ in range(2)]
    pool = Pool(base.reshape(-1), [m.reshape(-1) for m in models], [("w", (c, d))], ["all"])

    def loss_of(flat, k, ids):
        return entropy(torch.log_softmax(xs[k][ids].float() @ flat.view(c, d).T, dim=1))

    ids = [torch.arange(5), torch.arange(5)]
    lr, init = 0.01, 0.3
    table, report = adamerging.adamerging(pool, loss_of, ids, steps=2, lr=lr, init=init, batch=8)
    taus = [m - base for m in models]
    lam = torch.full((2,), init, dtype=torch.float64)
    m = v = torch.zeros(2, dtype=torch.float64)
    for step in (1, 2):
        w = base + sum(lam[k] * taus[k] for k in range(2))
        h, g = _hand_entropy_grad(w, taus, xs)
        assert report["loss"][step - 1] == pytest.approx(h, rel=1e-5)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        lam = lam - lr * (m / (1 - 0.9**step)) / ((v / (1 - 0.999**step)).sqrt() + 1e-8)
    assert torch.allclose(table[0, 1:].double(), lam, atol=1e-6)
    # the base keeps coefficient 1: (1 - sum lambda) base + sum lambda theta_k
    assert float(table[0, 0]) == pytest.approx(1 - float(lam.sum()), abs=1e-6)
    assert report["gradient_steps"] == 2


def test_adamerging_coefficients_stay_in_the_unit_interval_as_in_the_released_code():
    base = torch.zeros(2)
    pool = Pool(base, [T([1.0, 0.0]), T([0.0, 1.0])], [("w", (2,))], ["all"])

    def loss_of(flat, k, ids):  # minimised by growing both coefficients without bound
        return -flat.sum()

    table, _ = adamerging.adamerging(pool, loss_of, [T([0]), T([0])], steps=50, lr=0.1, init=0.9)
    assert torch.equal(table[0, 1:], T([1.0, 1.0]))


# --- FW-Merging: the oracle, the update, convergence -------------------------------------------


def test_fw_oracle_picks_the_vertex_of_most_negative_cosine():
    layout = [("a", (2,)), ("b", (2,))]
    models = [T([1.0, 0.0, 0.0, 1.0]), T([0.0, 1.0, 1.0, 0.0]), T([-1.0, 0.0, 0.0, 2.0])]
    grad = T([1.0, 0.0, 0.0, 1.0])
    # per tensor: cos(g_a, .) = 1, 0, -1 ; cos(g_b, .) = 1, 0, 1
    pool = Pool(torch.zeros(4), models, layout, ["a", "b"])
    cos = alignment(pool, grad, models, "group")
    assert torch.allclose(cos, T([[1.0, 0.0, -1.0], [1.0, 0.0, 1.0]]))
    # layer-wise: tensor a takes model 2; no vertex decreases b's loss, so the origin
    assert lmo(cos, layer_wise=True) == [2, ZERO]
    # task-wise: least sum of per-tensor cosines: 2, 0, 0 -> model 1 (first of the tie)
    assert lmo(alignment(pool, grad, models, "tensor"), layer_wise=False) == [1, 1]


def test_fw_one_step_is_the_classic_update_towards_the_chosen_vertex():
    layout = [("a", (2,))]
    models = [T([1.0, 0.0]), T([0.0, 1.0])]
    pool = Pool(torch.zeros(2), models, layout, ["a"])
    target = T([0.9, 0.1])  # f = |x - target|^2 / 2: from x0 = (1, 1), model 1 is worse
    coeffs, report = frank_wolfe.frank_wolfe(
        pool, lambda x: x - target, steps=2, step_size=0.5, scale=1.0
    )
    # x0 = (1, 1); step 0: gamma 0.5, g = (0.1, 0.9): cosines 0.11, 0.99, 0.78 -> none < 0,
    # so the origin: x1 = x0 / 2 = (0.5, 0.5); step 1: gamma 1/3, g = (-0.4, 0.4): cosines
    # -0.71, 0.71, 0 -> model 0: x2 = x1 + (e0 - x1) / 3 = (2/3, 1/3)
    assert report["chosen"] == [[ZERO], [0]]
    assert report["gamma"] == [0.5, pytest.approx(1 / 3)]
    assert torch.allclose(pool.merged(coeffs.float()), T([2 / 3, 1 / 3]), atol=1e-6)


def test_fw_converges_on_a_quadratic_within_the_frank_wolfe_bound():
    models = [torch.eye(3)[i] for i in range(3)]
    pool = Pool(torch.zeros(3), models, [("w", (3,))], ["all"])
    target = T([0.2, 0.5, 0.3])  # inside the hull

    def f(x):
        return 0.5 * float(((x - target) ** 2).sum())

    values = []
    for steps in (10, 50, 200):
        coeffs, _ = frank_wolfe.frank_wolfe(pool, lambda x: x - target, steps=steps)
        values.append(f(pool.merged(coeffs.float())))
    assert values[0] > values[1] > values[2]
    # f(x_T) - f* <= 2 L D^2 / (T + 2), L = 1, D^2 = 2 (the diameter of the pool's hull)
    for steps, value in zip((10, 50, 200), values, strict=True):
        assert value <= 2 * 2 / (steps + 2)


def test_learnt_kernel_applies_each_models_pair_as_the_pool_merges():
    gen = torch.Generator().manual_seed(1)
    layout = [("a", (2, 3)), ("b", (4,))]
    base = torch.randn(10, generator=gen)
    models = [torch.randn(10, generator=gen) for _ in range(3)]
    pool = Pool(base, models, layout, ["a", "b"])
    coeffs = torch.randn(2, 4, generator=gen)
    flat = pool.merged(coeffs)
    kernel = get_merge_method("frank_wolfe")
    stats = pool.per_model(coeffs)
    for name, shape in layout:
        parts = [split(m, layout)[name] for m in models]
        out = kernel(split(base, layout)[name], parts, statistics=[s[name] for s in stats])
        assert torch.allclose(out, split(flat, layout)[name], atol=1e-6)
        assert out.shape == shape


# --- evomerge merge of digit experts, and a search started from the learnt weights --------------


@pytest.fixture(scope="module")
def digits_trio(tmp_path_factory):
    root = tmp_path_factory.mktemp("learnt")
    digits = load_object(DIGITS)()
    digits.setup(torch.device("cpu"))
    seeds = digits.make_seeds(3, 0, shared_init=True, steps=30, include_base=True)
    for name, flat in zip(("base", "low", "high"), seeds, strict=True):
        tensors = {n: t.contiguous() for n, t in split(flat, digits.param_layout()).items()}
        save_file(tensors, root / f"{name}.safetensors")
    return root, digits, seeds


@pytest.mark.parametrize(
    "method,params",
    [
        ("adamerging", {"steps": 4, "batch": 16, "layer_wise": True}),
        ("adamerging", {"steps": 4, "batch": 16, "layer_wise": False}),
        ("frank_wolfe", {"steps": 3, "layer_wise": True}),
    ],
)
def test_merge_yaml_equals_the_learnt_merge(digits_trio, method, params):
    root, digits, seeds = digits_trio
    cfg = {
        "merge_method": method,
        "base_model": str(root / "base.safetensors"),
        "models": [{"model": str(root / f"{n}.safetensors")} for n in ("low", "high")],
        "parameters": params,
        "statistics": {"plugin": DIGITS, "examples": ["0-4", "5-9"], "limit": 64, "batch_size": 64},
    }
    path = root / f"{method}.yml"
    path.write_text(yaml.safe_dump(cfg))
    out = root / f"out-{method}-{params['layer_wise']}"
    assert main(["merge", str(path), "--out", str(out), "-q"]) == 0
    merged = load_file(out / "model.safetensors")
    layout = digits.param_layout()
    names = [n for n, _ in layout]
    groups = names if params["layer_wise"] else ["all"] * len(names)
    pool = Pool(seeds[0], list(seeds[1:]), layout, groups)
    m = get_merge_method(method)
    ids = [example_ids(digits, g, 64, "x") for g in ("0-4", "5-9")]
    coeffs, _ = m.learner(digits, pool, ids, m.params.fill(params, method), 0, 64)
    expected = split(pool.merged(coeffs.float()), layout)
    for name in names:
        assert torch.allclose(merged[name], expected[name], atol=1e-5), name
    if method == "adamerging" and not params["layer_wise"]:  # one pair of coefficients
        lam = coeffs[0, 1:]
        assert torch.all((lam >= 0) & (lam <= 1)) and not torch.allclose(lam, T([0.3, 0.3]))


def test_adamerging_refused_as_a_recipe_method_and_needs_a_hook(digits_trio, tmp_path, capsys):
    with pytest.raises(ValueError, match="start_from"):
        RecipeSection(method="adamerging", base=0, genes={}, statistics={})
    root, _, _ = digits_trio
    plugin = tmp_path / "noprobs.py"
    plugin.write_text(
        "from evomerge.fitness.digits import Digits\n"
        "class NoProbs(Digits):\n    log_probabilities = None\n"
    )
    cfg = {
        "merge_method": "adamerging",
        "base_model": str(root / "base.safetensors"),
        "models": [{"model": str(root / f"{n}.safetensors")} for n in ("low", "high")],
        "statistics": {"plugin": f"{plugin}:NoProbs", "examples": ["0-4", "5-9"]},
    }
    path = tmp_path / "m.yml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["merge", str(path), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "log_probabilities" in err[0] and not out.exists()


def test_start_from_sets_the_weight_genes_to_the_learnt_coefficients(digits_trio):
    _, digits, seeds = digits_trio
    section = RecipeSection(
        method="task_arithmetic",
        base=0,
        params={"lambda": 1.0},
        genes={"weight": {"low": 0.0, "high": 1.5}},
        statistics={"examples": ["0-4", "5-9"], "limit": 64},
        start_from={"method": "adamerging", "params": {"steps": 3, "batch": 16}},
    )
    space = RecipeSpace(section, digits.param_layout(), 3)
    genes, report = learned_initial(space, digits, lambda i: seeds[i])
    assert report["gradient_steps"] == 3
    pool = Pool(seeds[0], list(seeds[1:]), space.layout, space.group_of)
    m = get_merge_method("adamerging")
    ids = [example_ids(digits, g, 64, "x") for g in ("0-4", "5-9")]
    coeffs, _ = m.learner(digits, pool, ids, m.params.fill({"steps": 3, "batch": 16}, "a"), 0, 1)
    # the recipe with the learnt genes is the learnt merge itself (lambda 1, base coefficient
    # 1 - sum of the weights)
    assert torch.allclose(space.materialize(seeds, genes), pool.merged(coeffs.float()), atol=1e-5)


# a task-arithmetic recipe search whose weight genes start at AdaMerging's coefficients
ADAMERGING_START = {
    "method": "task_arithmetic",
    "base": 0,
    "genes": {"weight": {"low": 0.0, "high": 1.0}},
    "statistics": {"examples": ["0-4", "5-9"], "limit": 64},
    "start_from": {"method": "adamerging", "params": {"steps": 3, "layer_wise": False}},
}


def test_a_worker_learns_the_start_only_when_asked(digits_trio):
    """``info()`` (every worker, every start and resume) gives the recipe's init values; the
    learnt start comes from ``seed_genes()``, which the driver asks one worker for, once."""
    from evomerge.runtime.host import FitnessHost

    cfg = digits_recipe_config(8, 30)
    recipe = ADAMERGING_START
    spec = {"name": "recipe", "kind": "plugin", "count": 3, "seed": 0, "recipe": recipe,
            "options": cfg["seeds"]["options"]}  # fmt: skip
    host = FitnessHost(str(DIGITS), {}, space=spec)
    section = RecipeSection.model_validate(recipe)
    space = RecipeSpace(section, host.plugin.param_layout(), 3)
    assert host.info()["initial"] == space.initial()  # the genes' mid-range: nothing learnt
    seeds = host.plugin.make_seeds(3, 0, **cfg["seeds"]["options"])
    learnt, _ = learned_initial(space, host.plugin, lambda i: seeds[i])
    assert host.seed_genes() == pytest.approx(learnt, abs=1e-6) and learnt != space.initial()


@pytest.mark.parametrize("strategy,evaluator", [("cmaes", "local"), ("m2n2", "local"),
                                                ("cmaes", "ray")])  # fmt: skip
def test_a_search_starts_from_the_adamerging_weights(tmp_path, strategy, evaluator, request):
    recipe = ADAMERGING_START
    cfg = digits_recipe_config(8, 30, recipe=recipe)
    if strategy == "m2n2":
        cfg["strategy"] = {"name": "m2n2"}
    if evaluator == "ray":
        request.getfixturevalue("ray_local")
        cfg["evaluator"] = {"kind": "ray", "workers": 2, "num_cpus": 1}
    cfg["checkpoint_every"] = 8
    cfg["history_every"] = 8
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    # CMA-ES's initial mean, M2N2's first archive member: the learnt start (not the genes'
    # mid-range 0.5)
    state = load_file(out / "checkpoints/0000000000/state.safetensors")
    x0 = state["x0"] if strategy == "cmaes" else state["params"][0].double()
    digits = load_object(DIGITS)()
    digits.setup(torch.device("cpu"))
    seeds = digits.make_seeds(3, 0, **cfg["seeds"]["options"])
    section = RecipeSection.model_validate(cfg["recipe"])
    space = RecipeSpace(section, digits.param_layout(), 3)
    genes, _ = learned_initial(space, digits, lambda i: seeds[i])
    assert torch.allclose(x0, torch.tensor(genes, dtype=torch.float64), atol=1e-6)
    assert not torch.allclose(x0, torch.full_like(x0, 0.5))
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 < summary["metrics"]["test_accuracy"] <= 1.0


# --- the causal-LM plug-in's output distributions, and an AdaMerging of tiny Llama experts ------


def test_causal_lm_log_probabilities_and_an_adamerging_merge(lm_dir, tmp_path):
    plugin = f"{ROOT / 'fitness/causal_lm.py'}:CausalLM"
    tasks = [
        {"name": n, "train": str(lm_dir / f"{n}.jsonl"), "metric": "token_accuracy"}
        for n in ("add", "reverse")
    ]
    options = {"seeds": [str(lm_dir / "add")], "tasks": tasks}
    fit = load_object(plugin)(**options)
    fit.setup(torch.device("cpu"))
    params = fit.make_seeds(1, 0)[0]
    ids = T([0, 3, 5])
    rows = fit.log_probabilities(params, ids)
    answers = [fit.tasks[0].train_tok[i].answer for i in ids.tolist()]
    assert rows.shape == (sum(len(a) for a in answers), fit.model.config.vocab_size)
    assert torch.allclose(rows.exp().sum(dim=1), torch.ones(len(rows)), atol=1e-5)
    # the rows at the answer tokens are log p(answer token | context): log_likelihoods' terms
    picked = rows.gather(1, torch.tensor(sum(answers, []))[:, None]).squeeze(1)
    per_example = torch.stack([s.sum() for s in torch.split(picked, [len(a) for a in answers])])
    assert torch.allclose(per_example, fit.log_likelihoods(params, ids), atol=1e-4)

    cfg = {
        "merge_method": "adamerging",
        "base_model": str(lm_dir / "base"),
        "models": [{"model": str(lm_dir / "add")}, {"model": str(lm_dir / "reverse")}],
        "parameters": {"steps": 2, "batch": 4, "layer_wise": False},
        "statistics": {"plugin": plugin, "options": options, "examples": ["add", "reverse"]},
    }
    path = tmp_path / "m.yml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["merge", str(path), "--out", str(tmp_path / "out"), "-q"]) == 0
    merged = load_file(tmp_path / "out" / "model.safetensors")
    base = load_file(lm_dir / "base" / "model.safetensors")
    a = load_file(lm_dir / "add" / "model.safetensors")
    r = load_file(lm_dir / "reverse" / "model.safetensors")
    # task-wise: every tensor is base + l1 (add - base) + l2 (reverse - base), one (l1, l2)
    q, k = "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight"
    taus = torch.stack([(a[q] - base[q]).reshape(-1), (r[q] - base[q]).reshape(-1)], dim=1)
    lam = torch.linalg.lstsq(taus, (merged[q] - base[q]).reshape(-1, 1)).solution.squeeze(1)
    assert torch.all((lam > 0.29) & (lam < 0.31))  # two Adam steps of 1e-3 from 0.3
    expected = base[k] + lam[0] * (a[k] - base[k]) + lam[1] * (r[k] - base[k])
    assert torch.allclose(merged[k], expected, atol=1e-5)
