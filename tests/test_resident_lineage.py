"""Lineage genomes over memory-mapped seed folders, written in place into a resident model."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT

from evomerge.core.errors import EvomergeError
from evomerge.core.plugins import load_object
from evomerge.interface.cli import main
from evomerge.runtime.host import FitnessHost
from evomerge.spaces.lineage import Lineage, combine, load_into
from evomerge.tensors.seed_store import DenseSeeds, MappedSeeds, from_description

transformers = pytest.importorskip("transformers")
PLUGIN = f"{ROOT}/fitness/causal_lm.py:CausalLM"


def options(root, seeds=("base", "reverse", "add"), dtype="float32", seed_root=None):
    seed_root = seed_root or root
    tasks = [
        {"name": n, "train": str(root / f"{n}.jsonl"), "metric": "token_accuracy"}
        for n in ("reverse", "add")
    ]
    return {"seeds": [str(seed_root / s) for s in seeds], "tasks": tasks, "dtype": dtype}


def fitness(root, **kw):
    fit = load_object(PLUGIN)(**options(root, **kw))
    fit.setup(torch.device("cpu"))
    return fit


def child(n: int) -> Lineage:
    """A child of three seeds with region edges inside tensors (two crossovers deep)."""
    a = Lineage.of_seed(0, 3, n)
    b = Lineage.of_seed(1, 3, n)
    c = Lineage.of_seed(2, 3, n)
    ab = combine(a, b, n // 3 + 7, (0.7, 0.3), (0.2, 0.8))
    return combine(ab, c, 2 * n // 3 + 5, (0.9, 0.4), (0.5, 0.6))


@pytest.fixture(scope="module")
def bf16_dir(lm_dir):
    """The base and experts saved again in bfloat16 (as most released LLMs are)."""
    out = lm_dir / "bf16"
    if not out.exists():
        for name in ("base", "reverse", "add"):
            model = transformers.AutoModelForCausalLM.from_pretrained(lm_dir / name)
            model.to(torch.bfloat16).save_pretrained(out / name)
            for f in (lm_dir / "tok").iterdir():
                shutil.copy(f, out / name / f.name)
    return out


def test_mapped_seeds_read_what_make_seeds_returns(lm_dir):
    fit = fitness(lm_dir)
    store = MappedSeeds(fit.seed_folders(), fit.param_layout())
    dense = fit.make_seeds(3, 0)
    assert (store.num_seeds, store.num_params) == tuple(dense.shape)
    assert store.read(0, store.num_params).dtype == torch.float32
    n = store.num_params
    for start, stop in [(0, n), (5, 1000), (n - 777, n), (1234, 1234)]:  # across tensors
        assert torch.equal(store.read(start, stop), dense[:, start:stop])
    again = from_description(json.loads(json.dumps(store.describe())))  # what Ray workers get
    assert torch.equal(again.read(100, 9000), dense[:, 100:9000])


def test_bf16_seeds_stay_bf16_and_a_missing_tensor_is_named(lm_dir, bf16_dir, tmp_path):
    fit = fitness(lm_dir)
    store = MappedSeeds([bf16_dir / s for s in ("base", "add")], fit.param_layout())
    block = store.read(10, 5000)
    assert block.dtype == torch.bfloat16
    assert torch.equal(block.float(), fit.make_seeds(3, 0)[[0, 2], 10:5000].bfloat16().float())
    layout = fit.param_layout() + [("model.extra.weight", (4,))]
    with pytest.raises(EvomergeError, match=r"base: has no tensor 'model.extra.weight'"):
        MappedSeeds([lm_dir / "base"], layout)


def test_load_into_equals_the_dense_child(lm_dir):
    fit = fitness(lm_dir)
    store = MappedSeeds(fit.seed_folders(), fit.param_layout())
    genome = child(store.num_params)
    load_into(genome, store, fit.resident_tensors(), block=1000)  # blocks cut tensors too
    loaded = torch.cat([p.detach().reshape(-1) for p in fit.resident_tensors()])
    dense = genome.materialize(DenseSeeds(fit.make_seeds(3, 0).numpy()).read)
    assert torch.max(torch.abs(loaded - dense)).item() <= 1e-6


def test_load_into_a_bf16_model_from_bf16_seeds(lm_dir, bf16_dir):
    fit = fitness(lm_dir, dtype="bfloat16", seed_root=bf16_dir)
    assert all(p.dtype == torch.bfloat16 for p in fit.resident_tensors())
    store = MappedSeeds(fit.seed_folders(), fit.param_layout())
    genome = child(store.num_params)
    load_into(genome, store, fit.resident_tensors())
    loaded = torch.cat([p.detach().reshape(-1).float() for p in fit.resident_tensors()])
    exact = genome.materialize(store.read)  # float64 mix of the same bf16 values
    # one bf16 rounding of the float32 mix: within half a bf16 ulp, plus float32 noise (which
    # is absolute where the terms cancel: weights are ~0.1, float32 steps ~1e-8 there)
    assert torch.all(torch.abs(loaded - exact) <= exact.abs() * 2.0**-8 + 1e-7)


def test_host_scores_lineages_in_place_like_the_flat_path(lm_dir, monkeypatch):
    spec = {"name": "lineage", "count": 3, "seed": 0, "options": {}}
    host = FitnessHost(PLUGIN, options(lm_dir), space=spec)
    assert isinstance(host.lineage_seeds, MappedSeeds) and host.worker.resident is not None
    n = host.lineage_seeds.num_params
    genomes = [child(n), Lineage.of_seed(2, 3, n), Lineage.mix([0.2, 0.5, 0.3], n)]
    ids = np.array([15, 0, 3, 9])
    flat = FitnessHost(PLUGIN, options(lm_dir), space=spec)
    flat.worker.resident = None  # the plug-in's flat-vector path
    from evomerge.spaces.lineage_space import LineageBatch

    expected = flat.score(LineageBatch(genomes), ids)
    expected_metrics = flat.metrics(genomes[0])

    def no_flat_copy(*a, **k):
        raise AssertionError("a flat copy of the model was materialised")

    monkeypatch.setattr(Lineage, "materialize", no_flat_copy)
    np.testing.assert_allclose(host.score(LineageBatch(genomes), ids), expected, atol=1e-6)
    assert host.score(LineageBatch(genomes[1:2]), None)[0, 8:].mean() == 1.0  # the add expert
    assert host.metrics(genomes[0]) == pytest.approx(expected_metrics)


def test_seed_count_must_match_the_folders(lm_dir):
    with pytest.raises(
        EvomergeError,
        match="seeds.count is 2 but fitness causal_lm.py:CausalLM names 3 seed folders",
    ):
        FitnessHost(
            PLUGIN, options(lm_dir), space={"name": "lineage", "count": 2, "seed": 0, "options": {}}
        )


def test_lineage_search_on_ray_maps_the_seed_files(lm_dir, bf16_dir, tmp_path):
    """M2N2 in lineage space on two Ray workers that map the bf16 seed folders."""
    cfg = {
        "seed": 0,
        "budget": {"evaluations": 60},
        "batch": 4,
        "checkpoint_every": 60,
        "history_every": 20,
        "fitness": {
            "plugin": PLUGIN,
            "options": options(lm_dir, ("reverse", "add"), "bfloat16", seed_root=bf16_dir),
        },
        "seeds": {"kind": "plugin", "count": 2},
        "strategy": {"name": "m2n2", "archive_size": 6, "space": "lineage"},
        "evaluator": {"kind": "ray", "workers": 2, "num_cpus": 1},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["run", str(path), "--out", str(run), "-q"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evaluations"] == 60
    assert summary["metrics"]["train_score"] > 0.6  # each expert alone is about half right
    assert all(w["evaluated"] > 0 for w in summary["workers"])


def test_tasks_are_the_example_groups_pareto_and_map_elites_use(lm_dir):
    host = FitnessHost(PLUGIN, options(lm_dir))
    assert host.info()["groups"] == {"reverse": list(range(8)), "add": list(range(8, 16))}
