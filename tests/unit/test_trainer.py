"""tm.sae.Trainer without torch: argument checks, determinism, checkpoints, and
training that recovers a synthetic sparse dictionary. (Agreement with SAELens's
training step: tests/reference/test_sae_training_reference.py.)"""
import numpy as np
import pytest

import tinymech as tm
from tinymech.errors import InvalidInputError, SAEInputError
from tinymech.sae import Trainer

ARCHS = [("topk", {"k": 4}), ("batchtopk", {"k": 4}), ("jumprelu", {}), ("standard", {})]


def batch(n=40, d=24, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


@pytest.mark.parametrize("args,kwargs,match", [
    (("topk", 24, 0), {"k": 1}, "d_sae"),
    (("topk", 24, 16), {"k": 17}, "k"),
    (("topk", 24, 16), {"k": 0}, "k"),
    (("topk", 24, 16), {}, "needs k"),
    (("topk", 24, 16), {"k": 2.5}, "k"),
    (("batchtopk", 24, 16), {"k": -1.0}, "k"),
    (("matryoshka", 24, 16), {}, "unknown architecture"),
    (("matching_pursuit", 24, 16), {}, "reads 'matching_pursuit' SAEs but does not train them"),
    (("temporal", 24, 16), {}, "reads 'temporal' SAEs but does not train them"),
    (("gated", 24, 16), {}, "reads 'gated' SAEs but does not train them"),
    (("abstopk", 24, 16), {"k": 4}, "reads 'abstopk' SAEs but does not train them"),
    (("standard", 24, 16), {"l1": 3}, "unknown training option"),
    (("standard", 24, 16), {"d_out": 8, "apply_b_dec_to_input": True}, "apply_b_dec_to_input"),
    (("standard", 0, 16), {}, "d_in"),
    (("standard", 24, 16), {"dead_tokens": -1}, "dead_tokens"),
    (("standard", 24, 16), {"adam_beta1": 1.0}, "betas"),
    (("topk", 24, 16), {"k": 2, "aux_loss_coefficient": float("nan")}, "finite"),
    # found in review: accepted, and trained on to nonsense (a threshold of -9e7, zeroed gradients)
    (("batchtopk", 24, 16), {"k": 2, "topk_threshold_lr": -1.0}, r"topk_threshold_lr must be in \[0, 1\]"),
    (("batchtopk", 24, 16), {"k": 2, "topk_threshold_lr": 5.0}, r"topk_threshold_lr must be in \[0, 1\]"),
    (("jumprelu", 24, 16), {"jumprelu_init_threshold": -1.0}, "jumprelu_init_threshold must be >= 0"),
    (("standard", 24, 16), {"max_grad_norm": 0.0}, "max_grad_norm must be > 0, or None for no clipping"),
    (("standard", 24, 16), {"max_grad_norm": -1.0}, "max_grad_norm must be > 0"),
    (("standard", 24, 16), {"decoder_init_norm": 0.0}, "decoder_init_norm must be > 0, or None"),
    (("standard", 24, 16), {"decoder_init_norm": -1.0}, "decoder_init_norm must be > 0"),
    (("topk", 24, 16), {"k": 2, "aux_loss_coefficient": -1.0}, "aux_loss_coefficient must be >= 0"),
    (("topk", 16, 2**31 - 1), {"k": 4}, r"would need [\d.]+ GiB, more than this machine's"),  # not bad_alloc
])
def test_bad_arguments(args, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        Trainer(*args, **kwargs)


def test_bad_batches():
    t = Trainer("topk", 24, 16, k=2)
    x = batch()
    with pytest.raises(SAEInputError, match=r"\[rows >= 1, 24\]"):
        t.step(x[:, :5], lr=1e-3)
    with pytest.raises(SAEInputError, match="rows >= 1"):
        t.step(x[:0], lr=1e-3)
    with pytest.raises(SAEInputError, match="float"):
        t.step(np.full((2, 24), "a"), lr=1e-3)
    bad = x.copy()
    bad[7, 3] = np.nan
    with pytest.raises(SAEInputError, match="row 7"):
        t.step(bad, lr=1e-3)
    bad[7, 3] = np.inf
    with pytest.raises(SAEInputError, match="row 7"):
        t.step(bad, lr=1e-3)
    with pytest.raises(SAEInputError, match="only to a transcoder"):
        t.step(x, x, lr=1e-3)
    with pytest.raises(InvalidInputError, match="lr"):
        t.step(x, lr=-1.0)
    with pytest.raises(InvalidInputError, match="lr"):
        t.step(x, lr=float("nan"))
    assert t.steps == 0  # nothing ran


def test_transcoder_batches():
    t = Trainer("standard", 24, 16, d_out=8)
    with pytest.raises(SAEInputError, match="needs y"):
        t.step(batch(), lr=1e-3)
    with pytest.raises(SAEInputError, match="rows"):
        t.step(batch(), batch(39, 8), lr=1e-3)
    with pytest.raises(SAEInputError, match=r"\[rows >= 1, 8\]"):
        t.step(batch(), batch(40, 24), lr=1e-3)


def test_set_params_checks():
    t = Trainer("jumprelu", 24, 16)
    with pytest.raises(InvalidInputError, match="shape"):
        t.set_params(b_dec=np.zeros(23, np.float32))
    with pytest.raises(InvalidInputError, match="no parameter 'W_skip'"):
        t.set_params(W_skip=np.zeros((24, 24), np.float32))
    with pytest.raises(InvalidInputError, match="tokens_since_fired"):
        t.tokens_since_fired = np.zeros(15, np.int64)
    t.set_params(b_dec=np.arange(24, dtype=np.float32))
    assert (t.params["b_dec"] == np.arange(24)).all()


@pytest.mark.parametrize("arch,kw", ARCHS)
def test_init_and_layout(arch, kw):
    t = Trainer(arch, 24, 16, d_out=20, skip=True, seed=1, **kw)
    p = t.params
    assert p["W_enc"].shape == (24, 16) and p["W_dec"].shape == (16, 20) and p["W_skip"].shape == (20, 24)
    assert all(v.dtype == (np.float64 if n == "topk_threshold" else np.float32) for n, v in p.items())
    assert np.allclose(np.linalg.norm(p["W_dec"], axis=1), 0.1, rtol=1e-5)  # decoder_init_norm
    assert not p["b_enc"].any() and not p["b_dec"].any() and not p["W_skip"].any()
    assert ("threshold" in p) == (arch == "jumprelu") and ("topk_threshold" in p) == (arch == "batchtopk")
    sae = Trainer(arch, 24, 16, seed=1, **kw).params
    assert np.array_equal(sae["W_enc"], sae["W_dec"].T)  # SAELens: W_enc = W_dec^T


@pytest.mark.parametrize("arch,kw", ARCHS)
def test_same_seed_same_training(arch, kw):
    runs = []
    for _ in range(2):
        t = Trainer(arch, 24, 32, seed=7, dead_tokens=40, **kw)
        stats = [t.step(batch(seed=s), lr=1e-2, coefficient=0.1) for s in range(5)]
        runs.append((t.params, stats))
    (p1, s1), (p2, s2) = runs
    assert s1 == s2
    assert all(np.array_equal(p1[n], p2[n]) for n in p1)
    assert Trainer(arch, 24, 32, seed=8, **kw).params["W_dec"].tolist() != p1["W_dec"].tolist()


@pytest.mark.parametrize("arch,kw", ARCHS)
def test_thread_count_does_not_change_the_bits(arch, kw):
    """Every sum runs in one order whatever the threads: the GEMMs split only their
    output columns, and each latent's gradient is one thread's."""
    before = tm.get_num_threads()
    params = []
    try:
        for threads in (1, 2, 3):  # d_out 16: W_skip's gradient has few rows
            tm.set_num_threads(threads)
            t = Trainer(arch, 24, 64, d_out=16, skip=True, seed=2, dead_tokens=0, **kw)
            for s in range(3):
                t.step(batch(300, 24, s), batch(300, 16, s + 10), lr=1e-2, coefficient=0.1)
            params.append(t.state())
    finally:
        tm.set_num_threads(before)
    for other in params[1:]:
        assert all(np.array_equal(params[0][n], other[n]) for n in other)


@pytest.mark.parametrize("arch,kw", ARCHS)
def test_state_round_trip_continues_identically(arch, kw):
    a = Trainer(arch, 24, 32, seed=3, dead_tokens=50, **kw)
    for s in range(3):
        a.step(batch(seed=s), lr=1e-2, coefficient=0.1)
    state = a.state()
    assert int(state["steps"]) == 3 and state["tokens_since_fired"].dtype == np.int64
    b = Trainer.from_state(state, arch, 24, 32, seed=99, dead_tokens=50, **kw)
    for s in range(3, 6):
        assert a.step(batch(seed=s), lr=1e-2, coefficient=0.1) == b.step(batch(seed=s), lr=1e-2, coefficient=0.1)
    sa, sb = a.state(), b.state()
    assert set(sa) == set(sb) and all(np.array_equal(sa[n], sb[n]) for n in sa)
    with pytest.raises(InvalidInputError, match="adam_m.W_enc"):
        b.load_state({n: v for n, v in sa.items() if n != "adam_m.W_enc"})


def test_steps_from_two_threads_take_turns():
    import threading

    t = Trainer("topk", 24, 64, k=4, seed=0)
    errors = []

    def run(seed):
        try:
            for s in range(10):
                t.step(batch(200, 24, seed + s), lr=1e-3)
                t.state()
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i * 100,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and t.steps == 20


def test_dead_latents_counted_in_tokens():
    t = Trainer("topk", 24, 64, k=2, seed=0, dead_tokens=80)
    stats = [t.step(batch(40, 24, s), lr=0.0)["n_dead"] for s in range(3)]  # lr 0: the same latents fire
    since = t.tokens_since_fired
    assert set(np.unique(since)) <= {0, 40, 80, 120}
    assert stats[-1] == int((since > 80).sum()) and stats[0] == 0


def sparse_data(n, d, atoms, per_row, seed):
    """Rows that are sums of per_row of `atoms` random unit directions; and the directions."""
    rng = np.random.default_rng(seed)
    D = rng.normal(size=(atoms, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    idx = np.argsort(rng.random((n, atoms)), axis=1)[:, :per_row]
    coef = rng.uniform(0.5, 2.0, size=(n, per_row))
    return np.einsum("nk,nkd->nd", coef, D[idx]).astype(np.float32), D


@pytest.mark.parametrize("arch,kw,coef", [("topk", {"k": 3}, 0.0), ("batchtopk", {"k": 3}, 0.0),
                                         ("standard", {}, 0.02), ("jumprelu", {}, 0.005)])
def test_training_recovers_a_sparse_dictionary(arch, kw, coef):
    x, D = sparse_data(8192, 32, 48, 3, seed=0)
    t = Trainer(arch, 32, 96, seed=0, dead_tokens=20 * 256, **kw)
    for epoch in range(6):
        for i in range(0, len(x), 256):
            stats = t.step(x[i:i + 256], lr=1e-2, coefficient=coef)
    assert stats["explained_variance"] > 0.9, stats
    if arch in ("topk", "batchtopk"):  # each true direction has a latent of its own
        W = t.params["W_dec"]
        cos = (D @ W.T) / np.linalg.norm(W, axis=1)
        assert (cos.max(axis=1) > 0.9).mean() > 0.9


def test_saved_config_names_what_the_registry_reads():
    from tinymech.sae.architectures import ARCHITECTURES

    for arch, kw, skip, saved in [("batchtopk", {"k": 2.0}, True, "jumprelu_skip_transcoder"),
                                  ("standard", {"d_out": 4}, False, "transcoder"),
                                  ("topk", {"k": 2}, False, "topk")]:
        cfg = Trainer(arch, 8, 16, skip=skip, **kw).sae_config()
        assert cfg["architecture"] == saved and saved in ARCHITECTURES
    assert Trainer("topk", 8, 16, k=3).sae_config()["k"] == 3


def test_hostile_options_and_states_are_refused():
    """Found in review: a string counted as True, 2**70 dead tokens escaped as a RuntimeError, and a
    state with negative Adam moments or a steps array of two loaded (NaN weights, a TypeError)."""
    with pytest.raises(tm.InvalidInputError, match="must be True or False"):
        tm.sae.Trainer("topk", 8, 16, k=2, rescale_acts_by_decoder_norm="no")
    with pytest.raises(tm.InvalidInputError, match="dead_tokens"):
        tm.sae.Trainer("topk", 8, 16, k=2, dead_tokens=2**70)
    t = tm.sae.Trainer("topk", 8, 16, k=2)
    state = t.state()
    bad_v = dict(state, **{"adam_v.W_dec": -np.ones_like(state["adam_v.W_dec"])})
    with pytest.raises(tm.InvalidInputError, match="negative"):
        t.load_state(bad_v)
    with pytest.raises(tm.InvalidInputError, match="steps must be one integer"):
        t.load_state(dict(state, steps=np.array([1, 2])))
    b = tm.sae.Trainer("batchtopk", 8, 16, k=2.0)
    with pytest.raises(tm.InvalidInputError, match="finite"):
        b.set_params(topk_threshold=float("nan"))


def test_max_grad_norm_none_clips_nothing():
    """None is the documented "no clipping" (0 is refused: torch's clip_grad_norm_(0) zeroes the gradients)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 24)) * 50).astype(np.float32)  # a gradient norm far above 1
    unclipped, huge, clipped = (Trainer("standard", 24, 16, seed=2, max_grad_norm=m) for m in (None, 1e30, 1.0))
    for t in (unclipped, huge, clipped):
        t.step(x, lr=1e-2, coefficient=1.0)
    np.testing.assert_array_equal(unclipped.params["W_dec"], huge.params["W_dec"])
    assert not np.array_equal(unclipped.params["W_dec"], clipped.params["W_dec"])
