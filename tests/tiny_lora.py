"""PEFT LoRA adapters made here over a tiny Llama, and a Hugging Face cache layout on disk."""

import shutil

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
