"""Weighted compositions of LoRA adapters in factor space, as PEFT's ``add_weighted_adapter``.

Each adapter ``i`` of one module is ``(A_i, B_i, s_i)``: its update is ``s_i * B_i @ A_i``
(``A``: rank x in, ``B``: out x rank). A composition gives one ``(A, B)`` whose update, at
scale 1, is the candidate's:

* ``linear`` (LoraHub): ``A = sum sign_i sqrt|w_i s_i| A_i``, ``B = sum sqrt|w_i s_i| B_i``
  (equal ranks; the cross terms ``B_i A_j`` are part of it, as in LoraHub and PEFT);
* ``cat``: the factors stacked, ``A = [w_i s_i A_i]``, ``B = [B_i]``: exactly
  ``sum w_i s_i B_i A_i`` at rank ``sum r_i``;
* ``svd``: ``sum w_i s_i B_i A_i`` truncated to ``rank`` by SVD (``B = U S``, ``A = Vh``).

Embedding adapters (``A``: rank x num_embeddings, the update transposed) compose alike: PEFT
factors ``B @ A`` for them too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

COMBINATIONS = ("linear", "cat", "svd")


def composed_rank(kind: str, ranks: Sequence[int], svd_rank: int | None = None) -> int:
    """The rank of a composition of adapters of ``ranks``."""
    if kind == "linear":
        if len(set(ranks)) != 1:
            raise ValueError(
                f"linear composition needs adapters of one rank (got {sorted(set(ranks))}); "
                "use cat or svd"
            )
        return ranks[0]
    if kind == "cat":
        return sum(ranks)
    if kind == "svd":
        return int(svd_rank or max(ranks))
    raise ValueError(f"'{kind}' is not one of {', '.join(COMBINATIONS)}")


def compose(
    kind: str,
    factors: Sequence[tuple[torch.Tensor, torch.Tensor, float] | None],
    weights: Sequence[float],
    rank: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` of rank ``rank`` for ``factors`` (None: that adapter leaves the module
    alone) weighted by ``weights``; float32. ``A``'s and ``B``'s rows past what the
    composition fills are zero."""
    used = [(f, float(w)) for f, w in zip(factors, weights, strict=True) if f is not None]
    a0, b0, _ = used[0][0]
    A = torch.zeros(rank, a0.shape[1], dtype=torch.float32)
    B = torch.zeros(b0.shape[0], rank, dtype=torch.float32)
    if kind == "linear":
        for (a, b, s), w in used:
            ws = w * s
            root = math.sqrt(abs(ws))
            A += a.float() * (root if ws >= 0 else -root)
            B += b.float() * root
    elif kind == "cat":
        at = 0
        for (a, b, s), w in used:
            r = a.shape[0]
            A[at : at + r] = a.float() * (w * s)
            B[:, at : at + r] = b.float()
            at += r
    elif kind == "svd":
        delta = sum(w * s * (b.float() @ a.float()) for (a, b, s), w in used)
        U, S, Vh = torch.linalg.svd(delta, full_matrices=True)
        k = min(rank, S.shape[0])
        B[:, :k] = U[:, :k] @ torch.diag(S[:k])
        A[:k] = Vh[:k]
    else:
        raise ValueError(f"'{kind}' is not one of {', '.join(COMBINATIONS)}")
    return A, B
