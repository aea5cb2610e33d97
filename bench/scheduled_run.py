"""One search of a config under an evaluation schedule, for the schedule benches: the config's
budget set, its checkpoint and history written at the end only, its ``evaluation`` section
replaced (None: full scoring)."""

from __future__ import annotations

import time
from pathlib import Path

from evomerge.run import loop
from evomerge.run.config import apply_overrides, read_yaml, validate
from evomerge.run.rundir import RunDir


def run_scheduled(
    config: Path,
    seed: int,
    evals: int,
    evaluation: dict | None,
    out: Path,
    root: Path,
    sets: list[str] = (),
) -> tuple[dict, float]:
    """Run ``config`` (seed ``seed``, ``evals`` evaluations, ``sets`` as ``--set`` gives
    them) into ``out`` under ``evaluation``; its summary and wall seconds (start included)."""
    raw = apply_overrides(read_yaml(config), [f"seed={seed}", *sets])
    raw["budget"] = {"evaluations": evals}
    raw["checkpoint_every"] = evals
    raw["history_every"] = evals
    raw.pop("evaluation", None)
    if evaluation:
        raw["evaluation"] = evaluation
    cfg = validate(raw, str(config), bases=[root])
    t0 = time.perf_counter()
    search = loop.start(cfg, RunDir(out))
    try:
        summary = search.loop()
    finally:
        search.evaluator.close()
    return summary, time.perf_counter() - t0
