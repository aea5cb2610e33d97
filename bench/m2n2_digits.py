"""M2N2 and GA on digits, from scratch and from pre-trained seeds, beside the reference figures.

Runs every (setting, strategy, batch, seed) combination one after another in this process (so
each run has the machine to itself), appends each result to a JSON file as it finishes (a
re-run skips what is done), then prints a markdown table of mean +- standard error.

    python bench/m2n2_digits.py                      # the full benchmark (about 45 minutes)
    python bench/m2n2_digits.py --seeds 2 --scratch-evals 5000 --pretrained-evals 2000
    python bench/m2n2_digits.py --timing 5           # wall time against the forward-pass floor
    python bench/m2n2_digits.py --timing 3 --threads 1   # the same on one torch thread
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from evomerge.run import loop
from evomerge.run.config import apply_overrides, read_yaml, validate
from evomerge.run.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "scratch": ROOT / "configs/m2n2_digits.yaml",
    "pretrained": ROOT / "configs/m2n2_digits_pretrained.yaml",
}
# 10-seed means read off the reference's published figure (DESIGN.md section 4).
REFERENCE = {
    ("scratch", "m2n2"): 87.0,
    ("scratch", "ga"): 68.0,
    ("pretrained", "m2n2"): 68.5,
    ("pretrained", "ga"): 52.0,
}


def run_one(setting: str, strategy: str, batch: int, seed: int, evals: int) -> dict:
    raw = read_yaml(CONFIGS[setting])
    sets = [
        f"seed={seed}",
        f"batch={batch}",
        f"budget.evaluations={evals}",
        f"strategy.name={strategy}",
        "history_every=1000000",
        f"checkpoint_every={evals}",
    ]
    if strategy == "ga":
        raw["strategy"].pop("alpha", None)
        raw["strategy"].pop("attraction", None)
    cfg = validate(apply_overrides(raw, sets), str(CONFIGS[setting]), bases=[ROOT])
    with tempfile.TemporaryDirectory() as tmp:
        search = loop.start(cfg, RunDir(Path(tmp) / "run"))
        try:
            summary = search.loop()
        finally:
            search.evaluator.close()
    return {
        "setting": setting,
        "strategy": strategy,
        "batch": batch,
        "seed": seed,
        "evaluations": evals,
        "test_accuracy": summary["metrics"]["test_accuracy"],
        "train_accuracy": summary["metrics"]["train_accuracy"],
        "wall_seconds": summary["wall_seconds"],
    }


def brute_force_slerp(points: int = 10_000) -> dict:
    """The reference's brute-force baseline: SLERP of the two pre-trained seeds at ``points``
    evenly spaced t, the best by train accuracy reported on the test set."""
    import torch

    from evomerge.ops.vectors import slerp
    from evomerge.runtime.host import FitnessHost

    host = FitnessHost(f"{ROOT / 'fitness/digits.py'}:Digits", {})
    a, b = torch.from_numpy(host.make_seeds(2, 0, {}))
    grid = torch.linspace(0, 1, points).tolist()
    best_t, best = 0.0, -1.0
    for start in range(0, points, 256):
        ts = grid[start : start + 256]
        children = torch.stack([slerp(a, b, t) for t in ts])
        train = host.score(children.numpy()).mean(axis=1)
        i = int(train.argmax())
        if train[i] > best:
            best, best_t = float(train[i]), ts[i]
    test = host.metrics(slerp(a, b, best_t).numpy())["test_accuracy"]
    return {"t": best_t, "train_accuracy": best, "test_accuracy": test, "evaluations": points}


def forward_floor(evals: int = 50_000, batch: int = 1) -> float:
    """Seconds for ``evals`` bare fitness calls (no strategy, no archive, no records): the floor
    a run's wall time is compared with, measured in the same process and minute."""
    import time

    import torch

    from evomerge.runtime.host import FitnessHost

    host = FitnessHost(f"{ROOT / 'fitness/digits.py'}:Digits", {})
    fitness = host.plugin
    params = torch.randn(batch, fitness.num_params) * 0.1
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(evals // batch):
            fitness.score(params)
    return time.perf_counter() - t0


def timing(repeats: int, evals: int) -> None:
    """Wall seconds of the from-scratch M2N2 run beside the forward-pass floor, interleaved so
    both see the same machine load; medians of ``repeats``."""
    rows = []
    for rep in range(repeats):
        for batch in (1, 16):
            floor = forward_floor(evals, batch)
            wall = run_one("scratch", "m2n2", batch, rep, evals)["wall_seconds"]
            rows.append((batch, wall, floor))
            print(f"batch {batch} seed {rep}: run {wall:.1f} s, floor {floor:.1f} s", flush=True)
    print(
        "| batch | run wall s (median) | forward floor s (median) | run / floor (median) | runs |"
    )
    print("|---|---|---|---|---|")
    for batch in (1, 16):
        sel = [r for r in rows if r[0] == batch]
        med = statistics.median
        print(
            f"| {batch} | {med(r[1] for r in sel):.1f} | {med(r[2] for r in sel):.1f} "
            f"| {med(r[1] / r[2] for r in sel):.2f} | {len(sel)} |"
        )


def mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return m, se


def table(results: list[dict]) -> str:
    lines = [
        "| seeds | strategy | batch | evaluations | test accuracy % (mean ± s.e.) | "
        "reference % | wall s per run (mean ± s.e.) | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted(
        {(r["setting"], r["strategy"], r["batch"], r["evaluations"]) for r in results},
        key=lambda k: (k[0] != "scratch", k[1], k[2]),
    )
    for setting, strategy, batch, evals in keys:
        rows = [
            r
            for r in results
            if (r["setting"], r["strategy"], r["batch"], r["evaluations"])
            == (setting, strategy, batch, evals)
        ]
        acc = mean_se([100 * r["test_accuracy"] for r in rows])
        wall = mean_se([r["wall_seconds"] for r in rows])
        ref = REFERENCE.get((setting, strategy))
        lines.append(
            f"| {setting} | {strategy} | {batch} | {evals:,} | {acc[0]:.1f} ± {acc[1]:.1f}"
            f" | {ref if ref else '-'} | {wall[0]:.1f} ± {wall[1]:.1f} | {len(rows)} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--scratch-evals", type=int, default=50_000)
    ap.add_argument("--pretrained-evals", type=int, default=10_000)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--strategies", nargs="+", default=["m2n2", "ga"])
    ap.add_argument("--settings", nargs="+", default=["scratch", "pretrained"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench/out/m2n2_digits.json")
    ap.add_argument(
        "--timing",
        type=int,
        metavar="N",
        help="only time N from-scratch M2N2 runs per batch size against the forward-pass floor",
    )
    ap.add_argument(
        "--threads",
        type=int,
        help="torch threads for the timing (the run's local evaluator and the floor alike); "
        "default: torch's, one per core",
    )
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.timing:
        timing(args.timing, args.scratch_evals)
        return

    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(r["setting"], r["strategy"], r["batch"], r["seed"], r["evaluations"]) for r in results}
    for setting in args.settings:
        evals = args.scratch_evals if setting == "scratch" else args.pretrained_evals
        for seed in range(args.seeds):
            for strategy in args.strategies:
                for batch in args.batches:
                    if (setting, strategy, batch, seed, evals) in done:
                        continue
                    r = run_one(setting, strategy, batch, seed, evals)
                    results.append(r)
                    args.out.write_text(json.dumps(results, indent=1))
                    print(json.dumps(r), flush=True)
    print(table(results))
    if "pretrained" in args.settings:
        bf = brute_force_slerp()
        print(
            f"| pretrained | brute-force SLERP (t = {bf['t']:.4f}) | - | {bf['evaluations']:,} "
            f"| {100 * bf['test_accuracy']:.1f} | 57.8 | - | 1 |"
        )


if __name__ == "__main__":
    main()
