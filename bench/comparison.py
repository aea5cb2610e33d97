"""The reference's comparison on digits: archives, strategies and ablations, 10 seeds each.

Every variant is one config in ``configs/`` plus at most a line of overrides (the ablation
switches), run for seeds 0..9 (from scratch: 50,000 evaluations; pre-trained seeds: 10,000),
two runs at a time on one thread each. Each result is appended to ``bench/out/comparison.json``
as it finishes (a re-run skips what is done); then a markdown table of test accuracy (mean ±
s.e.) beside the reference's value is printed.

    python bench/comparison.py                          # everything (about an hour on 2 cores)
    python bench/comparison.py --only map_elites --seeds 2
    python bench/comparison.py --table                  # print the table from what is done
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "comparison.json"

#: (label, setting, config, overrides, reference % from DESIGN section 4)
VARIANTS = [
    ("m2n2", "scratch", "m2n2_digits.yaml", [], 87.0),
    ("m2n2_no_crossover", "scratch", "m2n2_digits.yaml", ["strategy.crossover=false"], 77.0),
    ("ga", "scratch", "ga_digits.yaml", [], 68.0),
    ("ga_no_crossover", "scratch", "ga_digits.yaml", ["strategy.crossover=false"], None),
    ("map_elites", "scratch", "map_elites_digits.yaml", [], 60.0),
    ("sep_cmaes", "scratch", "sep_cmaes_digits.yaml", [], 86.0),
    ("m2n2_adaptive_mutation", "scratch", "m2n2_digits_adaptive.yaml", [], None),
    ("m2n2", "pretrained", "m2n2_digits_pretrained.yaml", [], 68.5),
    (
        "m2n2_no_attraction",
        "pretrained",
        "m2n2_digits_pretrained.yaml",
        ["strategy.attraction=false"],
        66.0,
    ),
    (
        "m2n2_no_split_point",
        "pretrained",
        "m2n2_digits_pretrained.yaml",
        ["strategy.split_point=false"],
        None,
    ),
    ("map_elites", "pretrained", "map_elites_digits.yaml", ["PRETRAINED"], 62.0),
    ("ga", "pretrained", "m2n2_digits_pretrained.yaml", ["GA"], 52.0),
    ("m2n2_adaptive_mutation", "pretrained", "m2n2_digits_lineage_adaptive.yaml", [], None),
]


def raw_config(setting: str, config: str, overrides: list[str]) -> tuple[dict, list[str]]:
    """The raw config mapping and the ``--set`` overrides of one variant."""
    from evomerge.run.config import read_yaml

    raw = read_yaml(ROOT / "configs" / config)
    sets = [o for o in overrides if "=" in o]
    if "PRETRAINED" in overrides:  # the same strategy on the pre-trained pair, no mutation
        pre = read_yaml(ROOT / "configs" / "m2n2_digits_pretrained.yaml")
        raw = {**pre, "strategy": {**raw["strategy"], "mutation_std": 0.0}}
    if "GA" in overrides:
        raw["strategy"] = {"name": "ga", "archive_size": raw["strategy"]["archive_size"]}
    return raw, sets


def run_one(job: tuple) -> dict:
    label, setting, config, overrides, seed = job
    import torch

    from evomerge.run import loop
    from evomerge.run.config import apply_overrides, validate
    from evomerge.run.rundir import RunDir

    torch.set_num_threads(1)
    raw, sets = raw_config(setting, config, overrides)
    evals = raw["budget"]["evaluations"]
    sets += [f"seed={seed}", "history_every=1000000", f"checkpoint_every={evals}"]
    cfg = validate(apply_overrides(raw, sets), config, bases=[ROOT])
    with tempfile.TemporaryDirectory() as tmp:
        search = loop.start(cfg, RunDir(Path(tmp) / "run"))
        try:
            summary = search.loop()
        finally:
            search.evaluator.close()
    return {
        "label": label,
        "setting": setting,
        "seed": seed,
        "evaluations": summary["evaluations"],
        "test_accuracy": summary["metrics"]["test_accuracy"],
        "train_accuracy": summary["metrics"]["train_accuracy"],
        "wall_seconds": summary["wall_seconds"],
    }


def load() -> list[dict]:
    return json.loads(OUT.read_text()) if OUT.exists() else []


def table(results: list[dict]) -> None:
    print("| seeds | variant | evaluations | test accuracy % (mean ± s.e.) | reference % | runs |")
    print("|---|---|---|---|---|---|")
    for label, setting, _, _, ref in VARIANTS:
        rows = [r for r in results if r["label"] == label and r["setting"] == setting]
        if not rows:
            continue
        acc = [100 * r["test_accuracy"] for r in rows]
        m = statistics.fmean(acc)
        se = statistics.stdev(acc) / len(acc) ** 0.5 if len(acc) > 1 else 0.0
        ref_text = f"{ref:.1f}" if ref is not None else "–"
        print(
            f"| {setting} | {label} | {rows[0]['evaluations']:,} | {m:.1f} ± {se:.1f} "
            f"| {ref_text} | {len(rows)} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--only", nargs="*", help="variant labels to run (default: all)")
    ap.add_argument("--setting", choices=["scratch", "pretrained"])
    ap.add_argument("--skip", nargs="*", default=[], help="label:setting pairs not to run")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="only print the table")
    args = ap.parse_args()
    results = load()
    if not args.table:
        done = {(r["label"], r["setting"], r["seed"]) for r in results}
        jobs = [
            (label, setting, config, overrides, seed)
            for label, setting, config, overrides, _ in VARIANTS
            for seed in range(args.seeds)
            if (label, setting, seed) not in done
            and (not args.only or label in args.only)
            and (not args.setting or setting == args.setting)
            and f"{label}:{setting}" not in args.skip
        ]
        OUT.parent.mkdir(parents=True, exist_ok=True)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(args.processes, maxtasksperchild=1) as pool:
            for r in pool.imap_unordered(run_one, jobs):
                results.append(r)
                OUT.write_text(json.dumps(results, indent=1))
                print(
                    f"{r['setting']} {r['label']} seed {r['seed']}: test "
                    f"{100 * r['test_accuracy']:.1f} % ({r['wall_seconds']:.0f} s)",
                    flush=True,
                )
    table(results)


if __name__ == "__main__":
    main()
