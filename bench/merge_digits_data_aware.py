"""Data-aware merges of two digit experts: Fisher and RegMean against task arithmetic and TIES.

The experts and pairs of ``bench/merge_digits.py`` (digits 0-4 and 5-9). Each expert's
statistics (diagonal Fisher, input Grams of both layers) are taken over its own training
examples (its half of the 1437). Task arithmetic and TIES pick their lambda / density by train
accuracy over the same grids as ``merge_digits.py``; Fisher and RegMean have no grid (weights 1).
Reported: test accuracy on each expert's classes (0-4, 5-9) and on all 360 test images.

    python bench/merge_digits_data_aware.py          # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from merge_digits import PAIRS, PLUGIN, search, seeds_of  # noqa: E402

from evomerge.ops.statistics import per_seed  # noqa: E402
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cmaes-evals", type=int, default=400)
    args = ap.parse_args()
    host = FitnessHost(PLUGIN, {})
    digits = host.plugin
    own = {"examples": ["0-4", "5-9"]}
    print("| pair | method | train % | test 0-4 % | test 5-9 % | test all % | seconds |")
    print("|---|---|---|---|---|---|---|")
    for pair, options in PAIRS.items():
        seeds = seeds_of(host, options)
        rows = []
        for name, expert in (("expert 0-4", seeds[1]), ("expert 5-9", seeds[2])):
            rows.append((name, accuracies(digits, expert), 0.0))
        t0 = time.perf_counter()
        ta = [
            (f"λ {lam}", merged(digits, seeds, "task_arithmetic", {"lambda": lam}, {"weight": 1}))
            for lam in [round(0.1 * i, 1) for i in range(1, 16)]
        ]
        acc, label = best_of(digits, ta)
        rows.append((f"task arithmetic, best λ by train ({label})", acc, time.perf_counter() - t0))
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
        rows.append((f"TIES, best by train ({label})", acc, time.perf_counter() - t0))
        t0 = time.perf_counter()
        avg = merged(digits, seeds, "linear", {}, {"weight": 1.0})
        rows.append(("plain average (linear)", accuracies(digits, avg), time.perf_counter() - t0))
        for method, params in (
            ("fisher", {"fisher_floor": 1e-6}),
            ("regmean", {"alpha": 0.9}),
            ("regmean", {"alpha": 1.0}),
        ):
            t0 = time.perf_counter()
            m = merged(digits, seeds, method, params, {"weight": 1.0}, own)
            label = f"{method}, {', '.join(f'{k} {v}' for k, v in params.items())}"
            rows.append((label, accuracies(digits, m), time.perf_counter() - t0))
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
            )
        )
        for name, a, sec in rows:
            print(
                f"| {pair} | {name} | {100 * a['train']:.1f} | {100 * a['0-4']:.1f} | "
                f"{100 * a['5-9']:.1f} | {100 * a['all']:.1f} | {sec:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
