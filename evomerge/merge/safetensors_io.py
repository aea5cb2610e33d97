"""Lazy safetensors seed models and a streaming sharded safetensors writer.

Reading: a :class:`SeedModel` parses each file's JSON header (a few KB) and keeps one open file
descriptor per file; :meth:`SeedModel.get` reads one tensor's bytes with positional reads straight
into a freshly allocated tensor. Nothing is memory-mapped, so no file-backed pages pile up in the
process: only the tensors in flight are ever resident, whatever the model's size (the kernel's
page cache may still keep the files, but that is reclaimable and not the process's memory).

Writing: a :class:`ShardedWriter` knows every tensor's name, shape and dtype up front, so it fixes
the shard layout and each shard's header before any data arrives, preallocates the shard files
and writes each tensor's bytes straight to their final offset. Peak memory is the tensor being
written (plus one converted copy of it when its dtype or device differs from the plan), never
the model. Everything is built in a hidden temporary sibling folder that is renamed into place
at :meth:`ShardedWriter.commit`, so a crash never leaves a half-written model at ``out_dir``.

File layout follows the safetensors spec: an 8-byte little-endian header length, a JSON header
(``{name: {"dtype", "shape", "data_offsets"}}`` plus ``"__metadata__"``) padded with spaces to a
multiple of 8, then the data; and Hugging Face's sharding convention (``model.safetensors``, or
``model-0000i-of-0000N.safetensors`` with ``model.safetensors.index.json``).
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import shutil
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import EvomergeError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER_BYTES = 100 * 2**20  # the limit the safetensors library itself enforces
_WRITE_CHUNK = 256 * 2**20  # one pwrite call moves at most this much (Linux caps a call near 2 GiB)
_READ_CHUNK = 256 * 2**20  # likewise for one read call

_DTYPE_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "C64": "complex64",
}
# Only the dtypes this torch build has (older builds lack the unsigned and float8 types).
ST_TO_TORCH: dict[str, torch.dtype] = {
    k: getattr(torch, v) for k, v in _DTYPE_NAMES.items() if hasattr(torch, v)
}
TORCH_TO_ST: dict[torch.dtype, str] = {v: k for k, v in ST_TO_TORCH.items()}

# Files a merged model should carry over from its base model's folder (config, tokenizer,
# generation settings, remote code); weights and weight indexes never match these.
EXTRA_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
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


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


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


def _tensor_info(path: Path, name: str, entry: object) -> _TensorInfo:
    """One header entry, checked: known dtype, non-negative shape, offsets matching the size."""
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        shape = tuple(int(d) for d in shape)
        begin, end = int(begin), int(end)
    except (TypeError, KeyError, ValueError):
        raise _corrupt(path, f"bad header entry for tensor '{name}'") from None
    if dtype not in ST_TO_TORCH:
        raise EvomergeError(
            f"{path}: tensor '{name}' has dtype {dtype}, which this torch build cannot read; "
            f"supported: {', '.join(ST_TO_TORCH)}"
        )
    nbytes = math.prod(shape) * _itemsize(ST_TO_TORCH[dtype])
    if min(shape, default=0) < 0 or begin < 0 or end - begin != nbytes:
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
            part = buf[done : done + _READ_CHUNK]
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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
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


@dataclass
class _Slot:
    """A planned tensor: its shard, absolute byte range in the shard file, shape and dtype."""

    shard: int
    begin: int
    end: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    written: bool = False


def shard_names(count: int) -> list[str]:
    """Hugging Face shard file names: ``model.safetensors`` alone, else numbered."""
    if count == 1:
        return [SINGLE_NAME]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def plan_shards(
    plan: Sequence[tuple[str, tuple[int, ...], torch.dtype]], max_shard_bytes: int
) -> list[list[int]]:
    """Plan indices per shard, in plan order; a new shard when the next tensor would overflow.

    A tensor larger than ``max_shard_bytes`` gets a shard of its own (as Hugging Face does).
    """
    shards: list[list[int]] = [[]]
    size = 0
    for i, (_, shape, dtype) in enumerate(plan):
        nbytes = math.prod(shape) * _itemsize(dtype)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nbytes
    return shards


def _layout(plan, members: list[int], metadata: dict[str, str]) -> tuple[bytes, list[int]]:
    """One shard's header bytes (length prefix included) and each member's data offset.

    Data is ordered by element size, largest first (stable), as the safetensors library does,
    so that with the 8-aligned header every tensor starts aligned to its element size.
    """
    order = sorted(members, key=lambda i: -_itemsize(plan[i][2]))
    header: dict[str, object] = {"__metadata__": metadata}
    offsets = {}
    pos = 0
    for i in order:
        name, shape, dtype = plan[i]
        nbytes = math.prod(shape) * _itemsize(dtype)
        header[name] = {
            "dtype": TORCH_TO_ST[dtype],
            "shape": list(shape),
            "data_offsets": [pos, pos + nbytes],
        }
        offsets[i] = pos
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    start = 8 + len(raw)
    return struct.pack("<Q", len(raw)) + raw, [start + offsets[i] for i in members]


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShardedWriter:
    """Write a planned set of tensors as a sharded safetensors folder, one tensor at a time.

    ``plan`` lists (name, shape, dtype) of every output tensor; shards are cut in plan order.
    Tensors may then be written in any order; :meth:`commit` renames the finished folder into
    place. ``out_dir`` must not exist or be an empty folder (a non-empty one is refused so a
    merge never mixes with or replaces an existing model). As a context manager it aborts
    (removes the temporary folder) on an exception or when left without :meth:`commit`.
    """

    def __init__(
        self,
        out_dir: str | Path,
        plan: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
        max_shard_bytes: int = 5 * 2**30,
        metadata: dict[str, str] | None = None,
    ):
        self.out_dir = Path(out_dir).absolute()
        self.plan = [(str(n), tuple(int(d) for d in s), dt) for n, s, dt in plan]
        self._check_args(max_shard_bytes, metadata)
        self.tmp_dir = self.out_dir.parent / f".{self.out_dir.name}.tmp-{os.getpid()}"
        self._fds: list[int] = []
        self._copied: set[str] = set()
        self._state = "open"
        shards = plan_shards(self.plan, max_shard_bytes)
        self.shard_files = shard_names(len(shards))
        meta = {"format": "pt", **(metadata or {})}
        self._slots: dict[str, _Slot] = {}
        self._weight_map: dict[str, str] = {}
        layouts = [_layout(self.plan, members, meta) for members in shards]
        for k, (members, (_, starts)) in enumerate(zip(shards, layouts, strict=True)):
            for i, start in zip(members, starts, strict=True):
                name, shape, dtype = self.plan[i]
                nbytes = math.prod(shape) * _itemsize(dtype)
                self._slots[name] = _Slot(k, start, start + nbytes, shape, dtype)
                self._weight_map[name] = self.shard_files[k]
        self.total_size = sum(s.end - s.begin for s in self._slots.values())
        sizes = [len(header) for header, _ in layouts]
        for slot in self._slots.values():
            sizes[slot.shard] += slot.end - slot.begin
        try:
            self._create(layouts, sizes)
        except BaseException:
            self.abort()
            raise

    def _check_args(self, max_shard_bytes: int, metadata: dict[str, str] | None) -> None:
        if self.out_dir.exists() and (not self.out_dir.is_dir() or any(self.out_dir.iterdir())):
            raise EvomergeError(
                f"{self.out_dir}: already exists and is not an empty folder; choose a new output "
                "folder or remove this one"
            )
        names = [n for n, _, _ in self.plan]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise EvomergeError(f"{self.out_dir}: tensor '{dup}' is planned twice")
        bad = next(((n, dt) for n, _, dt in self.plan if dt not in TORCH_TO_ST), None)
        if bad is not None:
            raise EvomergeError(f"tensor '{bad[0]}': dtype {bad[1]} cannot be saved as safetensors")
        if max_shard_bytes < 1:
            raise EvomergeError(f"max shard size must be positive, got {max_shard_bytes} bytes")
        if metadata and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise EvomergeError("safetensors metadata must map strings to strings")

    def _create(self, layouts: list[tuple[bytes, list[int]]], sizes: list[int]) -> None:
        """Make the temporary folder and each shard file at full size, header in place."""
        if self.tmp_dir.exists():  # left by an earlier writer of this same process id
            shutil.rmtree(self.tmp_dir)
        self.tmp_dir.mkdir(parents=True)
        need = sum(sizes)
        free = shutil.disk_usage(self.tmp_dir).free
        if need > free:
            raise EvomergeError(
                f"{self.out_dir.parent}: the merged model needs {need / 2**30:.2f} GiB but only "
                f"{free / 2**30:.2f} GiB is free; free some space or write elsewhere"
            )
        for fname, (header, _), size in zip(self.shard_files, layouts, sizes, strict=True):
            fd = os.open(self.tmp_dir / fname, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds.append(fd)
            self._pwrite(fd, fname, memoryview(header), 0)
            os.ftruncate(fd, size)  # the data region, sparse until written

    def _pwrite(self, fd: int, fname: str, data: memoryview, offset: int) -> None:
        """All of ``data`` at ``offset``, in bounded chunks, retrying short writes."""
        done = 0
        try:
            while done < len(data):
                done += os.pwrite(fd, data[done : done + _WRITE_CHUNK], offset + done)
        except OSError as exc:
            raise EvomergeError(
                f"{self.tmp_dir / fname}: write failed ({exc.strerror or exc}); "
                "check free space and permissions of the output folder"
            ) from None

    def _require_open(self, action: str) -> None:
        if self._state != "open":
            raise EvomergeError(f"{self.out_dir}: cannot {action}, the writer is {self._state}")

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor's bytes at its place, in the plan's dtype."""
        self._require_open(f"write '{name}'")
        slot = self._slots.get(name)
        if slot is None:
            raise EvomergeError(f"{self.out_dir}: tensor '{name}' is not in the output plan")
        if slot.written:
            raise EvomergeError(f"{self.out_dir}: tensor '{name}' was already written")
        if tuple(tensor.shape) != slot.shape:
            raise EvomergeError(
                f"{self.out_dir}: tensor '{name}' has shape {list(tensor.shape)} but the plan "
                f"says {list(slot.shape)}"
            )
        t = tensor.detach().to(device="cpu", dtype=slot.dtype).contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy()
        fname = self.shard_files[slot.shard]
        self._pwrite(self._fds[slot.shard], fname, memoryview(raw), slot.begin)
        slot.written = True

    def copy_files(self, paths: Iterable[Path]) -> None:
        """Copy side files (config, tokenizer, ...) into the output folder, by file name."""
        self._require_open("copy files")
        reserved = set(self.shard_files) | {INDEX_NAME}
        for p in map(Path, paths):
            if not p.is_file():
                raise EvomergeError(f"{p}: cannot copy it into the output, it is not a file")
            if p.name in reserved or p.name in self._copied:
                raise EvomergeError(
                    f"{p}: cannot copy it into the output, the name '{p.name}' is already taken"
                )
            shutil.copyfile(p, self.tmp_dir / p.name)
            self._copied.add(p.name)

    def commit(self) -> Path:
        """Check all tensors arrived, flush everything to disk, rename the folder into place."""
        self._require_open("commit")
        missing = [n for n, _, _ in self.plan if not self._slots[n].written]
        if missing:
            raise EvomergeError(
                f"{self.out_dir}: tensor '{missing[0]}' and {len(missing) - 1} other planned "
                "tensors were never written; nothing was saved"
            )
        for fd in self._fds:
            os.fsync(fd)
            os.close(fd)
        self._fds = []
        if len(self.shard_files) > 1:
            self._write_index()
        for name in self._copied:
            _fsync_path(self.tmp_dir / name)
        _fsync_path(self.tmp_dir)
        try:
            os.replace(self.tmp_dir, self.out_dir)
        except OSError as exc:
            raise EvomergeError(
                f"{self.out_dir}: cannot move the finished model into place ({exc.strerror}); "
                "was the folder filled meanwhile? choose a new output folder"
            ) from None
        _fsync_path(self.out_dir.parent)
        self._state = "committed"
        return self.out_dir

    def _write_index(self) -> None:
        index = {"metadata": {"total_size": self.total_size}, "weight_map": self._weight_map}
        path = self.tmp_dir / INDEX_NAME
        with open(path, "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    def abort(self) -> None:
        """Drop everything written so far; ``out_dir`` is left as it was. Safe to call twice."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if self._state != "committed":
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self._state = "aborted"

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._state != "committed":
            self.abort()
