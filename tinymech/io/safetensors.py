"""Memory-mapped reading of .safetensors files, checking every header field.

The header is JSON: {name: {dtype, shape, data_offsets: [begin, end]}, ...}
after an 8-byte little-endian length. Tensors are returned as read-only numpy
views into the mapped file (float32 data is never copied); every offset and
shape is checked against the file before anything is read, so a corrupt or
hostile file raises ModelLoadError instead of reading out of bounds.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError, ModelNotFoundError
from .files import inside, open_regular, parse_json, read_json

MAX_HEADER_BYTES = 100 * 1024 * 1024

_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # widened to float32 by to_float32()
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


class SafetensorsFile:
    """The tensors of one .safetensors file, mapped into memory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with open_regular(self.path) as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise self._error(f"file is {size} bytes, too short for a header")
            try:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except OSError as e:
                raise ModelLoadError(f"cannot read {self.path}: {e}") from e
        self._buffer = np.frombuffer(self._map, dtype=np.uint8)
        (header_len,) = struct.unpack("<Q", self._map[:8])
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise self._error(f"header length {header_len} does not fit in a file of {size} bytes")
        header = parse_json(bytes(self._map[8 : 8 + header_len]), f"corrupt safetensors file {self.path}: its header")
        self.metadata = header.pop("__metadata__", None) or {}
        if not isinstance(self.metadata, dict):
            raise self._error(f"__metadata__ is not an object but {self.metadata!r:.40}")
        self._data_start = 8 + header_len
        data_len = size - self._data_start
        self._entries = {name: self._check_entry(name, info, data_len) for name, info in header.items()}
        self._check_no_overlap()

    def _error(self, what: str) -> ModelLoadError:
        return ModelLoadError(f"corrupt safetensors file {self.path}: {what}")

    def _check_entry(self, name, info, data_len):
        if not isinstance(info, dict):
            raise self._error(f"entry {name!r} is not an object")
        dtype_name, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
            raise self._error(f"tensor {name!r} has unsupported dtype {dtype_name!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise self._error(f"tensor {name!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise self._error(f"tensor {name!r} has data offsets {offsets!r} outside the {data_len}-byte data section")
        dtype = _DTYPES[dtype_name]
        nbytes = math.prod(shape) * dtype.itemsize  # Python ints: a hostile shape cannot overflow
        if offsets[1] - offsets[0] != nbytes:
            raise self._error(
                f"tensor {name!r} of shape {shape} and dtype {dtype_name} needs {nbytes} bytes "
                f"but its offsets span {offsets[1] - offsets[0]}"
            )
        return dtype_name, tuple(shape), offsets[0], offsets[1]

    def _check_no_overlap(self):
        spans = sorted((b, e, n) for n, (_, _, b, e) in self._entries.items() if e > b)
        for (b0, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise self._error(f"tensors {n0!r} and {n1!r} overlap")

    def keys(self):
        return self._entries.keys()

    def __contains__(self, name):
        return name in self._entries

    def shape(self, name: str) -> tuple:
        return self._entries[name][1]

    def dtype(self, name: str) -> str:
        return self._entries[name][0]

    def tensor(self, name: str) -> np.ndarray:
        """The tensor as stored: a read-only view into the mapped file."""
        dtype_name, shape, begin, end = self._entries[name]
        dtype = _DTYPES[dtype_name]
        start = self._data_start + begin
        if start % dtype.itemsize:  # misaligned: copy rather than hand out an unaligned view
            raw = self._buffer[start : self._data_start + end].copy()
        else:
            raw = self._buffer[start : self._data_start + end]
        return raw.view(dtype).reshape(shape)

    def to_float32(self, name: str) -> np.ndarray:
        """The tensor as float32: a zero-copy view for F32, a converted copy otherwise."""
        dtype_name = self.dtype(name)
        t = self.tensor(name)
        if dtype_name == "F32":
            return t
        if dtype_name == "BF16":
            return (t.astype(np.uint32) << 16).view(np.float32)
        if dtype_name in ("F16", "F64"):
            return t.astype(np.float32)
        raise ModelLoadError(f"tensor {name!r} in {self.path} has dtype {dtype_name}, not a float type")


class WeightStore:
    """Name -> tensor over one or several safetensors files."""

    def __init__(self, model_dir: Path):
        single = model_dir / "model.safetensors"
        index = model_dir / "model.safetensors.index.json"
        if single.exists():  # a FIFO or directory exists too: SafetensorsFile says what it is
            files = [single]
        elif index.exists():
            files = _shards(model_dir, index)
        elif (model_dir / "pytorch_model.bin").is_file():
            raise ModelLoadError(
                f"{model_dir} has only pytorch_model.bin; tinymech reads safetensors. Convert once with "
                "transformers: AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir)"
            )
        else:
            raise ModelNotFoundError(f"{model_dir} has no model.safetensors")
        self._where = {}
        for f in files:
            if not f.exists():
                raise ModelNotFoundError(f"{f} listed in the index is missing")
            sf = SafetensorsFile(f)
            for key in sf.keys():
                self._where[key] = sf

    def keys(self):
        return self._where.keys()

    def get(self, name: str, shape: tuple) -> np.ndarray:
        sf = self._where.get(name)
        if sf is None:
            raise ModelLoadError(f"weight {name!r} is missing from the checkpoint")
        _check_shape(name, sf.shape(name), shape)
        return sf.to_float32(name)


def _shards(model_dir: Path, index: Path) -> list[Path]:
    """The files a model.safetensors.index.json maps weights to, each inside model_dir."""
    weight_map = read_json(index, "the safetensors index").get("weight_map")
    if not isinstance(weight_map, dict):
        raise ModelLoadError(f"{index} is not a valid safetensors index: its weight_map is not an object")
    paths = [inside(model_dir, name, f"the shard named in {index}") for name in weight_map.values()]
    return list(dict.fromkeys(paths))


class ArrayStore(WeightStore):
    """A WeightStore over arrays already in memory (e.g. dequantized from a GGUF)."""

    def __init__(self, arrays: dict, source: str):
        self._arrays = arrays
        self._source = source

    def keys(self):
        return self._arrays.keys()

    def get(self, name: str, shape: tuple) -> np.ndarray:
        arr = self._arrays.get(name)
        if arr is None:
            raise ModelLoadError(f"weight {name!r} is missing from {self._source}")
        _check_shape(name, arr.shape, shape)
        return arr


def _check_shape(name: str, got: tuple, want: tuple) -> None:
    if tuple(got) != tuple(want):
        raise ModelLoadError(f"weight {name!r} has shape {list(got)} but the config needs {list(want)}")
