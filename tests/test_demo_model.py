"""The bundled demo model and SAE (models/demo-gpt2): the real files that
`tm.load()` and `tinymech tui` open with no arguments."""
import json

import numpy as np
import pytest

import tinymech as tm
from model_factory import hf_logits, rel_err
from tinymech.loading import default_model_dir

DEMO = default_model_dir()
SAE_DIR = DEMO / "saes" / "blocks.2.hook_resid_pre"
TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. However little known the feelings or views of such a man may be "
        "on his first entering a neighbourhood, this truth is so well fixed in the minds of the "
        "surrounding families, that he is considered the rightful property of some one or other of "
        "their daughters. And God said, Let there be light: and there was light.")


@pytest.fixture(scope="module")
def model():
    return tm.load()


def test_default_load_is_the_demo_model(model):
    assert model.path == str(DEMO) and model.tokenizer is not None
    assert model.cfg.n_layers >= 2 and model.cfg.n_heads > 1


def test_logits_equal_transformers(model):
    import transformers

    hf = transformers.GPT2LMHeadModel.from_pretrained(DEMO, attn_implementation="eager").eval()
    tokens = model.to_tokens(TEXT)
    assert rel_err(model(tokens), hf_logits(hf, tokens)) <= 1e-4


def test_continuations_are_words(model):
    text = model.generate("Mr Darcy", max_new_tokens=20)
    assert text.startswith("Mr Darcy") and len(text.split()) >= 5
    assert model(TEXT, return_type="loss") < 6.0  # far below uniform (ln 8192 = 9.0)


def test_sae_reconstructs_as_its_card_says(model):
    sae = tm.SAE.load(SAE_DIR)
    card = json.loads((SAE_DIR / "metrics.json").read_text())
    metrics = tm.sae_metrics(model, sae, model.to_tokens(TEXT))
    assert abs(metrics.explained_variance - card["explained_variance"]) < 0.15
    assert metrics.ce_loss_recovered > 0.5
    assert len(sae.labels) > 0
