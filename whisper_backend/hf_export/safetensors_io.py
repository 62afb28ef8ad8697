"""Write (and read back) the safetensors format, with the `safetensors` package if present.

The format is small enough to write by hand, which keeps the converter's only dependency
numpy: 8-byte little-endian header length, a JSON header mapping each tensor name to its
dtype, shape and [begin, end) offsets into the data that follows, then the raw
little-endian bytes. The header is padded with spaces to a multiple of 8 and tensors are
laid out widest dtype first, so every tensor starts aligned, as the package itself does.
Both writers produce the same bytes (checked by tests/e2e/test_hf_export.py).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

_ST_DTYPES: dict[np.dtype[Any], str] = {
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype("int8"): "I8",
    np.dtype("int16"): "I16",
    np.dtype("int32"): "I32",
    np.dtype("int64"): "I64",
}
_NP_DTYPES = {v: k for k, v in _ST_DTYPES.items()}


def _layout(tensors: Mapping[str, np.ndarray]) -> list[str]:
    """Widest itemsize first, then by name: deterministic and aligned."""
    return sorted(tensors, key=lambda n: (-tensors[n].dtype.itemsize, n))


def header_bytes(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bytes:
    """The length prefix and padded JSON header for tensors in _layout order."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    offset = 0
    for name in _layout(tensors):
        arr = tensors[name]
        if arr.dtype not in _ST_DTYPES:
            raise ValueError(f"{name}: dtype {arr.dtype} not supported")
        header[name] = {
            "dtype": _ST_DTYPES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_by_hand(
    path: Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]
) -> None:
    """Write the file with numpy only: header, then each tensor's bytes in layout order."""
    with path.open("wb") as f:
        f.write(header_bytes(tensors, metadata))
        for name in _layout(tensors):
            arr = np.ascontiguousarray(tensors[name])
            f.write(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())


def save(path: Path, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> str:
    """Write tensors to path; returns which writer did it ("safetensors" or "numpy")."""
    try:
        from safetensors.numpy import save_file
    except ImportError:
        write_by_hand(path, tensors, metadata)
        return "numpy"
    contiguous = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    save_file(contiguous, str(path), metadata=dict(metadata))
    return "safetensors"


def load(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file with numpy (tests and checks; not on the serving path)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    metadata = header.pop("__metadata__", {}) or {}
    base = 8 + n
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = _NP_DTYPES[info["dtype"]].newbyteorder("<")
        out[name] = np.frombuffer(data[base + begin : base + end], dtype=dtype).reshape(
            info["shape"]
        )
    return out, metadata
