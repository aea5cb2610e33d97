"""Fisher and RegMean merges of the SmolLM2 experts, scored as ``baselines.py`` scores.

Each expert's statistics come from its own 48 training examples (the search fitness's: add for
the add expert, reverse for the reverse expert) through ``fitness/causal_lm.py``: the diagonal
Fisher from per-example gradients of the teacher-forced log-likelihood of the answer and its
end token, the Grams from the inputs of every linear layer. Merges are made by ``evomerge
merge`` from a mergekit-style YAML with a ``statistics:`` block (written next to the merge),
then scored like the baselines (train token accuracy with the end target, held-out exact match):

    nice -n 10 python bench/llm/data_aware.py models/llm-bench --out merged/data-aware
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import ROOT, fitness, tasks_of  # noqa: E402

RECIPES = {
    "fisher": ("fisher", {"fisher_floor": 1e-6}, 1),
    "fisher-floor-1e-12": ("fisher", {"fisher_floor": 1e-12}, 1),
    "regmean-0.9": ("regmean", {"alpha": 0.9}, 8),
    "regmean-1.0": ("regmean", {"alpha": 1.0}, 8),
}


def merge(models: Path, out: Path, name: str) -> Path:
    method, params, batch = RECIPES[name]
    folder = out / name
    if folder.exists():
        return folder
    cfg = {
        "merge_method": method,
        "models": [
            {"model": str(models / "add"), "parameters": {"weight": 1.0}},
            {"model": str(models / "reverse"), "parameters": {"weight": 1.0}},
        ],
        "parameters": params,
        "dtype": "bfloat16",
        "statistics": {
            "plugin": f"{ROOT}/fitness/causal_lm.py:CausalLM",
            "options": {"seeds": [str(models / "base")], "tasks": tasks_of(models)},
            "examples": ["add", "reverse"],
            "batch_size": batch,
            "cache": str(out / "statistics"),
        },
    }
    path = out / f"{name}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.time()
    subprocess.run(
        [sys.executable, "-m", "evomerge", "merge", str(path), "--out", str(folder)], check=True
    )
    print(json.dumps({"merged": name, "seconds": round(time.time() - t0, 1)}), flush=True)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    args = ap.parse_args()
    m, out = args.models.resolve(), args.out.resolve()
    scores = out / "scores.json"
    rows = json.loads(scores.read_text()) if scores.is_file() else {}
    for name in args.only:
        folder = merge(m, out, name)
        t0 = time.time()
        fit = fitness(m, folder)
        params = fit.make_seeds(1, 0)[0]
        train = fit.score(params[None]).mean().item()
        rows[name] = {"train_token_accuracy": train, **fit.metrics(params)}
        print(json.dumps({name: rows[name], "seconds": round(time.time() - t0, 1)}), flush=True)
        scores.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
