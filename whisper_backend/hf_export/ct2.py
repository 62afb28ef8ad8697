"""Read a CTranslate2 `model.bin` (binary format version 6) without CTranslate2.

The format, from CTranslate2's `specs/model_spec.py` (`_serialize`) and `src/models/model.cc`:
little-endian uint32 version, then (version >= 2) the spec name and its uint32 revision,
uint32 variable count and per variable: name, uint8 rank, uint32 dims, (version >= 4) uint8
dtype id and uint32 byte count, then the raw bytes; then (version >= 3) uint32 alias count
and (alias, target) name pairs. A string is a uint16 length counting a trailing NUL.
Parsed by hand so the converter needs only numpy, and reads the file as CTranslate2 would.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SUPPORTED_VERSIONS = (6,)
# include/ctranslate2/types.h DataType order (specs/model_spec.py _dtype_to_type_id).
DTYPES: tuple[str, ...] = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


class CT2FormatError(ValueError):
    """model.bin is not a CTranslate2 binary this reader understands."""


@dataclass
class CT2Model:
    """The arrays of one model.bin, by name; aliases resolved to the same array."""

    spec: str
    revision: int
    version: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        """The array called name (following an alias), raising a clear error if absent."""
        target = self.aliases.get(name, name)
        try:
            return self.arrays[target]
        except KeyError:
            raise CT2FormatError(f"model.bin has no variable {name!r}") from None

    def has(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.arrays

    def scalar(self, name: str) -> int:
        """An integer scalar (e.g. num_heads, stored as int16)."""
        arr = self.get(name)
        if arr.size != 1:
            raise CT2FormatError(f"{name} is not a scalar (shape {arr.shape})")
        return int(arr.reshape(-1)[0])

    def float_array(self, name: str) -> np.ndarray:
        """A weight as a float array: float16/float32 kept, bfloat16 widened, int8 dequantized.

        int8 weights come with a `weight_scale` beside them (per output row): w = q / scale,
        as CTranslate2's specs/model_spec.py quantizes them.
        """
        arr = self.get(name)
        dtype = self.dtypes[self.aliases.get(name, name)]
        if dtype in ("float16", "float32"):
            return arr
        if dtype == "bfloat16":
            return (arr.astype(np.uint32) << 16).view(np.float32)
        if dtype in ("int8", "int16") and name.endswith("/weight"):
            scale_name = name[: -len("weight")] + "weight_scale"
            if not self.has(scale_name):
                raise CT2FormatError(f"{name} is {dtype} without {scale_name}")
            scale = self.get(scale_name).astype(np.float32)
            if scale.ndim == 1 and arr.ndim >= 2:
                scale = scale.reshape((-1,) + (1,) * (arr.ndim - 1))
            return arr.astype(np.float32) / scale
        raise CT2FormatError(f"{name} has dtype {dtype}, not a float weight")


class _Reader:
    """A cursor over the file's bytes that fails loudly on truncation."""

    def __init__(self, buf: memoryview | bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise CT2FormatError(f"model.bin truncated at byte {self.pos} (wanted {n} more)")
        view = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return view

    def uint(self, fmt: str) -> int:
        size = struct.calcsize("<" + fmt)
        return int(struct.unpack("<" + fmt, self.take(size))[0])

    def string(self) -> str:
        n = self.uint("H")
        raw = bytes(self.take(n))
        if not raw.endswith(b"\0"):
            raise CT2FormatError(f"string at byte {self.pos - n} lacks its NUL")
        return raw[:-1].decode("utf-8")


def parse(buf: memoryview | bytes) -> CT2Model:
    """Parse model.bin bytes; arrays are copies, so buf may be closed afterwards."""
    r = _Reader(buf)
    version = r.uint("I")
    if version not in SUPPORTED_VERSIONS:
        raise CT2FormatError(f"model.bin binary version {version}, expected 6")
    spec = r.string()
    revision = r.uint("I")
    model = CT2Model(spec=spec, revision=revision, version=version)
    for _ in range(r.uint("I")):
        name = r.string()
        rank = r.uint("B")
        shape = tuple(r.uint("I") for _ in range(rank))
        type_id = r.uint("B")
        if type_id >= len(DTYPES):
            raise CT2FormatError(f"{name}: unknown dtype id {type_id}")
        dtype = DTYPES[type_id]
        nbytes = r.uint("I")
        np_dtype = np.dtype(np.uint16 if dtype == "bfloat16" else dtype).newbyteorder("<")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * np_dtype.itemsize != nbytes:
            raise CT2FormatError(f"{name}: {nbytes} bytes for shape {shape} {dtype}")
        data = np.frombuffer(r.take(nbytes), dtype=np_dtype).copy()
        model.arrays[name] = data.reshape(shape)
        model.dtypes[name] = dtype
    for _ in range(r.uint("I")):
        alias = r.string()
        model.aliases[alias] = r.string()
    if r.pos != len(buf):
        raise CT2FormatError(f"{len(buf) - r.pos} trailing bytes after the aliases")
    for alias, target in model.aliases.items():
        if target not in model.arrays:
            raise CT2FormatError(f"alias {alias} points at missing {target}")
    return model


def load(path: Path) -> CT2Model:
    """Read model.bin through mmap: the file is read once, never held twice in memory."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            return parse(view)
        finally:
            view.release()
