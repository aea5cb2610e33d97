"""The safetensors file format as evomerge reads and writes it: names, limits and dtype codes.

An 8-byte little-endian header length, a JSON header (``{name: {"dtype", "shape",
"data_offsets"}}`` plus ``"__metadata__"``) padded with spaces to a multiple of 8, then the data;
Hugging Face's sharding convention names the files ``model.safetensors``, or
``model-0000i-of-0000N.safetensors`` with ``model.safetensors.index.json``.
"""

from __future__ import annotations

import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER_BYTES = 100 * 2**20  # the limit the safetensors library itself enforces
WRITE_CHUNK = 256 * 2**20  # one pwrite call moves at most this much (Linux caps a call near 2 GiB)
READ_CHUNK = 256 * 2**20  # likewise for one read call

DTYPE_NAMES = {
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
    k: getattr(torch, v) for k, v in DTYPE_NAMES.items() if hasattr(torch, v)
}
TORCH_TO_ST: dict[torch.dtype, str] = {v: k for k, v in ST_TO_TORCH.items()}


def itemsize(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()
