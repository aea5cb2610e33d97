"""`evomerge merge` against `mergekit-yaml` on the same Llama-shaped models, method by method.

The same mergekit YAML goes to both tools (evomerge reads mergekit's format); they run
alternately, each in its own process, and each run's wall seconds and peak RSS (the child's
ru_maxrss) are recorded; this process stays small (the comparison runs in a child) because
Linux passes a parent's peak RSS on to its children's ru_maxrss. The outputs are compared
tensor by tensor.

mergekit is not a dependency of evomerge: install it in a separate virtualenv, e.g.

    python -m venv /tmp/mkvenv && /tmp/mkvenv/bin/pip install torch==2.13.0 mergekit
    python bench/make_llama_seeds.py models/270m --size 270m --shards 3
    python bench/merge_vs_mergekit.py models/270m --mergekit /tmp/mkvenv/bin/mergekit-yaml
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

METHODS = {
    "linear": ({"weight": 0.5}, {}),
    "task_arithmetic": ({"weight": 0.5}, {}),
    "ties": ({"weight": 0.5, "density": 0.5}, {}),
    "dare_ties": ({"weight": 0.5, "density": 0.5}, {}),
    "breadcrumbs": ({"weight": 0.5, "density": 0.9, "gamma": 0.01}, {}),
    "slerp": ({}, {"t": 0.4}),
    "della": ({"weight": 0.5, "density": 0.5, "epsilon": 0.1}, {}),
    "della_linear": ({"weight": 0.5, "density": 0.5, "epsilon": 0.1}, {}),
    "model_stock": ({}, {}),
    "nuslerp": ({"weight": 0.5}, {}),
    "multislerp": ({"weight": 0.5}, {}),
    "karcher": ({}, {}),
    "sce": ({}, {"select_topk": 0.5}),
    "nearswap": ({}, {"t": 0.001}),
    "passthrough": ({}, {}),
}
#: Methods of one base and one model (the base is the t = 0 end).
PAIRS = {"slerp", "nearswap"}
#: Methods that take no base model.
NO_BASE = {"linear", "karcher", "passthrough"}


def stacked(models: Path, dtype: str) -> dict:
    """Layer stacking: the first half of model_0's layers, then the last three quarters of
    model_1's (a model 1.25 times as deep)."""
    import json

    layers = json.loads((models / "model_0" / "config.json").read_text())["num_hidden_layers"]
    return {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": str(models / "model_0"), "layer_range": [0, layers // 2]}]},
            {"sources": [{"model": str(models / "model_1"), "layer_range": [layers // 4, layers]}]},
        ],
        "dtype": dtype,
    }


def recipe(models: Path, method: str, dtype: str = "bfloat16") -> dict:
    if method == "passthrough":
        return stacked(models, dtype)
    per_model, params = METHODS[method]
    base = str(models / "base")
    others = (
        [str(models / "model_0")]
        if method in PAIRS
        else [
            str(models / "model_0"),
            str(models / "model_1"),
        ]
    )
    cfg = {
        "merge_method": method,
        "models": [
            {"model": m, **({"parameters": per_model} if per_model else {})} for m in others
        ],
        "dtype": dtype,
    }
    if method not in NO_BASE:
        cfg["base_model"] = base
    if method in PAIRS:
        cfg["models"].insert(0, {"model": base})
    if params:
        cfg["parameters"] = params
    return cfg


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode()[-2000:]
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    return wall, usage.ru_maxrss / 2**20


def max_diff(a: Path, b: Path) -> tuple[float, int, int]:
    """Largest absolute difference between two merged models (in float32), the number of
    entries that differ at all, and the number of entries."""
    from safetensors import safe_open

    def tensors(folder):
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(f, "pt") as h:
                for k in h.keys():
                    out[k] = (f, k)
        return out

    ta, tb = tensors(a), tensors(b)
    if set(ta) != set(tb):
        return float("nan"), -1, -1
    worst, differ, total = 0.0, 0, 0
    for k in ta:
        with safe_open(ta[k][0], "pt") as ha, safe_open(tb[k][0], "pt") as hb:
            x, y = ha.get_tensor(k).float(), hb.get_tensor(k).float()
        worst = max(worst, (x - y).abs().max().item())
        differ += int((x != y).sum())
        total += x.numel()
    return worst, differ, total


def diff_in_child(a: Path, b: Path) -> tuple[float, int, int]:
    """``max_diff`` in a child process, so this process never holds tensors.

    Linux carries a process's peak RSS across fork and exec into the child's ``ru_maxrss``:
    a parent that had loaded the outputs would inflate every later measurement.
    """
    out = subprocess.run(
        [sys.executable, __file__, "--diff", str(a), str(b)],
        check=True,
        capture_output=True,
        text=True,
    )
    worst, differ, total = out.stdout.split()
    return float(worst), int(differ), int(total)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--diff":
        print(*max_diff(Path(sys.argv[2]), Path(sys.argv[3])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", type=Path)
    ap.add_argument("--mergekit", default="mergekit-yaml")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dtype", default="bfloat16", help="the recipes' dtype (as the seeds are)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/merge_vs_mergekit.json"))
    args = ap.parse_args()
    evomerge = [sys.executable, "-m", "evomerge", "merge"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for rep in range(args.repeats):
            for method in args.methods:
                cfg = tmp / f"{method}.yml"
                cfg.write_text(yaml.safe_dump(recipe(args.models.resolve(), method, args.dtype)))
                outs = {}
                for tool in ("mergekit", "evomerge"):
                    out = tmp / f"{tool}-{method}"
                    shutil.rmtree(out, ignore_errors=True)
                    cmd = (
                        [args.mergekit, str(cfg), str(out), "--lazy-unpickle"]
                        if tool == "mergekit"
                        else [*evomerge, str(cfg), "--out", str(out), "-q"]
                    )
                    wall, rss = timed(cmd)
                    outs[tool] = out
                    rows.append(
                        {"method": method, "tool": tool, "rep": rep, "wall": wall, "rss_gb": rss}
                    )
                    print(json.dumps(rows[-1]), flush=True)
                if rep:  # both tools are deterministic: the outputs are compared once
                    continue
                diff, differ, total = diff_in_child(outs["mergekit"], outs["evomerge"])
                rows.append(
                    {
                        "method": method,
                        "tool": "diff",
                        "rep": rep,
                        "max_abs_diff": diff,
                        "entries_differing": differ,
                        "entries": total,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    med = statistics.median
    print(
        "| method | mergekit s | evomerge s | speed-up | mergekit peak RSS GB | "
        "evomerge peak RSS GB | max abs diff | entries differing |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for method in args.methods:
        mk = [r for r in rows if r["method"] == method and r["tool"] == "mergekit"]
        ev = [r for r in rows if r["method"] == method and r["tool"] == "evomerge"]
        dr = [r for r in rows if r["method"] == method and r["tool"] == "diff"]
        df = [r["max_abs_diff"] for r in dr]
        share = max(r["entries_differing"] / max(r["entries"], 1) for r in dr)
        count = max(r["entries_differing"] for r in dr)
        w_mk, w_ev = med(r["wall"] for r in mk), med(r["wall"] for r in ev)
        print(
            f"| {method} | {w_mk:.1f} | {w_ev:.1f} | {w_mk / w_ev:.2f}× | "
            f"{med(r['rss_gb'] for r in mk):.2f} | {med(r['rss_gb'] for r in ev):.2f} | "
            f"{max(df):.3g} | {count:,} ({share:.2e}) |"
        )


if __name__ == "__main__":
    main()
