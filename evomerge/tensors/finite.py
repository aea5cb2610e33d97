"""NaN/Inf guards for merges and exports: one pass per tensor, no copy.

A merge of a tensor holding NaN or Inf holds them too (TIES even fails on them inside its sign
election), so inputs are checked as they stream in and the output before it is written.
The check sums the tensor in float64: a sum of finite float32/16 values cannot overflow
float64, so the sum is finite exactly when every entry is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from evomerge.core.errors import EvomergeError


def is_finite(tensor: torch.Tensor) -> bool:
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    return bool(torch.isfinite(tensor.sum(dtype=torch.float64)))


def check_inputs(tensors: Sequence[torch.Tensor | None], name: str, files: Sequence[Path]) -> None:
    """Refuse a merge input tensor with NaN or Inf, naming the tensor and its file."""
    for tensor, path in zip(tensors, files, strict=True):
        if tensor is not None and not is_finite(tensor):
            nan = bool(torch.isnan(tensor).any())
            raise EvomergeError(
                f"{path}: tensor '{name}' holds {'NaN' if nan else 'Inf'} values; a merge with "
                "it would too: replace this model with a finite one"
            )


def check_output(tensor: torch.Tensor, name: str, where: Path) -> None:
    """Refuse to write an output tensor with NaN or Inf (e.g. overflow in float16)."""
    if not is_finite(tensor):
        raise EvomergeError(
            f"{where}: tensor '{name}' came out with NaN or Inf values (overflow in its "
            "dtype?); nothing was saved: use a wider dtype or check the merge's parameters",
            exit_code=1,
        )
