"""Weighted compositions of LoRA adapters, PEFT's ``add_weighted_adapter`` combination types.

Each adapter ``i`` of one module is ``(A_i, B_i, s_i)``: its update is ``s_i * B_i @ A_i``
(``A``: rank x in, ``B``: out x rank). A composition gives one ``(A, B)`` whose update, at
scale 1, is the candidate's. Three families, each registered by name in :data:`COMPOSITIONS`
(``seeds.options.combination`` of the adapter space):

* factor mixes (``linear`` (LoraHub), ``ties``, ``dare_linear``, ``dare_ties``,
  ``magnitude_prune``): the :mod:`evomerge.ops.lora_mixing` mix of the ``A_i`` weighted by
  ``sign_i sqrt|w_i s_i|`` and, separately, of the ``B_i`` weighted by ``sqrt|w_i s_i|``
  (equal ranks; cross terms ``B_i A_j`` are part of it, as in LoraHub and PEFT);
* ``cat``: the factors stacked, ``A = [w_i s_i A_i]``, ``B = [B_i]``: exactly
  ``sum w_i s_i B_i A_i`` at rank ``sum r_i``;
* update mixes then SVD (``svd``, ``ties_svd``, ``dare_linear_svd``, ``dare_ties_svd``,
  ``magnitude_prune_svd``): the mix of the full updates ``s_i B_i A_i`` weighted by ``w_i``,
  truncated to ``rank`` by SVD (``B = U S``, ``A = Vh``).

Embedding adapters (``A``: rank x num_embeddings) compose alike; PEFT prunes their full updates
in the embedding's own layout (``(B A)^T``), so ``embedding=True`` does too, which makes DARE's
masks PEFT's for the same generator state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from evomerge.core.registry import Registry
from evomerge.ops.lora_mixing import mix

Factors = Sequence[tuple[torch.Tensor, torch.Tensor, float] | None]


@dataclass(frozen=True)
class Composition:
    """One combination type: ``form`` ``factors`` (the mix on A and on B), ``cat``, or
    ``update`` (the mix on the full updates, then SVD); ``mix`` a kind of
    :func:`evomerge.ops.lora_mixing.mix`."""

    form: str
    mix: str = "sum"

    @property
    def uses_density(self) -> bool:
        return self.mix != "sum"

    @property
    def uses_signs(self) -> bool:
        return self.mix in ("ties", "dare_ties")

    @property
    def random(self) -> bool:
        return self.mix.startswith("dare")

    def rank(self, ranks: Sequence[int], svd_rank: int | None = None) -> int:
        """The rank of the composition of adapters of ``ranks``."""
        if self.form == "factors":
            if len(set(ranks)) != 1:
                raise ValueError(
                    f"this composition needs adapters of one rank (got {sorted(set(ranks))}); "
                    "use cat or an svd form"
                )
            return ranks[0]
        if self.form == "cat":
            return sum(ranks)
        return int(svd_rank or max(ranks))

    def compose(
        self,
        factors: Factors,
        weights: Sequence[float],
        rank: int,
        density: float = 1.0,
        sign_method: str = "total",
        generator: torch.Generator | None = None,
        embedding: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` of rank ``rank`` (float32; rows past what the composition fills are zero)
        for ``factors`` (None: that adapter leaves the module alone) weighted by ``weights``."""
        used = [(f, float(w)) for f, w in zip(factors, weights, strict=True) if f is not None]
        a0, b0, _ = used[0][0]
        A = torch.zeros(rank, a0.shape[1], dtype=torch.float32)
        B = torch.zeros(b0.shape[0], rank, dtype=torch.float32)
        opts = {"density": density, "sign_method": sign_method, "generator": generator}
        if self.form == "factors":
            roots = [abs(w * s) ** 0.5 for (_, _, s), w in used]
            signed = [
                r if w * s >= 0 else -r for r, ((_, _, s), w) in zip(roots, used, strict=True)
            ]
            a = mix(self.mix, [f[0].float() for f, _ in used], signed, **opts)
            b = mix(self.mix, [f[1].float() for f, _ in used], roots, **opts)
            A[: a.shape[0]], B[:, : b.shape[1]] = a, b
        elif self.form == "cat":
            at = 0
            for (a, b, s), w in used:
                r = a.shape[0]
                A[at : at + r] = a.float() * (w * s)
                B[:, at : at + r] = b.float()
                at += r
        else:
            deltas = [(b.float() @ a.float()) * s for (a, b, s), _ in used]
            if embedding:
                deltas = [d.T for d in deltas]
            delta = mix(self.mix, deltas, [w for _, w in used], **opts)
            if embedding:
                delta = delta.T
            U, S, Vh = torch.linalg.svd(delta, full_matrices=True)
            k = min(rank, S.shape[0])
            B[:, :k] = U[:, :k] @ torch.diag(S[:k])
            A[:k] = Vh[:k]
        return A, B


COMPOSITIONS: Registry[Composition] = Registry("composition", "seeds.options.combination")
for _name, _c in {
    "linear": Composition("factors"),
    "ties": Composition("factors", "ties"),
    "dare_linear": Composition("factors", "dare_linear"),
    "dare_ties": Composition("factors", "dare_ties"),
    "magnitude_prune": Composition("factors", "magnitude_prune"),
    "cat": Composition("cat"),
    "svd": Composition("update"),
    "ties_svd": Composition("update", "ties"),
    "dare_linear_svd": Composition("update", "dare_linear"),
    "dare_ties_svd": Composition("update", "dare_ties"),
    "magnitude_prune_svd": Composition("update", "magnitude_prune"),
}.items():
    COMPOSITIONS.register(_name, _c)


def _get(kind: str) -> Composition:
    if kind not in COMPOSITIONS:
        raise ValueError(f"'{kind}' is not one of {', '.join(COMPOSITIONS.names())}")
    return COMPOSITIONS.get(kind)


def composed_rank(kind: str, ranks: Sequence[int], svd_rank: int | None = None) -> int:
    """The rank of a ``kind`` composition of adapters of ``ranks``."""
    return _get(kind).rank(ranks, svd_rank)


def compose(
    kind: str, factors: Factors, weights: Sequence[float], rank: int, **options
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)``: the ``kind`` composition (:meth:`Composition.compose`)."""
    return _get(kind).compose(factors, weights, rank, **options)
