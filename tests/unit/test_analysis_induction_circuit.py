"""A 2-layer attention-only model written by hand: head L0H0 copies the
previous token into the residual stream, head L1H0 is an induction head that
uses it. The detectors must find exactly these heads, the model must complete
repeated random sequences, and patching must localize the behaviour to them.

Construction: every embedding is a unit vector, all mutually orthogonal and
orthogonal to the all-ones vector, so LayerNorm only rescales (by a known
factor, the residual norm being fixed); attention logits are 20 apart, so
softmax is effectively one-hot. The other heads and the MLPs are zero.
"""
import numpy as np
import pytest

import tinymech as tm
from tinymech import analysis
from tinymech.arch.config import Config

VOCAB, N_CTX, D_MODEL, N_HEADS, D_HEAD = 32, 48, 256, 4, 64
SEQ_LEN = 20  # random tokens per copy; BOS + 2 copies fit the context
SHARP = 20.0 * np.sqrt(D_HEAD)  # attention logit of a match (scores are divided by sqrt(d_head))


def induction_model() -> tm.Model:
    rng = np.random.default_rng(0)
    # orthonormal directions with zero mean: token, position, previous token, output
    directions = rng.standard_normal((D_MODEL, 3 * VOCAB + N_CTX))
    basis, _ = np.linalg.qr(directions - directions.mean(0))
    token, position, previous, output = np.split(basis.T, [VOCAB, VOCAB + N_CTX, 2 * VOCAB + N_CTX])
    unit = np.eye(D_HEAD)

    def head_weights(q, k, v, o):
        """qkv_w [D, 3D] and out_w [D, D] with head 0 given, the other heads zero."""
        qkv, out = np.zeros((D_MODEL, 3 * D_MODEL)), np.zeros((D_MODEL, D_MODEL))
        for third, w in enumerate((q, k, v)):
            qkv[:, third * D_MODEL : third * D_MODEL + D_HEAD] = w
        out[:D_HEAD] = o
        return qkv, out

    # layer 0, residual = token + position (norm sqrt 2): query i matches key i - 1, copies its token
    ln0 = np.sqrt(D_MODEL / 2)  # what ln1 multiplies the residual by
    prev = head_weights(
        q=SHARP / ln0 * position.T @ unit[:N_CTX],
        k=1 / ln0 * position[:-1].T @ unit[1 : N_CTX],
        v=1 / ln0 * token.T @ unit[:VOCAB],
        o=unit[:VOCAB].T @ previous,
    )
    # layer 1, residual = token + position + previous token (norm sqrt 3):
    # query "my token" matches key "my previous token", copies the key's token to the output space
    ln1 = np.sqrt(D_MODEL / 3)
    induction = head_weights(
        q=SHARP / ln1 * token.T @ unit[:VOCAB],
        k=1 / ln1 * previous.T @ unit[:VOCAB],
        v=1 / ln1 * token.T @ unit[:VOCAB],
        o=4.0 * unit[:VOCAB].T @ output,
    )

    def f32(x):
        return np.ascontiguousarray(x, dtype=np.float32)

    ones, zeros = np.ones(D_MODEL, np.float32), np.zeros(D_MODEL, np.float32)
    layers = [
        dict(ln1_w=ones, ln1_b=zeros, qkv_w=f32(qkv), qkv_b=np.zeros(3 * D_MODEL, np.float32), out_w=f32(out),
             out_b=zeros, ln2_w=ones, ln2_b=zeros, fc_w=np.zeros((D_MODEL, 4 * D_MODEL), np.float32),
             fc_b=np.zeros(4 * D_MODEL, np.float32), proj_w=np.zeros((4 * D_MODEL, D_MODEL), np.float32),
             proj_b=zeros)
        for qkv, out in (prev, induction)
    ]
    weights = dict(wte=f32(token), wpe=f32(position), lnf_w=ones, lnf_b=zeros, unembed=f32(output),
                   unembed_b=None, layers=layers)
    cfg = Config(n_layers=2, d_model=D_MODEL, n_heads=N_HEADS, d_head=D_HEAD, d_mlp=4 * D_MODEL, d_vocab=VOCAB,
                 n_ctx=N_CTX, attn_scale=float(np.sqrt(D_HEAD)), bos_token_id=0, eos_token_id=None,
                 tie_word_embeddings=False)
    return tm.Model(cfg, weights, tokenizer=None)


@pytest.fixture(scope="module")
def model():
    return induction_model()


def repeated(seed: int, batch: int = 3) -> np.ndarray:
    """BOS, then SEQ_LEN distinct random tokens, twice: [batch, 1 + 2 * SEQ_LEN]."""
    rng = np.random.default_rng(seed)
    halves = np.stack([rng.permutation(np.arange(1, VOCAB))[:SEQ_LEN] for _ in range(batch)])
    return np.concatenate([np.zeros((batch, 1), np.int64), halves, halves], axis=1)


def test_detectors_find_exactly_the_built_heads(model):
    summary = analysis.head_summary(model, seq_len=SEQ_LEN, batch=4)
    previous, induction = summary.scores["previous_token"], summary.scores["induction"]
    assert previous[0, 0] > 0.95 and np.delete(previous.reshape(-1), 0).max() < 0.3
    assert induction[1, 0] > 0.45 and np.delete(induction.reshape(-1), N_HEADS).max() < 0.1
    assert summary.top_heads("induction", 1)[0][:2] == (1, 0)
    assert summary.top_heads("previous_token", 1)[0][:2] == (0, 0)
    tokens = repeated(seed=1)[0]
    assert analysis.detect_head(model, tokens, "previous_token_head", error_measure="abs")[0, 0] > 0.9


def test_the_model_completes_repeated_sequences(model):
    loss = analysis.repeated_sequence_loss(model, seq_len=SEQ_LEN, batch=4)
    assert loss.first_half > 2.0 and loss.second_half < 0.2
    # the first token of the second copy cannot be predicted; every later one can
    assert loss.per_position[SEQ_LEN + 1 :].max() < 0.01
    tokens = repeated(seed=2, batch=1)
    prompt = tokens[:, : SEQ_LEN + 3]
    completed = model.generate(prompt, max_new_tokens=SEQ_LEN - 2, stop_at_eos=False)
    np.testing.assert_array_equal(completed, tokens)


def test_patching_localizes_the_behaviour_to_the_built_heads(model):
    clean = repeated(seed=3)
    corrupted = clean.copy()
    corrupted[:, 1 : SEQ_LEN + 1] = repeated(seed=4)[:, 1 : SEQ_LEN + 1]  # another first copy, same second copy
    rows = np.arange(clean.shape[0])[:, None]
    predicted = np.arange(SEQ_LEN + 1, 2 * SEQ_LEN)  # positions whose next token repeats the first copy

    def second_copy_log_prob(logits):
        """Mean log-probability of the second copy's tokens (the same in both runs)."""
        logits = logits[:, predicted].astype(np.float64)
        log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        return float(np.take_along_axis(log_probs, clean[rows, predicted + 1][..., None], -1).mean())

    noised = analysis.patch_head_z(model, clean, corrupted, second_copy_log_prob, mode="noise")
    assert noised.clean > -0.01 and noised.corrupted < -2.0
    normalized = noised.normalized
    # corrupting either built head breaks induction; every other head is inert
    assert normalized[0, 0] < 0.2 and normalized[1, 0] < 0.2
    others = np.delete(normalized.reshape(-1), [0, N_HEADS])
    np.testing.assert_allclose(others, 1.0, atol=1e-4)
    # restoring the induction head's output alone repairs the corrupted run
    denoised = analysis.patch_head_z(model, clean, corrupted, second_copy_log_prob, mode="denoise")
    assert denoised.normalized[1, 0] > 0.95
    assert np.delete(denoised.normalized.reshape(-1), N_HEADS).max() < 0.2
    # the previous-token head matters where the first copy is
    by_pos = analysis.patch_head_z_by_pos(model, clean, corrupted, second_copy_log_prob, mode="noise").normalized
    first_copy = by_pos[0, 0, 1 : SEQ_LEN + 1]
    assert first_copy.min() < 0.99 and np.allclose(by_pos[0, 0, SEQ_LEN + 2 :], 1.0, atol=1e-4)
