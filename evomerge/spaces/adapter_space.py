"""Adapter space: a candidate is a weighting of LoRA adapters over one base (LoraHub-style).

Seeds are ``BASE+ADAPTER`` models of one base (the plug-in's ``seeds``). A candidate holds one
coefficient per adapter, or per adapter and layer group (``seeds.options.layer_groups``); it
is composed by one of PEFT's combination types (:data:`evomerge.ops.lora_compose.COMPOSITIONS`:
``linear``, ``cat``, ``svd`` to ``seeds.options.rank``, ``ties``, ``dare_*``,
``magnitude_prune`` and their svd forms, with ``density`` and ``majority_sign_method``) and
written into LoRA factors PEFT injects once into the plug-in's resident model, whose base
weights are loaded once. DARE's random masks are drawn per module from a generator seeded by
the run's seed and the module's index, so one candidate is always composed alike (in the
search, on resume and in the export). A candidate therefore moves the adapter's bytes, never
the model's. The export is a PEFT adapter folder
(``PeftModel.from_pretrained(base, DIR)`` loads it) with ``recipe.yaml``; its ``merged`` form
(``evomerge export --merged``) is the base with that adapter merged in, a model folder
``AutoModelForCausalLM.from_pretrained`` loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml

from evomerge.core.errors import EvomergeError, PluginError
from evomerge.core.files import replacing
from evomerge.ops.lora_compose import COMPOSITIONS
from evomerge.ops.lora_mixing import SIGN_METHODS
from evomerge.spaces.model_folder import write_model_folder
from evomerge.spaces.realised import Loaded
from evomerge.spaces.vectors import VectorGenomes
from evomerge.tensors.adapted_model import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    PEFT_PREFIX,
    LoraAdapter,
)
from evomerge.tensors.layer_names import layer_of
from evomerge.tensors.model_ref import open_model, resolve_model

OPTIONS = ("combination", "rank", "layer_groups", "density", "majority_sign_method")


def _options(spec: dict) -> dict:
    """``seeds.options`` of an adapter search: combination, rank (svd forms), layer_groups,
    density (pruning forms), majority_sign_method (ties forms)."""
    opts = dict(spec.get("options") or {})
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise PluginError(
            f"seeds.options.{unknown[0]}: not an adapter-space option; give {', '.join(OPTIONS)}",
            exit_code=2,
        )
    kind = opts.get("combination", "linear")
    if kind not in COMPOSITIONS:
        raise PluginError(f"seeds.options.combination: {COMPOSITIONS.unknown(kind)}", exit_code=2)
    composition = COMPOSITIONS.get(kind)
    rank, groups = opts.get("rank"), opts.get("layer_groups", 1)
    if not isinstance(groups, int) or groups < 1 or (rank is not None and int(rank) < 1):
        raise PluginError("seeds.options: layer_groups and rank must be integers >= 1", exit_code=2)
    density = opts.get("density")
    if composition.uses_density:
        if isinstance(density, bool) or not isinstance(density, (int, float)):
            raise PluginError(
                f"seeds.options.density: combination {kind} prunes; give the fraction of values "
                "kept, a number in (0, 1]",
                exit_code=2,
            )
        if not 0 < density <= 1:
            raise PluginError(
                f"seeds.options.density: {density} is not in (0, 1]; give the fraction kept",
                exit_code=2,
            )
    elif density is not None:
        raise PluginError(
            f"seeds.options.density: combination {kind} does not prune; drop density",
            exit_code=2,
        )
    signs = opts.get("majority_sign_method", "total")
    if signs not in SIGN_METHODS:
        raise PluginError(
            f"seeds.options.majority_sign_method: '{signs}' is not one of "
            f"{', '.join(SIGN_METHODS)}",
            exit_code=2,
        )
    return {
        "kind": kind,
        "rank": int(rank) if rank is not None else None,
        "groups": groups,
        "density": float(density) if density is not None else 1.0,
        "sign_method": signs,
    }


class AdapterGeneSpace(VectorGenomes):
    """Genes: ``K x G`` coefficients (adapter-major); each adapter alone seeds the search."""

    name = "adapter"
    #: the plug-in's adapters seed the search; gaussian genes are refused, not ignored
    seed_kinds = ("plugin",)

    def __init__(self, adapters: int, groups: int, combination: str):
        self.adapters, self.groups, self.combination = adapters, groups, combination

    @classmethod
    def on_driver(cls, spec: dict, evaluator) -> AdapterGeneSpace:
        info = evaluator.info
        return cls(info["adapters"], info["layer_groups"], info["combination"])

    @classmethod
    def on_worker(cls, spec: dict, host) -> AdapterWorker:
        return AdapterWorker(host, spec)

    def seed_genomes(self, evaluator, progress) -> torch.Tensor:
        """Each adapter alone, at weight 1 in every group (CMA-ES starts at their mean:
        LoraHub's uniform start)."""
        return torch.repeat_interleave(torch.eye(self.adapters), self.groups, dim=1)

    def weights(self, genes) -> list[list[float]]:
        w = torch.as_tensor(genes, dtype=torch.float64).reshape(self.adapters, self.groups)
        return [[round(float(x), 6) for x in row] for row in w]

    def describe(self, genes) -> dict:
        return {
            "space": "adapter",
            "adapter": {
                "combination": self.combination,
                "layer_groups": self.groups,
                "weights": self.weights(genes),
            },
        }

    def summary(self, genes) -> dict:
        return {"adapter_weights": self.weights(genes)}


class AdapterWorker:
    """The base loaded once into the resident model, PEFT's LoRA layers injected into it, and
    each candidate's composed factors written into them."""

    def __init__(self, host, spec: dict):
        self.host = host
        opts = _options(spec)
        self.kind, svd_rank, self.groups = opts["kind"], opts["rank"], opts["groups"]
        self.composition = COMPOSITIONS.get(self.kind)
        self.density, self.sign_method = opts["density"], opts["sign_method"]
        self.mask_seed = int(spec.get("seed", 0))
        folders = host.seed_folders(spec["count"], "adapters")
        tensors = host.resident()
        if not folders or tensors is None:
            raise PluginError(
                f"space adapter: fitness {host.name} has no resident model and seed folders; "
                "use a causal-LM plug-in with seeds BASE+ADAPTER",
                exit_code=2,
            )
        try:
            refs = [resolve_model(f) for f in folders]
        except EvomergeError as exc:
            raise PluginError(str(exc), exit_code=2) from None
        bases = {str(r.base.resolve()) for r in refs}
        if any(r.adapter is None for r in refs) or len(bases) != 1:
            raise PluginError(
                "space adapter: every seed must be BASE+ADAPTER over one base (got "
                f"{', '.join(map(str, folders))})",
                exit_code=2,
            )
        self.base = refs[0].base
        self.adapter_dirs = [r.adapter for r in refs]
        self.factors, self.modules = self._read_adapters()
        ranks = [self._rank(i) for i in range(len(refs))]
        try:
            self.rank = self.composition.rank(ranks, svd_rank)
        except ValueError as exc:
            raise PluginError(f"seeds.options.combination: {exc}", exit_code=2) from None
        layers = [layer_of(m) for m in self.modules]
        top = max([x for x in layers if x is not None], default=0) + 1
        self.group_of = [0 if x is None else x * self.groups // top for x in layers]
        self._load_base(tensors)
        self.targets = self._inject(host.plugin.model)

    # --- set-up ------------------------------------------------------------------------------
    def _read_adapters(self):
        """Per module (base tensor name without ``.weight``), per adapter: ``(A, B, scale,
        embedding)`` in float32, or None where that adapter leaves the module alone."""
        found: dict[str, list] = {}
        for k, folder in enumerate(self.adapter_dirs):
            adapter = LoraAdapter(folder)
            try:
                if adapter.replaced or any(not f.a or f.bias for f in adapter.factors.values()):
                    raise PluginError(
                        f"{folder}: space adapter composes LoRA factors only; this adapter also "
                        "saves whole modules (modules_to_save) or LoRA biases",
                        exit_code=2,
                    )
                for name, f in adapter.factors.items():
                    a = adapter.weights.get(f.a, torch.float32)
                    b = adapter.weights.get(f.b, torch.float32)
                    embed = "lora_embedding_" in f.a
                    empty = [None] * len(self.adapter_dirs)
                    row = found.setdefault(name.removesuffix(".weight"), empty)
                    row[k] = (a, b, f.scale, embed)
            finally:
                adapter.close()
        modules = sorted(found)
        return [found[m] for m in modules], modules

    def _rank(self, k: int) -> int:
        ranks = {row[k][0].shape[0] for row in self.factors if row[k] is not None}
        return max(ranks) if ranks else 0

    def _load_base(self, tensors) -> None:
        layout = self.host.layout()
        with open_model(self.base) as base, torch.no_grad():
            for (name, _), t in zip(layout, tensors, strict=True):
                t.copy_(base.get(name).reshape(t.shape))

    def _inject(self, model):
        """PEFT's LoRA layers (rank ``self.rank``, scale 1) in the resident model; per module
        its ``(A, B)`` parameters."""
        try:
            import peft
        except ImportError:
            raise PluginError("space adapter needs PEFT: pip install peft", exit_code=2) from None
        config = peft.LoraConfig(
            r=self.rank, lora_alpha=self.rank, lora_dropout=0.0, target_modules=self.modules
        )
        peft.inject_adapter_in_model(config, model)
        model.eval()
        targets = []
        for m in self.modules:
            module = model.get_submodule(m)
            if "default" in getattr(module, "lora_A", {}):
                targets.append((module.lora_A["default"].weight, module.lora_B["default"].weight))
            else:
                targets.append(
                    (module.lora_embedding_A["default"], module.lora_embedding_B["default"])
                )
        return targets

    # --- candidates --------------------------------------------------------------------------
    def composed(self, genes):
        """Per module, the candidate's composed ``(A, B)`` (float32)."""
        w = np.asarray(genes, dtype=np.float64).reshape(len(self.adapter_dirs), self.groups)
        for m, (row, g) in enumerate(zip(self.factors, self.group_of, strict=True)):
            factors = [None if f is None else f[:3] for f in row]
            embedding = next(f for f in row if f is not None)[3]
            generator = None
            if self.composition.random:  # the module's own masks, the same for every candidate
                generator = torch.Generator().manual_seed(self.mask_seed * 1_000_003 + m)
            yield self.composition.compose(
                factors,
                w[:, g].tolist(),
                self.rank,
                density=self.density,
                sign_method=self.sign_method,
                generator=generator,
                embedding=embedding,
            )

    def info(self) -> dict:
        return {
            "num_params": len(self.adapter_dirs) * self.groups,
            "adapters": len(self.adapter_dirs),
            "layer_groups": self.groups,
            "combination": self.kind,
            "candidate_bytes": int(sum(a.nbytes + b.nbytes for a, b in self.targets)),
        }

    def one(self, genes) -> np.ndarray:
        return np.asarray(genes, dtype=np.float32).reshape(1, -1)

    def batches(self, genomes):
        """One candidate at a time: the resident model holds one adapter."""
        dim = len(self.adapter_dirs) * self.groups
        return list(np.asarray(genomes, dtype=np.float32).reshape(-1, dim))

    def realise(self, genes):
        with torch.no_grad():
            for (a, b), (ta, tb) in zip(self.composed(genes), self.targets, strict=True):
                ta.copy_(a)
                tb.copy_(b)
        return Loaded()

    # --- export ------------------------------------------------------------------------------
    export_forms = ("merged",)

    def export(self, genes, out, dtype: str, doc: dict, form: str = "adapter") -> dict:
        """A PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``), or
        with ``form="merged"`` the base with it merged in (a model folder); both with
        ``recipe.yaml`` (how it was composed)."""
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise EvomergeError(f"--out: {out} exists and is not empty; give a new folder")
        space = AdapterGeneSpace(len(self.adapter_dirs), self.groups, self.kind)
        description = space.describe(genes)
        description["adapter"]["adapters"] = [str(d) for d in self.adapter_dirs]
        description["adapter"]["base"] = str(self.base)
        if self.composition.form == "update":
            description["adapter"]["rank"] = self.rank
        if self.composition.uses_density:
            description["adapter"]["density"] = self.density
        if self.composition.uses_signs:
            description["adapter"]["majority_sign_method"] = self.sign_method
        if self.composition.random:
            description["adapter"]["mask_seed"] = self.mask_seed
        if form == "merged":
            description["adapter"]["merged"] = True
            return self._export_merged(genes, out, dtype, {**doc, **description})
        return self._export_adapter(genes, out, dtype, {**doc, **description})

    def _export_adapter(self, genes, out: Path, dtype: str, recipe: dict) -> dict:
        from safetensors.torch import save_file

        from evomerge.tensors.dtypes import DTYPES

        tensors = {}
        for m, (a, b), row in zip(self.modules, self.composed(genes), self.factors, strict=True):
            embed = next(f for f in row if f is not None)[3]
            names = ("lora_embedding_A", "lora_embedding_B")
            if not embed:
                names = ("lora_A.weight", "lora_B.weight")
            tensors[f"{PEFT_PREFIX}{m}.{names[0]}"] = a.to(DTYPES[dtype]).contiguous()
            tensors[f"{PEFT_PREFIX}{m}.{names[1]}"] = b.to(DTYPES[dtype]).contiguous()
        config = {
            "peft_type": "LORA",
            "r": self.rank,
            "lora_alpha": self.rank,
            "use_rslora": False,
            "target_modules": list(self.modules),
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": False,
            "base_model_name_or_path": str(self.base),
        }
        out.parent.mkdir(parents=True, exist_ok=True)  # as every export makes its parents
        with replacing(out) as tmp:
            tmp.mkdir()
            save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
            (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        return {"tensors": len(tensors), "space": "adapter"}

    def _export_merged(self, genes, out: Path, dtype: str, recipe: dict) -> dict:
        """The base's tensors with the composed update ``B @ A`` added (transposed for
        embeddings, as PEFT's ``merge_and_unload``), written tensor by tensor."""
        model = self.host.plugin.model
        tied = model.get_output_embeddings() is not None and (
            model.get_output_embeddings().weight is model.get_input_embeddings().weight
        )
        deltas = {}
        for m, ab, row in zip(self.modules, self.composed(genes), self.factors, strict=True):
            embed = next(f for f in row if f is not None)[3]
            if embed and tied:
                raise EvomergeError(
                    f"--merged: the adapter changes '{m}', an embedding tied to the output "
                    "head, which a merged model would change too; export the adapter "
                    "(without --merged)"
                )
            deltas[f"{m}.weight"] = (*ab, embed)

        def tensors():
            with open_model(self.base) as base:
                for name, _ in layout:
                    t = base.get(name, torch.float32)
                    if name in deltas:
                        a, b, embed = deltas[name]
                        update = b @ a
                        t = t + (update.T if embed else update).reshape(t.shape)
                    yield t

        layout = self.host.layout()
        files = self.host.export_info().get("files", [])
        texts = {"recipe.yaml": yaml.safe_dump(recipe, sort_keys=False)}
        count = write_model_folder(out, layout, tensors(), dtype, files, texts)
        return {"tensors": count, "space": "adapter", "form": "merged"}
