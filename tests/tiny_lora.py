"""PEFT LoRA adapters made here over a tiny Llama, and a Hugging Face cache layout on disk."""

import shutil

import pytest
import torch

LLAMA = dict(
    vocab_size=24,
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


def make_base(folder, seed=0):
    """A random tiny Llama saved as a Hugging Face folder (safetensors + config)."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    model.save_pretrained(folder)
    return folder


def make_adapter(base, folder, seed=1, **lora):
    """A PEFT LoRA adapter over ``base`` with non-zero random factors (as after training)."""
    import peft
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(base)
    options = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], **lora}
    pm = peft.get_peft_model(model, peft.LoraConfig(**options))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    pm.save_pretrained(folder)
    return folder


def peft_merged(base, adapter) -> dict:
    """PEFT's own merge of ``adapter`` into ``base`` (``merge_and_unload``), as a state dict."""
    import peft
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(base)
    merged = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def hub_cache(root, repo, folder, commit="0123456789abcdef0123456789abcdef01234567", ref="main"):
    """Lay ``folder``'s files out as huggingface_hub's cache holds ``repo`` at ``commit``."""
    org, name = repo.split("/")
    entry = root / f"models--{org}--{name}"
    snapshot = entry / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    (entry / "refs" / ref).write_text(commit)
    return snapshot


def train_adapter(base, folder, examples, steps=60, lr=1e-2, r=4):
    """A LoRA expert: PEFT's adapter over ``base`` fitted to ``examples`` (float64 Adam)."""
    import peft
    import transformers
    from tiny_lm import make_tokenizer, train

    tok = make_tokenizer(folder.parent / "tok-lora")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM.from_pretrained(base)
    config = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj", "up_proj"])
    pm = peft.get_peft_model(model, config)
    train(pm, tok, examples, steps=steps, lr=lr)
    pm.save_pretrained(folder)
    return folder


def make_lora_dir(root, lm_root):
    """Under ``root``: the tiny base of ``lm_root`` (tests/tiny_lm.py), LoRA experts for its
    two tasks and a distractor, and the task files: what configs/adapter_tiny.yaml reads."""
    from tiny_lm import add_task, reverse_task

    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(lm_root / "base", root / "base")
    for name in ("reverse", "add"):
        shutil.copy(lm_root / f"{name}.jsonl", root / f"{name}.jsonl")
    train_adapter(root / "base", root / "reverse", reverse_task())
    train_adapter(root / "base", root / "add", add_task())
    make_adapter(root / "base", root / "noise", seed=5, target_modules=["q_proj", "v_proj"])
    return root


@pytest.fixture(scope="module")
def lora_pair(tmp_path_factory):
    """A tiny base and two adapters unlike each other: ``a`` on q, v and the embedding,
    ``b`` on q only with another alpha and rsLoRA scaling."""
    root = tmp_path_factory.mktemp("pair")
    base = make_base(root / "base")
    make_adapter(base, root / "a", seed=1, target_modules=["q_proj", "v_proj", "embed_tokens"])
    make_adapter(base, root / "b", seed=2, lora_alpha=3, use_rslora=True, target_modules=["q_proj"])
    return root
