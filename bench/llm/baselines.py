"""Held-out scores of the base, each expert, and task arithmetic / TIES merges of the experts.

Each merge is made by `evomerge merge` (mergekit's YAML format), then every model is scored
with `fitness/causal_lm.py` on the two held-out splits (exact match):

    python bench/llm/baselines.py models/llm-bench
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def tasks_of(models: Path) -> list[dict]:
    """The tasks of bench/llm/m2n2_lineage.yaml and cmaes_ties.yaml."""
    return [
        {
            "name": name,
            "train": str(models / f"{name}.train.jsonl"),
            "test": str(models / f"{name}.test.jsonl"),
            "metric": "token_accuracy",
            "test_metric": "exact_match",
            "max_new_tokens": new_tokens,
            "limit": 48,
            "include_eos": True,
        }
        for name, new_tokens in (("add", 6), ("reverse", 8))
    ]


def fitness(models: Path, seed: Path):
    from evomerge.core.plugins import load_object

    cls = load_object(f"{ROOT}/fitness/causal_lm.py:CausalLM")
    fit = cls(seeds=[str(seed)], tasks=tasks_of(models), batch_size=48)
    fit.setup(torch.device("cpu"))
    return fit


def merge(models: Path, name: str, recipe: dict) -> Path:
    out = models / "merged" / name
    if not out.exists():
        cfg = models / "merged" / f"{name}.yml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(yaml.safe_dump(recipe))
        subprocess.run(
            [sys.executable, "-m", "evomerge", "merge", str(cfg), "--out", str(out), "-q"],
            check=True,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", type=Path)
    args = ap.parse_args()
    m = args.models.resolve()
    experts = [{"model": str(m / "add")}, {"model": str(m / "reverse")}]
    candidates = {"base": m / "base", "add expert": m / "add", "reverse expert": m / "reverse"}
    for lam in (0.5, 1.0):
        candidates[f"task arithmetic, weights {lam}"] = merge(
            m,
            f"ta-{lam}",
            {
                "merge_method": "task_arithmetic",
                "base_model": str(m / "base"),
                "models": [{**e, "parameters": {"weight": lam}} for e in experts],
                "dtype": "bfloat16",
            },
        )
    for density in (0.5, 0.8):
        candidates[f"TIES, density {density}, weights 1"] = merge(
            m,
            f"ties-{density}",
            {
                "merge_method": "ties",
                "base_model": str(m / "base"),
                "models": [
                    {**e, "parameters": {"weight": 1.0, "density": density}} for e in experts
                ],
                "dtype": "bfloat16",
            },
        )
    rows = {}
    for name, folder in candidates.items():
        t0 = time.time()
        fit = fitness(m, folder)
        params = fit.make_seeds(1, 0)[0]
        train = fit.score(params[None]).mean().item()
        rows[name] = {"train_token_accuracy": train, **fit.metrics(params)}
        print(json.dumps({name: rows[name], "seconds": round(time.time() - t0, 1)}), flush=True)
    (m / "baselines.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
