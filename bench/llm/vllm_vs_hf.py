"""Candidate evaluations per second with ``engine: vllm`` against ``engine: transformers``.

On the SmolLM2 bench (``models/llm-bench``, made by ``bench/llm/make_experts.py``), both
engines score the same candidates (mixes of the three seeds' flat vectors) on the same
examples: exact match on ``add`` (greedy generation, ``max_new_tokens: 6``) and token accuracy
on ``reverse`` (teacher forcing), each with the end target. One evaluation = load the
candidate into the resident model + score every example of one task. Also: the time to load a
candidate into the engine against a plain copy of the same bytes into a preallocated buffer,
and how often the two engines' per-example scores agree. Medians over ``--repeats``.
Run in the vLLM virtualenv (README, 'vLLM engine'):

    VLLM_CPU_KVCACHE_SPACE=1 python bench/llm/vllm_vs_hf.py models/llm-bench --examples 48
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def tasks_of(models: Path, examples: int) -> list[dict]:
    return [
        {"name": "add", "train": str(models / "add.train.jsonl"), "metric": "exact_match",
         "max_new_tokens": 6, "limit": examples, "include_eos": True},
        {"name": "reverse", "train": str(models / "reverse.train.jsonl"),
         "metric": "token_accuracy", "limit": examples, "include_eos": True},
    ]  # fmt: skip


def plugin(models: Path, engine: str, examples: int, dtype: str, max_len: int):
    from evomerge.fitness.causal_lm import CausalLM

    options = {"engine_args": {"max_model_len": max_len, "enforce_eager": True}}
    fit = CausalLM(
        seeds=[str(models / s) for s in ("add", "reverse", "base")],
        tasks=tasks_of(models, examples),
        batch_size=examples,
        dtype=dtype,
        engine=engine,
        **(options if engine == "vllm" else {}),
    )
    start = time.perf_counter()
    fit.setup(torch.device("cpu"))
    if engine == "vllm":
        fit.engine.llm  # noqa: B018 (vLLM's engine starts on first use: timed with the set-up)
    return fit, time.perf_counter() - start


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(fit, candidates, repeats: int) -> dict:
    """Median seconds of one load and one evaluation per task, and the scores."""
    loads, evals, scores = [], {t.name: [] for t in fit.tasks}, {}
    for _ in range(repeats):
        for c, vector in enumerate(candidates):
            loads.append(timed(lambda v=vector: fit.load_candidate(v)))
            for task in fit.tasks:

                def one(task=task, v=vector, c=c):
                    fit.load_candidate(v)
                    scores[task.name, c] = fit.score_task(task, task.train_tok)

                evals[task.name].append(timed(one))
    return {
        "load_s": statistics.median(loads),
        "eval_s": {k: statistics.median(v) for k, v in evals.items()},
        "scores": scores,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", type=Path)
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-model-len", type=int, default=128)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/out/vllm_vs_hf.json")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    hf, hf_start = plugin(args.models, "transformers", args.examples, args.dtype, 0)
    seeds = hf.make_seeds(3, 0)
    weights = [(1.0, 0.0, 0.0), (0.5, 0.5, 0.0), (0.4, 0.4, 0.2)]
    candidates = [sum(w * s for w, s in zip(ws, seeds, strict=True)) for ws in weights]
    del seeds
    hf_m = measure(hf, candidates, args.repeats)
    del hf
    vl, vl_start = plugin(args.models, "vllm", args.examples, args.dtype, args.max_model_len)
    vl.load_candidate(candidates[0])  # vLLM's first requests warm it up: not a candidate's cost
    warm = timed(lambda: [vl.score_task(t, t.train_tok) for t in vl.tasks])
    vl_m = measure(vl, candidates, args.repeats)
    buffer = torch.empty_like(candidates[0], dtype=vl.dtype)
    copy_s = statistics.median(
        timed(lambda v=v: buffer.copy_(v)) for _ in range(args.repeats) for v in candidates
    )
    agree = {
        task: sum(
            int(torch.equal(hf_m["scores"][task, c], vl_m["scores"][task, c]))
            for c in range(len(candidates))
        )
        for task in ("add", "reverse")
    }
    mean_abs = {
        task: max(
            (hf_m["scores"][task, c] - vl_m["scores"][task, c]).abs().max().item()
            for c in range(len(candidates))
        )
        for task in ("add", "reverse")
    }
    report = {
        "examples_per_task": args.examples,
        "dtype": args.dtype,
        "candidates": len(candidates),
        "threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg()[0],
        "start_s": {"transformers": hf_start, "vllm": vl_start, "vllm_first_requests": warm},
        "evals_per_s": {
            engine: {task: 1 / m["eval_s"][task] for task in ("add", "reverse")}
            for engine, m in (("transformers", hf_m), ("vllm", vl_m))
        },
        "load_s": {"transformers": hf_m["load_s"], "vllm": vl_m["load_s"], "copy": copy_s},
        "candidates_with_identical_scores": agree,
        "largest_score_difference": mean_abs,
        "mean_score": {
            engine: {
                task: statistics.mean(
                    m["scores"][task, c].mean().item() for c in range(len(candidates))
                )
                for task in ("add", "reverse")
            }
            for engine, m in (("transformers", hf_m), ("vllm", vl_m))
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
