"""The GGUF container (llama.cpp's file format) read directly: the metadata
key-values and tensor descriptions parsed from the header, the tensor bytes
memory-mapped. The gguf package's reader took ~2 s on SmolLM2's header (its
98k vocabulary and merge strings, one numpy view each); this takes ~0.1 s.
Every count, length and offset is checked against the file's size, so a
corrupt or truncated file raises ModelLoadError instead of reading past it;
every count against the bytes its elements need at the least, before anything
is allocated. Numeric arrays stay numpy arrays (GgufArray): a Python object per
element would be up to 9 times the bytes a file spends on it.

Layout (little-endian): magic "GGUF", version (u32, 2 or 3), tensor count and
key-value count (u64); the key-values (string key, u32 value type, value);
the tensor infos (string name, u32 n_dims, u64 dims innermost first, u32
type, u64 offset into the data); the data, from the header's end rounded up
to general.alignment (default 32).
"""
from __future__ import annotations

import dataclasses
import math
import mmap
import operator
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import _core
from ..errors import ModelLoadError
from ..text import printable
from .files import open_regular

MAGIC = b"GGUF"
# value type -> (struct format, size) for the fixed-size scalars
_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4), 6: ("<f", 4),
            7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8",
          12: "<f8"}
_STRING, _ARRAY = 8, 9
MAX_DIMS = 4  # GGML_MAX_DIMS
# the fewest bytes each takes: a key-value (an empty key, a type, a u8), a tensor info (an
# empty name, one dimension, a type, an offset), a string (its u64 length)
_MIN_KV, _MIN_TENSOR, _MIN_STRING = 8 + 4 + 1, 8 + 4 + 8 + 4 + 8, 8


@dataclasses.dataclass(frozen=True)
class GgufTensor:
    name: str
    shape: tuple[int, ...]  # numpy order (outermost first)
    type: int  # GGML type id (0 F32, 1 F16, 30 BF16, quantized types otherwise)
    offset: int  # from the start of the file
    data: np.ndarray = dataclasses.field(repr=False)  # uint8 bytes of the tensor, memory-mapped


@dataclasses.dataclass(frozen=True)
class GgufFile:
    version: int
    metadata: dict  # key -> int, float, bool, str, a list of str, or a GgufArray of numbers
    tensors: list[GgufTensor]


class GgufArray(Sequence):
    """A numeric metadata array (token scores, token types, ...) held as a read-only numpy
    array, a copy of the file's bytes: a list would hold a Python object per element, up to
    9 times the bytes. It reads as that list: len, items and iteration give Python numbers
    (bools for GGUF's bool arrays), == compares with a list; np.asarray(a) or a.values is
    the numpy array."""

    __slots__ = ("values",)

    def __init__(self, values: np.ndarray):
        values.setflags(write=False)
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return GgufArray(self.values[index])
        return self.values[operator.index(index)].item()

    def __iter__(self):
        for start in range(0, len(self.values), 4096):  # Python numbers a block at a time, not all at once
            yield from self.values[start : start + 4096].tolist()

    def __eq__(self, other):
        if not isinstance(other, (GgufArray, list, np.ndarray)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # as a list's

    def __array__(self, dtype=None, copy=None):
        return np.array(self.values, dtype=dtype, copy=copy)

    def tolist(self) -> list:
        return self.values.tolist()

    def __repr__(self) -> str:
        return f"GgufArray({self.values.dtype}, {len(self.values)} values)"


class _Cursor:
    """Reads the header sequentially, refusing to step past the end."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise ModelLoadError(f"{self.path} is truncated or corrupt: its header runs past the end of the file")
        self.pos += n
        return start

    def scalar(self, kind: int):
        fmt, size = _SCALARS[kind]
        return struct.unpack_from(fmt, self.buf, self.take(size))[0]

    def string(self) -> str:
        n = self.scalar(10)
        start = self.take(n)
        try:
            return bytes(self.buf[start : start + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelLoadError(f"{self.path} holds a string that is not UTF-8 at byte {start}") from None

    def value(self, kind: int, key: str):
        if kind in _SCALARS:
            return self.scalar(kind)
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise ModelLoadError(f"{self.path} is corrupt: unknown GGUF value type {kind}")
        item, count = self.scalar(4), self.scalar(10)
        if item in _NUMPY:
            start = self.take(count * np.dtype(_NUMPY[item]).itemsize)  # a Python int: no overflow
            values = np.frombuffer(self.buf, _NUMPY[item], count, start).copy()  # the file's bytes, once
            return GgufArray(values != 0 if item == 7 else values)
        if item == _STRING:
            left = len(self.buf) - self.pos
            if count > left // _MIN_STRING:  # refused before a string is read
                raise ModelLoadError(f"{self.path} is corrupt: an array claims {count} strings, more than the "
                                     f"{left} bytes left hold")
            return [self.string() for _ in range(count)]
        if item == _ARRAY:  # llama.cpp refuses these too; they would be a list of objects per element
            raise ModelLoadError(f"{self.path}: metadata {printable(repr(key))} is an array of arrays, which GGUF "
                                 "readers (llama.cpp's, tinymech's) do not read")
        raise ModelLoadError(f"{self.path} is corrupt: unknown GGUF array type {item}")


def import_gguf():
    """The gguf package, needed only to dequantize types the core does not read."""
    try:
        import gguf
    except ImportError:
        raise ModelLoadError(
            "this GGUF file holds tensors of a quantization tinymech's core does not read (it reads F32, F16, "
            "BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K); dequantizing them needs the gguf package: "
            "pip install gguf (or pip install 'tinymech[gguf]')"
        ) from None
    return gguf


def tensor_nbytes(type_id: int, shape: tuple[int, ...], path: Path) -> int:
    """Bytes of a tensor of this GGML type: the types the core reads from its table
    (_core.quant_block), other block-quantized types from the gguf package's table
    (which dequantizes them anyway)."""
    n = math.prod(int(d) for d in shape)  # Python's integers: int64 wraps past 2^63
    block, size = _core.quant_block(type_id)
    if not block:
        gguf = import_gguf()
        try:
            block, size = gguf.constants.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
        except (ValueError, KeyError):
            raise ModelLoadError(f"{path} holds a tensor of unknown GGML type {type_id}") from None
    if shape and shape[-1] % block:
        raise ModelLoadError(f"{path} holds a tensor whose rows ({shape[-1]}) are not whole blocks of {block}")
    return n // block * size


def read_gguf_file(path: str | Path) -> GgufFile:
    path = Path(path)
    with open_regular(path) as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:  # ValueError: an empty file cannot be mapped
            raise ModelLoadError(f"cannot read {path} as a GGUF file: {e}") from e
    cur = _Cursor(buf, path)
    if len(buf) < 4 or bytes(buf[:4]) != MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    cur.take(4)
    version = cur.scalar(4)
    if version not in (2, 3):
        raise ModelLoadError(f"{path} is GGUF version {version}; tinymech reads versions 2 and 3")
    n_tensors, n_kv = cur.scalar(10), cur.scalar(10)
    left = len(buf) - cur.pos
    if n_tensors * _MIN_TENSOR + n_kv * _MIN_KV > left:  # refused before any is read
        raise ModelLoadError(f"{path} is corrupt: it claims {n_tensors} tensors and {n_kv} metadata entries, "
                             f"more than its {left} bytes hold")
    metadata = {}
    for _ in range(n_kv):
        key = cur.string()
        if key in metadata:  # which value is meant? (llama.cpp refuses it too)
            raise ModelLoadError(f"{path} is corrupt: it holds the metadata key {printable(repr(key))} twice")
        metadata[key] = cur.value(cur.scalar(4), key)
    infos = []
    names = set()
    for _ in range(n_tensors):
        name = cur.string()
        if name in names:
            raise ModelLoadError(f"{path} is corrupt: it holds tensor {printable(repr(name))} twice")
        names.add(name)
        n_dims = cur.scalar(4)
        if not 1 <= n_dims <= MAX_DIMS:
            raise ModelLoadError(f"{path} is corrupt: tensor {name!r} has {n_dims} dimensions")
        dims = [cur.scalar(10) for _ in range(n_dims)]
        infos.append((name, tuple(reversed(dims)), cur.scalar(4), cur.scalar(10)))
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or not 1 <= alignment <= 1 << 16:
        raise ModelLoadError(f"{path} is corrupt: general.alignment is {alignment!r}")
    data_start = -(-cur.pos // alignment) * alignment
    file_bytes = np.frombuffer(buf, np.uint8)
    tensors = []
    for name, shape, type_id, offset in infos:
        if any(d > len(buf) for d in shape):
            raise ModelLoadError(f"{path} is corrupt: tensor {name!r} has shape {list(shape)}")
        nbytes = tensor_nbytes(type_id, shape, path)
        start = data_start + offset
        if offset % alignment or start + nbytes > len(buf):
            raise ModelLoadError(f"{path} is truncated or corrupt: tensor {name!r} lies outside the file")
        tensors.append(GgufTensor(name, shape, type_id, start, file_bytes[start : start + nbytes]))
    return GgufFile(version, metadata, tensors)
