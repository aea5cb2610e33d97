"""Racing on the digits configs: example evaluations saved, against full scoring.

For each config and seed, the run is made twice in this process, one after the other: with
full scoring and with ``evaluation.schedule: race`` (the stage layout of
configs/racing_digits_pretrained.yaml unless ``--first-stage`` / ``--growth`` /
``--max-stage`` say otherwise).

``--mode exact`` (default): it checks that the final archive (checkpoint tensors that hold the
search's state; for CMA-ES the asked solutions and the best) and the final member and metrics
are identical, and prints per config the median over seeds of the example evaluations racing
spent / full scoring spent, and of the wall time ratio (race / full).

``--mode approximate --delta D``: the results may differ, so it prints per config the final
member's held-out ``test_accuracy`` of both, mean +- standard error over the seeds, the mean
paired difference (approximate - full) +- its standard error, the mean and largest fraction of
example evaluations, and whether approximate racing lands within one standard error of full
scoring's mean at <= 25 % of its example evaluations.

    python bench/racing_digits.py                                  # all configs, 3 seeds
    python bench/racing_digits.py --configs m2n2_pretrained --seeds 1 --evals 500
    python bench/racing_digits.py --mode approximate --delta 0.05 --configs m2n2_pretrained \
        --seeds 5 --evals 5000

Both runs of a pair use the same number of torch threads (``--threads``, default 1): on a
shared machine a pool of threads makes many small calls (racing's stages) far slower than
one large one, which would measure the machine's load, not the schedule.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from scheduled_run import run_scheduled

from evomerge.run import checkpoint
from evomerge.run.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "m2n2_pretrained": "configs/m2n2_digits_pretrained.yaml",
    "m2n2_scratch": "configs/m2n2_digits.yaml",
    "ga_scratch": "configs/ga_digits.yaml",
    "m2n2_lineage": "configs/m2n2_digits_lineage.yaml",
    "map_elites": "configs/map_elites_digits.yaml",
    "cmaes_recipe": "configs/cmaes_digits_recipe.yaml",
}
RACE = {"schedule": "race", "first_stage": 64, "growth": 2.0, "max_stage": 90}
CMA_KEYS = ("x0", "solutions", "best_genes", "best_scores")


def run_one(name: str, seed: int, evals: int, race, out: Path) -> tuple[dict, dict, float]:
    """One run of config ``name``; ``race``: its ``evaluation`` section (None: full scoring)."""
    summary, wall = run_scheduled(ROOT / CONFIGS[name], seed, evals, race, out, ROOT)
    last = checkpoint.list_checkpoints(RunDir(out).checkpoints)[-1]
    return summary, load_file(last / "state.safetensors"), wall


def exact(args, race: dict) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            saved, walls = [], []
            for seed in range(args.seeds):
                a, sa, wa = run_one(name, seed, args.evals, None, Path(tmp) / f"{name}{seed}f")
                b, sb, wb = run_one(name, seed, args.evals, race, Path(tmp) / f"{name}{seed}r")
                keys = CMA_KEYS if "x0" in sa else sa.keys()
                same = all(torch.allclose(sa[k], sb[k], 0, 0, equal_nan=True) for k in keys) and (
                    (a["member"], a["metrics"]) == (b["member"], b["metrics"])
                )
                if not same:
                    raise SystemExit(f"{name} seed {seed}: racing changed the result")
                ratio = b["example_evaluations"] / a["example_evaluations"]
                saved.append(ratio)
                walls.append(wb / wa)
                print(
                    f"{name} seed {seed}: member {a['member']} both; example evaluations "
                    f"{b['example_evaluations']} / {a['example_evaluations']} = {ratio:.4f}; "
                    f"wall {wb:.1f} s / {wa:.1f} s",
                    flush=True,
                )
            rows.append((name, statistics.median(saved), statistics.median(walls)))
    print("\n| config | evaluations | seeds | example evals, race / full | wall, race / full |")
    print("|---|---|---|---|---|")
    for name, saved, wall in rows:
        print(f"| {name} | {args.evals} | {args.seeds} | {saved:.4f} | {wall:.2f} |")


def mean_se(values: list[float]) -> tuple[float, float]:
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return statistics.fmean(values), se


def approximate(args, race: dict) -> None:
    rows = []
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            full, approx, saved, walls = [], [], [], []
            for seed in seeds:
                a, _, wa = run_one(name, seed, args.evals, None, Path(tmp) / f"{name}{seed}f")
                b, _, wb = run_one(name, seed, args.evals, race, Path(tmp) / f"{name}{seed}a")
                full.append(a["metrics"]["test_accuracy"])
                approx.append(b["metrics"]["test_accuracy"])
                saved.append(b["example_evaluations"] / a["example_evaluations"])
                walls.append(wb / wa)
                print(
                    f"{name} seed {seed}: test full {full[-1]:.4f} approximate {approx[-1]:.4f}"
                    f" (members {a['member']}, {b['member']}); example evaluations "
                    f"{saved[-1]:.4f}; wall {wb:.1f} s / {wa:.1f} s",
                    flush=True,
                )
            (fm, fse), (am, ase) = mean_se(full), mean_se(approx)
            dm, dse = mean_se([y - x for x, y in zip(full, approx, strict=True)])
            met = abs(am - fm) <= fse and max(saved) <= 0.25
            rows.append((name, fm, fse, am, ase, dm, dse, saved, met, walls))
    print(
        f"\ndelta {race['delta']}, stages {race['first_stage']} x {race['growth']} up to "
        f"{race['max_stage']}, seeds {seeds.start}-{seeds.stop - 1}\n"
    )
    print(
        "| config | evaluations | test acc., full | test acc., approximate | paired difference "
        "| example evals, approx. / full (mean, max) | wall, approx. / full | goal met |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, fm, fse, am, ase, dm, dse, saved, met, walls in rows:
        print(
            f"| {name} | {args.evals} | {fm:.4f} +- {fse:.4f} | {am:.4f} +- {ase:.4f} | "
            f"{dm:+.4f} +- {dse:.4f} | {statistics.fmean(saved):.3f}, {max(saved):.3f} | "
            f"{statistics.median(walls):.2f} | {'yes' if met else 'no'} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="approximate mode only")
    parser.add_argument("--evals", type=int, default=2000, help="evaluations per run")
    parser.add_argument("--mode", choices=["exact", "approximate"], default="exact")
    parser.add_argument("--delta", type=float, default=0.05, help="approximate mode's delta")
    parser.add_argument("--first-stage", type=int, default=RACE["first_stage"])
    parser.add_argument("--growth", type=float, default=RACE["growth"])
    parser.add_argument("--max-stage", type=int, default=RACE["max_stage"])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads, the same for both schedules"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    race = {
        "schedule": "race",
        "first_stage": args.first_stage,
        "growth": args.growth,
        "max_stage": args.max_stage,
    }
    if args.mode == "exact":
        exact(args, race)
    else:
        approximate(args, {**race, "mode": "approximate", "delta": args.delta})


if __name__ == "__main__":
    main()
