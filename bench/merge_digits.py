"""Merging two digit experts: grids of classical operators, brute-force SLERP, CMA-ES, MAP, M2N2.

Two pairs: experts trained to convergence from one shared init (digits 0-4 and 5-9; base =
the shared init), and the reference's weak pre-trained pair (base = zeros, the centre of their
N(0, 0.01^2) inits). Every method picks its candidate by train accuracy and reports its test
accuracy and the evaluations (forward passes over the train set) it used. MAP is
``configs/map_digits_recipe.yaml`` (quadratic surrogates of each half's accuracy over per-layer
task-arithmetic weights, NSGA-II on them, the front verified).

    python bench/merge_digits.py                 # about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from evomerge.ops.vectors import slerp
from evomerge.run import loop
from evomerge.run.config import apply_overrides, read_yaml, validate
from evomerge.run.rundir import RunDir
from evomerge.runtime.host import FitnessHost
from evomerge.spaces.recipe import RecipeSection, RecipeSpace

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = f"{ROOT / 'fitness/digits.py'}:Digits"
PAIRS = {
    "converged, shared init": {"shared_init": True, "steps": 300, "lr": 0.003},
    "weak pre-trained (DESIGN §4)": {},
}


def seeds_of(host: FitnessHost, options: dict) -> torch.Tensor:
    """(3, N): the base, then the two experts."""
    return torch.from_numpy(host.make_seeds(3, 0, {**options, "include_base": True}))


def pick(host: FitnessHost, candidates: list[torch.Tensor]) -> tuple[float, float]:
    """Best train accuracy among candidates -> (train, test) of that one."""
    train = host.score(torch.stack(candidates).numpy()).mean(axis=1)
    i = int(train.argmax())
    return float(train[i]), host.metrics(candidates[i].numpy())["test_accuracy"]


def fixed_merge(host, seeds, method: str, params: dict, model_params: dict) -> torch.Tensor:
    layout = host.plugin.param_layout()
    section = RecipeSection(
        method=method, base=0, params=params, model_params=model_params, genes={}
    )
    return RecipeSpace(section, layout, len(seeds)).materialize(seeds, [])


def grids(host, seeds) -> list[tuple[str, float, float, int]]:
    rows = []
    lambdas = [round(0.1 * i, 1) for i in range(1, 16)]
    ta = [
        fixed_merge(host, seeds, "task_arithmetic", {"lambda": lam}, {"weight": 1.0})
        for lam in lambdas
    ]
    rows.append(("task arithmetic, λ ∈ 0.1..1.5", *pick(host, ta), len(ta)))
    ties = [
        fixed_merge(host, seeds, "ties", {"lambda": lam}, {"weight": 1.0, "density": d})
        for d in [0.1 * i for i in range(1, 11)]
        for lam in [0.5 + 0.1 * i for i in range(11)]
    ]
    rows.append(("TIES, density 0.1..1 × λ 0.5..1.5", *pick(host, ties), len(ties)))
    sl = [slerp(seeds[1], seeds[2], t) for t in torch.linspace(0, 1, 1000).tolist()]
    rows.append(("brute-force SLERP (whole vector), 1000 t", *pick(host, sl), len(sl)))
    return rows


def search(config: str, sets: list[str]) -> tuple[float, float, int]:
    raw = read_yaml(ROOT / config)
    cfg = validate(apply_overrides(raw, sets), config, bases=[ROOT])
    with tempfile.TemporaryDirectory() as tmp:
        s = loop.start(cfg, RunDir(Path(tmp) / "run"))
        try:
            summary = s.loop()
        finally:
            s.evaluator.close()
    m = summary["metrics"]
    return m["train_accuracy"], m["test_accuracy"], summary["evaluations"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cmaes-evals", type=int, default=400)
    ap.add_argument("--m2n2-evals", type=int, default=10_000)
    ap.add_argument("--map-evals", type=int, default=70)
    args = ap.parse_args()
    host = FitnessHost(PLUGIN, {})
    print("| pair | method | train acc % | test acc % | evaluations |")
    print("|---|---|---|---|---|")
    for pair, options in PAIRS.items():
        seeds = seeds_of(host, options)
        rows = grids(host, seeds)
        opts = {**options, "include_base": True}
        rows.append(
            (
                "CMA-ES, per-layer TIES recipe (weight, density)",
                *search(
                    "configs/cmaes_digits_recipe.yaml",
                    [f"budget.evaluations={args.cmaes_evals}", f"seeds.options={opts}"],
                ),
            )
        )
        rows.append(
            (
                "MAP, per-layer task-arithmetic weights (quadratic surrogates + NSGA-II)",
                *search(
                    "configs/map_digits_recipe.yaml",
                    [f"budget.evaluations={args.map_evals}", f"seeds.options={opts}"],
                ),
            )
        )
        rows.append(
            (
                "M2N2 (dense, no mutation)",
                *search(
                    "configs/m2n2_digits_pretrained.yaml",
                    [
                        f"budget.evaluations={args.m2n2_evals}",
                        "batch=16",
                        f"seeds.options={options}",
                    ],
                ),
            )
        )
        for name, train, test, evals in rows:
            print(
                f"| {pair} | {name} | {100 * train:.1f} | {100 * test:.1f} | {evals:,} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
