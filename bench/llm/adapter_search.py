"""Adapter-space search vs LoraHub's recipe vs a full-weight TIES recipe search, and what one
candidate costs to load in each.

Part 1 (quality, the tiny Llama of tests/tiny_lm.py; this 2-core machine is too loaded for the
SmolLM2 fine-tunes): four rank-8 PEFT LoRA experts over the tiny base (reversal and addition,
trained here; two random distractors), then three searches from one process:

* ``adapter``: CMA-ES over per-adapter, per-layer coefficients (``space: adapter``,
  ``layer_groups: 2``, linear composition, bounds [-1.5, 1.5]);
* ``lorahub``: LoraHub's recipe: one weight per adapter, uniform start (CMA-ES's first mean is
  the seeds' mean), 40 evaluations;
* ``ties``: CMA-ES over a per-layer TIES recipe of the base and the same four experts merged
  into full models (PEFT's ``merge_and_unload``).

Held-out token accuracy per task (``summary.json``; held-out exact match is 0 for every
member on this tiny model, whose experts learn 8 examples each), seconds per candidate (the
run's wall time, model set-up included, over its evaluations).

Part 2 (load cost): per candidate, the seconds to write it into the resident model (median of
``--reps`` after one warm-up, the worker's own ``realise``) and the bytes written, adapter space
vs TIES recipe, measured in the same process: on the tiny model, and on a model of
SmolLM2-135M's shape (random bf16 weights, four random rank-8 q/v adapters) where the ratio
means something.

    python bench/llm/adapter_search.py /tmp/adapter-bench [--reps 7] [--skip-smollm2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

CAUSAL = "evomerge.fitness.causal_lm:CausalLM"


def merged_copy(base: Path, adapter: Path, out: Path) -> Path:
    """The expert as a full model: PEFT's merge_and_unload, saved with the base's tokenizer."""
    import shutil

    import peft
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    peft.PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(out)
    for f in base.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, out / f.name)
    return out


def tiny_setup(root: Path) -> dict:
    from tiny_lm import add_task, make_lm_dir, reverse_task
    from tiny_lora import make_adapter, train_adapter

    lm = make_lm_dir(root / "lm")
    base = lm / "base"
    adapters = {
        "reverse": train_adapter(base, root / "lora-reverse", reverse_task(), r=8),
        "add": train_adapter(base, root / "lora-add", add_task(), r=8),
        "noise1": make_adapter(base, root / "lora-noise1", seed=5, r=8, lora_alpha=16),
        "noise2": make_adapter(base, root / "lora-noise2", seed=6, r=8, lora_alpha=16),
    }
    full = {k: merged_copy(base, a, root / f"full-{k}") for k, a in adapters.items()}
    tasks = []
    for name, make in (("reverse", reverse_task), ("add", add_task)):
        test = root / f"{name}.test.jsonl"
        test.write_text("\n".join(json.dumps(e) for e in make(16)[8:]))
        tasks.append(
            {
                "name": name,
                "train": str(lm / f"{name}.jsonl"),
                "test": str(test),
                "metric": "token_accuracy",
                "test_metric": "token_accuracy",
                "include_eos": True,
            }
        )
    return {"base": base, "adapters": adapters, "full": full, "tasks": tasks}


def configs(s: dict, budget: int) -> dict[str, dict]:
    adapter_seeds = [f"{s['base']}+{a}" for a in s["adapters"].values()]
    common = {"seed": 0, "batch": 8, "checkpoint_every": budget, "history_every": budget}
    adapter = {
        **common,
        "space": "adapter",
        "budget": {"evaluations": budget},
        "fitness": {"plugin": CAUSAL, "options": {"seeds": adapter_seeds, "tasks": s["tasks"]}},
        "seeds": {"kind": "plugin", "count": 4, "options": {"combination": "linear"}},
        "strategy": {"name": "cmaes", "sigma0": 0.3, "popsize": 8, "bounds": [-1.5, 1.5]},
    }
    per_layer = json.loads(json.dumps(adapter))
    per_layer["seeds"]["options"]["layer_groups"] = 2
    lorahub = {**adapter, "budget": {"evaluations": 40}}
    full_seeds = [str(s["base"]), *map(str, s["full"].values())]
    ties = {
        **common,
        "budget": {"evaluations": budget},
        "fitness": {"plugin": CAUSAL, "options": {"seeds": full_seeds, "tasks": s["tasks"]}},
        "seeds": {"kind": "plugin", "count": 5},
        "recipe": {
            "method": "ties",
            "base": 0,
            "genes": {"weight": {"low": 0.0, "high": 1.5}, "density": {"low": 0.1, "high": 1.0}},
            "groups": {"layers_per_group": 1},
        },
        "strategy": {"name": "cmaes", "sigma0": 0.3, "popsize": 8},
    }
    return {"adapter": per_layer, "lorahub": lorahub, "ties": ties}


def run_search(name: str, cfg: dict, root: Path) -> tuple[dict, float]:
    """``evomerge run`` of ``cfg`` under ``root``: its summary and wall seconds."""
    from evomerge.interface.cli import main

    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run = root / f"run-{name}"
    t0 = time.perf_counter()
    assert main(["run", str(path), "--out", str(run), "-q"]) == 0
    wall = time.perf_counter() - t0
    return json.loads((run / "summary.json").read_text()), wall


def search(name: str, cfg: dict, root: Path) -> dict:
    summary, wall = run_search(name, cfg, root)
    m = summary["metrics"]
    return {
        "train": m["train_score"],
        "reverse": m.get("test_reverse_token_accuracy"),
        "add": m.get("test_add_token_accuracy"),
        "s_per_candidate": wall / cfg["budget"]["evaluations"],
    }


def host_of(cfg: dict, root: Path):
    from evomerge.run.config import validate
    from evomerge.run.loop import space_spec
    from evomerge.runtime.host import FitnessHost

    c = validate(cfg, "bench", bases=[root])
    return FitnessHost(c.fitness.plugin, c.fitness.options, space=space_spec(c))


def load_cost(cfg: dict, root: Path, reps: int) -> tuple[float, int]:
    """Median seconds of the worker's ``realise`` (one candidate into the resident model) over
    ``reps`` random candidates, and the bytes it writes."""
    host = host_of(cfg, root)
    info = host.info()
    rng = np.random.default_rng(0)
    if "initial" in info:  # a recipe: around its initial genes
        centre = np.asarray(info["initial"], dtype=np.float64)
        written = sum(t.numel() * t.element_size() for t in host.resident())
    else:
        centre = np.full(info["num_params"], 1.0 / info["adapters"])
        written = info["candidate_bytes"]
    times = []
    for i in range(reps + 1):
        genes = centre + 0.1 * rng.standard_normal(centre.shape)
        t0 = time.perf_counter()
        host.worker.realise(genes.astype(np.float32))
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - t0)
    del host
    return statistics.median(times), written


def smollm2_setup(root: Path) -> dict:
    """SmolLM2-135M's shape with random bf16 weights, four random rank-8 q/v adapters and
    their merges; the char tokenizer of tests/tiny_lm.py (its ids are valid in the vocab)."""
    import transformers
    from tiny_lm import add_task, make_tokenizer
    from tiny_lora import make_adapter

    cfg = transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    base = root / "smol-base"
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(base)
    del model
    make_tokenizer(base)
    adapters = {
        f"a{k}": make_adapter(base, root / f"smol-lora{k}", seed=k, r=8, lora_alpha=16)
        for k in range(4)
    }
    full = {k: merged_copy(base, a, root / f"smol-full-{k}") for k, a in adapters.items()}
    task = root / "smol-add.jsonl"
    task.write_text("\n".join(json.dumps(e) for e in add_task(4)))
    tasks = [{"name": "add", "train": str(task), "metric": "token_accuracy"}]
    return {"base": base, "adapters": adapters, "full": full, "tasks": tasks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--budget", type=int, default=96)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--skip-smollm2", action="store_true")
    args = ap.parse_args()
    root = args.out.resolve()
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    t0 = time.perf_counter()
    tiny = tiny_setup(root / "tiny")
    print(f"tiny set-up (4 rank-8 LoRA experts, their merges): {time.perf_counter() - t0:.0f} s")
    cfgs = configs(tiny, args.budget)
    rows = {name: search(name, cfg, root) for name, cfg in cfgs.items()}
    print("\n| search | evaluations | train | held-out reverse | held-out add | s/candidate |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        evals = cfgs[name]["budget"]["evaluations"]
        print(
            f"| {name} | {evals} | {r['train']:.3f} | {r['reverse']:.3f} | {r['add']:.3f} "
            f"| {r['s_per_candidate']:.3f} |"
        )

    scales = [("tiny Llama", cfgs)]
    if not args.skip_smollm2:
        t0 = time.perf_counter()
        smol = smollm2_setup(root / "smol")
        print(f"\nSmolLM2-135M-shaped set-up: {time.perf_counter() - t0:.0f} s")
        scales.append(("SmolLM2-135M shape", configs(smol, args.budget)))
    print("\n| model | space | load s/candidate (median) | bytes written/candidate |")
    print("|---|---|---|---|")
    for label, c in scales:
        a_s, a_b = load_cost(c["lorahub"], root, args.reps)
        t_s, t_b = load_cost(c["ties"], root, args.reps)
        print(f"| {label} | adapter (linear, 4 adapters) | {a_s:.4f} | {a_b:,} |")
        print(f"| {label} | TIES recipe (base + 4 merged) | {t_s:.4f} | {t_b:,} |")
        print(f"| {label} | ratio adapter / TIES | {a_s / t_s:.3f} | {a_b / t_b:.4f} |")


if __name__ == "__main__":
    main()
