"""Recipe space: a candidate is a gene vector saying how to merge the seeds, group by group.

The genes vary as plain vectors (CMA-ES, random search, M2N2's vector crossover); what they
stand for is :class:`~evomerge.spaces.recipe.RecipeSpace`'s decoding. On a worker, one loader
(:class:`~evomerge.spaces.resident_recipe.ResidentRecipe`) merges a candidate tensor by tensor
straight into its target: the plug-in's resident model when it has one (seeds memory-mapped
from its seed folders), else one flat row over the seeds the plug-in makes, which the
plug-in's ``score`` takes. Exports merge tensor by tensor too, and a recipe over seed folders
also gets ``mergekit.yaml``, the same merge as a mergekit config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import yaml

from evomerge.core.errors import PluginError
from evomerge.spaces.loaded_candidate import LoadedCandidate
from evomerge.spaces.model_folder import write_model_folder
from evomerge.spaces.realised import FlatRows, Loaded
from evomerge.spaces.recipe import RecipeSection, RecipeSpace
from evomerge.spaces.recipe_mergekit import mergekit_doc
from evomerge.spaces.resident_recipe import ResidentRecipe, on_device
from evomerge.spaces.vectors import VectorGenomes
from evomerge.tensors.seed_store import DenseSeeds


class RecipeGeneSpace(VectorGenomes):
    """Genomes are recipe gene vectors; the search starts from the recipe's initial genes."""

    name = "recipe"
    #: see :attr:`~evomerge.spaces.lineage_space.LineageSpace.realises_singly`
    realises_singly = True

    def __init__(self, section: RecipeSection, layout, num_seeds: int, initial=None):
        self.section = section
        self.recipe = RecipeSpace(section, layout, num_seeds)
        self.initial = initial if initial is not None else self.recipe.initial()

    @classmethod
    def from_spec(cls, spec: dict, info: dict) -> RecipeGeneSpace:
        section = RecipeSection.model_validate(spec["recipe"])
        return cls(section, info["layout"], info["num_seeds"], info.get("initial"))

    @classmethod
    def on_driver(cls, spec: dict, evaluator) -> RecipeGeneSpace:
        return cls.from_spec(spec, evaluator.info)

    @classmethod
    def on_worker(cls, spec: dict, host) -> RecipeWorker:
        return RecipeWorker(host, spec)

    def seed_genomes(self, evaluator, progress) -> torch.Tensor:
        """The recipe's initial genes, or (``recipe.start_from``) the genes one worker learns
        by a gradient merge: asked for only here, when a run starts, never on a resume."""
        genes = self.initial
        if self.section.start_from is not None:
            progress.message(f"learning the start with {self.section.start_from.method}")
            genes = evaluator.seed_genes()
        return torch.tensor([genes], dtype=torch.float32)

    def decoded(self, genes) -> dict:
        return self.recipe.decode(torch.as_tensor(genes).double().tolist())

    def describe(self, genes) -> dict:
        section = self.section
        groups = self.decoded(genes)
        return {
            "space": "recipe",
            "recipe": {"method": section.method, "base": section.base, "groups": groups},
        }

    def summary(self, genes) -> dict:
        """The merge parameters the best genes stand for, group by group (for people)."""
        return {"recipe": {"method": self.section.method, "groups": self.decoded(genes)}}


class RecipeWorker:
    """Merges recipe candidates into the resident model, or into one flat row."""

    def __init__(self, host, spec: dict):
        self.host = host
        self.loaded = LoadedCandidate()  # what the resident model (or the row) holds
        section = RecipeSection.model_validate(spec["recipe"])
        layout = host.layout()
        tensors = host.resident()
        # a model that takes candidates as named tensors, one at a time (an inference engine)
        self.stream = host.streamed() if tensors is None else None
        try:
            if tensors is not None or self.stream is not None:
                store = on_device(host.seed_store(spec), layout, host.device, host.seeds_on_device)
                self.row = None
                if tensors is None:  # shapes only: each merged tensor goes to the stream
                    tensors = [torch.empty(shape, device="meta") for _, shape in layout]
            else:  # a flat float32 row, seen through the layout's tensors
                store = DenseSeeds(host.make_seeds(spec["count"], spec["seed"], spec["options"]))
                self.row = torch.empty(store.num_params, dtype=torch.float32, device=host.device)
                tensors, offset = [], 0
                for _, shape in layout:
                    n = math.prod(shape)
                    tensors.append(self.row[offset : offset + n].view(shape))
                    offset += n
            self.loader = ResidentRecipe(section, layout, store, tensors)
            self.store = store
            self._statistics()
        except ValueError as exc:
            raise PluginError(f"recipe: {exc}", exit_code=2) from None
        self.space = RecipeGeneSpace(section, layout, store.num_seeds)
        self._initial: list[float] | None = None

    def _statistics(self) -> None:
        """Data-aware recipes: each merged seed's statistics, computed once at set-up."""
        from evomerge.ops.statistics import per_seed

        space = self.loader.space
        kind = space.method.statistics
        if kind is None:
            return
        store, bounds = self.store, self.loader.bounds

        def flat(m):  # one tensor at a time into one flat vector, when it is needed
            return lambda: torch.cat([store.piece(m, a, b).float().cpu() for a, b in bounds])

        flats = [flat(m) for m in space.models]
        space.attach_statistics(per_seed(self.host.plugin, kind, space.section.statistics, flats))

    def seed_genes(self) -> list[float]:
        """The search's first genes: the recipe's ``init`` values, or learnt
        (``recipe.start_from``; the driver asks one worker, once, when a run starts)."""
        space = self.loader.space
        if space.section.start_from is None:
            return space.initial()
        if self._initial is None:
            from evomerge.spaces.recipe_start import learned_initial

            self.loaded.writing()  # learning may use the model: what it holds is unknown after

            store, bounds = self.store, self.loader.bounds

            def flat(m):
                return torch.cat([store.piece(m, a, b).float().cpu() for a, b in bounds])

            try:
                self._initial, _ = learned_initial(space, self.host.plugin, flat)
            except (TypeError, ValueError) as exc:
                raise PluginError(f"recipe.start_from: {exc}", exit_code=2) from None
        return self._initial

    def info(self) -> dict:
        space = self.loader.space
        return {
            "num_params": space.dim,
            "initial": space.initial(),  # the init values: nothing learnt here
            "layout": space.layout,
            "num_seeds": len(space.models) + (space.section.base is not None),
        }

    def one(self, genes) -> np.ndarray:
        return np.asarray(genes, dtype=np.float32).reshape(1, -1)

    def batches(self, genomes) -> Sequence:
        """One candidate at a time: a worker holds one merged model, not a batch of them."""
        rows = np.asarray(genomes, dtype=np.float32).reshape(-1, self.loader.space.dim)
        return list(rows)

    def realise(self, genes):
        genes = np.asarray(genes, dtype=np.float64).reshape(-1).tolist()
        key = tuple(genes)
        done = Loaded() if self.stream is not None or self.row is None else FlatRows(self.row[None])
        if self.loaded.holds(key):  # the same candidate again (racing's next stage)
            return done
        self.loaded.writing()
        if self.stream is not None:
            names = [name for name, _ in self.loader.space.layout]
            try:
                merged = self.loader.merged(genes, self.host.device)
                self.stream(zip(names, merged, strict=True))
            except ValueError as exc:
                raise PluginError(f"recipe: {type(exc).__name__}: {exc}") from None
        else:
            try:
                self.loader.load(genes)
            except ValueError as exc:
                raise PluginError(f"recipe: {type(exc).__name__}: {exc}") from None
        self.loaded.written(key)
        return done

    def export(self, genes, out, dtype: str, doc: dict) -> dict:
        genes = torch.as_tensor(genes).double()
        doc = {**doc, **self.space.describe(genes)}
        texts = {"recipe.yaml": yaml.safe_dump(doc, sort_keys=False)}
        seeds = self.host.export_info().get("seeds")
        if seeds:
            mergekit = mergekit_doc(self.loader.space, self.space.decoded(genes), seeds, dtype)
            if mergekit is not None:
                note = (
                    "# The same merge for mergekit-yaml or 'evomerge merge' (DARE's random drops "
                    "and\n# ties at the trim threshold may differ in mergekit; see evomerge's "
                    "README).\n"
                )
                texts["mergekit.yaml"] = note + yaml.safe_dump(mergekit, sort_keys=False)
        layout = self.loader.space.layout
        count = write_model_folder(
            out,
            layout,
            self.loader.merged(genes.tolist()),
            dtype,
            self.host.export_info().get("files", []),
            texts,
        )
        return {"tensors": count, "space": "recipe"}
