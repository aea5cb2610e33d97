"""Recipe candidates merged tensor by tensor into the resident model, from mapped seed folders."""

import numpy as np
import pytest
import torch
from test_resident_lineage import PLUGIN, bf16_dir, fitness, options  # noqa: F401

from evomerge.core.contracts import Evaluator, ResidentModel, WorkerPool, resident_tensors
from evomerge.runtime import LocalEvaluator
from evomerge.runtime.host import FitnessHost
from evomerge.spaces.recipe import RecipeSection, RecipeSpace
from evomerge.spaces.resident_recipe import ResidentRecipe, on_device, seeds_fit
from evomerge.tensors.seed_store import DenseSeeds, DeviceSeeds, MappedSeeds

transformers = pytest.importorskip("transformers")

SECTIONS = {
    "ties": {
        "method": "ties",
        "base": 0,
        "genes": {"weight": {"low": 0.0, "high": 1.5}, "density": {"low": 0.1, "high": 1.0}},
    },
    "dare_ties": {
        "method": "dare_ties",
        "base": 0,
        "seed": 7,
        "genes": {"density": {}},
        "model_params": {"weight": 0.8},
    },
    "linear": {"method": "linear", "genes": {"weight": {}}},
}


def genes_for(space, seed=0):
    return np.random.default_rng(seed).uniform(0.05, 0.95, space.dim).astype(np.float32)


@pytest.mark.parametrize("method", sorted(SECTIONS))
def test_resident_tensors_equal_the_flat_materialisation(lm_dir, method):
    fit = fitness(lm_dir)
    section = RecipeSection.model_validate(SECTIONS[method])
    store = MappedSeeds(fit.seed_folders(), fit.param_layout())
    loader = ResidentRecipe(section, fit.param_layout(), store, fit.resident_tensors())
    genes = genes_for(loader.space)
    loader.load(genes.astype(np.float64).tolist())
    loaded = torch.cat([p.detach().reshape(-1) for p in fit.resident_tensors()])
    space = RecipeSpace(section, fit.param_layout(), 3)
    flat = space.materialize(fit.make_seeds(3, 0), genes.astype(np.float64).tolist())
    assert torch.equal(loaded, flat)  # same float32 arithmetic, same DARE generator keys
    again = torch.cat([t.reshape(-1) for t in loader.merged(genes.tolist())])
    assert torch.equal(again, flat)  # what export writes


def test_a_bf16_model_gets_the_flat_merge_rounded_once(lm_dir, bf16_dir):  # noqa: F811
    fit = fitness(lm_dir, dtype="bfloat16", seed_root=bf16_dir)
    section = RecipeSection.model_validate(SECTIONS["ties"])
    store = MappedSeeds(fit.seed_folders(), fit.param_layout())
    loader = ResidentRecipe(section, fit.param_layout(), store, fit.resident_tensors())
    genes = genes_for(loader.space, 1).astype(np.float64).tolist()
    loader.load(genes)
    loaded = torch.cat([p.detach().reshape(-1) for p in fit.resident_tensors()])
    assert loaded.dtype == torch.bfloat16
    flat32 = loader.space.materialize(store.dense(), genes)  # float32 merge of the bf16 seeds
    assert torch.equal(loaded, flat32.bfloat16())


def test_host_scores_recipes_in_place_like_the_flat_path(lm_dir, monkeypatch):
    spec = {"name": "recipe", "recipe": SECTIONS["ties"], "count": 3, "seed": 0, "options": {}}
    host = FitnessHost(PLUGIN, options(lm_dir), space=spec)
    loader = host.worker.loader
    assert isinstance(loader.store, MappedSeeds)
    assert host.worker.row is None  # merged into the resident model, no flat row
    info = host.info()
    assert info["num_params"] == loader.space.dim == len(info["initial"]) and info["num_seeds"] == 3
    # the reference: dense float32 (K, N) seeds, the recipe's flat merge, scored by the plug-in
    plugin = load_object_fitness(lm_dir)
    section = RecipeSection.model_validate(SECTIONS["ties"])
    seeds = plugin.make_seeds(3, 0)
    space = RecipeSpace(section, plugin.param_layout(), 3)
    rows = np.stack([np.array(info["initial"], np.float32), genes_for(loader.space, 2)])
    ids = np.array([0, 3, 9, 15])
    flat = torch.stack([space.materialize(seeds, r.astype(np.float64).tolist()) for r in rows])
    expected = plugin.score(flat, torch.from_numpy(ids)).numpy()
    expected_metrics = plugin.metrics(flat[1])

    def no_flat_copy(*a, **k):
        raise AssertionError("a flat copy of the model was materialised")

    monkeypatch.setattr(RecipeSpace, "materialize", no_flat_copy)
    np.testing.assert_array_equal(host.score(rows, ids), expected)
    assert host.metrics(rows[1]) == pytest.approx(expected_metrics)


def load_object_fitness(root):
    return fitness(root)


def test_contracts_say_who_has_a_resident_model(lm_dir):
    from conftest import DIGITS

    from evomerge.core.plugins import load_object

    lm = fitness(lm_dir)
    assert isinstance(lm, ResidentModel) and resident_tensors(lm) == lm.params
    digits = load_object(DIGITS)()
    digits.setup(torch.device("cpu"))
    assert resident_tensors(digits) is None  # the base class's "no model" default
    assert resident_tensors(object()) is None
    ev = LocalEvaluator(DIGITS, {})
    assert isinstance(ev, Evaluator) and not isinstance(ev, WorkerPool)


def test_digits_recipes_stay_on_dense_seeds():
    from conftest import DIGITS

    spec = {"name": "recipe", "recipe": {"method": "linear"}, "count": 2, "seed": 0, "options": {}}
    host = FitnessHost(DIGITS, {}, space=spec)
    assert host.worker.row is not None and isinstance(host.worker.store, DenseSeeds)
    assert host.info()["num_params"] == host.worker.loader.space.dim


def test_seeds_on_device_is_a_no_op_on_the_cpu(lm_dir):
    fit = fitness(lm_dir)
    store = MappedSeeds(fit.seed_folders(), fit.param_layout())
    for setting in ("auto", True, False):
        assert not seeds_fit(setting, torch.device("cpu"), 1)
        assert on_device(store, fit.param_layout(), "cpu", setting) is store
    assert seeds_fit(True, torch.device("cuda"), 1) and not seeds_fit(
        False, torch.device("cuda"), 1
    )
    spec = {"name": "lineage", "count": 3, "seed": 0, "options": {}}
    host = FitnessHost(PLUGIN, options(lm_dir), space=spec, seeds_on_device=True)
    assert host.worker.load_seeds is host.lineage_seeds  # mapped, not copied
    dense = DenseSeeds(fit.make_seeds(3, 0).numpy())
    assert torch.equal(dense.piece(1, 5, 9), torch.from_numpy(dense.array[1, 5:9]))
    n0 = int(np.prod(fit.param_layout()[0][1]))
    assert store.piece(2, 3, 10).data_ptr() == store.tensor(2, 0)[3:].data_ptr()  # a view
    assert torch.equal(store.piece(2, n0 - 2, n0 + 3), store.read(n0 - 2, n0 + 3)[2])
    # the device copy (built here on the CPU, as on a GPU) reads what the mapped store reads
    copy = DeviceSeeds(store, torch.device("cpu"), fit.param_layout())
    n = store.num_params
    for a, b in [(0, n), (n0 - 2, n0 + 3), (7, 8)]:
        assert torch.equal(copy.read(a, b), store.read(a, b))
        assert torch.equal(copy.piece(1, a, b), store.read(a, b)[1])


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_seeds_on_device_is_validated_and_reaches_the_workers(kind, capsys):
    from conftest import DIGITS

    from evomerge.core.errors import ConfigError
    from evomerge.run.config import validate
    from evomerge.runtime import make_evaluator

    raw = {
        "seed": 0,
        "budget": {"evaluations": 4},
        "strategy": {"name": "m2n2"},
        "fitness": {"plugin": DIGITS},
        "evaluator": {"kind": kind},
    }
    assert validate(raw, "c.yaml").evaluator.seeds_on_device == "auto"
    for value in (True, False, "auto"):
        raw["evaluator"]["seeds_on_device"] = value
        assert validate(raw, "c.yaml").evaluator.seeds_on_device == value
    raw["evaluator"]["seeds_on_device"] = "sometimes"
    with pytest.raises(ConfigError, match=r"c.yaml: evaluator.*seeds_on_device"):
        validate(raw, "c.yaml")
    if kind == "local":
        raw["evaluator"]["seeds_on_device"] = True
        cfg = validate(raw, "c.yaml")
        ev = make_evaluator(cfg.evaluator, cfg.fitness)
        assert ev.host.seeds_on_device is True and ev.host.lineage_seeds is None


def test_a_recipe_search_on_ray_workers_equals_the_local_one(lm_dir, bf16_dir, tmp_path, ray_local):  # noqa: F811
    """Ray workers receive genes only and merge into their own resident bf16 model."""
    import json

    import yaml

    from evomerge.interface.cli import main

    summaries = []
    for kind in ("local", "ray"):
        cfg = {
            "seed": 0,
            "budget": {"evaluations": 8},
            "batch": 4,
            "checkpoint_every": 8,
            "history_every": 4,
            "fitness": {
                "plugin": PLUGIN,
                "options": options(lm_dir, dtype="bfloat16", seed_root=bf16_dir),
            },
            "seeds": {"kind": "plugin", "count": 3},
            "recipe": SECTIONS["ties"],
            "strategy": {"name": "cmaes", "sigma0": 0.3, "popsize": 4},
            "evaluator": {"kind": kind, **({"workers": 2} if kind == "ray" else {})},
        }
        path = tmp_path / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert main(["run", str(path), "--out", str(tmp_path / kind), "-q"]) == 0
        summaries.append(json.loads((tmp_path / kind / "summary.json").read_text()))
    local, ray = summaries
    assert ray["evaluations"] == local["evaluations"] == 8
    assert ray["metrics"] == local["metrics"] and ray["recipe"] == local["recipe"]
