"""The causal-LM engine registry and contract, without vLLM: names, the streamed-candidate
route of the spaces (an engine whose weights are not plain tensors), the GPU-share arithmetic
of ``engine: vllm`` on Ray, and that ``import evomerge`` never imports an engine's library."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from test_resident_lineage import PLUGIN, child, options
from test_resident_recipe import SECTIONS, genes_for

from evomerge.core.errors import EvomergeError
from evomerge.core.plugins import load_object
from evomerge.kit import ENGINES
from evomerge.kit.hf_engine import TransformersEngine
from evomerge.kit.vllm_engine import HEADROOM, memory_utilization, ray_gpu_share
from evomerge.runtime.host import FitnessHost
from evomerge.spaces.lineage import Lineage
from evomerge.spaces.lineage_space import LineageBatch

pytest.importorskip("transformers")


class StreamedEngine(TransformersEngine):
    """The transformers model, but reachable only through ``load`` (as vLLM's weights are)."""

    batches_itself = True
    loads = 0

    def resident_tensors(self):
        return None

    def load(self, tensors):
        StreamedEngine.loads += 1
        seen = []
        for name, t in tensors:
            seen.append(name)
            super().load([(name, t)])
        assert seen == [n for n, _ in self.fit.layout]  # every layout tensor, in order


@pytest.fixture
def streamed():
    ENGINES.register("streamed-test", StreamedEngine)
    yield
    ENGINES.unregister("streamed-test")


def test_import_evomerge_leaves_engine_libraries_unimported():
    code = (
        "import sys, evomerge, evomerge.kit, evomerge.kit.vllm_engine, evomerge.runtime; "
        "print('vllm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_unknown_engine_is_one_line_naming_the_field_and_the_closest_name(lm_dir):
    with pytest.raises(
        EvomergeError,
        match=r"fitness\.options\.engine: unknown engine 'vlm'; did you mean 'vllm'\?",
    ):
        FitnessHost(PLUGIN, {**options(lm_dir), "engine": "vlm"})


def test_engine_args_belong_to_the_vllm_engine(lm_dir):
    with pytest.raises(Exception, match="engine_args: the transformers engine takes none"):
        FitnessHost(PLUGIN, {**options(lm_dir), "engine_args": {"max_model_len": 64}})


def test_vllm_missing_is_one_line_with_the_install_route(lm_dir):
    pytest.importorskip("evomerge")
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    with pytest.raises(Exception, match=r"engine: vllm needs vLLM .*evomerge\[vllm\]"):
        FitnessHost(PLUGIN, {**options(lm_dir), "engine": "vllm"})


@pytest.mark.parametrize(
    "args, key",
    [
        ({"tensor_parallel_size": 2}, "tensor_parallel_size"),
        ({"distributed_executor_backend": "ray"}, "distributed_executor_backend"),
    ],
)
def test_vllm_engine_refuses_an_engine_outside_the_worker_process(lm_dir, args, key):
    """Candidates are streamed into the engine by reference: its model runs in the worker's
    process (vLLM or not, the refusal comes first)."""
    with pytest.raises(Exception, match=rf"engine_args\.{key}: .*worker's process"):
        FitnessHost(PLUGIN, {**options(lm_dir), "engine": "vllm", "engine_args": args})


def test_gpu_share_is_read_in_a_ray_worker_only(ray_local):
    """Ray's driver (a local evaluator in a process that started Ray) is assigned nothing,
    and asking must not fail there; a worker given no GPU reads none."""
    assert ray_gpu_share() is None

    @ray_local.remote(num_cpus=0)
    def in_worker():
        from evomerge.kit.vllm_engine import ray_gpu_share

        return ray_gpu_share()

    assert ray_local.get(in_worker.remote()) is None


def test_gpu_share_of_a_ray_worker_splits_vllm_memory():
    assert memory_utilization(1) == HEADROOM == 0.9
    assert memory_utilization(2) == 0.9  # one engine per worker, tensor_parallel_size 1
    halves = [memory_utilization(0.5), memory_utilization(0.5)]
    assert halves == [0.45, 0.45] and sum(halves) <= HEADROOM
    assert memory_utilization(0.25, headroom=0.8) == 0.2
    with pytest.raises(ValueError, match="num_gpus: 0 gives no GPU memory"):
        memory_utilization(0)


def test_lineages_streamed_into_an_engine_score_as_the_resident_model(lm_dir, streamed):
    spec = {"name": "lineage", "count": 3, "seed": 0, "options": {}}
    resident = FitnessHost(PLUGIN, options(lm_dir), space=spec)
    host = FitnessHost(PLUGIN, {**options(lm_dir), "engine": "streamed-test"}, space=spec)
    assert host.worker.resident is None and host.worker.stream is not None
    n = host.lineage_seeds.num_params
    genomes = LineageBatch([child(n), Lineage.mix([0.2, 0.5, 0.3], n)])
    ids = np.array([15, 0, 3, 9])
    before = StreamedEngine.loads
    got = host.score(genomes, ids)
    assert StreamedEngine.loads == before + 2
    np.testing.assert_array_equal(got, resident.score(genomes, ids))
    assert host.metrics(genomes.members[0]) == resident.metrics(genomes.members[0])


def test_recipes_streamed_into_an_engine_score_as_the_resident_model(lm_dir, streamed):
    spec = {"name": "recipe", "recipe": SECTIONS["ties"], "count": 3, "seed": 0, "options": {}}
    resident = FitnessHost(PLUGIN, options(lm_dir), space=spec)
    host = FitnessHost(PLUGIN, {**options(lm_dir), "engine": "streamed-test"}, space=spec)
    assert host.worker.stream is not None and host.worker.row is None
    rows = np.stack([genes_for(host.worker.loader.space, s) for s in (1, 2)])
    ids = np.arange(16)
    got = host.score(rows, ids)
    np.testing.assert_array_equal(got, resident.score(rows, ids))
    assert torch.as_tensor(got).std() > 0  # two different merges, scores that can differ


def test_flat_candidates_stream_into_an_engine_as_named_tensors(lm_dir, streamed):
    from test_resident_lineage import fitness

    resident = fitness(lm_dir)
    fit = load_object(PLUGIN)(**{**options(lm_dir), "engine": "streamed-test"})
    fit.setup(torch.device("cpu"))
    assert fit.resident_tensors() is None
    rows = resident.make_seeds(3, 0)[1:]
    np.testing.assert_array_equal(fit.score(rows), resident.score(rows))
