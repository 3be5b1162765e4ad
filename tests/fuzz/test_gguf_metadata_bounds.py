"""GGUF metadata read within the file's bounds: numeric arrays (token scores and types) take
about the bytes the file spends on them, not one Python object per element; every count is
checked against the bytes left before anything is allocated; what llama.cpp refuses as
ambiguous or unreadable (a key or tensor named twice, arrays of arrays) is a ModelLoadError."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinymech as tm
from tinymech.io.gguf_format import GgufArray, read_gguf_file

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
DTYPES = {
    U8: "<u1",
    I8: "<i1",
    U16: "<u2",
    I16: "<i2",
    U32: "<u4",
    I32: "<i4",
    F32: "<f4",
    BOOL: "<u1",
    U64: "<u8",
    I64: "<i8",
    F64: "<f8",
}


def text(s: str | bytes) -> bytes:
    s = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(s)) + s


def array(item: int, count: int, body: bytes) -> bytes:
    """An array value (its type, ARRAY, written by kv)."""
    return struct.pack("<IQ", item, count) + body


def kv(key: str, kind: int, value: bytes) -> bytes:
    return text(key) + struct.pack("<I", kind) + value


def gguf_file(
    path,
    kvs: list[bytes],
    tensors: list[bytes] = (),
    n_kv: int | None = None,
    n_tensors: int | None = None,
    tail: int = 64,
):
    header = b"GGUF" + struct.pack(
        "<IQQ", 3, len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    body = header + b"".join(kvs) + b"".join(tensors)
    path.write_bytes(body + b"\0" * (-len(body) % 32 + tail))
    return path


def tensor_info(name: str, dims=(32,), type_id: int = 0, offset: int = 0) -> bytes:
    return (
        text(name)
        + struct.pack("<I", len(dims))
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", type_id, offset)
    )


def peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_numeric_gguf_arrays_take_their_bytes_not_a_python_object_each(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.standard_normal(1 << 20).astype("<f4")  # 4 MiB: a 1M-token vocabulary's scores
    types = rng.integers(1, 7, 1 << 20).astype("<i4")
    flags = rng.integers(0, 2, 1 << 16).astype("<u1")
    path = gguf_file(
        tmp_path / "a.gguf",
        [
            kv("tokenizer.ggml.scores", ARRAY, array(F32, len(scores), scores.tobytes())),
            kv("tokenizer.ggml.token_type", ARRAY, array(I32, len(types), types.tobytes())),
            kv("flags", ARRAY, array(BOOL, len(flags), flags.tobytes())),
        ],
    )
    size = path.stat().st_size
    peak = peak_bytes(lambda: read_gguf_file(path))
    assert peak < 1.25 * size, f"reading {size:,} bytes of metadata took {peak:,} bytes"  # lists took ~8x
    meta = read_gguf_file(path).metadata
    got_scores, got_types, got_flags = (
        meta[k] for k in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type", "flags")
    )
    # each reads as the list it stands for (Python numbers), or as a numpy array
    assert isinstance(got_scores, GgufArray) and len(got_scores) == len(scores)
    assert got_scores[5] == float(scores[5]) and type(got_scores[5]) is float
    assert type(got_types[-1]) is int and got_types[-1] == int(types[-1])
    assert got_flags == (flags != 0).tolist() and type(got_flags[0]) is bool
    assert got_types == types.tolist() and list(got_types[:4]) == types[:4].tolist()
    np.testing.assert_array_equal(np.asarray(got_scores), scores)
    assert not np.asarray(got_types).flags.writeable and got_types  # read-only; non-empty is truthy
    assert got_types != types[:-1].tolist() and got_types != "not a list"
    with pytest.raises(TypeError):
        hash(got_types)


def test_a_gguf_array_claiming_more_strings_than_the_file_holds_is_refused_before_reading(tmp_path):
    # every string takes at least its 8-byte length: a count above a byte per element passed before
    body = text("ab") * 10_000  # 100 kB of two-letter strings, ~6x that as Python strings
    path = gguf_file(
        tmp_path / "s.gguf", [kv("tokenizer.ggml.tokens", ARRAY, array(STRING, len(body) // 8 + 1000, body))]
    )
    with pytest.raises(tm.ModelLoadError, match=r"an array claims \d+ strings, more than the \d+ bytes left"):
        read_gguf_file(path)


@pytest.mark.parametrize("n_kv,n_tensors", [(10**6, 0), (0, 10**5)])
def test_gguf_counts_beyond_what_the_file_holds_are_refused_before_reading(tmp_path, n_kv, n_tensors):
    path = gguf_file(tmp_path / "c.gguf", [], n_kv=n_kv, n_tensors=n_tensors, tail=10**6 - 64)
    with pytest.raises(tm.ModelLoadError, match="claims .* more than its .* bytes hold"):
        read_gguf_file(path)


def test_gguf_arrays_of_arrays_are_refused(tmp_path):
    inner = array(U8, 2, b"\1\2")
    path = gguf_file(tmp_path / "n.gguf", [kv("nested", ARRAY, array(ARRAY, 3, inner * 3))])
    with pytest.raises(tm.ModelLoadError, match="'nested' is an array of arrays, which GGUF readers .*do not read"):
        read_gguf_file(path)


def test_a_gguf_key_or_tensor_named_twice_is_refused(tmp_path):
    twice = [kv("general.name", STRING, text("a")), kv("general.name", STRING, text("b"))]
    with pytest.raises(tm.ModelLoadError, match="'general.name' twice"):
        read_gguf_file(gguf_file(tmp_path / "k.gguf", twice))
    tensors = [tensor_info("output_norm.weight"), tensor_info("output_norm.weight", offset=128)]
    with pytest.raises(tm.ModelLoadError, match="tensor 'output_norm.weight' twice"):
        read_gguf_file(gguf_file(tmp_path / "t.gguf", [], tensors, tail=512))


def test_a_gguf_tokenizer_reads_its_arrays(tmp_path):
    """The loader consumes the arrays (vocabulary, merges, token types as numbers) as before."""
    from gguf_factory import make_tiny_gguf

    path = make_tiny_gguf(tmp_path)
    meta = read_gguf_file(path).metadata
    assert isinstance(meta["tokenizer.ggml.token_type"], GgufArray)
    assert isinstance(meta["tokenizer.ggml.tokens"], list) and isinstance(meta["tokenizer.ggml.merges"], list)
    model = tm.load(path)
    special = [t for t, kind in zip(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]) if kind == 3]
    assert special and model.to_str_tokens(special[0], prepend_bos=False) == [special[0]]  # matched whole


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    item=st.sampled_from(sorted(DTYPES) + [STRING, ARRAY, 13, 2**32 - 1]),
    count=st.integers(0, 2**64 - 1),
    have=st.integers(0, 4096),
    data=st.data(),
)
def test_any_gguf_array_header_parses_or_is_a_load_error(tmp_path, item, count, have, data):
    """An array of any type claiming any count over any bytes: parsed as numbers that equal
    its bytes, or refused; never another exception, never more memory than a few times the file."""
    count = data.draw(st.sampled_from([count, count % 4096, have, have // 8]))
    body = data.draw(st.binary(min_size=have, max_size=have))
    path = gguf_file(tmp_path / "x.gguf", [kv("a", ARRAY, array(item, count, body))], tail=0)
    try:
        peak = peak_bytes(lambda: read_gguf_file(path))
    except tm.ModelLoadError:
        return
    assert peak < 16 * path.stat().st_size + 65536
    value = read_gguf_file(path).metadata["a"]
    if item in DTYPES:  # the values are the file's bytes (the padding after the body included)
        raw = np.frombuffer(path.read_bytes(), DTYPES[item], count, offset=24 + len(text("a")) + 4 + 12)
        np.testing.assert_array_equal(np.asarray(value), raw != 0 if item == BOOL else raw)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from gguf_factory import make_tiny_gguf

    return make_tiny_gguf(tmp_path_factory.mktemp("gguf_bounds"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_gguf_metadata_values_that_are_numeric_arrays(tiny_gguf, data):
    """Any metadata value (a size, a name, the vocabulary, the merges, the chat template) read as a
    numeric array: a TinymechError or a clean load, as any other wrong type."""
    import dataclasses
    from unittest import mock

    from tinymech.arch import gguf as gguf_loading
    from tinymech.errors import TinymechError

    file = read_gguf_file(tiny_gguf)
    metadata = dict(file.metadata)
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(sorted(metadata) + ["llama.rope.scaling.factor", "llama.attention.key_length"]))
        dtype = data.draw(st.sampled_from(sorted(set(DTYPES.values())) + ["bool"]))
        n = data.draw(st.integers(0, 3) | st.just(len(metadata["tokenizer.ggml.tokens"])))
        values = np.frombuffer(data.draw(st.binary(min_size=8 * n, max_size=8 * n)), np.uint8)[
            : n * np.dtype(dtype).itemsize
        ]
        metadata[key] = GgufArray(values.view(dtype).copy() if dtype != "bool" else values[:n] != 0)
    damaged = dataclasses.replace(file, metadata=metadata)
    with mock.patch.object(gguf_loading, "read_gguf_file", lambda path: damaged):
        try:
            model = tm.load(tiny_gguf)
            model(model.to_tokens("The cat sat.")[:, : model.cfg.n_ctx])
        except TinymechError:
            return
