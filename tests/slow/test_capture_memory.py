"""Captured activations' buffers: kept when their arrays are dropped and
reused by the next run_with_cache of the same shapes (no fresh pages to fault
in), with every value rewritten; tm.release_memory() gives them back."""
import gc

import numpy as np
import pytest

import tinymech as tm

pytestmark = pytest.mark.slow


def test_dropped_caches_are_reused_and_released(saved_gpt2):
    model, _ = saved_gpt2("small")
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


def test_a_name_given_twice_is_captured_once(saved_gpt2):
    model, _ = saved_gpt2("small")
    tokens = np.random.default_rng(1).integers(0, 1000, (2, 100))
    name = "blocks.1.hook_resid_post"
    tm.release_memory()
    logits, cache = model.run_with_cache(tokens, names_filter=[name, name])
    assert list(cache) == [name]
    expected = cache[name].nbytes + logits.nbytes
    del logits, cache
    gc.collect()
    assert tm.release_memory() == expected  # no second copy was made


def pooled_after(model, tokens) -> tuple[int, int]:
    """(bytes of the run's large buffers, pool bytes once they are dropped)."""
    logits, cache = model.run_with_cache(tokens)
    big = sum(v.nbytes for v in [logits, *cache.values()] if v.nbytes >= 1 << 16)
    del logits, cache
    gc.collect()
    return big, tm._core.kernels.pooled_bytes()


def test_inputs_of_changing_length_do_not_pile_up_kept_buffers(saved_gpt2):
    """Each new length asks for new sizes; what no run has taken for a while is
    given back, where the pool used to keep every size up to its 1 GiB cap."""
    model, _ = saved_gpt2("small")
    rng = np.random.default_rng(2)
    tm.release_memory()
    runs = [pooled_after(model, rng.integers(0, 1000, (2, length))) for length in range(40, 100, 2)]
    assert all(kept <= 12 * big for big, kept in runs)  # a window of the last few runs' buffers
    assert max(kept for _, kept in runs) < sum(big for big, _ in runs) / 2  # the pool used to keep them all
    tm.release_memory()


def test_two_lengths_in_turn_keep_reusing_their_buffers(saved_gpt2):
    model, _ = saved_gpt2("small")
    rng = np.random.default_rng(3)
    tm.release_memory()
    a, b = rng.integers(0, 1000, (2, 100)), rng.integers(0, 1000, (2, 60))
    sizes = [pooled_after(model, t) for t in (a, b)]
    both = sum(big for big, _ in sizes)
    for _ in range(4):  # after the first two runs every buffer comes from the pool and goes back
        for t in (a, b):
            assert pooled_after(model, t)[1] == both
    tm.release_memory()
