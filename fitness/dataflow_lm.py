"""Layer stacking (data-flow space) of causal LMs as a fitness: genomes choose layers, not weights.

Each candidate is a gene vector of :class:`evomerge.spaces.dataflow.DataFlowSpace`: for each slot
of a stacked model, which seed's decoder layer runs there (or none) and, optionally, a scale of
that layer's residual updates. The seeds are model folders of one architecture (for the paper's
combination of both spaces, one of them can be a parameter-space merge: a folder written by
``evomerge merge`` or ``evomerge export`` of a recipe search); as everywhere, a seed may also be
a Hub id (``org/name[@revision]``, from the local cache) or ``BASE+ADAPTER`` (a LoRA adapter
merged into its base). Embeddings, final norm and head
come from seed ``base``. Scores are :mod:`fitness.causal_lm`'s on the same JSONL tasks::

    fitness:
      plugin: fitness/dataflow_lm.py:DataFlowLM
      options:
        seeds: [merged/ta, models/llm-bench/add, models/llm-bench/reverse]
        tasks: [...]                 # as fitness/causal_lm.py
        repeats: 2                   # slots = repeats x layers per seed
        scales: true                 # a residual scale gene per slot
        scale_range: [0.0, 2.0]
        base: 0                      # embeddings / final norm / head from this seed
    seeds: {kind: plugin, count: 3}  # the search starts from each seed's own genome

The stacked model is assembled per candidate without copying weights: each slot is a shallow
view of the seed's layer module whose attention gets its own ``layer_idx`` (so a layer that runs
in two slots writes two KV-cache entries during generation) and, for a scale other than 1,
scaled copies of its two output projections. ``evomerge export`` writes the stack as a normal
model folder (``config.json``'s ``num_hidden_layers`` updated) and, when every scale is 1, a
mergekit ``passthrough`` config with ``slices``.
"""

from __future__ import annotations

import copy

import torch

from evomerge.fitness.causal_lm import CausalLM
from evomerge.spaces.dataflow import DataFlowSpace
from evomerge.tensors.layer_stack import PER_LAYER_KEYS, is_scaled


def layer_view(module: torch.nn.Module, index: int, scale: float, path: str = ""):
    """A shallow copy of ``module`` sharing its weights, with ``layer_idx = index`` wherever a
    submodule has one and the residual-update projections' parameters times ``scale``."""
    new = copy.copy(module)
    new._modules = dict(module._modules)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    if hasattr(new, "layer_idx"):
        new.layer_idx = index
    if scale != 1.0 and path and is_scaled(f".{path}."):
        for name, p in module._parameters.items():
            if p is not None:
                new._parameters[name] = torch.nn.Parameter(p.detach() * scale, requires_grad=False)
        return new
    for name, child in module._modules.items():
        if child is not None:
            new._modules[name] = layer_view(child, index, scale, f"{path}.{name}" if path else name)
    return new


class DataFlowLM(CausalLM):
    """Scores stacks of the seeds' decoder layers on :class:`CausalLM`'s tasks.

    Its candidates belong to the data-flow space (``space = "dataflow"``,
    :mod:`evomerge.spaces.dataflow_space`), which calls :meth:`stack` to load one and exports
    stacks as model folders.
    """

    space = "dataflow"

    def __init__(
        self,
        seeds: list[str],
        tasks: list[dict],
        batch_size: int = 16,
        dtype: str = "float32",
        repeats: int = 1,
        scales: bool = False,
        scale_range: tuple[float, float] = (0.0, 2.0),
        base: int = 0,
    ):
        super().__init__(seeds, tasks, batch_size, dtype)
        if not 0 <= int(base) < len(seeds):
            raise ValueError(f"base: {base} is not a seed index (0..{len(seeds) - 1})")
        if int(repeats) < 1:
            raise ValueError("repeats must be >= 1")
        self.repeats, self.scales, self.base = int(repeats), bool(scales), int(base)
        self.scale_range = tuple(float(v) for v in scale_range)

    # --- set-up ---------------------------------------------------------------------------

    def setup(self, device: torch.device) -> None:
        self.device = torch.device(device)
        # folders, Hub ids and BASE+ADAPTER seeds alike (the kit's model-folder resolution)
        self.seed_models = [self.seed_model(k) for k in range(len(self.seed_paths))]
        decoders = [m.get_decoder() for m in self.seed_models]
        counts = {len(getattr(d, "layers", ())) for d in decoders}
        if len(counts) != 1 or 0 in counts:
            raise ValueError(
                f"seeds: layer stacking needs seeds with the same number of decoder layers "
                f"(found {sorted(counts)})"
            )
        sizes = {m.config.hidden_size for m in self.seed_models}
        if len(sizes) != 1:
            raise ValueError(
                f"seeds: hidden sizes differ ({sorted(sizes)}); stack one architecture"
            )
        self.seed_layers = [list(d.layers) for d in decoders]
        self.flow = DataFlowSpace(
            len(self.seed_models), counts.pop(), self.repeats, self.scales, self.scale_range
        )
        self.model = self._skeleton(self.seed_models[self.base])
        self.setup_tasks(self.model_folder(self.base))  # tokenizer, end ids, tokenised tasks
        self.num_params = self.flow.dim

    def _skeleton(self, base_model):
        """A model of the base's class whose non-layer modules are the base's own."""
        from transformers import AutoModelForCausalLM

        cfg = copy.deepcopy(base_model.config)
        cfg.num_hidden_layers = 1
        for key in PER_LAYER_KEYS:
            if isinstance(getattr(cfg, key, None), list):
                setattr(cfg, key, getattr(cfg, key)[:1])
        model = AutoModelForCausalLM.from_config(cfg)
        decoder, base_decoder = model.get_decoder(), base_model.get_decoder()
        for name, _child in list(decoder.named_children()):
            if name != "layers":
                setattr(decoder, name, getattr(base_decoder, name))
        for name, child in list(model.named_children()):
            if child is not decoder:
                setattr(model, name, getattr(base_model, name))
        self._per_layer = {k: getattr(base_model.config, k, None) for k in PER_LAYER_KEYS}
        model.generation_config = copy.deepcopy(base_model.generation_config)
        return model.to(self.device).eval().requires_grad_(False)

    def stack(self, genes) -> list:
        """Put the stack ``genes`` stands for into ``self.model``; returns its slots."""
        slots = self.flow.decode(torch.as_tensor(genes).double().tolist())
        views = [
            layer_view(self.seed_layers[s.seed][s.layer], j, s.scale) for j, s in enumerate(slots)
        ]
        self.model.get_decoder().layers = torch.nn.ModuleList(views)
        self.model.config.num_hidden_layers = len(slots)
        for key, values in self._per_layer.items():
            if isinstance(values, list) and values:
                setattr(self.model.config, key, [values[s.layer % len(values)] for s in slots])
        return slots

    # --- the contract -----------------------------------------------------------------------

    def param_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        return [("dataflow_genes", (self.flow.dim,))]

    def seed_folders(self):
        return None  # genomes are layer choices, never mixes of the seeds' weights

    def resident_tensors(self):
        return None

    def load_candidate(self, genes: torch.Tensor) -> None:
        """A candidate is a stack of the seeds' layers (CausalLM's score/metrics call this)."""
        self.stack(genes)

    def make_seeds(self, count: int, seed: int) -> torch.Tensor:
        """Each seed's own genome (its layers in repeat 0, scale 1), in the order of ``seeds``;
        ``count: 1`` gives the base seed's alone (CMA-ES then starts from the base's stack, not
        from the mean of all the seeds' genomes)."""
        if count == 1:
            return self.flow.seed_genome(self.base)[None]
        if count != self.flow.num_seeds:
            raise ValueError(
                f"seeds.count is {count} but {self.flow.num_seeds} folders are given "
                "(or 1: the base seed's stack only)"
            )
        return torch.stack([self.flow.seed_genome(k) for k in range(count)])

    def export_info(self) -> dict:
        from evomerge.tensors.model_ref import open_model

        with open_model(self.seed_paths[self.base]) as first:
            dtype = str(first.dtype(first.names()[0])).removeprefix("torch.")
        return {"dtype": dtype, "seeds": [str(p) for p in self.seed_paths]}
