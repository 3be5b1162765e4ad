"""Fixtures every tier may use; nothing here imports torch, transformers,
transformer_lens or sae_lens (tests/unit runs without them). The reference
tier's fixtures (a checkpoint seen by HF, tinymech and TransformerLens) are in
tests/reference/conftest.py.

    def test_something(saved_gpt2):
        model, path = saved_gpt2("odd")    # tinymech model, checkpoint dir (written with numpy)

Checkpoints are built once per session and shared between test files; don't
modify them (load your own copy with tm.load(path)).
"""
from __future__ import annotations

import pytest

import tinymech as tm
from model_factory import SHAPES
from numpy_checkpoints import write_gpt2


@pytest.fixture(scope="session")
def saved_gpt2(tmp_path_factory):
    """make(shape="tiny", seed=0, **config_overrides) -> (tm_model, path): a random-weight GPT-2
    checkpoint written without torch. shape: a model_factory.SHAPES name or a dict of GPT2Config
    fields; config_overrides: more of them (e.g. tie_word_embeddings=False)."""
    built = {}

    def make(shape="tiny", seed: int = 0, **config_overrides):
        config = dict(SHAPES[shape] if isinstance(shape, str) else shape, **config_overrides)
        key = (tuple(sorted(config.items())), seed)
        if key not in built:
            path = write_gpt2(tmp_path_factory.mktemp(shape if isinstance(shape, str) else "gpt2"), seed=seed, **config)
            built[key] = (tm.load(path), path)
        return built[key]

    return make


@pytest.fixture(params=tm._core.kernels.available())
def variant(request):
    """Runs a test once per SIMD kernel variant this CPU supports, then restores the default."""
    kernels = tm._core.kernels
    default = kernels.variant()
    kernels.select(request.param)
    yield request.param
    kernels.select(default)
