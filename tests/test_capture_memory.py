"""Captured activations' buffers: kept when their arrays are dropped and
reused by the next run_with_cache of the same shapes (no fresh pages to fault
in), with every value rewritten; tm.release_memory() gives them back."""
import gc

import numpy as np

import tinymech as tm


def test_dropped_caches_are_reused_and_released(gpt2):
    _, model, _ = gpt2("small")
    tokens = np.random.default_rng(0).integers(0, 1000, (2, 100))  # resid: 2 * 100 * 768 floats, over 64 KiB
    tm.release_memory()
    logits, first = model.run_with_cache(tokens)  # the logits come from the same pool
    kept = dict({name: value.copy() for name, value in first.items()}, logits=logits.copy())
    big = sum(v.nbytes for v in kept.values() if v.nbytes >= 1 << 16)
    assert big > 0 and tm._core.kernels.pooled_bytes() == 0
    del first, logits
    gc.collect()
    assert tm._core.kernels.pooled_bytes() == big  # every large buffer kept

    logits, second = model.run_with_cache(tokens[:, ::-1].copy())  # other values into the same buffers
    assert tm._core.kernels.pooled_bytes() == 0  # all taken again
    del second, logits
    logits, third = model.run_with_cache(tokens)
    for name, value in dict(third.items(), logits=logits).items():
        np.testing.assert_array_equal(value, kept[name], err_msg=name)
    del third, logits, value
    gc.collect()
    assert tm.release_memory() == big and tm._core.kernels.pooled_bytes() == 0
    assert tm.release_memory() == 0


def test_a_name_given_twice_is_captured_once(gpt2):
    _, model, _ = gpt2("small")
    tokens = np.random.default_rng(1).integers(0, 1000, (2, 100))
    name = "blocks.1.hook_resid_post"
    tm.release_memory()
    logits, cache = model.run_with_cache(tokens, names_filter=[name, name])
    assert list(cache) == [name]
    expected = cache[name].nbytes + logits.nbytes
    del logits, cache
    gc.collect()
    assert tm.release_memory() == expected  # no second copy was made
