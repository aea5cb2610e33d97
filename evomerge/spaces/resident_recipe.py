"""Recipe candidates written tensor by tensor into a plug-in's resident model.

A recipe worker keeps its seeds where they are (memory-mapped seed folders, shared through the
page cache, or the plug-in's made seeds) and, for each candidate, merges one tensor at a time
on the model's device and copies it into the model: no flat copy of the model exists. Seed
tensors in the model's half dtype go to the operator as they are (the operators compute in
float32 block by block and round once); any other mix of dtypes is computed in float32 and
rounded once by the copy into the model. Either way the tensors equal
:meth:`RecipeSpace.materialize` over float32 seeds, then cast to the model's dtype. On the CPU
several tensors are merged at once, each on one torch thread (:mod:`evomerge.tensors.parallel`:
the operators' many short block ops stall at torch's thread barriers on a busy machine).

``seeds_on_device`` (``auto | true | false``) keeps the K seeds on an accelerator when they
fit, so a load is a device-side mix; on the CPU it changes nothing (the seeds are mapped).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from evomerge.spaces.recipe import RecipeSection, RecipeSpace
from evomerge.tensors.parallel import for_each_tensor
from evomerge.tensors.seed_store import DeviceSeeds

HALF = (torch.bfloat16, torch.float16)
#: ``auto`` keeps the seeds on the device when they take at most this share of its free memory.
AUTO_SHARE = 0.8


def seeds_fit(setting, device: torch.device, nbytes: int) -> bool:
    """Whether to copy ``nbytes`` of seeds to ``device`` for ``seeds_on_device: setting``."""
    if device.type == "cpu" or setting is False or setting == "false":
        return False
    if setting is True or setting == "true":
        return True
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= AUTO_SHARE * free


def seed_bytes(store, layout) -> int:
    """Bytes of all K seeds in their stored dtypes."""
    total, offset = 0, 0
    for _, shape in layout:
        n = math.prod(shape)
        sizes = [store.piece(k, offset, offset + n).element_size() for k in range(store.num_seeds)]
        total += sum(sizes) * n
        offset += n
    return total


def on_device(store, layout, device: torch.device, setting):
    """``store`` itself, or its seeds copied to ``device`` when ``setting`` says they fit."""
    device = torch.device(device)
    if device.type != "cpu" and seeds_fit(setting, device, seed_bytes(store, layout)):
        return DeviceSeeds(store, device, layout)
    return store


class ResidentRecipe:
    """Loads recipe gene vectors into ``tensors`` (``layout``'s, in order) from ``store``."""

    def __init__(
        self,
        section: RecipeSection,
        layout: Sequence[tuple[str, Sequence[int]]],
        store,
        tensors: Sequence[torch.Tensor],
    ):
        self.space = RecipeSpace(section, layout, store.num_seeds)
        self.store = store
        self.tensors = list(tensors)
        if len(self.tensors) != len(self.space.layout):
            raise ValueError(
                f"resident_tensors() has {len(self.tensors)} tensors, param_layout() "
                f"{len(self.space.layout)}; they must be the same tensors, in order"
            )
        self.bounds = []
        offset = 0
        for t, (name, shape) in zip(self.tensors, self.space.layout, strict=True):
            if tuple(t.shape) != tuple(shape):
                raise ValueError(
                    f"resident tensor for '{name}' has shape {tuple(t.shape)}, "
                    f"param_layout() says {tuple(shape)}"
                )
            self.bounds.append((offset, offset + math.prod(shape)))
            offset += math.prod(shape)
        if offset != store.num_params:
            raise ValueError(
                f"the layout covers {offset} parameters, the seeds have {store.num_params}"
            )

    def _parts(self, index: int, device, dtype) -> list[torch.Tensor]:
        lo, hi = self.bounds[index]
        shape = self.space.layout[index][1]
        parts = [self.store.piece(k, lo, hi) for k in range(self.store.num_seeds)]
        same = {p.dtype for p in parts} == {dtype} and dtype in HALF
        work = dtype if same else torch.float32
        return [p.to(device=device, dtype=work).view(shape) for p in parts]

    def merged(self, genes: Sequence[float], device="cpu") -> Iterator[torch.Tensor]:
        """Each layout tensor of the recipe ``genes``, in float32 (for export)."""
        recipe = self.space.decode([float(g) for g in genes])
        for i in range(len(self.bounds)):
            yield self.space.merge_tensor(i, self._parts(i, device, torch.float32), recipe)

    @torch.no_grad()
    def load(self, genes: Sequence[float]) -> None:
        """Write the merge that ``genes`` describe into the resident tensors, in place."""
        recipe = self.space.decode([float(g) for g in genes])

        def one(i: int) -> None:
            t = self.tensors[i]
            with torch.no_grad():
                t.copy_(self.space.merge_tensor(i, self._parts(i, t.device, t.dtype), recipe))

        cpu = all(t.device.type == "cpu" for t in self.tensors)
        for_each_tensor(one, [t.numel() for t in self.tensors], cpu=cpu)
