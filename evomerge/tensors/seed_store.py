"""Where lineage genomes find the seeds they mix: in memory, or memory-mapped model files.

A store answers ``read(start, stop)``: the seeds' entries ``start:stop`` of the flat parameter
vector as a ``(K, stop - start)`` tensor in the seeds' own dtype (float32 where seeds differ).

* :class:`DenseSeeds` holds a ``(K, N)`` float32 array: seeds a plug-in made (digit experts),
  on Ray one read-only copy per node in the object store.
* :class:`MappedSeeds` maps Hugging Face safetensors folders read-only with ``mmap``: every
  process on a node shares the page cache's one copy, nothing is read until a region is
  needed, and a 7B bf16 seed costs its 14 GB file, not 28 GB of float32 per worker.

Both travel to Ray workers as :meth:`describe` (the array, or the folders and layout), so a
worker rebuilds the same store with :func:`from_description`.
"""

from __future__ import annotations

import bisect
import math
import warnings

import numpy as np
import torch

from evomerge.core.errors import EvomergeError
from evomerge.tensors.model_ref import open_model
from evomerge.tensors.safetensors_format import ST_TO_TORCH


def as_float64(block) -> np.ndarray:
    """A read block (numpy array or torch tensor of any float dtype) as float64 numpy."""
    if isinstance(block, torch.Tensor):
        block = block.detach().to("cpu")
        if block.dtype in (torch.bfloat16, torch.float16):  # exact, and 2-3x faster than one
            block = block.float()  # half -> float64 cast on CPU
        return block.double().numpy()
    return np.asarray(block, dtype=np.float64)


class DenseSeeds:
    """Seeds held as one ``(K, N)`` float32 array (possibly a read-only object-store view)."""

    def __init__(self, array: np.ndarray):
        self.array = np.asarray(array, dtype=np.float32)
        if self.array.ndim != 2:
            raise ValueError(f"seeds must be (K, N), got shape {self.array.shape}")
        self.num_seeds, self.num_params = self.array.shape

    @property
    def shared(self) -> bool:
        """True when this is a read-only view of memory another process owns."""
        return not self.array.flags.writeable

    def read(self, start: int, stop: int) -> torch.Tensor:
        with warnings.catch_warnings():  # read-only object-store views: never written to
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(self.array[:, start:stop])

    def piece(self, seed: int, start: int, stop: int) -> torch.Tensor:
        """Seed ``seed``'s entries ``start:stop``, flat: a view, no copy."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(self.array[seed, start:stop])

    def dense(self) -> torch.Tensor:
        """All seeds as a writable ``(K, N)`` float32 tensor."""
        return torch.from_numpy(np.array(self.array))

    def describe(self) -> np.ndarray:
        return self.array


class MappedSeeds:
    """Seed model folders mapped read-only; the flat vector is ``layout``'s tensors in order."""

    def __init__(self, folders, layout):
        self.folders = [str(f) for f in folders]
        self.layout = [(str(n), tuple(int(d) for d in s)) for n, s in layout]
        sizes = [math.prod(s) for _, s in self.layout]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.num_seeds, self.num_params = len(self.folders), int(self.offsets[-1])
        self._tensors = [self._map(f) for f in self.folders]
        self._dtypes = [{t.dtype for t in col} for col in zip(*self._tensors, strict=True)]

    shared = True  # pages live in the page cache, shared by every process mapping the file

    def _map(self, folder: str) -> list[torch.Tensor]:
        """Flat read-only views of ``layout``'s tensors in this folder's files (a
        ``BASE+ADAPTER`` seed holds the tensors its adapter changes in memory)."""
        model = open_model(folder)
        try:
            maps = [
                torch.from_file(str(f), shared=False, size=f.stat().st_size, dtype=torch.uint8)
                for f in model.files
            ]
            views = []
            for name, shape in self.layout:
                try:
                    e = model._entry(name)
                except KeyError:
                    raise EvomergeError(
                        f"{folder}: has no tensor '{name}', which the fitness plug-in's model "
                        "has; lineage seeds must all be the same architecture"
                    ) from None
                if tuple(e.shape) != shape:
                    raise EvomergeError(
                        f"{folder}: tensor '{name}' has shape {tuple(e.shape)}, the fitness "
                        f"plug-in's model expects {shape}"
                    )
                if model.replaced(name):  # an adapter's update: computed, held in memory
                    views.append(model.get(name).reshape(-1))
                    continue
                dtype = ST_TO_TORCH[e.dtype]
                raw = maps[e.file][e.begin : e.end]
                if e.begin % dtype.itemsize:  # unaligned in the file: copy this one tensor
                    raw = raw.clone()
                views.append(raw.view(dtype).reshape(-1))
            return views
        finally:
            model.close()

    def tensor(self, seed: int, index: int) -> torch.Tensor:
        """Seed ``seed``'s tensor ``index`` of the layout, flat, in its stored dtype."""
        return self._tensors[seed][index]

    def piece(self, seed: int, start: int, stop: int) -> torch.Tensor:
        """Seed ``seed``'s entries ``start:stop``, flat, in the stored dtype (a view of the
        mapped file when the range lies in one tensor)."""
        j = bisect.bisect_right(self.offsets, start) - 1
        if start < stop <= self.offsets[j + 1]:
            a = start - int(self.offsets[j])
            return self._tensors[seed][j][a : a + stop - start]
        return self.read(start, stop)[seed]

    def read(self, start: int, stop: int) -> torch.Tensor:
        if not 0 <= start <= stop <= self.num_params:
            raise ValueError(f"range {start}:{stop} outside 0:{self.num_params}")
        first = bisect.bisect_right(self.offsets, start) - 1
        pieces, dtypes = [], set()
        j = first
        while j < len(self.layout) and self.offsets[j] < stop:
            a = max(start, int(self.offsets[j])) - int(self.offsets[j])
            b = min(stop, int(self.offsets[j + 1])) - int(self.offsets[j])
            pieces.append((j, a, b))
            dtypes |= self._dtypes[j]
            j += 1
        dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
        out = torch.empty((self.num_seeds, stop - start), dtype=dtype)
        at = 0
        for j, a, b in pieces:
            for k in range(self.num_seeds):
                out[k, at : at + b - a] = self._tensors[k][j][a:b]
            at += b - a
        return out

    def dense(self) -> torch.Tensor:
        """All seeds as a ``(K, N)`` float32 tensor (small models and tests only)."""
        return self.read(0, self.num_params).float()

    def describe(self) -> dict:
        return {"folders": list(self.folders), "layout": [list(x) for x in self.layout]}


class DeviceSeeds:
    """Another store's seeds copied once to an accelerator, in their stored dtype.

    A candidate's load is then a mix on the device, not K host-to-device copies of every
    tensor (``evaluator.seeds_on_device``). ``describe`` gives the host store's description.
    """

    shared = False

    def __init__(self, store, device: torch.device, layout=None):
        self.host = store
        self.num_seeds, self.num_params = store.num_seeds, store.num_params
        sizes = [math.prod(s) for _, s in layout] if layout else [store.num_params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.blocks = [
            torch.stack([store.piece(k, int(a), int(b)) for k in range(self.num_seeds)]).to(device)
            for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)
        ]

    def piece(self, seed: int, start: int, stop: int) -> torch.Tensor:
        j = bisect.bisect_right(self.offsets, start) - 1
        if start < stop <= self.offsets[j + 1]:
            a = start - int(self.offsets[j])
            return self.blocks[j][seed, a : a + stop - start]
        return self.read(start, stop)[seed]

    def read(self, start: int, stop: int) -> torch.Tensor:
        parts = []
        j = bisect.bisect_right(self.offsets, start) - 1
        while j < len(self.blocks) and self.offsets[j] < stop:
            a = max(start, int(self.offsets[j])) - int(self.offsets[j])
            b = min(stop, int(self.offsets[j + 1])) - int(self.offsets[j])
            parts.append(self.blocks[j][:, a:b])
            j += 1
        if len({p.dtype for p in parts}) > 1:
            parts = [p.float() for p in parts]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def dense(self) -> torch.Tensor:
        return self.host.dense()

    def describe(self):
        return self.host.describe()


def from_description(desc) -> DenseSeeds | MappedSeeds:
    """The store :meth:`describe` described (a worker's copy of the driver's store)."""
    if isinstance(desc, dict):
        return MappedSeeds(desc["folders"], desc["layout"])
    return DenseSeeds(desc)
