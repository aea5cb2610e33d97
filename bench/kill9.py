"""Kill -9 anywhere: SIGKILL the driver of a real Ray run at random moments, resume, compare.

Each run starts ``evomerge run CONFIG --out DIR`` (M2N2 on digits, 2 Ray workers, embedded
Ray) in its own process group and SIGKILLs the driver (the ``python -m evomerge`` process,
nothing else) at a random moment, then continues with ``evomerge resume DIR`` -- or with
``evomerge run`` again if the kill came before ``config.yaml`` existed -- and kills that too,
until the run's share of kills is spent; the last resume runs to the end. Kill moments are
drawn two ways:

* ``timer``: after a delay drawn uniformly from ``--delay`` seconds after launch (imports,
  Ray start, scoring the seeds, creating the run directory, the loop: anywhere);
* ``loop``: a delay drawn uniformly from ``--loop-delay`` seconds after the driver reports
  that its loop has started (evaluations, history and checkpoint writes, the summary);
* ``checkpoint``: the moment a checkpoint's temporary folder appears (polled every ~1 ms),
  i.e. during a checkpoint write.

A kill counts as *mid-checkpoint* when the killed driver's temporary checkpoint folder is
still there after its death. Ray's processes of the killed driver's embedded cluster are
then killed by process group, as a job scheduler would (their number is reported).

The final run directory must equal an uninterrupted run with the same config and seed: the
newest checkpoint's tensors bit for bit, its state.json (wall time aside), and the history
(every record once, wall time aside).

    python bench/kill9.py         # 3+ runs x 9 kills, >= 25 kills in all, ~20 min on 2 cores
    python bench/kill9.py --runs 1 --kills 3 --evaluations 1200     # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DIGITS = f"{ROOT / 'fitness' / 'digits.py'}:Digits"
ENV = {
    **os.environ,
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONPATH": str(ROOT),
}
ENV.pop("RAY_ADDRESS", None)


def make_config(path: Path, seed: int, evaluations: int, every: int, workers: int = 2) -> Path:
    cfg = {
        "seed": seed,
        "budget": {"evaluations": evaluations},
        "batch": 16,
        "checkpoint_every": every,
        "history_every": every,
        "keep_last": 2,
        "fitness": {"plugin": DIGITS},
        "seeds": {"kind": "gaussian", "count": 2, "std": 0.01},
        "strategy": {"name": "m2n2", "archive_size": 20, "mutation_std": 0.01},
        "evaluator": {"kind": "ray", "workers": workers, "num_cpus": 1},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as err:
        return subprocess.Popen(
            cmd,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # its own process group: Ray's helpers can be found
        )


def _group_left(pgid: int) -> int:
    """Processes still in ``pgid`` (Ray's helpers outliving the killed driver)."""
    out = subprocess.run(["ps", "-e", "-o", "pgid="], capture_output=True, text=True).stdout
    return sum(1 for x in out.split() if x == str(pgid))


def _end_group(pgid: int) -> int:
    left = _group_left(pgid)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return left


def _tmp_of(out: Path, pid: int) -> bool:
    ck = out / "checkpoints"
    return ck.is_dir() and any(p.name.endswith(f"-{pid}") for p in ck.glob(".tmp-*"))


def _wait_moment(proc, out: Path, log: Path, mode: str, delay: float, limit: float) -> bool:
    """Sleep until the kill moment; returns False if the process ended first."""
    t0 = time.monotonic()
    ck = out / "checkpoints"
    while proc.poll() is None:
        now = time.monotonic() - t0
        if mode == "loop" and "evaluations done" in log.read_text():
            mode, t0, now = "timer", time.monotonic(), 0.0  # the loop has started: count down
        if mode == "timer" and now >= delay:
            return True
        if mode == "loop" and now > limit:
            return True
        if mode == "checkpoint":
            if ck.is_dir() and any(p.name.startswith(".tmp-0") for p in os.scandir(ck)):
                return True
            if now > limit:
                return True  # no checkpoint write seen: kill here all the same
            time.sleep(0.001)
        else:
            time.sleep(min(0.01, max(0.0, delay - now)))
    return False


def killed_run(cfg: Path, out: Path, kills: int, rng: random.Random, args, logs: Path, modes=None):
    """One run to its end through ``kills`` SIGKILLs of its driver; returns the counts.

    ``modes`` fixes the kind of each kill moment (default: drawn with ``args.shares``).
    """
    c = Counter()
    attempt = 0
    while True:
        attempt += 1
        resume = (out / "config.yaml").exists()
        cmd = [sys.executable, "-m", "evomerge"]
        cmd += ["resume", str(out)] if resume else ["run", str(cfg), "--out", str(out)]
        log = logs / f"{out.name}-{attempt:03d}.log"
        proc = _launch(cmd, log)
        c["resumes" if resume else "starts"] += 1
        if c["kills"] < kills:
            mode = rng.choices(["timer", "loop", "checkpoint"], weights=args.shares)[0]
            if modes is not None:
                mode = modes[c["kills"]]
            delay = rng.uniform(*(args.loop_delay if mode == "loop" else args.delay))
            if _wait_moment(proc, out, log, mode, delay, limit=args.timeout):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                c["kills"] += 1
                c[f"kills_{mode}"] += 1
                c["kills_mid_checkpoint"] += _tmp_of(out, proc.pid)
                c["kills_before_run_dir"] += not (out / "config.yaml").exists()
                c["ray_processes_left"] += _end_group(proc.pid)
                if resume:
                    c["resumes_killed_after_loading"] += "resuming " in log.read_text()
                continue
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "timeout"
        _end_group(proc.pid)
        text = log.read_text()
        if rc != 0:
            last = [x for x in text.splitlines() if x.strip()][-1:] or ["(no output)"]
            raise SystemExit(f"FAILED: {' '.join(cmd)} exited {rc}: {last[0]} (log {log})")
        c["completed"] += 1
        c["damaged_checkpoint_reports"] += text.count("skipping damaged checkpoint")
        c["restarted_before_first_checkpoint"] += text.count("before its first checkpoint")
        return c


def plain_run(cfg: Path, out: Path, logs: Path, timeout: float) -> None:
    log = logs / f"{out.name}.log"
    proc = _launch([sys.executable, "-m", "evomerge", "run", str(cfg), "--out", str(out)], log)
    rc = proc.wait(timeout=timeout)
    _end_group(proc.pid)
    if rc != 0:
        raise SystemExit(f"FAILED: uninterrupted run exited {rc} (log {log})")


def _history(run: Path) -> list[dict]:
    out = []
    for line in (run / "history.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rec.pop("wall_seconds", None)
        out.append(rec)
    return out


def compare(a: Path, b: Path) -> list[str]:
    """Differences between two run directories' results (empty: identical)."""
    from safetensors.torch import load_file

    from evomerge.run import checkpoint

    diffs = []
    ca, cb = (checkpoint.list_checkpoints(r / "checkpoints")[-1] for r in (a, b))
    if ca.name != cb.name:
        diffs.append(f"newest checkpoints {ca.name} vs {cb.name}")
    ta, tb = load_file(ca / "state.safetensors"), load_file(cb / "state.safetensors")
    if ta.keys() != tb.keys():
        diffs.append(f"state tensors {sorted(ta)} vs {sorted(tb)}")
    diffs += [f"tensor {k} differs" for k in ta if k in tb and not ta[k].equal(tb[k])]
    ma, mb = (json.loads((c / "state.json").read_text()) for c in (ca, cb))
    ma.pop("wall_seconds"), mb.pop("wall_seconds")
    if ma != mb:
        diffs.append("state.json differs beyond wall_seconds")
    ha, hb = _history(a), _history(b)
    if ha != hb:
        ea, eb = [h["evaluations"] for h in ha], [h["evaluations"] for h in hb]
        diffs.append(f"history differs (evaluations {ea} vs {eb})")
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (a, b))
    if (sa["member"], sa["metrics"]) != (sb["member"], sb["metrics"]):
        diffs.append(f"summary {sa['member']} {sa['metrics']} vs {sb['member']} {sb['metrics']}")
    return diffs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kills", type=int, default=9, help="SIGKILLs per run")
    ap.add_argument("--min-kills", type=int, default=25, help="more runs until this many")
    ap.add_argument("--evaluations", type=int, default=6000)
    ap.add_argument("--every", type=int, default=320, help="checkpoint_every / history_every")
    ap.add_argument("--delay", type=float, nargs=2, default=(0.5, 10.0), metavar=("LO", "HI"))
    ap.add_argument("--loop-delay", type=float, nargs=2, default=(0.0, 6.0), metavar=("LO", "HI"))
    ap.add_argument(
        "--shares",
        type=float,
        nargs=3,
        default=(0.25, 0.4, 0.35),
        metavar=("TIMER", "LOOP", "CKPT"),
        help="how often each kind of kill moment is drawn",
    )
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--workdir", help="keep the run directories here (default: a temp dir)")
    ap.add_argument("--json", help="write the counts here")
    args = ap.parse_args(argv)

    rng = random.Random(args.seed)
    base = Path(args.workdir or tempfile.mkdtemp(prefix="kill9-"))
    base.mkdir(parents=True, exist_ok=True)
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    total, t0, results = Counter(), time.time(), []
    r = -1
    while r + 1 < args.runs or total["kills"] < args.min_kills:  # a run may end before its
        r += 1  # share of kills is spent: more runs until at least --min-kills
        cfg = make_config(
            base / f"run{r}.yaml", seed=r, evaluations=args.evaluations, every=args.every
        )
        ref, hit = base / f"ref{r}", base / f"killed{r}"
        plain_run(cfg, ref, logs, args.timeout)
        counts = killed_run(cfg, hit, args.kills, rng, args, logs)
        diffs = compare(hit, ref)
        total += counts
        results.append({"run": r, "seed": r, "counts": dict(counts), "differences": diffs})
        status = "IDENTICAL" if not diffs else "DIFFERENT: " + "; ".join(diffs)
        print(f"run {r} (seed {r}): {dict(counts)} -> {status}", flush=True)
    identical = sum(not x["differences"] for x in results)
    report = {
        "runs": len(results),
        "identical_to_uninterrupted": identical,
        "totals": dict(total),
        "wall_seconds": round(time.time() - t0, 1),
        "command": "python bench/kill9.py " + " ".join(argv or sys.argv[1:]),
        "results": results,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if identical == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
