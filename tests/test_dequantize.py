"""The core's GGML dequantizers (Q4_0, Q4_1, Q8_0) against the gguf package's
on random blocks, and its half-precision decoding on every 16-bit pattern."""
import numpy as np
import pytest

from tinymech import _core


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q8_0"])
@pytest.mark.parametrize("threads", [1, 3])
def test_random_blocks_equal_the_gguf_package(name, threads):
    import gguf

    import tinymech as tm

    qtype = gguf.GGMLQuantizationType[name]
    block_bytes = gguf.constants.GGML_QUANT_SIZES[qtype][1]
    blocks = np.random.default_rng(int(qtype)).integers(0, 256, (3000, block_bytes), dtype=np.uint8)
    blocks[:4, :4] = [[0, 0x7C, 0, 0x7C], [0xFF, 0x7F, 0xFF, 0x7F], [1, 0, 1, 0], [0, 0x80, 0, 0x80]]  # inf, NaN, subnormal, -0
    tm.set_num_threads(threads)
    try:
        ours = _core.dequantize(blocks.reshape(-1), int(qtype))
    finally:
        tm.set_num_threads(0)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = gguf.quants.dequantize(blocks, qtype).reshape(-1)
    assert ours.shape == (3000 * 32,) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)  # NaN where the reference has NaN


def test_every_half_precision_value():
    """A Q8_0 block with every q = 1 holds its scale d: all 65536 f16 patterns."""
    d = np.arange(1 << 16, dtype=np.uint16)
    blocks = np.ones((1 << 16, 34), np.uint8)
    blocks[:, :2] = d.view(np.uint8).reshape(-1, 2)
    ours = _core.dequantize(blocks.reshape(-1), 8).reshape(-1, 32)[:, 0]
    np.testing.assert_array_equal(ours, d.view(np.float16).astype(np.float32))


def test_bad_input_is_refused():
    assert _core.can_dequantize(2) and not _core.can_dequantize(12)
    with pytest.raises(ValueError, match="GGML type 12"):
        _core.dequantize(np.zeros(144, np.uint8), 12)
    with pytest.raises(ValueError, match="whole number of blocks"):
        _core.dequantize(np.zeros(35, np.uint8), 8)
    assert _core.dequantize(np.zeros(0, np.uint8), 3).shape == (0,)
