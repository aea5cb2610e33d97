"""The ``vllm`` engine: one resident vLLM engine per worker, candidates written into its weights.

``fitness.options.engine: vllm`` makes each worker (local or a Ray actor) start one
``vllm.LLM`` once, from the first seed's folder with ``engine_args`` passed through
(``gpu_memory_utilization``, ``max_model_len``, ``enforce_eager``, ``dtype``,
``quantization``, ...; ``dtype`` defaults to the plug-in's). A candidate is streamed into the
engine tensor by tensor, under the Hugging Face names of ``param_layout()``, through vLLM's
public in-place reload (``LLM.collective_rpc("reload_weights", weights_iterator=...)``): vLLM
maps the names onto its fused parameters and reruns its post-load processing layer by layer
(on the CPU it repacks linear weights), so no folder is written, the engine never restarts and
the engine's weights are the only model in the worker. The prefix cache is reset after every
load.

Scores are the plug-in's metrics over two vLLM requests: greedy generation
(``temperature: 0``, the plug-in's end ids as stop ids, its stop strings) and prompt
log-probabilities of ``prefix + answer [+ end id]`` (``prompt_logprobs: 0`` gives each
token's log-probability and rank: rank 1 is the most likely token). All examples go to vLLM
at once; it batches them itself.

A model with tied input and output embeddings (SmolLM2, Llama 3.2 1B) runs untied in the engine
(``hf_overrides: {tie_word_embeddings: false}``) and its output head is fed the embedding: vLLM
0.32's reload skips a tied head, and on the CPU the head keeps a processed copy of its own
that would go stale. That costs one embedding-sized tensor.

The engine starts with the worker's first candidate, not in ``setup``: a host that only
describes the seeds (the Ray pool's one-off task that maps the seed folders for the driver and
the workers) never starts one. Started in ``setup``, that task would hold a second engine per
run, kept by its idle Ray process for the whole run (on a GPU node: on a GPU Ray did not give
it, with 0.9 of that GPU's memory). So a worker's first chunk carries the engine's start and
warm-up: ``evaluator.timeout_s`` must leave room for it.

Limits: the weights stream is passed by reference, so the engine core must run in the worker's
process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set here unless the environment says
otherwise), ``tensor_parallel_size`` must be 1 and ``distributed_executor_backend`` ``uni`` (what
vLLM picks for one process, inside a Ray actor too). Data-aware statistics (fisher, regmean)
and layer stacking need the ``transformers`` engine.

On the CPU, vLLM sizes its KV cache from ``VLLM_CPU_KVCACHE_SPACE`` (GiB) if set, else gives
each engine ``gpu_memory_utilization`` (0.9) of the node's memory: a second engine on the node
then cannot start. ``engine_args.kv_cache_memory_bytes`` sets it in the config, so it reaches
Ray workers on any node; an environment variable reaches them only from the environment their
Ray started in (the driver's for the embedded Ray, ``ray start``'s on a cluster).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable

import torch

from evomerge.kit.lm_engine import LMEngine, Targets

#: Share of a worker's GPU slice that vLLM may take (the rest: the CUDA context, the seeds'
#: blocks and activations outside vLLM's budget).
HEADROOM = 0.9


def memory_utilization(num_gpus: float, headroom: float = HEADROOM) -> float:
    """``gpu_memory_utilization`` for a worker given ``num_gpus`` of one GPU (Ray's fractional
    GPUs: 0.5 means two workers' engines share one GPU, each may take ``0.5 * headroom`` of
    it); a whole GPU or more gives ``headroom``."""
    if not num_gpus > 0:
        raise ValueError(f"num_gpus: {num_gpus} gives no GPU memory to a vLLM engine")
    return round(min(float(num_gpus), 1.0) * headroom, 4)


def ray_gpu_share() -> float | None:
    """The GPUs Ray assigned to this worker (a fraction for shared GPUs), None outside a Ray
    worker (no Ray, or Ray's driver, which is assigned nothing)."""
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        return None
    try:
        assigned = ray.get_runtime_context().get_assigned_resources()
    except AssertionError:  # Ray's driver (the local evaluator in a Ray-started process)
        return None
    share = assigned.get("GPU")
    return float(share) if share else None


def sampling(**params):
    """vLLM's ``SamplingParams`` (vLLM is imported where the engine runs, never before)."""
    from vllm import SamplingParams

    return SamplingParams(**params)


class VLLMEngine(LMEngine):
    """One ``vllm.LLM`` whose weights are the resident model."""

    batches_itself = True

    def start(self, device: torch.device) -> list[tuple[str, tuple[int, ...]]]:
        from transformers import AutoConfig, AutoModelForCausalLM

        fit = self.fit
        args = dict(self.engine_args)
        if int(args.get("tensor_parallel_size", 1)) != 1:
            raise ValueError(
                "engine_args.tensor_parallel_size: the vllm engine streams candidates into an "
                "engine in the worker's process, so it must be 1 (use one GPU per worker)"
            )
        if args.get("distributed_executor_backend", "uni") != "uni":
            raise ValueError(
                "engine_args.distributed_executor_backend: the vllm engine streams candidates "
                "into an engine in the worker's process, so it must be 'uni'; leave it out "
                "(on Ray each evomerge worker holds its own engine)"
            )
        if os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            raise ValueError(
                "engine: vllm needs VLLM_ENABLE_V1_MULTIPROCESSING=0 (the engine in the "
                "worker's process, so candidates stream into its weights); unset it"
            )
        folder = fit.model_folder(0)
        config = AutoConfig.from_pretrained(folder)
        with torch.device("meta"):  # names and shapes only: the engine holds the weights
            skeleton = AutoModelForCausalLM.from_config(config)
        layout = [(n, tuple(p.shape)) for n, p in skeleton.named_parameters()]
        # a tied output head: vLLM's reload skips it and (on the CPU) keeps a processed copy
        # that would go stale, so the engine gets an untied head and the stream feeds it the
        # embedding (one more embedding-sized tensor in the engine)
        self.tied = {}
        head = skeleton.get_output_embeddings()
        if getattr(config, "tie_word_embeddings", False) and head is not None:
            names = {id(p): n for n, p in skeleton.named_parameters()}
            every = dict(skeleton.named_parameters(remove_duplicate=False))
            for name, p in every.items():
                if p is head.weight and names[id(p)] != name:
                    self.tied[names[id(p)]] = name
            if self.tied:
                overrides = dict(args.get("hf_overrides") or {})
                overrides["tie_word_embeddings"] = False
                args["hf_overrides"] = overrides
        del skeleton
        dtype = str(fit.dtype).removeprefix("torch.")
        args.setdefault("dtype", dtype)
        args.setdefault("seed", 0)
        args.setdefault("load_format", "dummy")  # candidates bring the weights
        if "gpu_memory_utilization" not in args:
            share = ray_gpu_share()
            if share is not None:
                args["gpu_memory_utilization"] = memory_utilization(share)
        if importlib.util.find_spec("vllm") is None:
            raise ValueError(
                "engine: vllm needs vLLM in the worker's environment: pip install "
                "'evomerge[vllm]' (GPU), or the CPU route in README.md ('vLLM engine')"
            )
        self.args = args
        self._llm = None
        return layout

    @property
    def llm(self):
        """The worker's ``vllm.LLM``, started on first use (the first candidate's load)."""
        if self._llm is None:
            from vllm import LLM

            self._llm = LLM(model=str(self.fit.model_folder(0)), **self.args)
            # candidates arrive in the engine's dtype (a cast per tensor, never of the model)
            self.weight_dtype = self._llm.llm_engine.model_config.dtype
        return self._llm

    def resident_tensors(self) -> None:
        return None  # vLLM's fused, repacked parameters: candidates stream through load()

    @torch.no_grad()
    def load(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        llm = self.llm
        dtype = self.weight_dtype

        def stream():
            for name, t in tensors:
                t = t.to(dtype)
                yield name, t
                if name in self.tied:  # the untied head gets the embedding too
                    yield self.tied[name], t

        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream()})
        llm.reset_prefix_cache()

    def _run(self, prompts: list[list[int]], params) -> list:
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        return self.llm.generate(requests, params, use_tqdm=False)

    def targets(self, batch: list, ends: list[int] | None) -> list[Targets]:
        params = sampling(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        tails = [[e] for e in ends] if ends else [[]]
        prompts = [e.prefix + e.answer + tail for e in batch for tail in tails]
        results = self._run(prompts, params)
        out = []
        for r, e in enumerate(batch):
            rows = results[r * len(tails) : (r + 1) * len(tails)]
            seq = prompts[r * len(tails)]
            facts = [rows[0].prompt_logprobs[i][seq[i]] for i in range(len(e.prefix), len(seq))]
            facts = facts[: len(e.answer)]
            found = Targets(
                torch.tensor([f.logprob for f in facts], dtype=torch.float32),
                torch.tensor([f.rank == 1 for f in facts], dtype=torch.bool),
            )
            if ends:
                last = [row.prompt_logprobs[-1][end] for row, end in zip(rows, ends, strict=True)]
                logps = torch.tensor([f.logprob for f in last], dtype=torch.float32)
                found.end_logp = torch.logsumexp(logps, dim=0).item()
                found.end_best = any(f.rank == 1 for f in last)
            out.append(found)
        return out

    def generate(self, prompts: list[list[int]], max_new_tokens: int, stop=()) -> list[list[int]]:
        params = sampling(
            max_tokens=max_new_tokens,
            temperature=0.0,
            stop_token_ids=list(self.fit.eos_ids),
            stop=list(stop) or None,
        )
        return [list(r.outputs[0].token_ids) for r in self._run(prompts, params)]


__all__ = ["HEADROOM", "VLLMEngine", "memory_utilization", "ray_gpu_share"]
