"""The README's main job on Ray against the local evaluator, on the same machine.

`configs/quickstart.yaml` (M2N2 on digits from scratch, 20,000 evaluations, batch 16) is run
interleaved, ``--repeats`` times each way: local (one process; torch's matmuls use every core),
local with ``evaluator.threads: 1``,
Ray with children sent as recipes over the workers' replicas of the archive (the default), and
Ray with every child's whole vector shipped (as before recipes: ``RayEvaluator.builds_children``
switched off in this process). Each run must end at the same member; the table gives median
search seconds, their ratio to local and the workers' utilisation (busy seconds / workers x
seconds the driver waited for scores, as ``summary.json`` reports it). Search seconds time the
search loop alone (``Search.loop``); "with start" adds the evaluator's start (Ray's, ~2-5 s).

Each run is its own process (torch's thread setting and Ray's threads would carry over).

    python bench/quickstart_ray_vs_local.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from evomerge.run import loop
from evomerge.run.config import apply_overrides, read_yaml, validate
from evomerge.run.rundir import RunDir
from evomerge.runtime.ray_pool import RayEvaluator

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs/quickstart.yaml"
WAYS = {
    "local": ("local", True, []),
    "local, 1 thread": ("local", True, ["evaluator.threads=1"]),
    "ray, recipes": ("ray", True, []),
    "ray, vectors": ("ray", False, []),
}


def run_once(way: str, evals: int) -> dict:
    kind, recipes, extra = WAYS[way]
    RayEvaluator.builds_children = recipes
    sets = [f"evaluator.kind={kind}", f"budget.evaluations={evals}", *extra]
    cfg = validate(apply_overrides(read_yaml(CONFIG), sets), str(CONFIG), bases=[ROOT])
    with tempfile.TemporaryDirectory() as tmp:
        search = loop.start(cfg, RunDir(Path(tmp) / "run"))
        try:
            t0 = time.perf_counter()
            summary = search.loop()
            summary["search_seconds"] = time.perf_counter() - t0
        finally:
            search.evaluator.close()
    return summary


def in_subprocess(way: str, evals: int) -> dict:
    """One run in a fresh process: torch's thread count and Ray's threads do not carry over."""
    out = subprocess.run(
        [sys.executable, __file__, "--one", way, "--evaluations", str(evals)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--evaluations", type=int, default=20_000)
    ap.add_argument("--one", choices=list(WAYS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        s = run_once(args.one, args.evaluations)
        keys = ("member", "search_seconds", "wall_seconds", "worker_utilisation")
        print(json.dumps({k: s.get(k) for k in keys}))
        return
    rows: dict[str, list[dict]] = {w: [] for w in WAYS}
    for rep in range(args.repeats):
        for way in WAYS:
            s = in_subprocess(way, args.evaluations)
            rows[way].append(s)
            print(
                f"repeat {rep} {way}: member {s['member']}, search {s['search_seconds']:.1f} s "
                f"(with start {s['wall_seconds']:.1f} s), "
                f"utilisation {s.get('worker_utilisation')}",
                flush=True,
            )
    members = {s["member"] for runs in rows.values() for s in runs}
    assert len(members) == 1, f"the ways ended at different members: {members}"
    local = statistics.median(s["search_seconds"] for s in rows["local"])
    print(f"\nmember {members.pop()} every run")
    print(
        "| evaluator | search s (median) | local / this | with start s (median) "
        "| worker utilisation (median) | runs |"
    )
    print("|---|---|---|---|---|---|")
    for way, runs in rows.items():
        wall = statistics.median(s["search_seconds"] for s in runs)
        whole = statistics.median(s["wall_seconds"] for s in runs)
        util = [s["worker_utilisation"] for s in runs if s.get("worker_utilisation") is not None]
        u = f"{100 * statistics.median(util):.0f} %" if util else "-"
        print(f"| {way} | {wall:.1f} | {local / wall:.2f} | {whole:.1f} | {u} | {len(runs)} |")


if __name__ == "__main__":
    main()
