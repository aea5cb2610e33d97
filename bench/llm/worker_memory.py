"""A worker's memory and load time for lineage candidates: in place vs through a flat vector.

Each mode runs in a fresh Python process that sets up the causal-LM fitness over the bench's
seed folders (as one Ray worker does), then writes and scores a few lineage candidates:

* ``resident``: seeds memory-mapped from the safetensors files (page-cache pages, shared by
  every worker on the node), candidates written tensor by tensor into the model in its dtype.
* ``flat``: seeds made by ``make_seeds`` as a ``(K, N)`` float32 array, each candidate
  materialised as a flat float32 vector and copied into the model (the pre-resident path).

Reported per mode: peak RSS (``VmHWM``), the anonymous (private) and file-backed (shareable)
parts of RSS after scoring, and the median seconds to load one candidate. Usage::

    python bench/llm/worker_memory.py models/llm-bench [--dtype bfloat16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def status() -> dict[str, float]:
    """Peak and current RSS parts of this process, in MB (from /proc/self/status)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def child(folder: str, mode: str, dtype: str, repeats: int) -> dict:
    import numpy as np
    import torch

    from evomerge.runtime.host import FitnessHost
    from evomerge.spaces.lineage import Lineage, combine

    torch.set_num_threads(2)
    root = Path(folder)
    tasks = [
        {"name": n, "train": str(root / f"{n}.train.jsonl"), "metric": "token_accuracy", "limit": 8}
        for n in ("add", "reverse")
    ]
    options = {
        "seeds": [str(root / s) for s in ("base", "add", "reverse")],
        "tasks": tasks,
        "batch_size": 16,
        "dtype": dtype,
    }
    spec = {"count": 3, "seed": 0, "options": {}}
    before = status()
    host = FitnessHost(f"{ROOT}/fitness/causal_lm.py:CausalLM", options, lineage=spec)
    if mode == "flat":
        from evomerge.tensors.seed_store import DenseSeeds

        host.lineage_seeds = DenseSeeds(host.make_seeds(3, 0, {}))
        host.resident = None
    n = host.lineage_seeds.num_params
    a, b, c = (Lineage.of_seed(k, 3, n) for k in range(3))
    ab = combine(a, b, n // 3, (0.2, 0.8), (0.1, 0.9))  # mostly the add expert, then
    genome = combine(ab, c, n // 2, (1.0, 0.0), (0.6, 0.4))  # some reversal in the top half
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        if mode == "flat":
            host.fitness.load_candidate(torch.from_numpy(host.dense_rows(genome)[0]))
        else:
            host._load(genome)
        times.append(time.perf_counter() - t0)
    scores = host.score(genome, np.arange(4))
    after = status()
    return {
        "mode": mode,
        "dtype": dtype,
        "params": n,
        "load_seconds": statistics.median(times),
        "peak_rss_mb": after["VmHWM"],
        "anon_mb": after["RssAnon"],
        "file_mb": after["RssFile"],
        "baseline_rss_mb": before["VmRSS"],
        "score_mean": float(scores.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("folder", help="the bench's seed folders (bench/llm/make_experts.py output)")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=["resident", "flat"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.folder, args.child, args.dtype, args.repeats)))
        return
    rows = []
    for mode in ("resident", "flat"):
        cmd = [sys.executable, __file__, args.folder, "--child", mode, "--dtype", args.dtype]
        cmd += ["--repeats", str(args.repeats)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{rows[0]['params']:,} parameters, model dtype {args.dtype}, 3 seeds")
    print(
        "| mode | RSS before set-up MB | peak RSS MB | private (anon) MB | shareable (file) MB "
        "| load s | train score |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['baseline_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} "
            f"| {r['anon_mb']:.0f} | {r['file_mb']:.0f} | {r['load_seconds']:.3f} "
            f"| {r['score_mean']:.4f} |"
        )


if __name__ == "__main__":
    main()
