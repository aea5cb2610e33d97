"""Evaluation schedules on the SmolLM2-135M bench: full scoring, exact and approximate racing
and subset fitness, the same candidate evaluations each.

The search is bench/llm/m2n2_recipe_adaptive.yaml (M2N2 over the TIES recipe genes of base +
add and reverse experts; 96 training examples, 48 a task, teacher-forced token accuracy); each
schedule replaces its (absent) ``evaluation`` section:

* ``full``: every child on all 96 examples;
* ``race``: exact racing (``first_stage`` / ``growth`` / ``max_stage`` below); checked to end
  in the same final checkpoint state and final member, with the same metrics, as ``full``;
* ``approx-D``: ``mode: approximate, delta: D``, the same stages;
* ``subset``: ``{schedule: subset, size, stratify: task}`` (24 examples, 25 %: 12 a task).

Each run goes to ``OUT/<schedule>`` and is skipped when its ``summary.json`` is there, so the
runs can be made one at a time (``--schedules``) and tabulated together. The table: example
evaluations and their fraction of full scoring's, wall, the best member's train score (the
subset's on its 24 examples, with its standard error) and its held-out exact match on add and
reverse (50 test examples each, greedy decoding). Run from the repository root::

    python bench/llm/schedules_smollm2.py --out populations/llm-schedules       # 64 evaluations
    python bench/llm/schedules_smollm2.py --out populations/llm-schedules --schedules race
    python bench/llm/schedules_smollm2.py --config bench/llm/cmaes_ties.yaml --threads 1 \
        --out populations/llm-cmaes-0 --schedules full     # and --schedules subset beside it

Each run is ``evaluator.kind: local`` at torch's default threads, as the config says, unless
``--threads`` sets ``evaluator.threads`` (two runs side by side want one thread each). A run
of ``full`` made earlier into the same ``--out`` (or beside this one) is what the other
schedules are compared with; the table leaves the comparison out until it is there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from scheduled_run import run_scheduled  # noqa: E402

from evomerge.run import checkpoint  # noqa: E402
from evomerge.run.rundir import RunDir  # noqa: E402

CONFIG = ROOT / "bench/llm/m2n2_recipe_adaptive.yaml"
TASKS = ("add", "reverse")


def section(name: str, args) -> dict | None:
    """The ``evaluation`` section of schedule ``name`` (None: full scoring)."""
    stages = {"first_stage": args.first_stage, "growth": args.growth, "max_stage": args.max_stage}
    if name == "full":
        return None
    if name == "race":
        return {"schedule": "race", **stages}
    if name.startswith("approx-"):
        delta = float(name.removeprefix("approx-"))
        return {"schedule": "race", "mode": "approximate", "delta": delta, **stages}
    if name == "subset":
        return {"schedule": "subset", "size": args.size, "stratify": "task"}
    raise SystemExit(f"--schedules: unknown schedule {name}; full, race, approx-D or subset")


def run_one(name: str, args) -> dict:
    """Run schedule ``name`` into ``args.out / name`` unless it is there; its summary."""
    out = args.out / name
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    sets = [] if args.threads is None else [f"evaluator.threads={args.threads}"]
    summary, wall = run_scheduled(
        args.config, args.seed, args.evals, section(name, args), out, ROOT, sets
    )
    print(f"{name}: {wall:.0f} s", flush=True)
    return summary


def final_state(name: str, args) -> dict:
    last = checkpoint.list_checkpoints(RunDir(args.out / name).checkpoints)[-1]
    return load_file(last / "state.safetensors")


def identical(a: str, b: str, args) -> bool:
    """The final checkpoint state and the final member with its metrics are the same."""
    sa, sb = final_state(a, args), final_state(b, args)
    same = sa.keys() == sb.keys() and all(
        torch.equal(sa[k], sb[k]) or torch.allclose(sa[k], sb[k], 0, 0, equal_nan=True) for k in sa
    )
    ja = json.loads((args.out / a / "summary.json").read_text())
    jb = json.loads((args.out / b / "summary.json").read_text())
    return same and (ja["member"], ja["metrics"]) == (jb["member"], jb["metrics"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "populations/llm-schedules")
    parser.add_argument("--schedules", nargs="+", default=["full", "race", "approx-0.05", "subset"])
    parser.add_argument("--evals", type=int, default=64, help="candidate evaluations per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first-stage", type=int, default=12)
    parser.add_argument("--growth", type=float, default=2.0)
    parser.add_argument("--max-stage", type=int, default=24)
    parser.add_argument("--size", type=int, default=24, help="subset: examples (of 96)")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the search (a recipe config)")
    parser.add_argument("--threads", type=int, default=None, help="evaluator.threads")
    args = parser.parse_args()
    for name in args.schedules:
        section(name, args)  # refuse a bad name before hours of runs
    runs = {name: run_one(name, args) for name in args.schedules}
    made = args.out / "full" / "summary.json"
    if "full" not in runs and made.is_file():  # full scoring made earlier, or beside this run
        runs = {"full": json.loads(made.read_text()), **runs}
    full = runs.get("full")
    print(
        "\n| schedule | example evals | of full | wall s | best train (SE) | "
        "add exact match | reverse exact match | same result as full |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, s in runs.items():
        m = s["metrics"]
        train = next(v for k, v in m.items() if k.startswith("train_"))
        se = f" ({s['best_train_score_se']:.3f})" if "best_train_score_se" in s else ""
        same, fraction = "–", "–"
        if full is not None and name != "full":
            same = "yes" if identical("full", name, args) else "no"
        if full is not None:
            fraction = f"{s['example_evaluations'] / full['example_evaluations']:.3f}"
        print(
            f"| {name} | {s['example_evaluations']} | {fraction} | "
            f"{s['wall_seconds']:.0f} | {train:.3f}{se} | "
            f"{m['test_add_exact_match']:.2f} | {m['test_reverse_exact_match']:.2f} | {same} |"
        )
    if "race" in runs and full is not None and not identical("full", "race", args):
        raise SystemExit("exact racing changed the result")


if __name__ == "__main__":
    main()
