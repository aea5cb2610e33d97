"""Subset fitness on the pre-trained M2N2 digits config: held-out test accuracy of the final
member, scored on a fixed subset (configs/subset_digits_pretrained.yaml) against full scoring
(the same config without its ``evaluation`` section), at equal candidate evaluations.

For each seed both runs are made in this process, one after the other; it prints per seed the
test accuracy of each, the fraction of example evaluations the subset run spent, and its
recorded ``best_train_score_se``; then the mean over seeds of each test accuracy with its
standard error over seeds, and whether the subset's mean lies within one standard error of
full scoring's (the issue's goal, at <= 25 % of the example evaluations).

    python bench/subset_digits.py --seeds 5 --evals 10000
    python bench/subset_digits.py --seeds 5 --evals 10000 --size 288
    python bench/subset_digits.py --seeds 10 --evals 10000 --size 320 --fresh 200
    python bench/subset_digits.py --seeds 10 --evals 400 --config cmaes_digits_recipe

``--fresh R``: a new subset every R evaluations, the archive's members re-scored on each
(``fresh: true, refresh_every: R``); its example evaluations count the re-scoring.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
import yaml

from evomerge.interface.cli import main

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs/subset_digits_pretrained.yaml"


def run(cfg: dict, where: Path, name: str) -> dict:
    path = where / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = where / name
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    return json.loads((out / "summary.json").read_text())


def mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return m, se


def bench(seeds: int, evals: int, size: int | None, first: int = 0, fresh=None, config=CONFIG):
    base = yaml.safe_load(config.read_text())
    base["fitness"]["plugin"] = str(ROOT / "fitness/digits.py") + ":Digits"
    base.setdefault("evaluation", {"schedule": "subset", "size": 359, "stratify": "task"})
    base["budget"] = {"evaluations": evals}
    base["checkpoint_every"] = evals
    base["history_every"] = evals
    if size is not None:
        base["evaluation"]["size"] = size
    if fresh is not None:
        base["evaluation"].update(fresh=True, refresh_every=fresh)
    full_acc, sub_acc, fractions = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(first, first + seeds):
            subset = {**base, "seed": seed}
            full = {k: v for k, v in subset.items() if k != "evaluation"}
            a = run(full, Path(tmp), f"full-{seed}")
            b = run(subset, Path(tmp), f"subset-{seed}")
            frac = b["example_evaluations"] / a["example_evaluations"]
            full_acc.append(a["metrics"]["test_accuracy"])
            sub_acc.append(b["metrics"]["test_accuracy"])
            fractions.append(frac)
            print(
                f"seed {seed}: test full {full_acc[-1]:.4f} subset {sub_acc[-1]:.4f}  "
                f"example evals {frac:.3f}  subset train {b['metrics']['train_accuracy']:.4f}"
                f" +- {b['best_train_score_se']:.4f} (full train "
                f"{a['metrics']['train_accuracy']:.4f})",
                flush=True,
            )
    (fm, fse), (sm, sse) = mean_se(full_acc), mean_se(sub_acc)
    print(f"full   test accuracy {fm:.4f} +- {fse:.4f} (mean +- SE over {seeds} seeds)")
    print(f"subset test accuracy {sm:.4f} +- {sse:.4f}; example evals {max(fractions):.3f}")
    dm, dse = mean_se([b - a for a, b in zip(full_acc, sub_acc, strict=True)])
    print(f"paired difference (subset - full) {dm:+.4f} +- {dse:.4f}")
    met = abs(sm - fm) <= fse and max(fractions) <= 0.25
    print(f"within one SE of full at <= 25 % of the example evaluations: {met}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--evals", type=int, default=2000)
    parser.add_argument("--size", type=int, default=None, help="subset size (config: 359)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fresh", type=int, default=None, help="refresh_every (fresh subsets)")
    parser.add_argument(
        "--config",
        default=None,
        help="another configs/ name (no .yaml), its evaluation "
        "section set to a subset of 359 by task where it has none",
    )
    args = parser.parse_args()
    config = CONFIG if args.config is None else ROOT / "configs" / f"{args.config}.yaml"
    torch.set_num_threads(args.threads)
    bench(args.seeds, args.evals, args.size, args.first_seed, args.fresh, config)
