"""Soak: a long real run on 2 Ray workers with the driver's and the workers' memory sampled.

Runs ``evomerge run`` on the quickstart setup (M2N2 on digits from scratch, batch 16, 2 Ray
workers with 1 CPU each, embedded Ray) with a budget it cannot reach, for ``--minutes`` of
evaluations, sampling every ``--interval`` seconds the resident set size (psutil RSS) of the
driver and of each ``ray::_Worker`` process of the run's embedded Ray (found by process
group). Then it stops the run with SIGTERM (checkpoint, exit 130) and reports growth:

    growth = median RSS over the last ``--window`` minutes - median RSS over the
             ``--window`` minutes after the ``--warmup`` minutes

against the bound (``--bound-mb``, default 32 MB, for the driver and for every worker), plus
the least-squares slope in MB per hour. Samples go to ``--out`` (JSON).

    python bench/soak.py                        # 30 minutes of evaluations
    nohup python bench/soak.py --out bench/out/soak.json > bench/out/soak.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
ENV.pop("RAY_ADDRESS", None)


def config(path: Path, every: int) -> Path:
    cfg = {
        "seed": 0,
        "name": "soak",
        "budget": {"evaluations": 10**9},
        "batch": 16,
        "checkpoint_every": every,
        "history_every": every // 4,
        "fitness": {"plugin": f"{ROOT / 'fitness' / 'digits.py'}:Digits"},
        "seeds": {"kind": "gaussian", "count": 2, "std": 0.01},
        "strategy": {"name": "m2n2", "archive_size": 20, "alpha": 1.0, "mutation_std": 0.01},
        "evaluator": {"kind": "ray", "workers": 2, "num_cpus": 1},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def workers_of(driver: int) -> dict[int, psutil.Process]:
    """The run's ``ray::_Worker`` processes: descendants of the driver (through its raylet)."""
    found = {}
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            text = " ".join(p.info["cmdline"] or []) or p.info["name"] or ""
            if "ray::_Worker" in text and driver in {q.pid for q in p.parents()}:
                found[p.pid] = p
        except (psutil.Error, ProcessLookupError):
            continue
    return found


def evaluations(run: Path) -> int:
    try:
        lines = (run / "history.jsonl").read_text().splitlines()
        return int(json.loads(lines[-1])["evaluations"]) if lines else 0
    except (OSError, ValueError, KeyError, IndexError):
        return 0


def mb(x: float) -> float:
    return round(x / 2**20, 1)


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    ts, ys = zip(*points, strict=True)
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    den = sum((t - mt) ** 2 for t in ts) or 1.0
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / den * 3600


def growth(points, start_s: float, window_s: float, end_s: float) -> float:
    early = [y for t, y in points if start_s <= t < start_s + window_s]
    late = [y for t, y in points if t >= end_s - window_s]
    if not early or not late:
        return float("nan")
    return statistics.median(late) - statistics.median(early)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="minutes of evaluations")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=3.0, help="minutes before the baseline")
    ap.add_argument("--window", type=float, default=3.0, help="minutes each median spans")
    ap.add_argument("--bound-mb", type=float, default=32.0, help="allowed growth per process")
    ap.add_argument("--every", type=int, default=20000, help="checkpoint_every")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "soak.json"))
    ap.add_argument("--workdir", help="run directory parent (default: a temp dir)")
    args = ap.parse_args(argv)

    base = Path(args.workdir or tempfile.mkdtemp(prefix="soak-"))
    base.mkdir(parents=True, exist_ok=True)
    run = base / "run"
    cfg = config(base / "soak.yaml", args.every)
    log = open(base / "driver.log", "wb")
    cmd = [sys.executable, "-m", "evomerge", "run", str(cfg), "--out", str(run)]
    driver = subprocess.Popen(cmd, env=ENV, stdout=log, stderr=log, start_new_session=True)
    dproc = psutil.Process(driver.pid)
    samples, t_loop = [], None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        while driver.poll() is None:
            done = evaluations(run)
            if t_loop is None and done > 0:
                t_loop = time.monotonic()  # the first record: the loop is running
            if t_loop is not None:
                t = time.monotonic() - t_loop
                if t > args.minutes * 60:
                    break
                workers = workers_of(driver.pid)
                rec = {"t": round(t, 1), "evaluations": done, "driver": dproc.memory_info().rss}
                rec["workers"] = {str(pid): p.memory_info().rss for pid, p in workers.items()}
                samples.append(rec)
                if len(samples) % 60 == 1:
                    w = ", ".join(f"{mb(v)}" for v in rec["workers"].values())
                    print(
                        f"[soak] {t / 60:5.1f} min  {done} evaluations  driver "
                        f"{mb(rec['driver'])} MB  workers {w} MB",
                        flush=True,
                    )
            time.sleep(args.interval)
    finally:
        if driver.poll() is None:
            driver.send_signal(signal.SIGTERM)  # checkpoint and stop, as a scheduler would
        try:
            rc = driver.wait(timeout=120)
        except subprocess.TimeoutExpired:
            driver.kill()
            rc = "killed"
        try:
            os.killpg(driver.pid, signal.SIGKILL)  # anything of its Ray left behind
        except ProcessLookupError:
            pass

    end = samples[-1]["t"] if samples else 0.0
    start, window = args.warmup * 60, args.window * 60
    procs = {"driver": [(s["t"], s["driver"] / 2**20) for s in samples]}
    for s in samples:
        for i, (_, v) in enumerate(sorted(s["workers"].items())):
            procs.setdefault(f"worker{i}", []).append((s["t"], v / 2**20))
    pids = sorted({pid for s in samples for pid in s["workers"]})
    report = {
        "command": "python bench/soak.py " + " ".join(argv or sys.argv[1:]),
        "minutes_of_evaluations": round(end / 60, 2),
        "evaluations": samples[-1]["evaluations"] if samples else 0,
        "samples": len(samples),
        "interval_s": args.interval,
        "bound_mb": args.bound_mb,
        "worker_pids_seen": len(pids),  # 2 unless a worker was restarted
        "driver_exit": rc,
        "processes": {},
    }
    ok = bool(samples) and end >= args.minutes * 60 - 2 * args.interval and len(pids) == 2
    for name, pts in procs.items():
        g = growth(pts, start, window, end)
        ys = [y for _, y in pts]
        report["processes"][name] = {
            "rss_first_mb": round(ys[0], 1),
            "rss_baseline_median_mb": round(
                statistics.median([y for t, y in pts if start <= t < start + window] or [0]), 1
            ),
            "rss_last_mb": round(ys[-1], 1),
            "rss_max_mb": round(max(ys), 1),
            "growth_mb": round(g, 1),
            "slope_mb_per_hour": round(slope_per_hour([p for p in pts if p[0] >= start]), 2),
        }
        ok = ok and g == g and g <= args.bound_mb
    report["pass"] = ok
    report["series"] = samples
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "series"}, indent=1))
    print(f"samples: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
