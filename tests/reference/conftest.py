"""The reference tier's fixtures: one random-weight GPT-2 checkpoint seen three ways.

    def test_something(gpt2, tl_gpt2):
        hf, model, path = gpt2("odd")                    # HF model, tinymech model, checkpoint dir
        processed = tm.load(path, **TL_PROCESSING)       # the same weights, processed
        ref = tl_gpt2(hf)                                # HookedTransformer, no weight processing
        ref_processed = tl_gpt2(hf, processed=True)      # from_pretrained's default processing

Checkpoints and TransformerLens models are built once per session and shared
between test files; don't modify them (load your own copy with tm.load(path)).
Shapes are model_factory.SHAPES names or a dict of GPT2Config fields.
"""
from __future__ import annotations

import pytest

import tinymech as tm
from model_factory import SHAPES, make_hf_gpt2
from tl_reference import TL_PROCESSING, hooked_transformer


@pytest.fixture(scope="session")
def gpt2(tmp_path_factory):
    """make(shape="tiny", seed=0, **config_overrides) -> (hf_model, tm_model, path).

    shape: a model_factory.SHAPES name or a dict of GPT2Config fields;
    config_overrides: more GPT2Config fields (e.g. tie_word_embeddings=False).
    """
    built = {}

    def make(shape="tiny", seed: int = 0, **config_overrides):
        config = dict(SHAPES[shape] if isinstance(shape, str) else shape, **config_overrides)
        key = (tuple(sorted(config.items())), seed)
        if key not in built:
            path = tmp_path_factory.mktemp(shape if isinstance(shape, str) else "gpt2")
            hf = make_hf_gpt2(path, seed=seed, **config)
            built[key] = (hf, tm.load(path), path)
        return built[key]

    return make


@pytest.fixture(scope="session")
def tl_gpt2():
    """make(hf_model, processed=False) -> HookedTransformer on hf_model's weights
    (attn.hook_result enabled); processed=True applies from_pretrained's defaults."""
    built = {}

    def make(hf_model, processed: bool = False):
        key = (id(hf_model), processed)
        if key not in built:
            processing = TL_PROCESSING if processed else {}
            # holding hf_model keeps its id from being reused by another model
            built[key] = (hf_model, hooked_transformer(hf_model, **processing))
        return built[key][1]

    return make


@pytest.fixture(scope="module", params=["small", "odd"])
def pair(request, gpt2, tl_gpt2):
    """(tinymech model, HookedTransformer) on the same random GPT-2 weights, two shapes; a test
    module may define its own pair instead."""
    hf, model, _ = gpt2(request.param)
    return model, tl_gpt2(hf)
