"""A tiny Llama base, two experts (reversal, addition) and their task-arithmetic merge, on disk.

The same models as the tests' ``lm_dir`` fixture (tests/tiny_lm.py), for runnable configs such
as configs/dfs_tiny.yaml (layer stacking over the merge and the two experts):

    python bench/make_tiny_lm.py models/tiny-lm
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_lm import CHARS, SPECIAL, add_task, make_tokenizer, reverse_task, train  # noqa: E402


def make(root: Path) -> None:
    import transformers

    from evomerge.interface.cli import main

    root.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(root / "tok")
    cfg = transformers.LlamaConfig(
        vocab_size=len(SPECIAL) + len(CHARS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(cfg)
    init = {k: v.clone() for k, v in base.state_dict().items()}
    base.save_pretrained(root / "base")
    for name, task in (("reverse", reverse_task()), ("add", add_task())):
        base.load_state_dict(init)
        train(base, tok, task).save_pretrained(root / name)
        (root / f"{name}.jsonl").write_text("\n".join(json.dumps(e) for e in task))
    for folder in ("base", "reverse", "add"):
        for f in (root / "tok").iterdir():
            shutil.copy(f, root / folder / f.name)
    merge = {
        "method": "task_arithmetic",
        "base": str(root / "base"),
        "models": [{"path": str(root / m), "params": {"weight": 1.0}} for m in ("reverse", "add")],
        "params": {"lambda": 1.0},
        "dtype": "float32",
    }
    (root / "ta.yaml").write_text(yaml.safe_dump(merge, sort_keys=False))
    if (root / "ta").exists():
        shutil.rmtree(root / "ta")
    main(["merge", str(root / "ta.yaml"), "--out", str(root / "ta"), "-q"])
    print(f"{root}: base, reverse, add, ta (their task-arithmetic merge) and the task files")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    make(ap.parse_args().out)
