"""_core.FeatureStats, the feature dashboards' accumulator, against a numpy brute
force over the whole corpus at once: every field of its state, sparse and dense
batches of 1 and 3 rows, ranges that double as larger values arrive, ties,
excluded positions, any thread count, a checkpoint resumed, and bad input."""
import numpy as np
import pytest

import tinymech as tm
from tinymech import _core

F, CONTEXT, TOP_K, BEFORE, AFTER = 37, 5, 3, 2, 1
N_INTERVALS, PER_INTERVAL, N_BINS, COOC_CAP = 4, 2, 16, 3
SEED = 2**64 - 12345  # a seed above 2^63 reaches the core whole
W = BEFORE + 1 + AFTER
M64 = np.uint64(2**64 - 1)


def stats(cooccurrence=True, **kw):
    args = dict(n_features=F, top_k=TOP_K, n_intervals=N_INTERVALS, per_interval=PER_INTERVAL, n_bins=N_BINS,
                before=BEFORE, after=AFTER, cooccurrence=cooccurrence, cooc_cap=COOC_CAP, seed=SEED)
    return _core.FeatureStats(**{**args, **kw})


def splitmix64(z):
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def corpus(rng, n_rows, sparse, flat=False, k=6):
    """x [n_tok, F]: each feature's raw value (0 where a sparse input has no entry),
    valid [n_tok], and the sparse idx/val that give x. Values on a grid, some
    negative, growing row by row (the range doubles along the way), or flat: a few
    values only (ties everywhere)."""
    n = n_rows * CONTEXT
    if flat:
        values = rng.choice(np.array([-1, 0.5, 1, 1], np.float32), (n, F))
    else:
        grow = np.repeat(2.0 ** np.linspace(-3, 4, n_rows), CONTEXT)[:, None]
        values = (np.round(rng.normal(0.5, 1, (n, F)) * 4) / 4 * grow).astype(np.float32)
    valid = (rng.random(n) > 0.2).astype(np.uint8)
    if not sparse:
        x = np.where(rng.random((n, F)) < 0.3, values, 0).astype(np.float32)
        return x, valid, None, None
    idx = np.full((n, k), -1, np.int32)
    val = rng.normal(size=(n, k)).astype(np.float32)  # ignored where idx is -1
    x = np.zeros((n, F), np.float32)
    for t in range(n):
        m = rng.integers(0, k + 1)
        feats = rng.choice(F, m, replace=False)
        slots = rng.choice(k, m, replace=False)
        idx[t, slots] = feats
        val[t, slots] = values[t, feats]
        x[t, feats] = values[t, feats]
    return x, valid, idx, val


def window(x, valid, f, t):
    row, pos = divmod(t, CONTEXT)
    out = np.zeros(W, np.float32)
    for w in range(W):
        p = pos - BEFORE + w
        if 0 <= p < CONTEXT and valid[row * CONTEXT + p]:
            out[w] = x[row * CONTEXT + p, f]
    return out


def brute_force(x, valid, cooccurrence=True):
    n = len(x)
    act = (valid[:, None] != 0) & (x > 0)
    s = {"n_tokens": np.array([valid.astype(bool).sum()]), "n_rows": np.array([n // CONTEXT]),
         "context": np.array([CONTEXT]), "count": act.sum(0).astype(np.int64), "sum": np.zeros(F),
         "range": np.zeros(F, np.float32), "hist": np.zeros((F, N_BINS), np.int64),
         "top_value": np.zeros((F, TOP_K), np.float32), "top_row": np.full((F, TOP_K), -1),
         "top_pos": np.zeros((F, TOP_K), np.int32), "top_window": np.zeros((F, TOP_K, W), np.float32),
         "sample_key": np.zeros((F, N_INTERVALS, PER_INTERVAL), np.uint64),
         "sample_value": np.zeros((F, N_INTERVALS, PER_INTERVAL), np.float32),
         "sample_token": np.full((F, N_INTERVALS, PER_INTERVAL), -1),
         "sample_window": np.zeros((F, N_INTERVALS, PER_INTERVAL, W), np.float32)}
    for f in range(F):
        t_act = np.flatnonzero(act[:, f])
        if not len(t_act):
            continue
        v = x[t_act, f]
        s["sum"][f] = np.cumsum(v.astype(np.float64))[-1]  # in token order
        R = np.float32(2.0 ** np.frexp(v.max())[1])
        s["range"][f] = R
        np.add.at(s["hist"][f], np.floor(v.astype(np.float64) * N_BINS / R).astype(int), 1)
        peaks = []  # (-peak, row, pos)
        for row in np.unique(t_act // CONTEXT):
            in_row = t_act[t_act // CONTEXT == row]
            first = in_row[np.argmax(x[in_row, f])]  # argmax: the first position attaining it
            peaks.append((-x[first, f], row, first % CONTEXT))
        for j, (neg, row, pos) in enumerate(sorted(peaks)[:TOP_K]):
            s["top_value"][f, j], s["top_row"][f, j], s["top_pos"][f, j] = -neg, row, pos
            s["top_window"][f, j] = window(x, valid, f, row * CONTEXT + pos)
        keys = splitmix64(splitmix64(np.uint64(SEED) ^ np.uint64(f)) ^ t_act.astype(np.uint64))
        interval = np.floor(v.astype(np.float64) * N_INTERVALS / R).astype(int)
        for i in range(N_INTERVALS):
            here = np.flatnonzero(interval == i)
            order = here[np.lexsort((t_act[here], keys[here]))][:PER_INTERVAL]
            for j, e in enumerate(order):
                s["sample_key"][f, i, j], s["sample_value"][f, i, j] = keys[e], v[e]
                s["sample_token"][f, i, j] = t_act[e]
                s["sample_window"][f, i, j] = window(x, valid, f, t_act[e])
    if cooccurrence:
        cooc = np.zeros((F, F), np.uint32)
        for t in range(n):
            feats = np.flatnonzero(act[t])
            feats = feats[np.lexsort((feats, -x[t, feats]))][:COOC_CAP]
            for f in feats:
                cooc[f, feats[feats != f]] += 1
        s["cooc"] = cooc
    return s


def feed(fs, x, valid, idx, val, rows_per_batch, start_row=0, end_row=None):
    end_row = len(x) // CONTEXT if end_row is None else end_row
    for r in range(start_row, end_row, rows_per_batch):
        t0, t1 = r * CONTEXT, min(end_row, r + rows_per_batch) * CONTEXT
        if idx is None:
            fs.add_dense(x[t0:t1], valid[t0:t1], r, CONTEXT)
        else:
            fs.add_sparse(idx[t0:t1], val[t0:t1], valid[t0:t1], r, CONTEXT)


def assert_same(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == np.asarray(want[key]).dtype or key in ("n_tokens", "n_rows", "context", "top_row",
                                                                         "sample_token"), key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.fixture
def threads():
    before = _core.get_num_threads()
    yield
    _core.set_num_threads(before)


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("rows_per_batch", [1, 3])
def test_equals_brute_force(sparse, flat, rows_per_batch, threads):
    x, valid, idx, val = corpus(np.random.default_rng(rows_per_batch + 10 * sparse), 40, sparse, flat)
    want = brute_force(x, valid)
    for n_threads in (1, 2, 3):
        _core.set_num_threads(n_threads)
        fs = stats()
        feed(fs, x, valid, idx, val, rows_per_batch)
        got = fs.state()
        assert_same(got, want)
        for key in ("n_tokens", "n_rows", "context", "count", "hist", "top_row"):
            assert got[key].dtype == np.int64, key
        assert got["sample_key"].dtype == np.uint64 and got["cooc"].dtype == np.uint32
        assert got["range"].dtype == np.float32 and got["sum"].dtype == np.float64


def test_resumed_checkpoint_continues_the_same():
    x, valid, idx, val = corpus(np.random.default_rng(3), 24, True)
    whole = stats()
    feed(whole, x, valid, idx, val, 3)
    first = stats()
    feed(first, x, valid, idx, val, 3, end_row=12)
    resumed = stats()
    resumed.load_state(first.state())
    feed(resumed, x, valid, idx, val, 3, start_row=12)
    assert_same(resumed.state(), whole.state())


def test_fresh_state_and_properties():
    fs = stats(cooccurrence=False)
    s = fs.state()
    assert "cooc" not in s and s["context"][0] == 0 and (s["top_row"] == -1).all()
    assert (fs.n_features, fs.top_k, fs.n_intervals, fs.per_interval, fs.n_bins, fs.before, fs.after) == (
        F, TOP_K, N_INTERVALS, PER_INTERVAL, N_BINS, BEFORE, AFTER)
    assert not fs.cooccurrence
    s["count"][:] = 5  # a copy
    assert (fs.state()["count"] == 0).all()
    assert fs.memory_bytes == sum(a.nbytes for k, a in s.items() if k not in ("n_tokens", "n_rows", "context"))


@pytest.mark.parametrize("kw, match", [
    (dict(n_features=0), "n_features"), (dict(top_k=-1), "top_k"), (dict(n_bins=12), "n_bins"),
    (dict(n_intervals=32), "n_intervals"), (dict(n_intervals=3), "n_intervals"), (dict(before=-1), "before"),
    (dict(per_interval=-1), "per_interval"), (dict(cooc_cap=0), "cooc_cap")])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        stats(**kw)


def test_absurd_sizes_are_a_memory_error():
    with pytest.raises(MemoryError, match="more than memory"):
        stats(n_features=2**31 - 1, top_k=2**40)


def test_bad_batches_change_nothing():
    fs = stats()
    idx = np.array([[0, 1], [2, -1]] * CONTEXT, np.int32)
    val = np.ones(idx.shape, np.float32)
    valid = np.ones(len(idx), np.uint8)
    nan_on_no_entry = val.copy()
    nan_on_no_entry[1, 1] = np.nan  # idx -1 there: not an activation
    fs.add_sparse(idx[:CONTEXT], nan_on_no_entry[:CONTEXT], valid[:CONTEXT], 0, CONTEXT)
    fs.add_sparse(idx[CONTEXT:], val[CONTEXT:], valid[CONTEXT:], 1, CONTEXT)
    before = fs.state()
    cases = [
        (dict(first_row=0), "row 0, not at row 2"),
        (dict(context=CONTEXT * 2, first_row=2), "context 10 differs"),
        (dict(idx=idx[:CONTEXT + 1], val=val[:CONTEXT + 1], valid=valid[:CONTEXT + 1]), "not whole rows"),
        (dict(idx=np.where(idx == 2, F, idx)), f"index {F} at token 11 is outside"),
        (dict(idx=np.where(idx == 2, -2, idx)), "index -2 at token 11"),
        (dict(idx=np.where(idx == 1, 0, idx)), "feature 0 is listed twice at token 10"),
        (dict(val=np.where(idx == 2, np.inf, val).astype(np.float32)), "feature 2 at token 11 is inf"),
        (dict(val=np.where(idx == 2, 2.0**127, val).astype(np.float32)), "below 2\\^127"),
        (dict(idx=idx.astype(np.int64) + 2**32), "idx must be an array of int32"),
        (dict(valid=valid[:3]), "valid must have shape"),
        (dict(val=val[:, :1]), "val must have shape"),
    ]
    for change, match in cases:
        args = {**dict(idx=idx, val=val, valid=valid, first_row=2, context=CONTEXT), **change}
        with pytest.raises(ValueError, match=match):
            fs.add_sparse(args["idx"], args["val"], args["valid"], args["first_row"], args["context"])
        assert_same(fs.state(), before)
    nan_on_invalid = np.ones((CONTEXT, F), np.float32)
    nan_on_invalid[2, 7] = np.nan
    with pytest.raises(ValueError, match="feature 7 at token 12 is nan"):
        fs.add_dense(nan_on_invalid, np.zeros(CONTEXT, np.uint8), 2, CONTEXT)
    with pytest.raises(ValueError, match="acts must have shape"):
        fs.add_dense(nan_on_invalid[:, 1:], valid[:CONTEXT], 2, CONTEXT)
    assert_same(fs.state(), before)


def test_load_state_checks_what_it_is_given():
    fs = stats()
    good = fs.state()
    cases = [
        ({**good, "hist": good["hist"].astype(np.int32)}, "hist must be an array of int64"),
        ({**good, "hist": good["hist"][:, :4]}, "hist must have shape"),
        ({k: v for k, v in good.items() if k != "cooc"}, "no cooc"),
        ({**good, "range": np.full(F, 3, np.float32)}, "not a power of two"),
        ({**good, "n_rows": np.array([-1])}, "bad totals"),
        ({**good, "n_rows": np.array([2**62]), "context": np.array([5])}, "bad totals"),
        ({**good, "top_row": np.full((F, TOP_K), 3)}, "top row outside"),
    ]
    for state, match in cases:
        with pytest.raises(ValueError, match=match):
            fs.load_state(state)
    assert_same(fs.state(), good)


def test_load_state_refuses_positions_and_counts_a_pass_cannot_give():
    """A checkpoint's top position past its row would point into the next row (or outside the corpus, refused only
    when the finished folder is read); a count its histogram does not add up to is silently wrong."""
    x, valid, idx, val = corpus(np.random.default_rng(5), 12, True)
    fed = stats()
    feed(fed, x, valid, idx, val, 3)
    good = fed.state()
    f = int(np.argmax(good["count"]))
    assert good["count"][f] > 0 and good["top_row"][f, 0] >= 0

    def changed(name, value):
        a = good[name].copy()
        a.reshape(F, -1)[f, 0] = value  # feature f's first entry
        return {**good, name: a}

    cases = [(changed("top_pos", CONTEXT), "top position"), (changed("top_pos", -1), "top position"),
             (changed("count", -1), "negative count"), (changed("count", good["count"][f] + 1), "add up"),
             (changed("hist", -1), "add up"), (changed("hist", 2**62), "add up")]
    for state, match in cases:
        with pytest.raises(ValueError, match=match):
            fed.load_state(state)
    assert_same(fed.state(), good)
    fed.load_state(good)


def test_the_first_bad_token_is_the_one_reported_whatever_the_threads():
    # the batch is checked in chunks over the threads: a later chunk's error once won the race (CI saw it)
    idx = np.array([[0, 1], [2, -1]] * (4 * CONTEXT), np.int32)
    val = np.where(idx == 2, np.inf, 1.0).astype(np.float32)  # inf at every odd token: the first is token 1
    valid = np.ones(len(idx), np.uint8)
    threads = tm.get_num_threads()
    try:
        for n in (1, 2, 3, 4):
            tm.set_num_threads(n)
            for _ in range(20):
                with pytest.raises(ValueError, match="feature 2 at token 1 is inf"):
                    stats().add_sparse(idx, val, valid, 0, CONTEXT)
    finally:
        tm.set_num_threads(threads)
