"""Two SmolLM2 experts by short CPU fine-tunes, and the tasks they were tuned on.

Tasks (generated here, seeded): ``add`` — two 2-digit numbers, ``"37+48="`` → ``"85"``;
``reverse`` — three words in reverse order, ``"reverse: sun cat map ="`` → ``"map cat sun"``.
Each has a train split (fine-tuning and the search's fitness) and a held-out test split. Each
expert is the base fine-tuned on one task only (AdamW, answer tokens and the end token only),
saved in bfloat16 like the base with its config and tokenizer:

    python bench/llm/convert_smollm2.py models/smollm2-135m
    python bench/llm/make_experts.py models/smollm2-135m models/llm-bench
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import torch

WORDS = (
    "sun cat map dog cup pen box hat car bus key egg ant owl fox bee jam ink oak sea "
    "sky tea toy van web yak zip arm bed cow"
).split()


def make_tasks(out: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    tasks = {
        "add": lambda: (lambda a, b: (f"{a}+{b}=", str(a + b)))(
            rng.randint(10, 99), rng.randint(10, 99)
        ),
        "reverse": lambda: (lambda w: (f"reverse: {' '.join(w)} =", " ".join(reversed(w))))(
            rng.sample(WORDS, 3)
        ),
    }
    for name, make in tasks.items():
        seen, rows = set(), []
        while len(rows) < n_train + n_test:
            prompt, answer = make()
            if prompt not in seen:
                seen.add(prompt)
                rows.append({"prompt": prompt, "answer": answer})
        for split, part in (("train", rows[:n_train]), ("test", rows[n_train:])):
            with open(out / f"{name}.{split}.jsonl", "w") as f:
                for i, r in enumerate(part):
                    f.write(json.dumps({**r, "id": f"{name}-{split}-{i}"}) + "\n")


def tune(model, tok, task: Path, name: str, steps: int, lr: float, batch: int, **adamw) -> float:
    """Teacher-forced steps on ``task``'s prompt/answer rows (loss on the answer and the end
    token), on the model's trainable parameters; its wall seconds. Shared by the full-weight
    experts here and the LoRA experts of ``adapter_smollm2.py``."""
    data = []
    for line in task.read_text().splitlines():
        r = json.loads(line)
        p = tok(r["prompt"])["input_ids"]
        a = tok(r["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        data.append((p, a))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, **adamw)
    gen = random.Random(1)
    model.train()
    t0 = time.time()
    for step in range(steps):
        chunk = gen.sample(data, batch)
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.full((batch, width), tok.pad_token_id)
        labels = torch.full((batch, width), -100)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for r, (p, a) in enumerate(chunk):
            ids[r, : len(p) + len(a)] = torch.tensor(p + a)
            labels[r, len(p) : len(p) + len(a)] = torch.tensor(a)
            mask[r, : len(p) + len(a)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 10 == 0 or step == steps - 1:
            print(f"{name} step {step} loss {loss.item():.3f} ({time.time() - t0:.0f} s)")
    return time.time() - t0


def fine_tune(base: Path, task: Path, out: Path, steps: int, lr: float, batch: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    tune(model, tok, task, out.name, steps, lr, batch, weight_decay=0.0)
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--test", type=int, default=50)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    make_tasks(args.out, args.train, args.test)
    if not (args.out / "base").exists():
        shutil.copytree(args.base, args.out / "base")
    for name in ("add", "reverse"):
        fine_tune(
            args.out / "base",
            args.out / f"{name}.train.jsonl",
            args.out / name,
            args.steps,
            args.lr,
            args.batch,
        )


if __name__ == "__main__":
    main()
