"""A tiny Llama base, two experts (reversal, addition) and their task-arithmetic merge, on disk.

The same models as the tests' ``lm_dir`` fixture (tests/tiny_lm.py), for runnable configs such
as configs/dfs_tiny.yaml (layer stacking over the merge and the two experts):

    python bench/make_tiny_lm.py models/tiny-lm
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_lm import make_lm_dir  # noqa: E402


def make(root: Path) -> None:
    from evomerge.interface.cli import main

    root.mkdir(parents=True, exist_ok=True)
    make_lm_dir(root)
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
