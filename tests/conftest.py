"""Shared fixtures: paths, a config writer, and one real local Ray for the Ray tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from tiny_lm import lm_dir  # noqa: F401  (a fixture: a tiny Llama base and two experts)
from tiny_lora import lora_pair  # noqa: F401  (a fixture: a tiny base and two adapters)

ROOT = Path(__file__).resolve().parent.parent
DIGITS = f"{ROOT / 'fitness' / 'digits.py'}:Digits"
PLUGINS = Path(__file__).resolve().parent / "plugins"


def base_config(**changes) -> dict:
    """A small, fast M2N2 digits config (local evaluator)."""
    cfg = {
        "seed": 0,
        "budget": {"evaluations": 300},
        "batch": 1,
        "checkpoint_every": 100,
        "history_every": 50,
        "fitness": {"plugin": DIGITS},
        "seeds": {"kind": "gaussian", "count": 2, "std": 0.01},
        "strategy": {"name": "m2n2", "archive_size": 8, "mutation_std": 0.01},
        "evaluator": {"kind": "local"},
    }
    cfg.update(changes)
    return cfg


def digits_plugin():
    """The digits fitness plug-in, set up on the CPU (its scores, groups and metrics)."""
    import torch

    from evomerge.core.plugins import load_object

    plugin = load_object(DIGITS)()
    plugin.setup(torch.device("cpu"))
    return plugin


@pytest.fixture
def write_config(tmp_path):
    def write(cfg: dict | str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
        return path

    return write


@pytest.fixture(scope="session")
def ray_local():
    """A real embedded Ray with 2 CPUs, shared by all Ray tests of the session."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def whole_and_resumed(cfg: dict, stop_at: int, tmp_path, write_config) -> tuple[Path, Path]:
    """Run ``cfg`` whole, and again stopped at ``stop_at`` evaluations then resumed to its
    budget (the budget raised in the stopped run's config.yaml): the two run directories."""
    from evomerge.interface.cli import main

    total = cfg["budget"]["evaluations"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["run", str(write_config(cfg)), "--out", str(whole), "-q"]) == 0
    short = write_config({**cfg, "budget": {"evaluations": stop_at}}, "short.yaml")
    assert main(["run", str(short), "--out", str(cut), "-q"]) == 0
    config = cut / "config.yaml"
    config.write_text(
        config.read_text().replace(f"evaluations: {stop_at}", f"evaluations: {total}")
    )
    assert main(["resume", str(cut), "-q"]) == 0
    return whole, cut


#: A CMA-ES search over a TIES recipe of three tiny digit experts (racing tests' recipe case).
CMAES_RECIPE = dict(
    budget={"evaluations": 32},
    batch=8,
    seeds={"kind": "plugin", "count": 3,
           "options": {"shared_init": True, "include_base": True, "steps": 60}},
    recipe={"method": "ties", "base": 0, "params": {"lambda": 1.0},
            "genes": {"weight": {"low": 0.0, "high": 1.5},
                      "density": {"low": 0.05, "high": 1.0}}},
    strategy={"name": "cmaes", "sigma0": 0.6, "popsize": 8},
)  # fmt: skip


def digits_recipe_config(evaluations: int, steps: int, **changes) -> dict:
    """``configs/cmaes_digits_recipe.yaml`` with a small budget, its experts trained ``steps``
    steps, and ``changes`` (whole sections) on top."""
    cfg = yaml.safe_load((ROOT / "configs/cmaes_digits_recipe.yaml").read_text())
    cfg["budget"] = {"evaluations": evaluations}
    cfg["seeds"]["options"]["steps"] = steps
    cfg.update(changes)
    return cfg
