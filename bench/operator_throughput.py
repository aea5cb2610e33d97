"""Merge throughput per operator in GB/s of bytes touched, beside a plain ``torch.lerp_`` floor.

Bytes touched = the inputs read (base and models) plus the output written, in the tensors'
dtype (``--dtype``: float32, or bfloat16 as LLM checkpoints are). The floor is
``torch.lerp_`` over the same bytes (read two tensors, write one), measured in the same run,
interleaved with the operators: the memory-bandwidth floor of the machine. Tensors are
``(numel / 1024, 1024)`` matrices, as LLM weights are (DELLA ranks within rows).

    python bench/operator_throughput.py                     # 16M float32 entries, median of 5
    python bench/operator_throughput.py --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from evomerge.ops.operators import get_merge_method

CASES = {
    "linear": ([{"weight": 0.5}] * 2, {}),
    "task_arithmetic": ([{"weight": 0.5}] * 2, {}),
    "ties": ([{"weight": 0.5, "density": 0.5}] * 2, {}),
    "dare_linear": ([{"weight": 0.5, "density": 0.5}] * 2, {}),
    "dare_ties": ([{"weight": 0.5, "density": 0.5}] * 2, {}),
    "breadcrumbs": ([{"weight": 0.5, "density": 0.9, "gamma": 0.01}] * 2, {}),
    "slerp": ([{}], {"t": 0.4}),
    "della": ([{"weight": 0.5, "density": 0.5, "epsilon": 0.1}] * 2, {}),
    "della_linear": ([{"weight": 0.5, "density": 0.5, "epsilon": 0.1}] * 2, {}),
    "model_stock": ([{}] * 2, {}),
    "nuslerp": ([{"weight": 0.5}] * 2, {}),
    "multislerp": ([{"weight": 0.5}] * 2, {}),
    "karcher": ([{}] * 2, {}),
    "sce": ([{}] * 2, {"select_topk": 0.5}),
    "nearswap": ([{}], {"t": 0.001}),
    "passthrough": ([{"scale": 0.5}], {}),
}
#: Methods given a base although they do not require one (task vectors against it).
WITH_BASE = {"slerp", "nuslerp", "multislerp"}
#: Rows of this many entries: the 2-D shape of the tensors (della ranks within rows).
ROW = 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=16 * 2**20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    size = torch.empty((), dtype=dtype).element_size()
    gen = torch.Generator().manual_seed(0)
    shape = (args.numel // ROW, ROW)
    base = torch.randn(shape, generator=gen)
    models = [(base + 0.01 * torch.randn(shape, generator=gen)).to(dtype) for _ in range(2)]
    base = base.to(dtype)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.numel:,} {args.dtype} entries"
    )
    print("| operator | ms (median) | GB/s touched | lerp_ floor GB/s | ratio to floor |")
    print("|---|---|---|---|---|")
    for name, (model_params, params) in CASES.items():
        method = get_merge_method(name)
        ms = models[: len(model_params)]
        with_base = method.needs_base or name in WITH_BASE
        inputs = ([base] if with_base else []) + ms
        touched = (len(inputs) + 1) * args.numel * size
        times, floors = [], []
        for _ in range(args.repeats):
            a, b = base.clone(), models[0]
            t0 = time.perf_counter()
            a.lerp_(b, 0.5)
            floors.append(3 * args.numel * size / (time.perf_counter() - t0))
            g = torch.Generator().manual_seed(1) if method.random else None
            b_in = base if with_base else None
            t0 = time.perf_counter()
            method(b_in, ms, model_params, params, g)
            times.append(time.perf_counter() - t0)
        t, floor = statistics.median(times), statistics.median(floors)
        rate = touched / t
        print(
            f"| {name} | {1000 * t:.0f} | {rate / 1e9:.2f} | {floor / 1e9:.2f} "
            f"| {rate / floor:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
