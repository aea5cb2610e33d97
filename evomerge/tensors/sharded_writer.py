"""A streaming sharded safetensors writer: each tensor goes straight to its final offset.

A :class:`ShardedWriter` knows every tensor's name, shape and dtype up front, so it fixes the
shard layout and each shard's header before any data arrives, preallocates the shard files and
writes each tensor's bytes straight to their final offset. Peak memory is the tensor being
written (plus one converted copy of it when its dtype or device differs from the plan), never
the model. Everything is built in a hidden temporary sibling folder that is renamed into place
at :meth:`ShardedWriter.commit`, so a crash never leaves a half-written model at ``out_dir``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from evomerge.core.errors import EvomergeError
from evomerge.core.files import fsync_tree, publish, temp_sibling
from evomerge.tensors.finite import check_output
from evomerge.tensors.safetensors_format import (
    INDEX_NAME,
    SINGLE_NAME,
    TORCH_TO_ST,
    WRITE_CHUNK,
    itemsize,
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
        nbytes = math.prod(shape) * itemsize(dtype)
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
    order = sorted(members, key=lambda i: -itemsize(plan[i][2]))
    header: dict[str, object] = {"__metadata__": metadata}
    offsets = {}
    pos = 0
    for i in order:
        name, shape, dtype = plan[i]
        nbytes = math.prod(shape) * itemsize(dtype)
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
        self.tmp_dir = temp_sibling(self.out_dir)
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
                nbytes = math.prod(shape) * itemsize(dtype)
                self._slots[name] = _Slot(k, start, start + nbytes, shape, dtype)
                self._weight_map[name] = self.shard_files[k]
        self.total_size = sum(s.end - s.begin for s in self._slots.values())
        sizes = [len(header) for header, _ in layouts]
        for slot in self._slots.values():
            sizes[slot.shard] += slot.end - slot.begin
        try:
            self._create(layouts, sizes)
        except OSError as exc:
            self.abort()
            raise self._os_error(exc) from None
        except BaseException:
            self.abort()
            raise

    def _os_error(self, exc: OSError) -> EvomergeError:
        """A write that the disk refused (full, file size limit, permissions): one line."""
        return EvomergeError(
            f"{self.out_dir}: cannot write the output ({exc.strerror or exc}); nothing was "
            "saved: free disk space or fix permissions",
            exit_code=1,
        )

    def _check_args(self, max_shard_bytes: int, metadata: dict[str, str] | None) -> None:
        if len(self.out_dir.name.encode()) > 255:
            raise EvomergeError(
                f"--out: the folder name is {len(self.out_dir.name.encode())} bytes long, more "
                "than the 255 a file system allows; choose a shorter name"
            )
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
                done += os.pwrite(fd, data[done : done + WRITE_CHUNK], offset + done)
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
        check_output(t, name, self.out_dir)
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
            try:
                shutil.copyfile(p, self.tmp_dir / p.name)
            except OSError as exc:
                raise self._os_error(exc) from None
            self._copied.add(p.name)

    def write_text(self, name: str, text: str) -> None:
        """Add a small generated text file (a recipe, a README) to the output folder."""
        self._require_open(f"write '{name}'")
        if Path(name).name != name or name in set(self.shard_files) | {INDEX_NAME} | self._copied:
            raise EvomergeError(f"{name}: not a free file name in the output folder")
        try:
            (self.tmp_dir / name).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise self._os_error(exc) from None
        self._copied.add(name)

    def commit(self) -> Path:
        """Check all tensors arrived, flush everything to disk, rename the folder into place."""
        self._require_open("commit")
        missing = [n for n, _, _ in self.plan if not self._slots[n].written]
        if missing:
            raise EvomergeError(
                f"{self.out_dir}: tensor '{missing[0]}' and {len(missing) - 1} other planned "
                "tensors were never written; nothing was saved"
            )
        try:
            if len(self.shard_files) > 1:
                self._write_index()
            fsync_tree(self.tmp_dir)
        except OSError as exc:
            raise self._os_error(exc) from None
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        try:
            publish(self.tmp_dir, self.out_dir, flushed=True)
        except OSError as exc:
            raise EvomergeError(
                f"{self.out_dir}: cannot move the finished model into place ({exc.strerror}); "
                "was the folder filled meanwhile? choose a new output folder"
            ) from None
        self._state = "committed"
        return self.out_dir

    def _write_index(self) -> None:
        index = {"metadata": {"total_size": self.total_size}, "weight_map": self._weight_map}
        text = json.dumps(index, indent=2, sort_keys=True) + "\n"
        (self.tmp_dir / INDEX_NAME).write_text(text, encoding="utf-8")

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
