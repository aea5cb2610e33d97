"""What a model name in a config means: a folder or file, a Hub id, or ``BASE+ADAPTER``.

Every place that accepts a model folder reads it through :func:`resolve_model` (where it is)
and :func:`open_model` (its tensors, lazily). A name is, in order: a path that exists (looked
up in ``bases``); ``BASE+ADAPTER``, each side a path or Hub id, meaning the base with a PEFT
LoRA adapter merged in (:mod:`evomerge.tensors.adapted_model`); a Hub id ``org/name[@rev]``
from the local cache (:mod:`evomerge.tensors.hub_models`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from evomerge.core.errors import EvomergeError
from evomerge.tensors.adapted_model import AdaptedModel, is_adapter_folder
from evomerge.tensors.hub_models import is_hub_id, pinned, resolve_hub
from evomerge.tensors.safetensors_io import SeedModel


@dataclass(frozen=True)
class ModelRef:
    """A resolved model name: the base folder (config, tokenizer, weights) and its adapter."""

    text: str
    base: Path
    adapter: Path | None = None

    @property
    def folder(self) -> Path:
        """Where the model's config.json and tokenizer are: the base's folder."""
        return self.base


def _find(text: str, bases: Sequence[Path], whole: str) -> Path:
    for base in bases:
        p = (Path(base) / text).expanduser()
        if p.exists():
            return p
    if is_hub_id(text):
        return resolve_hub(text)[0]
    raise EvomergeError(
        f"model '{whole}': no such file or folder (looked in {', '.join(map(str, bases))}); "
        "give a .safetensors file or a Hugging Face folder on disk"
    )


def resolve_model(text: str | Path, bases: Sequence[Path] = ()) -> ModelRef:
    """Where the model ``text`` names is; relative paths are looked up in ``bases`` (or the
    working directory)."""
    text = str(text)
    bases = list(bases) or [Path.cwd()]
    if any((Path(b) / text).expanduser().exists() for b in bases) or "+" not in text:
        return ModelRef(text, _find(text, bases, text))
    base_text, adapter_text = text.split("+", 1)
    base, adapter = _find(base_text, bases, text), _find(adapter_text, bases, text)
    if not is_adapter_folder(adapter):
        raise EvomergeError(
            f"model '{text}': {adapter} is not a PEFT adapter folder (no adapter_config.json); "
            "BASE+ADAPTER takes a LoRA adapter saved with PEFT's save_pretrained"
        )
    return ModelRef(text, base, adapter)


def open_model(text: str | Path, bases: Sequence[Path] = ()) -> SeedModel:
    """The lazy tensors of the model ``text`` names (the adapter merged in, tensor by tensor)."""
    ref = resolve_model(text, bases)
    if ref.adapter is not None:
        return AdaptedModel(ref.base, ref.adapter, label=ref.text)
    return SeedModel(ref.base)


def pin_model(text: str, bases: Sequence[Path] = ()) -> str:
    """``text`` with every Hub id in it pinned to the commit it resolves to now (paths and
    pinned ids unchanged), so a resumed run reads the same weights."""
    text = str(text)
    bases = list(bases) or [Path.cwd()]
    if any((Path(b) / text).expanduser().exists() for b in bases):
        return text
    parts = text.split("+", 1) if "+" in text else [text]
    out = []
    for part in parts:
        exists = any((Path(b) / part).expanduser().exists() for b in bases)
        out.append(part if exists or not is_hub_id(part) else pinned(part))
    return "+".join(out)
