"""Make a Llama-shaped base model and fine-tunes of it on disk, for merge examples and benchmarks.

The "fine-tunes" are the base plus small seeded noise of their own: real Hugging Face folders
(sharded safetensors + index + config) that `evomerge merge`, mergekit and `from_pretrained`
all read.

    python bench/make_llama_seeds.py models/tiny                       # seconds; the README example
    python bench/make_llama_seeds.py models/270m --size 270m --shards 3  # the merge benchmark
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, vocab_size=256),
    # about 270M parameters with untied embeddings
    "270m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, vocab_size=32000),
}


def _save_in_shards(model, folder: Path, total: int, shards: int) -> str:
    """Save with the smallest shard size that gives exactly ``shards`` files; returns it.

    Shards are filled greedily in tensor order, so ``total / shards`` usually spills a small
    extra shard: grow the limit by 2% steps until the count is right.
    """
    import shutil

    for step in range(50):
        shard = f"{int(total / shards * (1 + 0.02 * step)) // 2**20 + 1}MB"
        if folder.exists():
            shutil.rmtree(folder)
        model.save_pretrained(folder, max_shard_size=shard)
        if len(list(folder.glob("*.safetensors"))) <= shards:
            return shard
    return shard


def make(out: Path, size: str, models: int, shards: int, dtype: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        **SIZES[size],
        num_attention_heads=SIZES[size]["hidden_size"] // 64,
        num_key_value_heads=SIZES[size]["hidden_size"] // 64,
        tie_word_embeddings=False,
        torch_dtype=dtype,
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    total = sum(p.numel() * p.element_size() for p in base.parameters())
    shard = _save_in_shards(base, out / "base", total, shards)
    state = {k: v.clone() for k, v in base.state_dict().items()}  # the base, kept apart
    for i in range(models):
        gen = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for name, t in base.named_parameters():
                noise = torch.randn(t.shape, generator=gen) * 0.02 * t.float().std()
                t.copy_((state[name].float() + noise).to(t.dtype))
        base.save_pretrained(out / f"model_{i}", max_shard_size=shard)
        base.load_state_dict(state)
    n = len(list((out / "base").glob("*.safetensors")))
    print(f"{out}: base and {models} fine-tunes, {total / 1e6:.1f} MB each, {n} shard(s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", choices=SIZES, default="tiny")
    ap.add_argument("--models", type=int, default=2)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()
    make(args.out, args.size, args.models, args.shards, args.dtype)


if __name__ == "__main__":
    main()
