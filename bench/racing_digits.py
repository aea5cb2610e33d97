"""Exact racing on the digits configs: example evaluations saved at an identical result.

For each config and seed, the run is made twice in this process, one after the other: with
full scoring and with ``evaluation.schedule: race`` (the stage layout of
configs/racing_digits_pretrained.yaml). It checks that the final archive (checkpoint tensors
that hold the search's state; for CMA-ES the asked solutions and the best) and the final
member and metrics are identical, and prints per config the median over seeds of the example
evaluations racing spent / full scoring spent, and of the wall time ratio (race / full).

    python bench/racing_digits.py                                  # all configs, 3 seeds
    python bench/racing_digits.py --configs m2n2_pretrained --seeds 1 --evals 500

Both runs of a pair use the same number of torch threads (``--threads``, default 1): on a
shared machine a pool of threads makes many small calls (racing's stages) far slower than
one large one, which would measure the machine's load, not the schedule.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from evomerge.run import checkpoint, loop
from evomerge.run.config import apply_overrides, read_yaml, validate
from evomerge.run.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "m2n2_pretrained": "configs/m2n2_digits_pretrained.yaml",
    "m2n2_scratch": "configs/m2n2_digits.yaml",
    "m2n2_lineage": "configs/m2n2_digits_lineage.yaml",
    "map_elites": "configs/map_elites_digits.yaml",
    "cmaes_recipe": "configs/cmaes_digits_recipe.yaml",
}
RACE = {"schedule": "race", "first_stage": 64, "growth": 2.0, "max_stage": 90}
CMA_KEYS = ("x0", "solutions", "best_genes", "best_scores")


def run_one(name: str, seed: int, evals: int, race: bool, out: Path) -> tuple[dict, dict, float]:
    raw = apply_overrides(read_yaml(ROOT / CONFIGS[name]), [f"seed={seed}"])
    raw["budget"] = {"evaluations": evals}
    raw["checkpoint_every"] = evals
    raw["history_every"] = evals
    if race:
        raw["evaluation"] = RACE
    cfg = validate(raw, name, bases=[ROOT])
    run = RunDir(out)
    t0 = time.perf_counter()
    search = loop.start(cfg, run)
    try:
        summary = search.loop()
    finally:
        search.evaluator.close()
    wall = time.perf_counter() - t0
    last = checkpoint.list_checkpoints(run.checkpoints)[-1]
    return summary, load_file(last / "state.safetensors"), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--evals", type=int, default=2000, help="evaluations per run")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads, the same for both schedules"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            saved, walls = [], []
            for seed in range(args.seeds):
                a, sa, wa = run_one(name, seed, args.evals, False, Path(tmp) / f"{name}{seed}f")
                b, sb, wb = run_one(name, seed, args.evals, True, Path(tmp) / f"{name}{seed}r")
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


if __name__ == "__main__":
    main()
