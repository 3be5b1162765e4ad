"""The GGUF container reader: what it parses equals what the gguf package
reads from the same file, and any damage to a file (bytes changed, cut short,
arbitrary bytes, metadata values replaced) ends in a TinymechError or a clean
load, never another exception or a read past the end."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gguf_factory import make_tiny_gguf
import tinymech as tm
from tinymech.errors import TinymechError
from tinymech.io.gguf_format import read_gguf_file

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf_fuzz"))


def header_end(path) -> int:
    """Where the tensor data starts (so damage lands in the parsed part)."""
    return min(t.offset for t in read_gguf_file(path).tensors)


def load(path):
    """tm.load's whole path (the container, the metadata, the tokenizer, the weights' shapes), then a run."""
    try:
        model = tm.load(path)
        model(model.to_tokens("The cat sat. 12 3")[:, : model.cfg.n_ctx])
    except TinymechError:
        return
    assert np.isfinite(model.cfg.d_model)


def test_parsed_file_equals_the_gguf_package_reading(gguf_path):
    import gguf

    path = gguf_path
    ours, theirs = read_gguf_file(path), gguf.GGUFReader(str(path))
    fields = {k: f for k, f in theirs.fields.items() if not k.startswith("GGUF.")}  # its header counts
    assert ours.version == 3 and set(ours.metadata) == set(fields)
    for key, field in fields.items():
        assert ours.metadata[key] == field.contents(), key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, ref in zip(ours.tensors, theirs.tensors):
        assert mine.type == int(ref.tensor_type) and mine.shape == tuple(int(d) for d in reversed(ref.shape))
        np.testing.assert_array_equal(mine.data, np.asarray(ref.data).reshape(-1).view(np.uint8))


@FUZZ
@given(data=st.data())
def test_damaged_header(gguf_path, tmp_path, data):
    raw = bytearray(gguf_path.read_bytes())
    end = header_end(gguf_path)
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, end - 1))
        raw[i] = data.draw(st.integers(0, 255))
    path = tmp_path / "d.gguf"
    path.write_bytes(bytes(raw))
    load(path)


@FUZZ
@given(cut=st.integers(0, 10**6))
def test_cut_short(gguf_path, tmp_path, cut):
    raw = gguf_path.read_bytes()
    path = tmp_path / "c.gguf"
    path.write_bytes(raw[: cut % len(raw)])
    load(path)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=96))
def test_arbitrary_bytes(tmp_path, blob):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGUF" + blob if blob[:1] == b"\x00" else blob)
    load(path)


def test_a_merge_of_unknown_tokens_is_a_load_error(gguf_path, tmp_path):
    """A vocabulary edited so that a merge names a token it lacks (same byte length)."""
    raw = gguf_path.read_bytes()
    merge = read_gguf_file(gguf_path).metadata["tokenizer.ggml.merges"][0].encode()
    first = merge.split(b" ")[0]
    damaged = raw.replace(merge, merge.replace(first, b"\x01" * len(first), 1), 1)
    assert damaged != raw
    path = tmp_path / "m.gguf"
    path.write_bytes(damaged)
    with pytest.raises(tm.ModelLoadError, match="make no tokenizer"):
        tm.load(path)


# the GGUF's "config.json" and "tokenizer.json": its metadata values
metadata_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=8,
)


@FUZZ
@given(data=st.data())
def test_metadata_values(gguf_path, data):
    """Any metadata value replaced (or dropped): the model's sizes, RoPE, token ids, vocabulary, merges."""
    import dataclasses
    from unittest import mock

    from tinymech.arch import gguf as gguf_loading

    file = read_gguf_file(gguf_path)
    metadata = dict(file.metadata)
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(sorted(metadata) + ["llama.rope.scaling.type", "llama.rope.scaling.factor",
                                                           "llama.attention.key_length"]))
        if data.draw(st.integers(0, 9)) == 0:
            metadata.pop(key, None)
        elif key.startswith("tokenizer.ggml.") and isinstance(metadata.get(key), list) and metadata[key] \
                and data.draw(st.booleans()):
            values = list(metadata[key])  # one entry of the vocabulary, merges or token types changed
            values[data.draw(st.integers(0, len(values) - 1))] = data.draw(metadata_values)
            metadata[key] = values
        else:
            metadata[key] = data.draw(metadata_values | st.sampled_from(["linear", "llama3", "none"]))
    damaged = dataclasses.replace(file, metadata=metadata)
    with mock.patch.object(gguf_loading, "read_gguf_file", lambda path: damaged):
        load(gguf_path)


@pytest.mark.parametrize("dims", [(65536,) * 4, (32768, 65536, 65536, 65536)])
def test_tensor_sizes_that_overflow_64_bits_are_refused(tmp_path, dims):
    # each dimension fits in the file, but their product wrapped to 0 (or below) in
    # int64 and the tensor was mapped over no bytes at all
    import struct

    def text(s: str) -> bytes:
        return struct.pack("<Q", len(s)) + s.encode()

    header = b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + text("general.architecture") + struct.pack("<I", 8)
    header += text("llama") + text("token_embd.weight") + struct.pack("<I", len(dims))
    header += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", 0, 0)
    path = tmp_path / "huge.gguf"
    path.write_bytes(header + b"\0" * (-len(header) % 32 + 70000))
    with pytest.raises(tm.ModelLoadError, match="token_embd.weight' lies outside the file"):
        read_gguf_file(path)
