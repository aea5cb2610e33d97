"""The base of causal-LM fitness plug-ins: one resident Hugging Face model that candidates are
written into, and the scoring primitives every LM plug-in shares.

:class:`CausalLMBase` owns what does not depend on the task: the model built from the first
seed's ``config.json`` with empty parameters (the candidates fill them), the first seed's
tokenizer and end-of-sequence ids, flat vectors in and out of the model, the resident-model
contract (lineage and recipe candidates are written straight into its tensors), seeds and
export. A subclass brings the examples and what a score of one is, through public hooks:

* :meth:`~CausalLMBase.setup_tasks` (required): read and tokenise the training examples; set
  ``self.ranges`` (``(name, start, stop)`` per task) and ``self.num_examples``. Call
  :meth:`~CausalLMBase.setup_tokenizer` first.
* :meth:`~CausalLMBase.score_loaded` (required): per-example scores of the model now loaded;
  :meth:`~CausalLMBase.metrics_loaded` (optional): its held-out figures.
* :meth:`~CausalLMBase.load_candidate`: puts a flat vector into the model; override it where
  a candidate is not a vector of the model's parameters (a layer stack, an adapter).
* :meth:`~CausalLMBase.setup`: builds the model; override it to build another one, then call
  ``self.setup_tasks(folder)``.

Scoring primitives, over :class:`~evomerge.kit.lm_text.Example` batches cut by
:func:`~evomerge.kit.lm_text.tokenize_example`: :meth:`~CausalLMBase.padded`,
:meth:`~CausalLMBase.answer_logprobs`, :meth:`~CausalLMBase.teacher_forced` and
:meth:`~CausalLMBase.exact_match`. ``evomerge.fitness.causal_lm.CausalLM`` (JSONL tasks) and
``evomerge.fitness.lm_harness.LmHarness`` (lm-evaluation-harness tasks) are two subclasses.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from evomerge.core.errors import EvomergeError
from evomerge.core.fitness import Fitness
from evomerge.kit.empty_init import build_empty
from evomerge.kit.lm_engine import ENGINES, Targets
from evomerge.kit.lm_text import Example, answer_text, end_ids, special_head
from evomerge.ops.statistics import split
from evomerge.tensors.hub_models import is_hub_id
from evomerge.tensors.model_ref import resolve_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _check_seed(i: int, text: str, path: Path) -> None:
    """A seed must be a folder on disk, ``BASE+ADAPTER`` of them, or a cached Hub id."""
    if path.is_dir():
        return
    if "+" in text or is_hub_id(text):
        try:
            resolve_model(text)
        except EvomergeError as exc:
            raise ValueError(f"seeds[{i}]: {exc}") from None
        return
    where = "" if path.is_absolute() else f" (looked in {Path.cwd()})"
    raise ValueError(
        f"seeds[{i}]: '{path}' is not a folder{where}; give a Hugging Face model "
        "folder on disk (config.json, tokenizer, safetensors)"
    )


class CausalLMBase(Fitness):
    """A resident causal LM, built from the seeds' config, scored on a subclass's examples.

    Options: ``seeds`` (Hugging Face folders: config, tokenizer, safetensors; Hub ids
    ``org/name[@revision]`` from the local cache; ``BASE+ADAPTER`` for a base with a PEFT LoRA
    adapter merged in; the first gives the architecture and tokenizer), ``batch_size``
    (examples per forward pass) and ``dtype`` (``float32``, ``bfloat16`` or ``float16``: the
    model's, on the worker's device), ``engine`` (what runs the model: ``transformers``, the
    default, or ``vllm``; :data:`evomerge.kit.lm_engine.ENGINES`) and ``engine_args`` (passed
    through to the engine).
    """

    score_name = "score"

    def __init__(
        self,
        seeds: list[str],
        batch_size: int = 16,
        dtype: str = "float32",
        engine: str = "transformers",
        engine_args: dict | None = None,
    ):
        if not seeds:
            raise ValueError("seeds: give at least one model folder")
        if dtype not in DTYPES:
            raise ValueError(f"dtype: '{dtype}' is not one of {sorted(DTYPES)}")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.seed_paths = [Path(s) for s in seeds]
        for i, path in enumerate(self.seed_paths):  # before transformers reads it as a hub id
            _check_seed(i, str(seeds[i]), path)
        self.batch_size = batch_size
        self.dtype = DTYPES[dtype]
        if engine_args is not None and not isinstance(engine_args, dict):
            raise ValueError("engine_args: give a mapping of the engine's arguments")
        self.engine_name = engine
        self.engine = ENGINES.get(engine)(self, engine_args)

    # --- set-up ---------------------------------------------------------------------------

    def setup(self, device: torch.device) -> None:
        """Start the engine on ``device`` (``self.layout``, ``self.num_params``; with the
        ``transformers`` engine ``self.model`` and ``self.params``), then
        :meth:`setup_tasks`."""
        self.device = torch.device(device)
        self.layout = self.engine.start(self.device)
        self.params = self.engine.resident_tensors()
        self.num_params = sum(math.prod(shape) for _, shape in self.layout)
        self.setup_tasks(self.model_folder(0))

    def hf_model(self, what: str) -> torch.nn.Module:
        """``self.model`` (the ``transformers`` engine's model) for ``what``, which needs a
        Hugging Face module; one clear line when another engine runs the model."""
        model = getattr(self, "model", None)
        if model is None:
            raise ValueError(
                f"engine: {what} needs the Hugging Face model of engine: transformers "
                f"(this fitness runs engine: {self.engine_name})"
            )
        return model

    def model_folder(self, index: int) -> Path:
        """Seed ``index``'s folder of config and tokenizer: the folder itself, a Hub id's
        cached snapshot, or a ``BASE+ADAPTER`` seed's base."""
        from evomerge.tensors.model_ref import resolve_model

        return resolve_model(self.seed_paths[index]).folder

    def seed_model(self, index: int) -> torch.nn.Module:
        """Seed ``index`` as a whole model in ``dtype`` on the device (after :meth:`setup`
        set ``self.device``): a folder, a Hub id's cached snapshot, or a ``BASE+ADAPTER`` seed
        with the adapter merged in, read tensor by tensor as every other seed is read."""
        from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

        from evomerge.tensors.model_ref import open_model

        folder = self.model_folder(index)
        config = AutoConfig.from_pretrained(folder)
        model = build_empty(
            lambda: AutoModelForCausalLM.from_config(config), self.device, self.dtype
        ).eval()
        with open_model(self.seed_paths[index]) as seed, torch.no_grad():
            for name, p in model.named_parameters():
                try:
                    t = seed.get(name)
                except KeyError:
                    raise ValueError(
                        f"{self.seed_paths[index]}: no tensor '{name}', which the model built "
                        f"from {folder}/config.json has; give a model of that architecture"
                    ) from None
                p.copy_(t.reshape(p.shape))
        if (folder / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(folder)
        return model.requires_grad_(False)

    def setup_tokenizer(self, folder: Path) -> None:
        """``folder``'s tokenizer (``self.tokenizer``), its end-of-sequence ids
        (``self.eos_ids``: ``generation_config.json``'s, then the tokenizer's), pad id
        (``self.pad``) and leading special tokens (``self.head``, for ``tokenize_example``)."""
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder)
        self.eos_ids = end_ids(folder, tok)
        self.eos = self.eos_ids[0] if self.eos_ids else None
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else self.eos
        if self.pad is None:
            raise ValueError(f"{folder}: the tokenizer has neither a pad nor an eos token")
        self.tokenizer = tok
        self.head = special_head(tok)

    def setup_tasks(self, folder: Path) -> None:
        """Hook: read and tokenise the training examples (call :meth:`setup_tokenizer` with
        ``folder`` first); set ``self.ranges`` and ``self.num_examples``."""
        raise NotImplementedError(f"{type(self).__name__} must implement setup_tasks(folder)")

    def task_ranges(self) -> list[tuple[str, int, int]]:
        """``(name, start, stop)`` of each task's training example ids."""
        return list(self.ranges)

    def param_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        return list(self.layout)

    def export_info(self) -> dict:
        """Config and tokenizer files of the first seed, its dtype, and the seed folders."""
        from evomerge.tensors.model_ref import open_model

        first = open_model(self.seed_paths[0])
        try:
            dtype = str(first.dtype(self.layout[0][0])).removeprefix("torch.")
            files = [str(p) for p in first.extra_files()]
        finally:
            first.close()
        return {"files": files, "dtype": dtype, "seeds": [str(p) for p in self.seed_paths]}

    # --- candidates -----------------------------------------------------------------------

    def load_candidate(self, vector: torch.Tensor) -> None:
        """Hook: put one candidate (a flat vector, ``param_layout()`` order) into the model;
        :meth:`score` and :meth:`metrics` call it before scoring what is loaded."""
        if self.params is not None:
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(vector.to(self.device, self.dtype), self.params)
            return
        self.load_tensors(split(vector.to(self.device), self.layout).items())

    def load_tensors(self, tensors) -> None:
        """Stream one candidate, ``(name, tensor)`` in ``param_layout()`` order, into the
        engine's model (the route of engines whose weights are not plain tensors)."""
        self.engine.load(tensors)

    def score(self, params: torch.Tensor, example_ids: torch.Tensor | None = None) -> torch.Tensor:
        out = []
        for vector in params:
            self.load_candidate(vector)
            out.append(self.score_loaded(example_ids))
        return torch.stack(out)

    def metrics(self, params: torch.Tensor) -> dict[str, float]:
        self.load_candidate(params.reshape(-1))
        return self.metrics_loaded()

    def score_loaded(self, example_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Hook: per-example scores ``(len(example_ids),)`` (all when None), in [0, 1], of the
        model now loaded."""
        raise NotImplementedError(f"{type(self).__name__} must implement score_loaded()")

    # --- the resident model (lineage candidates are written straight into it) --------------

    def seed_folders(self) -> list[str]:
        return [str(p) for p in self.seed_paths]

    def resident_tensors(self) -> list[torch.Tensor] | None:
        return self.params

    def make_seeds(self, count: int, seed: int) -> torch.Tensor:
        """The seed folders' weights as flat vectors, in the order of ``seeds``."""
        from evomerge.tensors.model_ref import open_model

        if count != len(self.seed_paths):
            raise ValueError(f"seeds.count is {count} but {len(self.seed_paths)} folders are given")
        rows = []
        for path in self.seed_paths:
            model = open_model(path)
            try:
                parts = []
                for name, shape in self.layout:
                    t = model.get(name, dtype=torch.float32)
                    if tuple(t.shape) != shape:
                        raise ValueError(
                            f"{path}: tensor '{name}' has shape {tuple(t.shape)}, the model "
                            f"built from {self.seed_paths[0]} expects {shape}"
                        )
                    parts.append(t.reshape(-1))
            except KeyError as exc:
                raise ValueError(str(exc).strip("'\"")) from None
            finally:
                model.close()
            rows.append(torch.cat(parts))
        return torch.stack(rows)

    # --- scoring primitives -----------------------------------------------------------------

    def padded(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, attention mask)`` on the device, right-padded: real tokens keep positions
        ``0..len-1``, as teacher forcing scores them."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, seq in enumerate(seqs):
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def answer_logprobs(self, batch: list[Example]) -> list[torch.Tensor]:
        """Per example, ``(len(answer) + 1, vocab)`` float32 next-token log-probabilities of
        the loaded model: after each of the prefix's last token and the answer's tokens (the
        last row: after the answer). ``transformers`` engine only; :meth:`targets` is what
        every engine gives."""
        self.hf_model("answer_logprobs (full next-token distributions)")
        return self.engine.logprobs(batch)

    def targets(self, batch: list[Example], eos: bool = False) -> list[Targets]:
        """The engine's teacher-forced :class:`~evomerge.kit.lm_engine.Targets` of ``batch``
        (with ``eos``: the end target after each answer, over ``eos_ids``)."""
        return self.engine.targets(batch, list(self.eos_ids) if eos else None)

    def chunks(self, examples: list) -> list[list]:
        """``examples`` in ``batch_size`` slices, or all at once for an engine that batches
        requests itself."""
        if self.engine.batches_itself:
            return [examples] if examples else []
        return [examples[i : i + self.batch_size] for i in range(0, len(examples), self.batch_size)]

    def teacher_forced(self, batch: list[Example], metric: str, eos: bool) -> torch.Tensor:
        """``token_accuracy`` (share of the answer's tokens that are the most likely next
        token) or ``likelihood`` (``exp(mean log p)`` of the answer's tokens) per example;
        ``eos`` adds one end-of-sequence target after the answer (any of ``eos_ids``)."""
        out = torch.empty(len(batch))
        for r, (e, found) in enumerate(zip(batch, self.targets(batch, eos), strict=True)):
            n = len(e.answer) + int(eos)  # targets: the answer's tokens, then any end id
            if n == 0:
                out[r] = 1.0
                continue
            if metric == "token_accuracy":
                hits = found.best.float().sum()
                if eos:
                    hits += float(found.end_best)
                out[r] = (hits / n).item()
            else:
                total = found.logp.sum()
                if eos:
                    total += found.end_logp
                out[r] = math.exp(total.item() / n)
        return out

    def exact_match(self, batch: list[Example], max_new_tokens: int, stop=()) -> torch.Tensor:
        """1 per example whose greedy generation (up to ``max_new_tokens``, cut at the first
        end id and ``stop`` string, stripped) is its answer text, stripped; else 0."""
        generated = self.engine.generate([e.prompt for e in batch], max_new_tokens, stop)
        out = torch.empty(len(batch))
        for r, e in enumerate(batch):
            out[r] = float(
                answer_text(self.tokenizer, self.eos_ids, generated[r], stop) == e.text.strip()
            )
        return out
