"""One GPU visit's worth of LLM-scale numbers, written as JSON under ``--out`` as they come.

For each ``--sizes`` entry (bench/llm/scale.py's shapes: ``1b``, ``7b``; ``smoke`` for a CPU
rehearsal) it makes the three synthetic bf16 seeds (``scale.py make``), then, per space
(M2N2 lineage children, CMA-ES TIES recipes), starts one local evaluator (no Ray) over the
causal-LM plug-in with the transformers engine in a fresh process and records:

* ``candidates_per_s``: candidates scored through ``LocalEvaluator.score`` (load + forward);
* ``load_s``: median time to write one candidate into the resident model, against
  ``copy_s``: one plain ``copy_`` of the same bytes (every resident tensor from a buffer on the
  same device) and ``floor_s``: reading every seed tensor once into the device plus that copy;
* ``gpu_peak_gb``: ``torch.cuda.max_memory_allocated`` over set-up, loads and scoring.

Every stage runs against ``--deadline`` (a unix time): a child is killed when it is reached and
its file keeps what it had measured, with ``"partial": true``. Files: ``<size>_<space>.json``,
``status.json`` (each stage: ok, timed out, skipped or its error line; seconds to make seeds)
and ``bench.log``.

    python bench/gpu/bench.py --device cuda --sizes 1b,7b --out $OUT --deadline $(($(date +%s)+500))
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCALE = ROOT / "bench" / "llm" / "scale.py"
sys.path.insert(0, str(SCALE.parent))


def write(path: Path, row: dict) -> None:
    """Whole file or the previous one: a kill never leaves half a JSON."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, indent=1) + "\n")
    os.replace(tmp, path)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def candidates(space: str, evaluator, count: int, rng):
    """``count`` random candidates of the space: lineage children of three seeds (two
    crossovers with random cuts and weights), or recipe genomes around the initial one."""
    import numpy as np

    from evomerge.spaces.lineage import Lineage, combine

    if space == "lineage":
        n = evaluator.host.lineage_seeds.num_params
        out = []
        for _ in range(count):
            a, b, c = (Lineage.of_seed(k, 3, n) for k in rng.permutation(3))
            w = rng.uniform(0, 1, 4)
            ab = combine(a, b, rng.integers(1, n), (w[0], 1 - w[0]), (w[1], 1 - w[1]))
            out.append(combine(ab, c, rng.integers(1, n), (w[2], 1 - w[2]), (1.0, 0.0)))
        return out
    initial = np.array(evaluator.info["initial"], dtype=np.float32)
    noise = rng.uniform(-0.3, 0.3, (count, len(initial))).astype(np.float32)
    return np.clip(initial + noise, 0.0, 1.0)


def loaded_from(evaluator):
    """The seed store candidates are loaded from: on the device when the seeds fit there."""
    worker = evaluator.host.worker
    return getattr(worker, "load_seeds", None) or worker.store


def floor(store, tensors, device: str) -> tuple[float, float]:
    """Seconds to read every seed tensor once into a buffer on the device and then write the
    resident model from it (``floor_s``), and the write alone (``copy_s``): plain ``copy_``."""
    import torch

    from evomerge.tensors.seed_store import DeviceSeeds

    if isinstance(store, DeviceSeeds):  # seeds already on the device: a read is a device copy
        spans = zip(store.offsets[:-1], store.offsets[1:], strict=True)
        read = [store.piece(k, a, b) for a, b in spans for k in range(store.num_seeds)]
    else:
        read = [store.tensor(k, i) for i in range(len(tensors)) for k in range(store.num_seeds)]
    buf = torch.empty(max(t.numel() for t in tensors), dtype=tensors[0].dtype, device=device)

    def reads():
        for src in read:
            buf[: src.numel()].copy_(src, non_blocking=True)

    def writes():
        for t in tensors:
            t.view(-1).copy_(buf[: t.numel()])

    writes()  # untimed: the first write may fault pages in (CPU) or warm kernels (GPU)
    return timed(reads, device) + timed(writes, device), timed(writes, device)


def child(root: Path, space: str, device: str, deadline: float, out: Path, size: str) -> None:
    """One space's evaluator in this process; ``out`` is rewritten after every stage."""
    import numpy as np
    import scale
    import torch

    from evomerge.runtime.local import LocalEvaluator

    row = {"size": size, "space": space, "device": device, "partial": True}
    if device.startswith("cuda"):
        row["gpu"] = torch.cuda.get_device_name(0)
        torch.cuda.reset_peak_memory_stats()
    peak = (
        (lambda: torch.cuda.max_memory_allocated() / 1e9)
        if device.startswith("cuda")
        else (lambda: 0.0)
    )
    spec = {"count": 3, "seed": 0, "options": {}, "name": space}
    if space == "recipe":
        spec["recipe"] = scale.RECIPE
    t0 = time.perf_counter()
    ev = LocalEvaluator(scale.PLUGIN, scale.fitness_options(root), device, space=spec)
    sync(device)
    tensors = ev.host.resident()
    row.update(
        setup_s=round(time.perf_counter() - t0, 3),
        params_b=round(sum(t.numel() for t in tensors) / 1e9, 3),
        model_gb=round(sum(t.numel() * t.element_size() for t in tensors) / 1e9, 3),
        seeds_on_device=type(loaded_from(ev)).__name__ == "DeviceSeeds",
        gpu_peak_gb=round(peak(), 3),
    )
    write(out, row)
    rng = np.random.default_rng(0)
    # loads alone, then the plain copy floor in the same process
    loads = []
    for genome in candidates(space, ev, 3, rng):
        if time.time() > deadline - 10:
            break
        with torch.no_grad():
            loads.append(timed(lambda g=genome: ev.host.worker.realise(g), device))
    if loads:
        store = loaded_from(ev)
        with torch.no_grad():  # median of three: the first read may find cold pages
            floors = [floor(store, tensors, device) for _ in range(3)]
        floor_s = statistics.median(f for f, _ in floors)
        copy_s = statistics.median(c for _, c in floors)
        row.update(
            load_s=round(statistics.median(loads), 4),
            loads=len(loads),
            floor_s=round(floor_s, 4),
            copy_s=round(copy_s, 4),
            load_per_floor=round(statistics.median(loads) / floor_s, 2),
            load_per_copy=round(statistics.median(loads) / copy_s, 2),
            gpu_peak_gb=round(peak(), 3),
        )
        write(out, row)
    # candidates/s through the evaluator, batches of 4 until the batch budget or the deadline
    done, spent, scores = 0, 0.0, []
    batches = 0
    while batches < 4 and time.time() < deadline - 10 - 1.5 * (spent / max(batches, 1)):
        batch = candidates(space, ev, 4, rng)
        spent += timed(lambda b=batch: scores.append(ev.score(b)), device)
        done += len(batch)
        batches += 1
        row.update(
            candidates=done,
            score_wall_s=round(spent, 3),
            candidates_per_s=round(done / spent, 3),
            mean_score=round(float(torch.cat(scores).mean()), 4),
            gpu_peak_gb=round(peak(), 3),
        )
        write(out, row)
    row["partial"] = batches < 4
    write(out, row)


def run_stage(cmd: list[str], deadline: float, log) -> str:
    """Run ``cmd`` until done or the deadline; ``ok``, ``timed out`` or its last error line."""
    left = deadline - time.time()
    if left < 15:
        return "skipped: no time left"
    try:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.PIPE, text=True, timeout=left)
    except subprocess.TimeoutExpired:
        return "timed out"
    if done.returncode:
        log.write(done.stderr)
        lines = done.stderr.strip().splitlines()
        return f"failed: {lines[-1] if lines else 'exit ' + str(done.returncode)}"
    return "ok"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", default="1b,7b")
    p.add_argument("--seeds-root", type=Path, default=Path("/tmp/evomerge-gpu-seeds"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--deadline", type=float, required=True, help="unix time to be done by")
    p.add_argument("--child", nargs=3, metavar=("ROOT", "SPACE", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        root, space, size = args.child
        out = args.out / f"{size}_{space}.json"
        child(Path(root), space, args.device, args.deadline, out, size)
        return 0
    status = {}
    with open(args.out / "bench.log", "a") as log:
        for size in args.sizes.split(","):
            root = args.seeds_root / size
            t0 = time.perf_counter()
            made = run_stage(
                [sys.executable, str(SCALE), "make", str(root), "--size", size], args.deadline, log
            )
            status[f"{size}_make"] = made
            status[f"{size}_make_s"] = round(time.perf_counter() - t0, 1)
            write(args.out / "status.json", status)
            print(f"{size} make: {made} ({time.perf_counter() - t0:.0f} s)", flush=True)
            if made != "ok":
                break
            for space in ("lineage", "recipe"):
                cmd = [
                    sys.executable,
                    __file__,
                    "--device",
                    args.device,
                    "--out",
                    str(args.out),
                    "--deadline",
                    str(args.deadline),
                    "--child",
                    str(root),
                    space,
                    size,
                ]
                status[f"{size}_{space}"] = run_stage(cmd, args.deadline, log)
                path = args.out / f"{size}_{space}.json"
                row = json.loads(path.read_text()) if path.exists() else {}
                print(f"{size} {space}: {status[f'{size}_{space}']} {json.dumps(row)}", flush=True)
    write(args.out / "status.json", status)
    return 0 if all(v == "ok" for k, v in status.items() if not k.endswith("_s")) else 1


if __name__ == "__main__":
    sys.exit(main())
