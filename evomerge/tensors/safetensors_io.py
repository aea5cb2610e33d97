"""Lazy safetensors seed models: one tensor at a time from a file or a sharded folder.

A :class:`SeedModel` parses each file's JSON header (a few KB) and keeps one open file
descriptor per file; :meth:`SeedModel.get` reads one tensor's bytes with positional reads straight
into a freshly allocated tensor. Nothing is memory-mapped, so no file-backed pages pile up in the
process: only the tensors in flight are ever resident, whatever the model's size (the kernel's
page cache may still keep the files, but that is reclaimable and not the process's memory).
:func:`check_seeds` compares seeds before any work starts. The writer side is
:mod:`evomerge.tensors.sharded_writer` (re-exported here).
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from evomerge.core.errors import EvomergeError
from evomerge.tensors.safetensors_format import (
    INDEX_NAME,
    MAX_HEADER_BYTES,
    READ_CHUNK,
    ST_TO_TORCH,
    itemsize,
)

#: The files of a model folder that make up its tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "*.tiktoken",
    "spiece.model",
    "sentencepiece*.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "chat_template.*",
)
# What a merged model carries over from its base's folder (never weights or weight indexes).
EXTRA_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    *TOKENIZER_FILES,
    "configuration_*.py",
    "modeling_*.py",
    "tokenization_*.py",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


@dataclass(frozen=True)
class _TensorInfo:
    """Where one tensor lives: file index, safetensors dtype, shape, byte range in the file."""

    file: int
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _corrupt(path: Path, why: str) -> EvomergeError:
    return EvomergeError(
        f"{path}: not a valid safetensors file ({why}); it is truncated or corrupt: "
        "download or save it again"
    )


def _read_header(path: Path) -> dict[str, _TensorInfo]:
    """Parse and check one file's header without touching its data, in data-offset order.

    The checks are the safetensors library's own: every tensor's byte range matches its dtype and
    shape, and the ranges tile the data region exactly (no gaps, no overlaps, nothing after).
    Offsets in the result are absolute positions in the file.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _corrupt(path, f"{size} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise _corrupt(path, f"header length {n} does not fit in a {size}-byte file")
            raw = f.read(n)
    except OSError as exc:
        raise EvomergeError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"header is not JSON: {exc}") from None
    except RecursionError:
        raise _corrupt(path, "header is JSON nested too deep to be a header") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    header.pop("__metadata__", None)
    infos = {name: _tensor_info(path, name, entry) for name, entry in header.items()}
    data_bytes = size - 8 - n
    need = max((i.end for i in infos.values()), default=0)
    if need > data_bytes:
        raise _corrupt(path, f"tensors need {need} bytes of data but the file holds {data_bytes}")
    ordered = sorted(infos.items(), key=lambda kv: (kv[1].begin, kv[1].end, kv[0]))
    pos = 0
    for name, info in ordered:
        if info.begin != pos:
            raise _corrupt(path, f"tensor '{name}' starts at data offset {info.begin}, not {pos}")
        pos = info.end
    if pos != data_bytes:
        raise _corrupt(path, f"tensors cover {pos} bytes of data but the file holds {data_bytes}")
    start = 8 + n
    return {
        name: _TensorInfo(-1, i.dtype, i.shape, start + i.begin, start + i.end)
        for name, i in ordered
    }


#: a header's numbers are 64-bit in the format; torch holds at most 64 dimensions
INT64_LIMIT = 2**63
MAX_DIMS = 64


def _is_count(value: object) -> bool:
    """A JSON integer that fits a signed 64-bit count (not a bool, a float or a string)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < INT64_LIMIT


def _tensor_info(path: Path, name: str, entry: object) -> _TensorInfo:
    """One header entry, checked: known dtype, a shape of 64-bit counts whose element count fits
    64 bits (zero dimensions set aside: a huge dimension beside a 0 is refused too), offsets
    matching the size. Nothing a header claims is used before it is checked."""
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise _corrupt(path, f"bad header entry for tensor '{name}'") from None
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise _corrupt(path, f"tensor '{name}' has shape {str(shape)[:80]}, not 64-bit counts")
    if len(shape) > MAX_DIMS:
        raise _corrupt(path, f"tensor '{name}' has {len(shape)} dimensions, more than {MAX_DIMS}")
    if not (_is_count(begin) and _is_count(end)):
        raise _corrupt(path, f"tensor '{name}' has data offsets {[begin, end]!s:.80}")
    if not isinstance(dtype, str) or dtype not in ST_TO_TORCH:
        raise EvomergeError(
            f"{path}: tensor '{name}' has dtype {str(dtype)[:40]}, which this torch build cannot "
            f"read; supported: {', '.join(ST_TO_TORCH)}"
        )
    shape = tuple(shape)
    if math.prod(d for d in shape if d) * itemsize(ST_TO_TORCH[dtype]) >= INT64_LIMIT:
        raise _corrupt(path, f"tensor '{name}' has shape {list(shape)}, too large for 64 bits")
    nbytes = math.prod(shape) * itemsize(ST_TO_TORCH[dtype])
    if end - begin != nbytes:
        raise _corrupt(path, f"tensor '{name}' has offsets {[begin, end]} for shape {list(shape)}")
    return _TensorInfo(-1, dtype, shape, begin, end)


def _open(path: Path) -> int:
    """A read-only file descriptor, with the kernel told reads will be mostly sequential."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise EvomergeError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:  # advice only; some file systems refuse it
            pass
    return fd


def _read_at(fd: int, path: Path, buf: memoryview, offset: int) -> None:
    """Fill all of ``buf`` from ``offset``, in bounded chunks, retrying short reads.

    ``os.preadv`` reads straight into ``buf`` without moving the descriptor's position, so reads
    of one file never interfere; where it is missing, a seek plus ``readinto`` does the same.
    """
    done = 0
    try:
        while done < len(buf):
            part = buf[done : done + READ_CHUNK]
            if hasattr(os, "preadv"):
                got = os.preadv(fd, [part], offset + done)
            else:  # pragma: no cover - platforms without preadv
                os.lseek(fd, offset + done, os.SEEK_SET)
                got = os.readv(fd, [part])
            if got == 0:
                raise _corrupt(path, f"the file ended at byte {offset + done}; was it changed?")
            done += got
    except OSError as exc:
        raise EvomergeError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _shard_files(folder: Path) -> tuple[list[Path], dict[str, str] | None, Path | None]:
    """The safetensors files of a model folder and its weight map (None when not sharded)."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    index = folder / INDEX_NAME if (folder / INDEX_NAME).is_file() else None
    if index is None and len(indexes) == 1:
        index = indexes[0]
    if index is not None:
        weight_map = _read_index(index)
        names = sorted(set(weight_map.values()))
        return [_shard_path(folder, index, f, weight_map) for f in names], weight_map, index
    singles = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if len(singles) == 1:
        return singles, None, None
    found = ", ".join(p.name for p in singles) if singles else "none"
    raise EvomergeError(
        f"{folder}: expected a folder with {INDEX_NAME} (sharded Hugging Face layout) or exactly "
        f"one .safetensors file; found safetensors files: {found}"
    )


def _read_index(index: Path) -> dict[str, str]:
    try:
        data = json.loads(index.read_text())
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        raise EvomergeError(
            f"{index}: not a valid safetensors index (expected JSON with a 'weight_map' of "
            "tensor name -> shard file); download or save the model again"
        ) from None
    return weight_map


def _shard_path(folder: Path, index: Path, name: str, weight_map: dict[str, str]) -> Path:
    path = folder / name
    if Path(name).name != name or not path.is_file():
        tensor = next(k for k, v in weight_map.items() if v == name)
        raise EvomergeError(
            f"{index}: names shard '{name}' (for tensor '{tensor}' and others) but {path} does "
            "not exist; the download is incomplete: fetch the missing shard"
        )
    return path


class SeedModel:
    """A safetensors model on disk, read one tensor at a time with plain positional reads.

    ``path`` is a single ``.safetensors`` file, a folder with ``model.safetensors.index.json``
    (sharded Hugging Face layout; the index is authoritative: tensors a shard holds but the index
    does not name are ignored), or a folder with exactly one ``.safetensors`` file.

    :meth:`names` order: files in sorted name order (Hugging Face's shard order), and within
    each file the order of the tensors' data in it, so a pass over ``names()`` reads each file
    front to back.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fds: list[int] = []
        self._is_folder = self.path.is_dir()
        self.files, weight_map, index = self._locate()
        self._info: dict[str, _TensorInfo] = {}
        headers = [_read_header(f) for f in self.files]
        if weight_map is None:
            wanted = [(i, n) for i, h in enumerate(headers) for n in h]
        else:
            wanted = self._from_index(headers, weight_map, index)
        for i, name in wanted:
            info = headers[i][name]
            self._info[name] = _TensorInfo(i, info.dtype, info.shape, info.begin, info.end)
        for f in self.files:
            try:
                self._fds.append(_open(f))
            except BaseException:
                self.close()
                raise

    def _locate(self) -> tuple[list[Path], dict[str, str] | None, Path | None]:
        if self._is_folder:
            return _shard_files(self.path)
        if self.path.is_file() and self.path.suffix == ".safetensors":
            return [self.path], None, None
        what = "does not exist" if not self.path.exists() else "is not a .safetensors file"
        raise EvomergeError(
            f"{self.path}: {what}; expected a .safetensors file, a Hugging Face folder with "
            f"{INDEX_NAME}, or a folder with one .safetensors file"
        )

    def _from_index(self, headers, weight_map, index) -> list[tuple[int, str]]:
        """(file, name) pairs of the index, checked against the shards' headers."""
        pos = {f.name: i for i, f in enumerate(self.files)}
        for name, fname in weight_map.items():
            if name not in headers[pos[fname]]:
                raise EvomergeError(
                    f"{index}: maps tensor '{name}' to {self.files[pos[fname]]}, which does not "
                    "contain it; the index and shards do not match: download the model again"
                )
        rank = {(i, n): (i, k) for i, h in enumerate(headers) for k, n in enumerate(h)}
        return sorted(((pos[f], n) for n, f in weight_map.items()), key=rank.__getitem__)

    def __repr__(self) -> str:
        return f"SeedModel({str(self.path)!r}, {len(self._info)} tensors, {len(self.files)} files)"

    def names(self) -> list[str]:
        return list(self._info)

    def _entry(self, name: str) -> _TensorInfo:
        try:
            return self._info[name]
        except KeyError:
            raise KeyError(f"tensor '{name}' is not in {self.path}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def dtype(self, name: str) -> torch.dtype:
        return ST_TO_TORCH[self._entry(name).dtype]

    def nbytes(self, name: str) -> int:
        e = self._entry(name)
        return e.end - e.begin

    def file_of(self, name: str) -> Path:
        return self.files[self._entry(name).file]

    def replaced(self, name: str) -> bool:
        """Whether :meth:`get` returns something other than the file's bytes (an adapter's
        update, see :mod:`evomerge.tensors.adapted_model`); False for a plain model."""
        return False

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Read this one tensor from disk into new memory, converted to ``dtype`` if given."""
        e = self._entry(name)
        if not self._fds:
            raise EvomergeError(f"{self.path}: the model was closed before reading '{name}'")
        raw = torch.empty(e.end - e.begin, dtype=torch.uint8)
        if e.end > e.begin:
            _read_at(self._fds[e.file], self.files[e.file], memoryview(raw.numpy()), e.begin)
        t = raw.view(ST_TO_TORCH[e.dtype]).reshape(e.shape)
        return t if dtype is None or t.dtype == dtype else t.to(dtype)

    def extra_files(self) -> list[Path]:
        """Config, tokenizer and similar files to copy next to a merge of this (base) model.

        Empty for a single-file model (its folder may hold anything); never weights or indexes.
        """
        if not self._is_folder:
            return []
        return sorted(
            p
            for p in self.path.iterdir()
            if p.is_file()
            and not p.name.endswith(_WEIGHT_SUFFIXES + (".index.json",))
            and any(fnmatch.fnmatchcase(p.name, pat) for pat in EXTRA_FILE_PATTERNS)
        )

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> SeedModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _model_text(seed: SeedModel, label: str, limit: int = 3) -> str:
    """``model 'label'`` plus its files, unless the label already is its one file."""
    if [str(f) for f in seed.files] == [label]:
        return f"model '{label}'"
    shown = ", ".join(str(f) for f in seed.files[:limit])
    more = len(seed.files) - limit
    return f"model '{label}' ({shown}{f' and {more} more' if more > 0 else ''})"


def check_seeds(seeds: Sequence[SeedModel], labels: Sequence[str] | None = None) -> list[str]:
    """Check up front that the models can be merged; return the tensor names (first's order).

    Every model must hold the same tensor names with the same shapes; dtypes may differ (a
    merge computes in its own declared dtype).
    """
    if not seeds:
        raise EvomergeError("no seed models given; name at least one model to merge")
    labels = [str(s.path) for s in seeds] if labels is None else [str(x) for x in labels]
    _check_names(seeds, labels)
    names = seeds[0].names()
    for name in names:
        want = seeds[0].shape(name)
        for seed, label in zip(seeds[1:], labels[1:], strict=True):
            if seed.shape(name) != want:
                raise EvomergeError(
                    f"tensor '{name}' has shape {list(seed.shape(name))} in "
                    f"{seed.file_of(name)} (model '{label}') but {list(want)} in "
                    f"{seeds[0].file_of(name)} (model '{labels[0]}'); "
                    "merge models of the same architecture and size"
                )
    return names


def _check_names(seeds: Sequence[SeedModel], labels: list[str]) -> None:
    """Every tensor any model has, every model has; else name the first gap and count the rest."""
    union = dict.fromkeys(n for s in seeds for n in s.names())
    for seed, label in zip(seeds, labels, strict=True):
        have = set(seed.names())
        missing = [n for n in union if n not in have]
        if missing:
            owner = next(lab for s, lab in zip(seeds, labels, strict=True) if missing[0] in s._info)
            others = len(missing) - 1
            raise EvomergeError(
                f"tensor '{missing[0]}' (in model '{owner}') is missing from "
                f"{_model_text(seed, label)}, and {others} other tensor"
                f"{' is' if others == 1 else 's are'} missing from it too; "
                "merge models of the same architecture"
            )


from evomerge.tensors.sharded_writer import ShardedWriter, plan_shards, shard_names  # noqa: E402

__all__ = ["INDEX_NAME", "SeedModel", "ShardedWriter", "check_seeds", "plan_shards", "shard_names"]
