"""The core's GGML dequantizers (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K)
against the gguf package's on random blocks, and its half-precision decoding
on every 16-bit pattern."""
import numpy as np
import pytest

from tinymech import _core


@pytest.mark.parametrize("name", ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("threads", [1, 3])
def test_random_blocks_equal_the_gguf_package(name, threads):
    import gguf

    import tinymech as tm

    qtype = gguf.GGMLQuantizationType[name]
    block_bytes = gguf.constants.GGML_QUANT_SIZES[qtype][1]
    values = gguf.constants.GGML_QUANT_SIZES[qtype][0]
    blocks = np.random.default_rng(int(qtype)).integers(0, 256, (700, block_bytes), dtype=np.uint8)
    if name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q6_K"):  # scales that are inf, NaN, subnormal, -0
        scale = slice(block_bytes - 2, None) if name == "Q6_K" else slice(0, 2)  # Q6_K keeps d last
        for row, bits in enumerate([(0, 0x7C), (0xFF, 0x7F), (1, 0), (0, 0x80)]):
            blocks[row, scale] = bits
    tm.set_num_threads(threads)
    try:
        ours = _core.dequantize(blocks.reshape(-1), int(qtype))
    finally:
        tm.set_num_threads(0)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = gguf.quants.dequantize(blocks, qtype).reshape(-1)
    assert _core.quant_block(int(qtype)) == (values, block_bytes)
    assert ours.shape == (700 * values,) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)  # NaN where the reference has NaN


def test_every_half_precision_value():
    """A Q8_0 block with every q = 1 holds its scale d: all 65536 f16 patterns."""
    d = np.arange(1 << 16, dtype=np.uint16)
    blocks = np.ones((1 << 16, 34), np.uint8)
    blocks[:, :2] = d.view(np.uint8).reshape(-1, 2)
    ours = _core.dequantize(blocks.reshape(-1), 8).reshape(-1, 32)[:, 0]
    np.testing.assert_array_equal(ours, d.view(np.float16).astype(np.float32))


def test_bad_input_is_refused():
    assert _core.quant_block(10) == (0, 0)  # Q2_K: the gguf package's
    with pytest.raises(ValueError, match="GGML type 10"):
        _core.dequantize(np.zeros(84, np.uint8), 10)
    with pytest.raises(ValueError, match="whole number of blocks"):
        _core.dequantize(np.zeros(35, np.uint8), 8)
    assert _core.dequantize(np.zeros(0, np.uint8), 3).shape == (0,)


def test_k_quant_tensors_read_from_a_file(tmp_path):
    """A GGUF holding Q4_K and Q6_K tensors (random blocks: the gguf package cannot
    quantize to them): the container reader finds their bytes and shapes, and the
    loader's dequantization equals the package's."""
    import gguf

    from tinymech.io.gguf_format import read_gguf_file
    from tinymech.arch.gguf import _dequantize

    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "llama")
    raw = {}
    for name, qtype, shape in [("a", "Q4_K", (3, 512)), ("b", "Q6_K", (2, 256))]:
        q = gguf.GGMLQuantizationType[qtype]
        block_bytes = gguf.constants.GGML_QUANT_SIZES[q][1]
        blocks = rng.integers(0, 256, (shape[0], shape[1] // 256 * block_bytes), dtype=np.uint8)
        blocks.reshape(-1, block_bytes)[:, 0 if qtype == "Q4_K" else -2:][:, :2] = [0, 0x3C]  # finite scales
        raw[name] = (q, blocks, shape)
        writer.add_tensor(name, blocks, raw_dtype=q)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tensors = {t.name: t for t in read_gguf_file(tmp_path / "k.gguf").tensors}
    for name, (q, blocks, shape) in raw.items():
        t = tensors[name]
        assert t.shape == shape and t.type == int(q)
        np.testing.assert_array_equal(_dequantize(t, tmp_path), gguf.quants.dequantize(blocks, q).reshape(shape))
