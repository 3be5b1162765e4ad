"""SAE.logit_effects gives the promoted and suppressed tokens as strings
(decoded with the model's tokenizer) next to their ids, and prints them with
their values."""
import numpy as np
import pytest

import tinymech as tm
from model_factory import SHAPES, save_tokenizer
from numpy_checkpoints import write_gpt2
from tinymech.sae.sae import SAE
from tinymech.sae.loading import parse_config

VOCAB = 400  # enough BPE merges for word tokens such as " sat"
K = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("words")
    write_gpt2(path, **dict(SHAPES["tiny"], vocab_size=VOCAB))
    save_tokenizer(path, VOCAB)
    return path


@pytest.fixture(scope="module")
def model(model_dir):
    return tm.load(model_dir)


def one_token(model, text: str) -> int:
    (token,) = model.to_tokens(text, prepend_bos=False)[0]
    return int(token)


@pytest.fixture(scope="module")
def sae(model):
    """Feature 0 writes W_U[:, ' sat'] - W_U[:, ' the']: it promotes ' sat' and
    suppresses ' the' the most (each token's unembedding is nearly orthogonal
    to the others'); feature 1 is random."""
    d = model.cfg.d_model
    cfg = parse_config({"d_in": d, "d_sae": 2, "hook_name": "blocks.1.hook_resid_pre"})
    rng = np.random.default_rng(0)
    W_dec = np.stack([model.W_U[:, one_token(model, " sat")] - model.W_U[:, one_token(model, " the")],
                      rng.normal(size=d)])
    return SAE(cfg, {"W_enc": rng.normal(size=(d, 2)), "b_enc": np.zeros(2), "W_dec": W_dec,
                     "b_dec": np.zeros(d)})


def reference_strings(model_dir, ids) -> tuple[str, ...]:
    """Each id decoded by the tokenizers library itself."""
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return tuple(tok.decode([int(i)], skip_special_tokens=False) for i in ids)


@pytest.mark.parametrize("feature", [0, 1])
def test_tokens_come_as_strings_beside_the_ids(model, model_dir, sae, feature):
    eff = sae.logit_effects(model, feature, k=K)
    effects = sae.W_dec[feature] @ model.W_U
    np.testing.assert_array_equal(eff.promoted, np.argsort(-effects, kind="stable")[:K])
    np.testing.assert_array_equal(eff.suppressed, np.argsort(effects, kind="stable")[:K])
    assert eff.promoted_tokens == reference_strings(model_dir, eff.promoted)
    assert eff.suppressed_tokens == reference_strings(model_dir, eff.suppressed)


def test_print_lists_tokens_with_their_values(model, sae):
    eff = sae.logit_effects(model, 0, k=K)
    assert eff.promoted_tokens[0] == " sat" and eff.suppressed_tokens[0] == " the"
    title, header, rule, *rows = str(eff).splitlines()
    assert f"top {K}" in title and header.split() == ["promoted", "effect", "suppressed", "effect"]
    assert len(rows) == K
    # readable tokens (a space shows as '·') with the values, most extreme first
    assert rows[0].split() == ["·sat", f"{eff.promoted_values[0]:+.4f}", "·the", f"{eff.suppressed_values[0]:+.4f}"]
    for row, up_value, down_value in zip(rows, eff.promoted_values, eff.suppressed_values):
        assert f"{up_value:+.4f}" in row and f"{down_value:+.4f}" in row
    assert repr(eff).startswith(f"LogitEffects(promoted=[' sat' {eff.promoted_values[0]:+.4f}, ")
    assert f"suppressed=[' the' {eff.suppressed_values[0]:+.4f}, " in repr(eff)


def test_without_a_tokenizer_tokens_show_as_ids(model_dir, sae):
    bare = tm.load(model_dir)
    bare.tokenizer = None
    eff = sae.logit_effects(bare, 0, k=K)
    assert eff.promoted_tokens is None and eff.suppressed_tokens is None
    first = str(eff).splitlines()[3].split()
    assert first[0] == f"#{eff.promoted[0]}" and first[2] == f"#{eff.suppressed[0]}"
    assert f"promoted=[#{eff.promoted[0]} " in repr(eff)
