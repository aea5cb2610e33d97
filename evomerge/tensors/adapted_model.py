"""A base model with a PEFT LoRA adapter applied, read lazily one tensor at a time.

``BASE+ADAPTER`` (mergekit's syntax) names the base model with the adapter merged in. An
:class:`AdaptedModel` is the base's lazy :class:`~evomerge.tensors.safetensors_io.SeedModel`
whose :meth:`~AdaptedModel.get` adds ``scale * B @ A`` to the tensors the adapter targets (as
PEFT's ``merge_and_unload`` does: ``scale = alpha / r``, ``alpha / sqrt(r)`` with rslora,
per-module ``rank_pattern``/``alpha_pattern``, transposed for ``fan_in_fan_out`` and
embeddings) and returns the adapter's own copy of ``modules_to_save`` tensors. Only the tensor
being read and its two small factors are ever in memory.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from evomerge.core.errors import EvomergeError
from evomerge.tensors.safetensors_io import SeedModel

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."

_LORA = re.compile(r"(.+)\.lora_([AB])\.weight")
_EMBED = re.compile(r"(.+)\.lora_embedding_([AB])")
_BIAS = re.compile(r"(.+)\.lora_B\.bias")


@dataclass
class LoraFactor:
    """The factors of one adapted module: ``delta = scale * B @ A`` (transposed if asked)."""

    a: str
    b: str
    scale: float
    transpose: bool
    bias: str | None = None


def is_adapter_folder(path: Path) -> bool:
    return path.is_dir() and (path / ADAPTER_CONFIG).is_file()


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's per-module override: the first pattern that ends ``module``'s dotted name."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


class LoraAdapter:
    """A PEFT LoRA adapter folder: its config and its factors, opened lazily."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        where = self.folder / ADAPTER_CONFIG
        try:
            self.config = json.loads(where.read_text())
        except (OSError, ValueError) as exc:
            raise EvomergeError(
                f"{where}: cannot read the adapter config ({exc}); save the adapter with PEFT again"
            ) from None
        kind = self.config.get("peft_type")
        if kind != "LORA":
            raise EvomergeError(f"{where}: peft_type is {kind}; evomerge reads LoRA adapters only")
        if self.config.get("use_dora"):
            raise EvomergeError(
                f"{where}: use_dora: DoRA adapters are not supported; give a LoRA adapter"
            )
        if not (self.folder / ADAPTER_WEIGHTS).is_file():
            raise EvomergeError(
                f"{self.folder}: no {ADAPTER_WEIGHTS}; save the adapter with PEFT "
                "(safe_serialization, the default)"
            )
        self.weights = SeedModel(self.folder / ADAPTER_WEIGHTS)
        self.factors: dict[str, LoraFactor] = {}  # base tensor name -> its factors
        self.replaced: dict[str, str] = {}  # base tensor name -> adapter tensor name
        self._parse()

    def _scale(self, module: str, rank: int) -> float:
        r = _pattern_value(self.config.get("rank_pattern"), module, self.config.get("r", 8))
        alpha = _pattern_value(
            self.config.get("alpha_pattern"), module, self.config.get("lora_alpha", 8)
        )
        if int(r) != rank:
            raise EvomergeError(
                f"{self.folder / ADAPTER_CONFIG}: module '{module}' has rank {rank} in the "
                f"weights but r {r} in the config; save the adapter with PEFT again"
            )
        return alpha / math.sqrt(rank) if self.config.get("use_rslora") else alpha / rank

    def _parse(self) -> None:
        parts: dict[tuple[str, bool], dict[str, str]] = {}
        biases: dict[str, str] = {}
        for key in self.weights.names():
            name = key.removeprefix(PEFT_PREFIX)
            if m := _LORA.fullmatch(name):
                parts.setdefault((m.group(1), False), {})[m.group(2)] = key
            elif m := _EMBED.fullmatch(name):
                parts.setdefault((m.group(1), True), {})[m.group(2)] = key
            elif m := _BIAS.fullmatch(name):
                biases[m.group(1)] = key
            elif "lora_" in name:
                raise EvomergeError(
                    f"{self.folder / ADAPTER_WEIGHTS}: tensor '{key}' is a LoRA variant evomerge "
                    "does not read (plain LoRA factors only)"
                )
            else:  # modules_to_save, or an embedding's saved base layer: a whole new tensor
                self.replaced[name.replace(".base_layer.", ".")] = key
        fan_in_fan_out = bool(self.config.get("fan_in_fan_out"))
        for (module, embed), ab in parts.items():
            if set(ab) != {"A", "B"}:
                raise EvomergeError(
                    f"{self.folder / ADAPTER_WEIGHTS}: module '{module}' has lora_"
                    f"{''.join(ab)} without its pair; save the adapter with PEFT again"
                )
            rank = self.weights.shape(ab["A"])[0]
            self.factors[f"{module}.weight"] = LoraFactor(
                ab["A"], ab["B"], self._scale(module, rank), embed or fan_in_fan_out
            )
        for module, key in biases.items():
            self.factors.setdefault(
                f"{module}.bias", LoraFactor("", "", self.factors[f"{module}.weight"].scale, False)
            ).bias = key

    def delta_shape(self, name: str) -> tuple[int, ...]:
        f = self.factors[name]
        if not f.a:
            return self.weights.shape(f.bias)
        shape = (self.weights.shape(f.b)[0], self.weights.shape(f.a)[1])
        return shape[::-1] if f.transpose else shape

    def delta(self, name: str) -> torch.Tensor:
        """``scale * B @ A`` for base tensor ``name`` (float32), as PEFT computes it."""
        f = self.factors[name]
        if not f.a:
            return self.weights.get(f.bias, torch.float32) * f.scale
        delta = self.weights.get(f.b, torch.float32) @ self.weights.get(f.a, torch.float32)
        return (delta.T if f.transpose else delta) * f.scale

    def close(self) -> None:
        self.weights.close()


class AdaptedModel(SeedModel):
    """``base`` with the LoRA adapter in ``adapter`` merged in, tensor by tensor."""

    def __init__(self, base: str | Path, adapter: str | Path, label: str | None = None):
        super().__init__(base)
        try:
            self.adapter = LoraAdapter(adapter)
            self._check(label or f"{base}+{adapter}")
        except BaseException:
            self.close()
            raise

    def _check(self, label: str) -> None:
        a = self.adapter
        for name in [*a.factors, *a.replaced]:
            if name not in self._info:
                raise EvomergeError(
                    f"model '{label}': the adapter changes '{name}', which the base has not; "
                    "give the base model the adapter was trained on"
                )
        for name in a.factors:
            if a.factors[name].a and a.delta_shape(name) != self.shape(name):
                raise EvomergeError(
                    f"model '{label}': the adapter's update of '{name}' has shape "
                    f"{list(a.delta_shape(name))}, the base's tensor {list(self.shape(name))}; "
                    "give the base model the adapter was trained on"
                )
        for name, key in a.replaced.items():
            if a.weights.shape(key) != self.shape(name):
                raise EvomergeError(
                    f"model '{label}': the adapter's '{key}' has shape "
                    f"{list(a.weights.shape(key))}, the base's '{name}' {list(self.shape(name))}; "
                    "give the base model the adapter was trained on"
                )

    def __repr__(self) -> str:
        return f"AdaptedModel({str(self.path)!r} + {str(self.adapter.folder)!r})"

    def replaced(self, name: str) -> bool:
        return name in self.adapter.factors or name in self.adapter.replaced

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        if not self.replaced(name):
            return super().get(name, dtype)
        if name in self.adapter.replaced:  # modules_to_save, or an embedding's saved base
            t = self.adapter.weights.get(self.adapter.replaced[name], self.dtype(name))
        else:
            t = super().get(name)
        if name in self.adapter.factors:
            t = (t.float() + self.adapter.delta(name)).to(t.dtype)
        return t if dtype is None or t.dtype == dtype else t.to(dtype)

    def close(self) -> None:
        adapter = getattr(self, "adapter", None)
        if adapter is not None:
            adapter.close()
        super().close()
