"""Three tiny models to merge: models/base.safetensors and two fine-tunes of it."""

from pathlib import Path

import torch
from safetensors.torch import save_file

gen = torch.Generator().manual_seed(0)
base = {"layers.0.weight": torch.randn(4, 4, generator=gen), "layers.0.bias": torch.zeros(4)}
Path("models").mkdir(exist_ok=True)
save_file(base, "models/base.safetensors")
for name in ("a", "b"):
    tuned = {k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
    save_file(tuned, f"models/{name}.safetensors")
