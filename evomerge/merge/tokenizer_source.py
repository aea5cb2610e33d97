"""mergekit's ``tokenizer_source``, honoured where no row alignment is needed, refused otherwise.

mergekit builds an output vocabulary (the base's, the union of all, or a named model's) and
permutes every model's embedding and output-head rows onto it. evomerge does not permute rows:
it accepts ``tokenizer_source`` when every model has the same vocabulary (token -> id, added
tokens included), where alignment is the identity and the output gets the chosen tokenizer, and
refuses it with one line otherwise, so rows of different tokens are never merged silently.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from pathlib import Path

from evomerge.core.errors import EvomergeError
from evomerge.tensors.safetensors_io import TOKENIZER_FILES, SeedModel


def is_tokenizer_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in TOKENIZER_FILES)


def vocabulary(folder: Path) -> dict[str, int] | str | None:
    """A model folder's vocabulary (token -> id), a digest of its binary tokenizer model, or
    None when it holds no tokenizer files."""
    tok = folder / "tokenizer.json"
    if tok.is_file():
        data = json.loads(tok.read_text(encoding="utf-8"))
        vocab = (data.get("model") or {}).get("vocab") or {}
        if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            vocab = {piece: i for i, (piece, _) in enumerate(vocab)}
        vocab = dict(vocab)
        for added in data.get("added_tokens") or []:
            vocab[added["content"]] = added["id"]
        return vocab
    if (folder / "vocab.json").is_file():
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        added = folder / "added_tokens.json"
        if added.is_file():
            vocab.update(json.loads(added.read_text(encoding="utf-8")))
        return vocab
    for name in ("tokenizer.model", "spiece.model"):
        if (folder / name).is_file():
            return hashlib.sha256((folder / name).read_bytes()).hexdigest()
    return None


def _describe(v) -> str:
    return f"{len(v)} tokens" if isinstance(v, dict) else "a sentencepiece model"


def tokenizer_files(source, seeds: list[SeedModel], labels: list[str], bases: list[Path]):
    """None (keep the first seed's tokenizer files), or the tokenizer files of the model
    ``source`` names, which replace them. Raises EvomergeError when the vocabularies differ."""
    if source is None:
        return None
    pairs = zip(seeds, labels, strict=True)
    folders = [(s.path if s.path.is_dir() else None, lab) for s, lab in pairs]
    chosen = None
    if source not in ("base", "union"):
        candidates = [(b / source).expanduser() for b in bases]
        chosen = next((c for c in candidates if c.is_dir()), None)
        if chosen is None:
            raise EvomergeError(f"tokenizer_source: '{source}' is not a model folder on disk")
        folders.append((chosen, str(source)))
    vocabs = []
    for folder, label in folders:
        v = vocabulary(folder) if folder is not None else None
        if v is None:
            raise EvomergeError(
                f"tokenizer_source: model '{label}' has no tokenizer files, so its vocabulary "
                "cannot be checked; remove tokenizer_source or add the tokenizer files"
            )
        vocabs.append((v, label))
    first, first_label = vocabs[0]
    for v, label in vocabs[1:]:
        if v != first:
            raise EvomergeError(
                f"tokenizer_source: the vocabularies of '{first_label}' ({_describe(first)}) and "
                f"'{label}' ({_describe(v)}) differ, and evomerge does not realign embedding "
                "rows; merge models that share a tokenizer, or drop tokenizer_source"
            )
    if chosen is None:
        return None
    return sorted(p for p in chosen.iterdir() if p.is_file() and is_tokenizer_file(p.name))
