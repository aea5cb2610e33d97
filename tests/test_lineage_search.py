"""M2N2 in lineage space: the same search as in dense space, a fraction of the checkpoint."""

import numpy as np
import pytest
import torch
import yaml
from conftest import DIGITS, base_config
from safetensors.torch import load_file
from test_search import assert_same_archive, final_state

from evomerge.interface.cli import main
from evomerge.spaces.lineage import Lineage, dense_reader

PRETRAINED = {"kind": "plugin", "count": 2, "options": {"steps": 10}}


def config(space: str, **changes) -> dict:
    cfg = base_config(
        seeds=PRETRAINED,
        batch=4,
        budget={"evaluations": 200},
        strategy={"name": "m2n2", "archive_size": 8, "mutation_std": 0.0, "space": space},
    )
    cfg.update(changes)
    return cfg


def members(state: dict, seeds: torch.Tensor) -> dict[int, torch.Tensor]:
    """Archive member id -> dense parameters, from a dense or a lineage checkpoint."""
    out = {}
    for r, i in enumerate(state["ids"].tolist()):
        if i < 0:
            continue
        if "params" in state:
            out[i] = state["params"][r]
        else:
            out[i] = Lineage.from_tensors(state, f"lineage.{r}.").materialize(dense_reader(seeds))
    return out


@pytest.fixture(scope="module")
def seeds():
    from evomerge.core.plugins import load_object

    fit = load_object(DIGITS)()
    fit.setup(torch.device("cpu"))
    return fit.make_seeds(2, 0, steps=10)


def test_lineage_search_equals_the_dense_search(tmp_path, write_config, seeds):
    for space in ("dense", "lineage"):
        cfg = write_config(config(space), f"{space}.yaml")
        assert main(["run", str(cfg), "--out", str(tmp_path / space), "-q"]) == 0
    dense, lin = final_state(tmp_path / "dense"), final_state(tmp_path / "lineage")
    assert torch.equal(dense["ids"], lin["ids"])  # the same children survived...
    assert torch.equal(dense["scores"], lin["scores"])  # ...with the same per-example scores
    a, b = members(dense, seeds), members(lin, seeds)
    worst = max((a[i] - b[i]).abs().max().item() for i in a)
    assert worst <= 1e-5  # and the same parameters, to float32 rounding
    ckpt = {
        s: sum(f.stat().st_size for f in (tmp_path / s / "checkpoints").rglob("*.safetensors"))
        for s in ("dense", "lineage")
    }
    assert ckpt["lineage"] < ckpt["dense"] / 5  # even at 19,210 parameters


def test_lineage_resume_is_bit_identical(tmp_path, write_config):
    whole = write_config(config("lineage"), "whole.yaml")
    assert main(["run", str(whole), "--out", str(tmp_path / "whole"), "-q"]) == 0
    half = write_config(config("lineage", budget={"evaluations": 100}), "half.yaml")
    part = tmp_path / "part"
    assert main(["run", str(half), "--out", str(part), "-q"]) == 0
    stored = yaml.safe_load((part / "config.yaml").read_text())
    stored["budget"]["evaluations"] = 200
    (part / "config.yaml").write_text(yaml.safe_dump(stored))
    assert main(["resume", str(part), "-q"]) == 0
    assert_same_archive(tmp_path / "whole", part)


def test_lineage_on_ray_equals_local(tmp_path, write_config, ray_local):
    local = write_config(config("lineage"), "local.yaml")
    on_ray = write_config(
        config("lineage", evaluator={"kind": "ray", "workers": 2, "num_cpus": 1}), "ray.yaml"
    )
    assert main(["run", str(local), "--out", str(tmp_path / "local"), "-q"]) == 0
    assert main(["run", str(on_ray), "--out", str(tmp_path / "ray"), "-q"]) == 0
    assert_same_archive(tmp_path / "local", tmp_path / "ray")


def test_ray_workers_share_one_copy_of_the_seeds(ray_local):
    """The seeds sit once in the node's object store; each worker maps them read-only."""
    from evomerge.run.config import validate
    from evomerge.run.loop import space_spec
    from evomerge.runtime import make_evaluator

    cfg = validate(
        config("lineage", evaluator={"kind": "ray", "workers": 2, "num_cpus": 1}), "test"
    )
    evaluator = make_evaluator(cfg.evaluator, cfg.fitness, space_spec(cfg))
    try:
        assert evaluator.seeds_shared() == [True, True]
        store = evaluator.lineage_seeds()
        assert (store.num_seeds, store.num_params) == (2, 19210)
    finally:
        evaluator.close()


def test_export_materialises_a_lineage_member(tmp_path, write_config, seeds):
    cfg = write_config(config("lineage", budget={"evaluations": 40}))
    run = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(run), "-q"]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "best"), "-q"]) == 0
    recipe = yaml.safe_load((tmp_path / "best" / "recipe.yaml").read_text())
    lin = Lineage(np.array(recipe["lineage"]["bounds"]), np.array(recipe["lineage"]["coeffs"]))
    tensors = load_file(str(tmp_path / "best" / "model.safetensors"))
    flat = torch.cat(
        [tensors[k].reshape(-1) for k in ("layers.0.weight", "layers.0.bias")]
        + [tensors[k].reshape(-1) for k in ("layers.1.weight", "layers.1.bias")]
    )
    assert torch.equal(flat, lin.materialize(dense_reader(seeds)))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seeds": {"kind": "gaussian", "count": 2}}, "lineage genomes mix pre-trained seeds"),
        (
            {"strategy": {"name": "m2n2", "space": "lineage", "mutation_std": 0.01}},
            "cannot be mutated",
        ),
    ],
)
def test_lineage_config_errors(change, message, tmp_path, write_config, capsys):
    cfg = config("lineage")
    cfg.update(change)
    assert main(["run", str(write_config(cfg)), "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
