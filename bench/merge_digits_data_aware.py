"""Data-aware and literature merges of two digit experts against task arithmetic and TIES.

The experts and pairs of ``bench/merge_digits.py`` (digits 0-4 and 5-9). Each expert's
statistics (diagonal Fisher, input Grams of both layers) are taken over its own training
examples (its half of the 1437). Task arithmetic and TIES pick their lambda / density by train
accuracy over the same grids as ``merge_digits.py``; Fisher and RegMean have no grid (weights 1).
The literature's methods (mergekit's arcee_fusion, ram, ramplus_tl; PCB-merging; consensus
merging over task arithmetic and TIES) pick their coefficients by train accuracy over small
grids too; TALL masks rebuild each expert from the task-arithmetic vector and its mask.
PLeaS's least-squares step (``pleas``) runs beside RegMean++ with and without alignment, and
MAP (``configs/map_digits_recipe.yaml``) beside CMA-ES. Reported: test accuracy on each
expert's classes (0-4, 5-9) and on all 360 test images, the evaluations (train-set passes) a
grid or search used, and the wall time.
The gradient-learnt merges (AdaMerging, FW-Merging; ``--learned-only``) report the gradient
steps they took instead, beside task arithmetic and RegMean of the same run, and CMA-ES over
per-layer task-arithmetic weights started from the middle of the weights' range and from the
AdaMerging weights (``recipe.start_from``), at the same budget.

    python bench/merge_digits_data_aware.py          # about a minute on 2 cores
    python bench/merge_digits_data_aware.py --learned-only --threads 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from merge_digits import PAIRS, PLUGIN, search, seeds_of  # noqa: E402

from evomerge.ops.alignment import PermutationSpec, align  # noqa: E402
from evomerge.ops.learned_coefficients import Pool  # noqa: E402
from evomerge.ops.merged_inputs import sequential_grams  # noqa: E402
from evomerge.ops.operators import get_merge_method  # noqa: E402
from evomerge.ops.statistics import example_ids, per_seed, split  # noqa: E402
from evomerge.run import loop  # noqa: E402
from evomerge.run.config import apply_overrides, read_yaml, validate  # noqa: E402
from evomerge.run.rundir import RunDir  # noqa: E402
from evomerge.runtime.host import FitnessHost  # noqa: E402
from evomerge.spaces.recipe import RecipeSection, RecipeSpace  # noqa: E402


def accuracies(digits, params: torch.Tensor) -> dict[str, float]:
    """Test accuracy on classes 0-4, 5-9 and all, and train accuracy."""
    x, y = digits.x_test, digits.y_test
    out = {}
    for name, mask in (("0-4", y < 5), ("5-9", y >= 5), ("all", y >= 0)):
        out[name] = digits._correct_one(params, x[mask], y[mask]).float().mean().item()
    out["train"] = digits._correct_one(params, digits.x_train, digits.y_train).float().mean().item()
    return out


def merged(digits, seeds, method, params, model_params, stats=None) -> torch.Tensor:
    section = RecipeSection(
        method=method,
        base=0,
        params=params,
        model_params=model_params,
        genes={},
        statistics=stats,
    )
    space = RecipeSpace(section, digits.param_layout(), len(seeds))
    if space.method.statistics is not None:
        flats = [seeds[m] for m in space.models]
        space.attach_statistics(
            per_seed(digits, space.method.statistics, section.statistics, flats)
        )
    return space.materialize(seeds, [])


def best_of(digits, candidates):
    scored = [(accuracies(digits, c), label) for label, c in candidates]
    return max(scored, key=lambda s: s[0]["train"])


def lams(lo: float, hi: float) -> list[float]:
    return [round(lo + 0.1 * i, 1) for i in range(round((hi - lo) / 0.1) + 1)]


def literature(digits, seeds) -> list[tuple[str, dict, float, int]]:
    """Rows of the literature's methods: (label, accuracies, seconds, evaluations)."""
    rows = []

    def grid(title, method, settings):
        t0 = time.perf_counter()
        cands = [
            (label, merged(digits, seeds, method, params, mp)) for label, params, mp in settings
        ]
        acc, label = best_of(digits, cands)
        rows.append((f"{title} ({label})", acc, time.perf_counter() - t0, len(cands)))

    t0 = time.perf_counter()
    # arcee_fusion merges a base and one model: the 0-4 expert takes the 5-9 expert's outliers
    section = RecipeSection(method="arcee_fusion", base=0, genes={})
    fused = RecipeSpace(section, digits.param_layout(), 2).materialize(seeds[1:], [])
    rows.append(
        ("arcee_fusion (base = expert 0-4)", accuracies(digits, fused), time.perf_counter() - t0, 1)
    )
    grid("ram", "ram", [("epsilon 1e-5", {}, {})])
    grid(
        "ramplus_tl, best by train",
        "ramplus_tl",
        [
            (f"r {r}, alpha {a}", {"r": r, "alpha": a}, {})
            for r in (0.1, 0.5, 1.0)
            for a in (0.2, 1.0)
        ],
    )
    grid(
        "PCB, best by train",
        "pcb",
        [
            (f"ratio {r}, λ {lam}", {"pcb_ratio": r, "lambda": lam}, {})
            for r in (0.05, 0.1, 0.2, 0.5, 1.0)
            for lam in lams(0.5, 1.5)
        ],
    )
    grid(
        "consensus TA, best by train",
        "consensus_ta",
        [
            (f"k {k}, tall λ {t}, λ {lam}", {"k": k, "tall_mask_lambda": t, "lambda": lam}, {})
            for k in (1, 2)
            for t in (0.2, 0.4, 0.6)
            for lam in lams(0.1, 1.5)
        ],
    )
    grid(
        "consensus TIES, best by train",
        "consensus_ties",
        [
            (f"k {k}, tall λ {t}, λ {lam}", {"k": k, "tall_mask_lambda": t, "lambda": lam}, {})
            for k in (1, 2)
            for t in (0.2, 0.4, 0.6)
            for lam in lams(0.5, 1.5)
        ],
    )
    t0 = time.perf_counter()
    rebuilt = [merged(digits, seeds, "tall_masks", {"task": k}, {}) for k in (0, 1)]
    a0, a1 = accuracies(digits, rebuilt[0]), accuracies(digits, rebuilt[1])
    own = {"train": float("nan"), "0-4": a0["0-4"], "5-9": a1["5-9"], "all": float("nan")}
    rows.append(
        ("TALL masks: each expert rebuilt, on its own half", own, time.perf_counter() - t0, 0)
    )
    return rows


#: the digits MLP's hidden units: W1's columns, b1's entries, W2's rows (stored x @ W)
HIDDEN = PermutationSpec(
    {"hidden": {"layers.0.weight": 1, "layers.0.bias": 0, "layers.1.weight": 0}}
)


def aligned_seeds(digits, seeds) -> torch.Tensor:
    """The base and expert 5-9 permuted to match expert 0-4 (``align: {reference: 0}``)."""
    layout = digits.param_layout()
    ref = split(seeds[1], layout)
    out = [seeds[1]] * 3
    for i in (0, 2):
        moved = align(ref, split(seeds[i], layout), HIDDEN)
        out[i] = torch.cat([moved[n].reshape(-1) for n, _ in layout])
    return torch.stack(out)


def four_merges(digits, seeds, own, prefix="", took=0.0) -> list[tuple[str, dict, float, int]]:
    """Plain average, task arithmetic (best λ), Fisher, RegMean and RegMean++ of ``seeds``
    (base, 0-4, 5-9); ``took`` (the alignment's seconds) is added to each row's time."""
    rows = []
    t0 = time.perf_counter()
    avg = merged(digits, seeds, "linear", {}, {"weight": 1.0})
    sec = took + time.perf_counter() - t0
    rows.append((f"{prefix}plain average", accuracies(digits, avg), sec, 0))
    t0 = time.perf_counter()
    ta = [
        (f"λ {lam}", merged(digits, seeds, "task_arithmetic", {"lambda": lam}, {"weight": 1}))
        for lam in lams(0.1, 1.5)
    ]
    acc, label = best_of(digits, ta)
    sec = took + time.perf_counter() - t0
    rows.append((f"{prefix}task arithmetic, best λ ({label})", acc, sec, len(ta)))
    for method, params in (("fisher", {"fisher_floor": 1e-6}), ("regmean", {"alpha": 0.9})):
        t0 = time.perf_counter()
        m = merged(digits, seeds, method, params, {"weight": 1.0}, own)
        label = f"{prefix}{method}, {', '.join(f'{k} {v}' for k, v in params.items())}"
        rows.append((label, accuracies(digits, m), took + time.perf_counter() - t0, 0))
    t0 = time.perf_counter()
    m = regmean_plusplus(digits, seeds[1:], own["examples"], 0.9)
    sec = took + time.perf_counter() - t0
    rows.append((f"{prefix}regmean++, alpha 0.9", accuracies(digits, m), sec, 0))
    t0 = time.perf_counter()
    m = pleas(digits, seeds[1:], own["examples"], PLEAS_RIDGE)
    sec = took + time.perf_counter() - t0
    rows.append(
        (f"{prefix}PLeaS least squares, ridge {PLEAS_RIDGE}", accuracies(digits, m), sec, 0)
    )
    return rows


#: PLeaS's ridge (the merge method's default)
PLEAS_RIDGE = 1e-4


def pleas(digits, experts, groups, ridge: float) -> torch.Tensor:
    """PLeaS's least-squares step over the experts (weights 1): layer by layer, inputs through
    the merged earlier layers fitted to each expert's own layer outputs."""
    layout = digits.param_layout()
    parts = [split(e, layout) for e in experts]
    ids = [example_ids(digits, g, None, "examples") for g in groups]
    kernel = get_merge_method("pleas")

    def merge(name, stats):
        tensors = [p[name] for p in parts]
        return kernel(None, tensors, None, {"ridge": ridge}, None, statistics=stats)

    done, _ = sequential_grams(digits, list(experts), ids, merge, cross=True)
    return torch.cat([done[n].reshape(-1) for n, _ in layout])


def map_search(digits, seeds, options, evals: int) -> tuple[str, dict, float, int]:
    """``configs/map_digits_recipe.yaml`` (MAP over per-layer task-arithmetic weights) on this
    pair; the reported member (best train mean) realised for its per-half test accuracy."""
    t0 = time.perf_counter()
    opts = {**options, "include_base": True}
    sets = [f"budget.evaluations={evals}", f"seeds.options={opts}"]
    raw = read_yaml(ROOT / "configs/map_digits_recipe.yaml")
    cfg = validate(apply_overrides(raw, sets), "configs/map_digits_recipe.yaml", bases=[ROOT])
    with tempfile.TemporaryDirectory() as tmp:
        s = loop.start(cfg, RunDir(Path(tmp) / "run"))
        try:
            summary = s.loop()
            _, genes, _ = s.strategy.best(s.state)
        finally:
            s.evaluator.close()
    space = RecipeSpace(cfg.recipe, digits.param_layout(), len(seeds))
    params = space.materialize(seeds, genes.tolist())
    sec = time.perf_counter() - t0
    n = summary["evaluations"]
    return (
        f"MAP, per-layer task-arithmetic weights, {n} evaluations",
        accuracies(digits, params),
        sec,
        n,
    )


def regmean_plusplus(digits, experts, groups, alpha: float) -> torch.Tensor:
    """RegMean++ of the experts (weights 1): Grams through the merged earlier layers."""
    layout = digits.param_layout()
    parts = [split(e, layout) for e in experts]
    ids = [example_ids(digits, g, None, "examples") for g in groups]
    kernel = get_merge_method("regmean_plusplus")

    def merge(name, grams):
        tensors = [p[name] for p in parts]
        return kernel(None, tensors, None, {"alpha": alpha}, None, statistics=grams)

    done, _ = sequential_grams(digits, list(experts), ids, merge)
    return torch.cat([done[n].reshape(-1) for n, _ in layout])


def alignment(digits, seeds, own) -> list[tuple[str, dict, float, int]]:
    """:func:`four_merges` over the weight-matched pair (the alignment's time included)."""
    t0 = time.perf_counter()
    al = aligned_seeds(digits, seeds)
    return four_merges(digits, al, own, "aligned + ", time.perf_counter() - t0)


def same_task(digits) -> list[tuple[str, dict, float, int]]:
    """Two models of the whole task from separate inits (30 steps): the barrier at the midpoint
    that alignment exists to remove."""
    seeds = digits.make_seeds(2, 0, experts=[list(range(10))] * 2, steps=30)
    rows = [(f"model {i}", accuracies(digits, s), 0.0, 0) for i, s in enumerate(seeds)]
    rows.append(("plain average", accuracies(digits, (seeds[0] + seeds[1]) / 2), 0.0, 0))
    t0 = time.perf_counter()
    layout = digits.param_layout()
    moved = align(split(seeds[0], layout), split(seeds[1], layout), HIDDEN)
    other = torch.cat([moved[n].reshape(-1) for n, _ in layout])
    avg = (seeds[0] + other) / 2
    took = time.perf_counter() - t0
    rows.append(("aligned + plain average", accuracies(digits, avg), took, 0))
    for prefix, pair, extra in (
        ("", [seeds[0], seeds[1]], 0.0),
        ("aligned + ", [seeds[0], other], took),
    ):
        t0 = time.perf_counter()
        m = pleas(digits, pair, [None, None], PLEAS_RIDGE)
        sec = extra + time.perf_counter() - t0
        rows.append(
            (f"{prefix}PLeaS least squares, ridge {PLEAS_RIDGE}", accuracies(digits, m), sec, 0)
        )
    return rows


def learned(digits, seeds, own, cmaes_evals: int) -> list[tuple[str, dict, float, str]]:
    """AdaMerging and FW-Merging (task- and layer-wise, the released code's defaults: 500 and 10
    steps; FW also 100), each model's examples its own half; then CMA-ES from the middle and
    from AdaMerging."""
    layout = digits.param_layout()
    names = [n for n, _ in layout]
    ids = [example_ids(digits, g, None, "examples") for g in own["examples"]]
    rows = []
    runs = [("adamerging", "AdaMerging", 500), ("frank_wolfe", "FW-Merging", 10)]
    runs.append(("frank_wolfe", "FW-Merging", 100))
    for method, title, steps in runs:
        m = get_merge_method(method)
        for layer_wise in (False, True):
            t0 = time.perf_counter()
            groups = names if layer_wise else ["all"] * len(names)
            pool = Pool(seeds[0], list(seeds[1:]), layout, groups)
            params = m.params.fill({"layer_wise": layer_wise, "steps": steps}, method)
            coeffs, report = m.learner(digits, pool, ids, params, 0, 256)
            flat = pool.merged(coeffs.float())
            sec = time.perf_counter() - t0
            table = pool.table(coeffs)
            shown = (
                f"a = {table['all'][1]:.2f}, {table['all'][2]:.2f}"
                if not layer_wise
                else "per tensor"
            )
            label = f"{title}, {'layer' if layer_wise else 'task'}-wise ({shown})"
            rows.append((label, accuracies(digits, flat), sec, f"{report['gradient_steps']} steps"))
    ta_genes = {"weight": {"low": 0.0, "high": 1.0}}
    for start, title in ((None, "middle (0.5)"), ("adamerging", "AdaMerging, 500 steps")):
        recipe = {
            "method": "task_arithmetic",
            "base": 0,
            "genes": ta_genes,
            "statistics": {"examples": own["examples"]},
        }
        if start is not None:
            recipe["start_from"] = {"method": start}
        t0 = time.perf_counter()
        train, test, evals = search(
            "configs/cmaes_digits_recipe.yaml",
            [
                f"budget.evaluations={cmaes_evals}",
                f"seeds.options={own['options']}",
                f"recipe={recipe}",
            ],
        )
        acc = {"train": train, "0-4": float("nan"), "5-9": float("nan"), "all": test}
        used = f"{evals}" + (" + 500 steps" if start else "")
        label = f"CMA-ES, per-layer task-arithmetic weights, from {title}"
        rows.append((label, acc, time.perf_counter() - t0, used))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cmaes-evals", type=int, default=400)
    ap.add_argument("--map-evals", type=int, default=70)
    ap.add_argument("--literature-only", action="store_true", help="skip the CMA-ES and MAP rows")
    ap.add_argument(
        "--alignment-only", action="store_true", help="only the rows with and without alignment"
    )
    ap.add_argument(
        "--learned-only",
        action="store_true",
        help="only AdaMerging, FW-Merging and the CMA-ES rows started from them (and peers)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    host = FitnessHost(PLUGIN, {}, threads=args.threads)
    digits = host.plugin
    own = {"examples": ["0-4", "5-9"]}
    print("| pair | method | train % | test 0-4 % | test 5-9 % | test all % | evals | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for pair, options in PAIRS.items():
        seeds = seeds_of(host, options)
        rows = []
        for name, expert in (("expert 0-4", seeds[1]), ("expert 5-9", seeds[2])):
            rows.append((name, accuracies(digits, expert), 0.0, 0))
        if args.alignment_only:
            rows += four_merges(digits, seeds, own) + alignment(digits, seeds, own)
        elif args.learned_only:
            rows += four_merges(digits, seeds, own)[1:4:2]  # task arithmetic, regmean
            mine = {**own, "options": {**options, "include_base": True}}
            rows += learned(digits, seeds, mine, args.cmaes_evals)
        else:
            t0 = time.perf_counter()
            ta = [
                (
                    f"λ {lam}",
                    merged(digits, seeds, "task_arithmetic", {"lambda": lam}, {"weight": 1}),
                )
                for lam in [round(0.1 * i, 1) for i in range(1, 16)]
            ]
            acc, label = best_of(digits, ta)
            rows.append(
                (
                    f"task arithmetic, best λ by train ({label})",
                    acc,
                    time.perf_counter() - t0,
                    len(ta),
                )
            )
            t0 = time.perf_counter()
            ties = [
                (
                    f"density {d:.1f}, λ {lam:.1f}",
                    merged(digits, seeds, "ties", {"lambda": lam}, {"weight": 1.0, "density": d}),
                )
                for d in [0.1 * i for i in range(1, 11)]
                for lam in [0.5 + 0.1 * i for i in range(11)]
            ]
            acc, label = best_of(digits, ties)
            rows.append(
                (f"TIES, best by train ({label})", acc, time.perf_counter() - t0, len(ties))
            )
            t0 = time.perf_counter()
            avg = merged(digits, seeds, "linear", {}, {"weight": 1.0})
            rows.append(
                ("plain average (linear)", accuracies(digits, avg), time.perf_counter() - t0, 0)
            )
            for method, params in (
                ("fisher", {"fisher_floor": 1e-6}),
                ("regmean", {"alpha": 0.9}),
                ("regmean", {"alpha": 1.0}),
            ):
                t0 = time.perf_counter()
                m = merged(digits, seeds, method, params, {"weight": 1.0}, own)
                label = f"{method}, {', '.join(f'{k} {v}' for k, v in params.items())}"
                rows.append((label, accuracies(digits, m), time.perf_counter() - t0, 0))
            rows += literature(digits, seeds)
            if not args.literature_only:
                opts = {**options, "include_base": True}
                t0 = time.perf_counter()
                train, test, evals = search(
                    "configs/cmaes_digits_recipe.yaml",
                    [
                        f"budget.evaluations={args.cmaes_evals}",
                        f"seeds.options={opts}",
                        "recipe={method: fisher, base: 0, genes: {weight: {low: 0.0, high: 1.5}}, "
                        "statistics: {examples: ['0-4', '5-9']}}",
                    ],
                )
                cma = {"train": train, "0-4": float("nan"), "5-9": float("nan"), "all": test}
                rows.append(
                    (
                        f"CMA-ES, per-layer Fisher weights, {evals} evaluations",
                        cma,
                        time.perf_counter() - t0,
                        evals,
                    )
                )
            rows += alignment(digits, seeds, own)
            mine = {**own, "options": {**options, "include_base": True}}
            rows += learned(digits, seeds, mine, args.cmaes_evals)
            if not args.literature_only:
                rows.append(map_search(digits, seeds, options, args.map_evals))
        show(pair, rows)
    if not args.learned_only:
        show("same task, separate inits", same_task(digits))


def show(pair: str, rows) -> None:
    for name, a, sec, n in rows:
        print(
            f"| {pair} | {name} | {100 * a['train']:.1f} | {100 * a['0-4']:.1f} | "
            f"{100 * a['5-9']:.1f} | {100 * a['all']:.1f} | "
            f"{n if isinstance(n, str) else f'{n:,}'} | {sec:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
