"""What the merge operators share: parameter checks, working precision, constants and blocks."""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping

import torch

#: mergekit's SLERP: above this |cos(angle)| the tensors are colinear and interpolated linearly.
DOT_THRESHOLD = 0.9995
#: mergekit's SLERP: a tensor whose norm is at most this is not normalised.
NORM_EPS = 1e-8
#: mergekit: a summed weight below this (without sign consensus) is replaced by 1.
WEIGHT_EPS = 1e-8
#: mergekit: L1 rescaling is skipped when either norm is below this.
RESCALE_EPS = 1e-7
#: Entries per block of the fused per-tensor passes: a block's float32 temporaries
#: (a few of 512 KiB) stay in a core's cache, so each extra operation costs little.
BLOCK = 1 << 17


def as_number(value, name: str) -> float:
    """A real parameter value; bools and None are refused with the parameter's name."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"parameter '{name}' must be a number, got {value!r}")
    return float(value)


def as_index(value, name: str) -> int:
    """An integral parameter value (a float like 3.0 is accepted)."""
    number = as_number(value, name)
    if not number.is_integer():
        raise ValueError(f"parameter '{name}' must be an integer, got {value!r}")
    return int(number)


def as_flag(value, name: str) -> bool:
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ValueError(f"parameter '{name}' must be true or false, got {value!r}")


def as_fraction(mp: Mapping, name: str) -> float:
    value = as_number(mp[name], name)
    if not value >= 0.0:
        raise ValueError(f"parameter '{name}' must be >= 0, got {value!r}")
    return value


def work_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for half-precision (and non-float) inputs; float32/float64 stay as they are."""
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


# --- blocks ---------------------------------------------------------------------------------


def block_slices(n: int, device: torch.device) -> Iterator[slice]:
    """Flat slices of ``BLOCK`` entries on CPU (one slice on an accelerator)."""
    step = BLOCK if device.type == "cpu" else max(n, 1)
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))
