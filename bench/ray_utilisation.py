"""Ray worker utilisation when evaluation times vary: busy seconds / (workers x wall seconds).

A real search (M2N2, 2 Ray workers) over `bench/plugins/uneven.py`, whose candidates take
0.02-0.2 s each (sleeping, so the 2-core machine's CPU does not matter). The batch is split
either evenly over the workers (``chunk_size`` unset) or handed out one candidate at a time
(``chunk_size: 1``): a worker that finishes gets the next candidate at once.

    python bench/ray_utilisation.py                # 400 evaluations, batch 16, both settings
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def run(tmp: Path, chunk: int | None, args) -> dict:
    cfg = {
        "seed": 0,
        "budget": {"evaluations": args.evaluations},
        "batch": args.batch,
        "checkpoint_every": args.evaluations,
        "history_every": args.evaluations,
        "fitness": {"plugin": f"{HERE / 'plugins' / 'uneven.py'}:Uneven"},
        "seeds": {"kind": "gaussian", "count": 2, "std": 1.0},
        "strategy": {"name": "m2n2", "archive_size": 8, "mutation_std": 0.1},
        "evaluator": {"kind": "ray", "workers": args.workers, "chunk_size": chunk},
    }
    path = tmp / f"chunk-{chunk}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp / f"run-{chunk}"
    subprocess.run(
        [sys.executable, "-m", "evomerge", "run", str(path), "--out", str(out), "-q"], check=True
    )
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evaluations", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for chunk in (None, 1):
            s = run(Path(tmp), chunk, args)
            rows.append((chunk, s))
    print("| chunk_size | evaluations | wall s | worker utilisation | per worker |")
    print("|---|---|---|---|---|")
    for chunk, s in rows:
        per = ", ".join(str(w["evaluated"]) for w in s["workers"])
        print(
            f"| {chunk or 'batch / workers'} | {s['evaluations']} | {s['wall_seconds']:.1f} | "
            f"{100 * s['worker_utilisation']:.1f} % | {per} |"
        )


if __name__ == "__main__":
    main()
