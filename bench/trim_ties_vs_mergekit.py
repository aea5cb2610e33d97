"""How many entries the TIES and breadcrumbs masks keep differently from mergekit's, in bfloat16.

Equal magnitudes at the trim threshold are kept lower index first here and in an unspecified
order by mergekit's sort; in bfloat16 task vectors such ties are large. This runs mergekit's
own ``magnitude`` / ``magnitude_outliers`` (in its virtualenv, ``--mergekit-python``) on the
task vectors ``model_0 - base`` of a few tensors and counts the entries whose kept/dropped
state differs from evomerge's ties / breadcrumbs.

    python bench/trim_ties_vs_mergekit.py models/270m --mergekit-python venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

NAMES = [
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.7.self_attn.q_proj.weight",
    "model.layers.15.mlp.down_proj.weight",
]


def get(root: Path, folder: str, name: str):
    from safetensors import safe_open

    index = json.loads((root / folder / "model.safetensors.index.json").read_text())
    with safe_open(root / folder / index["weight_map"][name], "pt") as h:
        return h.get_tensor(name)


def mergekit_masks(root: Path, out: Path) -> None:
    """(in mergekit's venv) mergekit's keep masks, saved as uint8 tensors."""
    import torch
    from mergekit.sparsify import magnitude, magnitude_outliers
    from safetensors.torch import save_file

    masks = {}
    for n in NAMES:
        tau = get(root, "model_0", n).float() - get(root, "base", n).float()
        masks["ties:" + n] = (magnitude(tau, 0.5) != 0).to(torch.uint8)
        masks["crumbs:" + n] = (magnitude_outliers(tau, 0.9, gamma=0.01) != 0).to(torch.uint8)
    save_file(masks, out)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--masks":
        mergekit_masks(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", type=Path)
    ap.add_argument("--mergekit-python", required=True)
    args = ap.parse_args()
    import torch
    from safetensors.torch import load_file

    from evomerge.ops.operators import get_merge_method

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "masks.safetensors"
        cmd = [args.mergekit_python, __file__, "--masks", str(args.models), str(path)]
        subprocess.run(cmd, check=True)
        masks = load_file(path)
    totals = {"ties": [0, 0], "crumbs": [0, 0]}
    for key, mask in masks.items():
        kind, n = key.split(":", 1)
        b, m = get(args.models, "base", n).float(), get(args.models, "model_0", n).float()
        if kind == "ties":
            mp, method = {"weight": 1.0, "density": 0.5}, "ties"
        else:
            mp, method = {"weight": 1.0, "density": 0.9, "gamma": 0.01}, "breadcrumbs"
        out = get_merge_method(method)(b, [m], [mp], {"normalize": False})
        ours = ((out - b) != 0).to(torch.uint8)
        totals[kind][0] += int((ours != mask).sum())
        totals[kind][1] += mask.numel()
    for kind, (differ, n) in totals.items():
        print(f"{kind}: {differ:,} of {n:,} entries kept differently ({differ / n:.3%})")


if __name__ == "__main__":
    main()
