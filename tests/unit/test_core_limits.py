"""Sizes and numbers the core cannot hold, from a config or from a caller: a
precise tinymech error, never an allocation whose size wrapped around (and
that the next pass writes far past), nor pybind's TypeError."""
import numpy as np
import pytest

import tinymech as tm
from numpy_models import rotary_model
from tinymech.ops import top_k


@pytest.mark.parametrize("n_ctx", [2**61, 2**63 - 1, 2**63, 2**64])
def test_a_context_no_kv_cache_could_hold_is_refused(n_ctx):
    """As a config.json declaring max_position_embeddings = 2**61 would, past the
    loader's own limit: a KV cache of one sequence would be over 2**63 bytes."""
    with pytest.raises(tm.ModelLoadError, match="n_ctx"):
        rotary_model(n_ctx=n_ctx)


@pytest.fixture(scope="module")
def huge():
    """A model whose config declares 2**50 positions (a full KV cache: 2**57 bytes)."""
    return rotary_model(n_ctx=2**50)


def test_kv_caches_memory_cannot_hold_are_refused_and_change_nothing(huge):
    tokens = np.array([[1, 2, 3]])
    cache = huge.new_cache(1)
    with pytest.raises(tm.ContextLengthError, match="more than memory can hold"):
        cache.reserve(2**49)
    with pytest.raises(tm.ContextLengthError, match="more than memory can hold"):
        huge.generate(tokens, max_new_tokens=2**49)
    wide = huge.new_cache(2**62)  # layers x batch x positions x width wraps int64
    with pytest.raises(tm.ContextLengthError, match="more than memory can hold"):
        wide.reserve(4)
    assert cache.n_past == 0 and cache.capacity == 0 and wide.capacity == 0
    np.testing.assert_allclose(huge.forward(tokens, cache=cache), huge(tokens), atol=1e-5)
    assert cache.n_past == 3


@pytest.fixture(scope="module")
def model():
    return rotary_model()


# Every public entry point that passes a number on to the core, as (name, call(model, value)).
CALLS = {
    "new_cache(batch)": lambda m, v: m.new_cache(v),
    "KVCache.reserve": lambda m, v: m.new_cache(1).reserve(v),
    "KVCache.truncate": lambda m, v: m.new_cache(1).truncate(v),
    "generate(max_new_tokens)": lambda m, v: m.generate([[1, 2]], max_new_tokens=v),
    "generate(top_k)": lambda m, v: m.generate([[1, 2]], 2, temperature=1.0, top_k=v),
    "generate(top_p)": lambda m, v: m.generate([[1, 2]], 2, temperature=1.0, top_p=v),
    "generate(temperature)": lambda m, v: m.generate([[1, 2]], 2, temperature=v),
    "generate(seed)": lambda m, v: m.generate([[1, 2]], 2, temperature=1.0, seed=v),
    "tokens": lambda m, v: m([[1, v]]),
    "start_at_layer": lambda m, v: m(np.zeros((1, 2, 32)), start_at_layer=v),
    "stop_at_layer": lambda m, v: m([[1, 2]], stop_at_layer=v),
    "hook positions": lambda m, v: m.run_with_hooks([[1, 2]], fwd_hooks=[("hook_embed", tm.zero_ablate(positions=v))]),
    "scale factor": lambda m, v: m.run_with_hooks([[1, 2]], fwd_hooks=[("hook_embed", tm.scale(v))]),
    "ranking.top_k": lambda m, v: top_k(np.ones((2, 5)), v),
    "set_num_threads": lambda m, v: tm.set_num_threads(v),
}


VALUES = {"2**63": 2**63, "10**30": 10**30, "10**400": 10**400, "-1": -1, "-2**63": -2**63, "2.5": 2.5,
          "nan": float("nan"), "None": None, "'3'": "3", "True": True}


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("call", CALLS)
def test_numbers_out_of_range_get_tinymech_errors(model, call, value):
    """Each call either works (a seed of 2**63 is a seed) or raises a TinymechError."""
    try:
        CALLS[call](model, VALUES[value])
    except tm.TinymechError:
        pass
    finally:
        tm.set_num_threads(0)


@pytest.mark.parametrize("call,value,error,match", [
    ("KVCache.reserve", 2**63, tm.ContextLengthError, "exceeds the context length 64"),
    ("KVCache.truncate", 2**63, tm.InvalidInputError, "cannot truncate a cache of 0 positions to 9223372036854775808"),
    ("new_cache(batch)", 2**63, tm.InvalidInputError, "batch must be <= 9223372036854775807"),
    ("new_cache(batch)", 0, tm.InvalidInputError, "batch must be >= 1"),
    ("generate(seed)", -1, tm.InvalidInputError, "seed must be >= 0"),
    ("generate(temperature)", float("nan"), tm.InvalidInputError, "temperature must be a finite number >= 0"),
    ("generate(temperature)", VALUES["10**400"], tm.InvalidInputError, "temperature must be a number that a float"),
    ("generate(top_p)", float("nan"), tm.InvalidInputError, r"top_p must be in \(0, 1\]"),
    ("scale factor", VALUES["10**400"], tm.HookError, "a scale factor must be a number that a float can hold"),
    ("ranking.top_k", 2**63, tm.InvalidInputError, "top_k needs 0 <= k <= 5"),
    ("set_num_threads", 2**63, tm.InvalidInputError, "at most 1024 threads"),
    ("set_num_threads", 2.5, tm.InvalidInputError, "the thread count must be a whole number"),
], ids=lambda x: x if isinstance(x, str) and x in CALLS else "")
def test_the_errors_say_what_is_wrong(model, call, value, error, match):
    with pytest.raises(error, match=match):
        CALLS[call](model, value)


def test_a_top_k_past_the_vocabulary_keeps_every_token(model):
    draw = dict(max_new_tokens=5, temperature=1.0, seed=3)
    np.testing.assert_array_equal(model.generate([[1, 2]], top_k=2**63, **draw), model.generate([[1, 2]], **draw))


def test_a_cache_is_one_from_new_cache(model):
    with pytest.raises(tm.InvalidInputError, match="cache must be a KV cache from model.new_cache"):
        model.forward([[1, 2]], cache=model._core.new_cache(1))
