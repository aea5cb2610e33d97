"""The tiny Llama base, two LoRA experts trained with PEFT (reversal, addition) and a random
distractor adapter, on disk: what configs/adapter_tiny.yaml reads.

    python bench/make_tiny_lora.py models/tiny-lora
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_lm import make_lm_dir  # noqa: E402
from tiny_lora import make_lora_dir  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    out = ap.parse_args().out
    with tempfile.TemporaryDirectory() as tmp:
        make_lora_dir(out, make_lm_dir(Path(tmp)))
    print(f"{out}: base, reverse, add, noise (LoRA adapters) and the task files")
