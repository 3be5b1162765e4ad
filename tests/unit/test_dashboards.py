"""tm.feature_dashboards: one pass over a corpus gives what a brute force gives
(encode the whole corpus densely, sort, count), for an SAE, a transcoder and an
MLP layer's neurons, from text or from an activation store; the folder round
trip, resuming, and the refusals. On the bundled model and SAE."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import tinymech as tm
from tinymech.cli import main
from tinymech import runtime
from tinymech.sae.dashboards import build

ROOT = Path(__file__).resolve().parents[2]
DEMO_SAE = ROOT / "models/demo-gpt2/saes/blocks.2.hook_resid_pre"
TEXTS = [f"Chapter {i}. It is a truth universally acknowledged, that a single man in possession of a good "
         f"fortune must be in want of a wife; number {i * 7}. Mr Darcy walked in." for i in range(30)]
SIZES = dict(top_k=5, n_intervals=4, per_interval=2, n_bins=16, before=3, after=2, n_logits=4, n_cooc=3)
CONTEXT = 24


@pytest.fixture(scope="module")
def model():
    return tm.load()


@pytest.fixture(scope="module")
def sae():
    return tm.SAE.load(DEMO_SAE)


def dashboards(model, source, out, **kw):
    kw = {"context": CONTEXT, "batch_size": 3, "progress": False, **SIZES} | kw
    return tm.feature_dashboards(model, source, TEXTS, out=out, **kw)


def brute_force(model, acts_of, n_tokens=None):
    """Every statistic from the dense activations [rows, context, F] of the whole corpus, sorted in numpy."""
    rows = tm.tokenize_and_concatenate(model, TEXTS, CONTEXT)
    valid = ~np.isin(rows, [model.tokenizer.bos_token_id, model.tokenizer.eos_token_id])
    if n_tokens is not None:
        valid &= np.cumsum(valid).reshape(valid.shape) <= n_tokens
        rows, valid = rows[: np.flatnonzero(valid.any(1))[-1] + 1], valid[: np.flatnonzero(valid.any(1))[-1] + 1]
    acts = acts_of(rows)
    active = (acts > 0) & valid[..., None]
    values = np.where(active, acts, 0.0)
    peak = values.max(axis=1)  # [row, F]
    return rows, valid, acts, active, values, peak


def check_against(dash, model, rows, valid, acts, active, values, peak, directions):
    f_all = acts.shape[-1]
    assert dash.n_features == f_all and dash.n_tokens == valid.sum()
    np.testing.assert_array_equal(dash.count, active.sum(axis=(0, 1)))
    np.testing.assert_allclose(dash.max_activation, values.max(axis=(0, 1)), rtol=0, atol=0)
    with np.errstate(invalid="ignore"):
        mean = np.where(dash.count > 0, values.sum(axis=(0, 1)) / np.maximum(dash.count, 1), 0)
    np.testing.assert_allclose(dash.mean_activation, mean, rtol=1e-5)
    flat = active.reshape(-1, f_all).astype(np.int64)
    ranked = np.argsort(-values.reshape(-1, f_all), axis=1, kind="stable")[:, build.COOC_CAP:]
    np.put_along_axis(flat, ranked, 0, axis=1)  # a token's COOC_CAP most active count, no more
    cooc = np.rint(flat.T.astype(np.float64) @ flat).astype(np.int64)  # BLAS: exact for counts below 2**53
    np.fill_diagonal(cooc, 0)
    checked = 0
    for f in np.flatnonzero(dash.count)[:: max(1, int(np.count_nonzero(dash.count)) // 60)]:
        d = dash[f]
        order = sorted((r for r in range(len(rows)) if peak[r, f] > 0), key=lambda r: (-peak[r, f], r))[:SIZES["top_k"]]
        assert [c.row for c in d.top_contexts] == order
        for c in d.top_contexts:
            p = int(np.argmax(values[c.row, :, f]))
            lo, hi = max(0, p - SIZES["before"]), min(CONTEXT, p + SIZES["after"] + 1)
            assert c.position == p and c.value == peak[c.row, f]
            np.testing.assert_array_equal(c.token_ids, rows[c.row, lo:hi])
            np.testing.assert_array_equal(c.activations, np.where(valid[c.row, lo:hi], acts[c.row, lo:hi, f], 0))
            assert c.tokens == tuple(model.to_str_tokens(rows[c.row, lo:hi]))
        r = 2.0 ** np.frexp(values[..., f].max())[1]
        want = np.bincount(np.floor(values[..., f][active[..., f]] * SIZES["n_bins"] / r).astype(int),
                           minlength=SIZES["n_bins"])
        np.testing.assert_array_equal(d.hist_counts, want)
        assert d.hist_edges[-1] == r
        for interval in d.intervals:
            assert interval.count == sum(interval.low <= v < interval.high for v in values[..., f][active[..., f]])
            for c in interval.contexts:
                assert interval.low <= c.value < interval.high and active[c.row, c.position, f]
        want_cooc = sorted(((-cooc[f, g], g) for g in range(f_all) if cooc[f, g] > 0))[: SIZES["n_cooc"]]
        assert list(d.cooccurring) == [(g, -n) for n, g in want_cooc]
        if directions is not None:
            effects = directions[f] @ model.W_U
            top = np.argsort(-effects, kind="stable")[: SIZES["n_logits"]]
            assert [t for t, _ in d.promoted] == model.to_str_tokens(top)
            np.testing.assert_allclose([v for _, v in d.promoted], effects[top], rtol=1e-4, atol=1e-5)
        checked += 1
    assert checked >= 10


def test_an_sae_s_dashboards_are_the_brute_force_s(model, sae, tmp_path):
    dash = dashboards(model, sae, tmp_path / "d")
    hook = sae.cfg.hook_name

    def acts_of(rows):
        _, cache = model.run_with_cache(rows, names_filter=[hook], return_type=None)
        return sae.encode(cache[hook])

    check_against(dash, model, *brute_force(model, acts_of), directions=sae.W_dec)
    assert dash.meta["kind"] == "sae latents" and dash.meta["sae_sha256"] == build.sae_sha256(sae)
    again = tm.FeatureDashboards.load(tmp_path / "d")
    f = int(np.argmax(dash.count))
    assert again[f].top_contexts[0].text() == dash[f].top_contexts[0].text()
    assert again.labels == dash.labels and dash[f].label_source == "auto"


def test_mlp_neurons_need_no_sae(model, tmp_path):
    hook = "blocks.1.mlp.hook_post"
    dash = dashboards(model, None, tmp_path / "n", hook=hook, n_tokens=300)

    def acts_of(rows):
        _, cache = model.run_with_cache(rows, names_filter=[hook], return_type=None)
        return cache[hook]

    check_against(dash, model, *brute_force(model, acts_of, n_tokens=300), directions=model.W_out[1])
    assert dash.meta["kind"] == "neurons" and dash.n_tokens == 300


def test_an_activation_store_stands_in_for_the_model_run(model, sae, tmp_path):
    store = tm.collect_activations(model, sae.cfg.hook_name, TEXTS, 500, out=tmp_path / "acts", context=CONTEXT,
                                   progress=False)
    from_store = tm.feature_dashboards(model, sae, store, out=tmp_path / "s", progress=False, **SIZES)
    from_text = dashboards(model, sae, tmp_path / "t", n_tokens=500)
    assert from_store.n_tokens == from_text.n_tokens == 500
    np.testing.assert_array_equal(from_store.count, from_text.count)
    np.testing.assert_allclose(from_store.max_activation, from_text.max_activation, rtol=1e-5)
    f = int(np.argmax(from_text.count))
    assert [c.row for c in from_store[f].top_contexts] == [c.row for c in from_text[f].top_contexts]


def test_an_interrupted_run_continues_to_the_same_result(model, sae, tmp_path, monkeypatch):
    whole = dashboards(model, sae, tmp_path / "whole")
    seen = []
    real_rows = build._Checkpoint.rows

    def interrupt_after_four(self, batch):
        real_rows(self, batch)
        seen.append(len(batch))
        if len(seen) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(build._Checkpoint, "rows", interrupt_after_four)
    with pytest.raises(KeyboardInterrupt):
        dashboards(model, sae, tmp_path / "cut")
    monkeypatch.undo()
    index = json.loads((tmp_path / "cut" / "index.json").read_text())
    assert not index["complete"] and index["n_rows"] == 12
    with pytest.raises(tm.InvalidInputError, match="unfinished"):
        tm.FeatureDashboards.load(tmp_path / "cut")
    resumed = dashboards(model, sae, tmp_path / "cut")
    for name in ("count", "max_activation", "mean_activation"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name))
    a = json.loads((tmp_path / "cut" / "labels.json").read_text())
    assert a == json.loads((tmp_path / "whole" / "labels.json").read_text())
    assert not (tmp_path / "cut" / "checkpoint").exists()


def test_a_damaged_record_of_the_time_spent_does_not_stop_a_resume(model, sae, tmp_path, monkeypatch):
    whole = dashboards(model, sae, tmp_path / "whole", n_tokens=300)
    real_rows = build._Checkpoint.rows

    def interrupt(self, batch):
        real_rows(self, batch)
        raise KeyboardInterrupt

    monkeypatch.setattr(build._Checkpoint, "rows", interrupt)
    with pytest.raises(KeyboardInterrupt):
        dashboards(model, sae, tmp_path / "cut", n_tokens=300)
    monkeypatch.undo()
    for seconds in ("x", {}, {"model": "1", "encode": 0.0, "merge": 0.0}):
        index = json.loads((tmp_path / "cut" / "index.json").read_text())
        (tmp_path / "cut" / "index.json").write_text(json.dumps(index | {"seconds": seconds}))
        shutil.copytree(tmp_path / "cut", tmp_path / "again", dirs_exist_ok=True)
        resumed = dashboards(model, sae, tmp_path / "again", n_tokens=300)
        np.testing.assert_array_equal(resumed.count, whole.count)
        shutil.rmtree(tmp_path / "again")


@pytest.mark.parametrize("n_tokens", [None, 300])
def test_an_interrupt_while_finishing_keeps_the_whole_pass(model, sae, tmp_path, monkeypatch, n_tokens):
    whole = dashboards(model, sae, tmp_path / "whole", n_tokens=n_tokens)

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "_logit_effects", interrupt)
    with pytest.raises(KeyboardInterrupt):
        dashboards(model, sae, tmp_path / "cut", n_tokens=n_tokens)
    monkeypatch.undo()
    read = []
    real_rows = build._Checkpoint.rows
    monkeypatch.setattr(build._Checkpoint, "rows", lambda self, batch: (read.append(len(batch)), real_rows(self, batch)))
    resumed = dashboards(model, sae, tmp_path / "cut", n_tokens=n_tokens)
    assert read == []  # nothing read again
    assert resumed.meta["n_rows"] == whole.meta["n_rows"] and resumed.n_tokens == whole.n_tokens
    np.testing.assert_array_equal(resumed.count, whole.count)


def test_sizes_beyond_the_machine_s_memory_are_refused_before_allocating(model, sae, tmp_path, monkeypatch):
    # top_k=65536 for 2048 features wants 20 GiB, which the 1 TiB limit let the core zero-fill
    monkeypatch.setattr(runtime, "physical_memory", lambda: 1 << 20)
    with pytest.raises(tm.InvalidInputError, match="would need .* GiB, more than this machine's"):
        dashboards(model, sae, tmp_path / "m", top_k=65536)


def test_an_infinite_activation_is_an_invalid_input_error(model, sae, tmp_path):
    """Found in review: the core's refusal of an activation that is not finite surfaced as a bare ValueError."""
    weights = {name: np.array(getattr(sae, name)) for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    weights["W_enc"][:, 1], weights["b_enc"][1] = 1e36, 3.4e38  # feature 1's pre-activation overflows
    with pytest.raises(tm.InvalidInputError, match=r"the activation of feature 1 at token \d+ is .*not finite"):
        dashboards(model, tm.SAE(sae.cfg, weights), tmp_path / "inf")


def test_the_cli_says_when_cooccurrence_is_skipped(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(build, "COOC_MEMORY", 1024)  # the 1 GiB limit, scaled to this layer's neurons
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("<|endoftext|>".join(TEXTS))
    assert main(["dashboards", "--hook", "blocks.1.mlp.hook_post", "--corpus", str(corpus), "--tokens", "100",
                 "--context", str(CONTEXT), "--out", str(tmp_path / "d")]) == 0
    assert "co-occurring features were not counted" in capsys.readouterr().err


def test_refusals(model, sae, tmp_path):
    with pytest.raises(tm.InvalidInputError, match="less than one row"):
        tm.feature_dashboards(model, sae, ["too short"], out=tmp_path / "short", context=64, progress=False)
    with pytest.raises(tm.HookError):
        tm.feature_dashboards(model, None, TEXTS, out=tmp_path / "x", hook="blocks.9.mlp.hook_post", progress=False)
    with pytest.raises(tm.InvalidInputError, match="give out="):
        tm.feature_dashboards(model, None, TEXTS, hook="blocks.1.mlp.hook_post", progress=False)
    with pytest.raises(tm.InvalidInputError, match="power of two"):
        dashboards(model, sae, tmp_path / "p", n_bins=12)
    with pytest.raises(tm.InvalidInputError, match="top_k"):  # the max activation is the first top context's
        dashboards(model, sae, tmp_path / "k", top_k=0)
    with pytest.raises(tm.InvalidInputError, match="ran out"):
        dashboards(model, sae, tmp_path / "r", n_tokens=10**6)
    dashboards(model, sae, tmp_path / "d", n_tokens=200)
    w_enc = sae.W_enc.copy()
    w_enc[0, 0] += 1.0
    other = tm.SAE(sae.cfg, {"W_enc": w_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec})
    with pytest.raises(tm.InvalidInputError, match="another SAE"):
        dashboards(model, other, tmp_path / "d", n_tokens=200)
    with pytest.raises(tm.InvalidInputError, match="n_tokens_asked"):
        dashboards(model, sae, tmp_path / "d", n_tokens=300)
    assert dashboards(model, sae, tmp_path / "d", n_tokens=300, resume=False).n_tokens == 300


def test_the_default_folder_is_beside_the_sae_and_writes_its_labels(model, tmp_path, capsys):
    folder = tmp_path / "sae"
    shutil.copytree(DEMO_SAE, folder, ignore=shutil.ignore_patterns("dashboards", "feature_labels.json"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("<|endoftext|>".join(TEXTS))
    assert main(["dashboards", "--sae", str(folder), "--corpus", str(corpus), "--tokens", "400",
                 "--context", str(CONTEXT), "--top-k", "4"]) == 0
    assert (folder / "dashboards" / "index.json").is_file()
    sae = tm.SAE.load(folder)
    dash = tm.FeatureDashboards.load(folder / "dashboards")
    f = int(np.argmax(dash.count))
    assert sae.labels[f] == dash[f].label
    capsys.readouterr()
    assert main(["feature", str(folder), str(f)]) == 0
    assert f"feature #{f}" in capsys.readouterr().out


def test_a_transcoder_reads_its_input_hook(model, tmp_path):
    from numpy_checkpoints import write_sae

    hook_in, hook_out = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"
    d = model.cfg.d_model
    tc = tm.SAE.load(write_sae(tmp_path / "tc", "transcoder", d, 64, hook=hook_in, hook_out=hook_out, std=0.1))
    dash = dashboards(model, tc, tmp_path / "d", n_tokens=400)

    def acts_of(rows):
        _, cache = model.run_with_cache(rows, names_filter=[hook_in], return_type=None)
        return tc.encode(cache[hook_in])

    check_against(dash, model, *brute_force(model, acts_of, n_tokens=400), directions=tc.W_dec)
    assert dash.meta["kind"] == "transcoder latents" and dash.meta["hook_out"] == hook_out


def test_loading_for_an_sae_checks_its_weights(model, sae, tmp_path):
    dashboards(model, sae, tmp_path / "d", n_tokens=200)
    assert tm.FeatureDashboards.load(tmp_path / "d", sae=sae).n_tokens == 200
    w_dec = sae.W_dec.copy()
    w_dec[3] *= 2
    other = tm.SAE(sae.cfg, {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": w_dec, "b_dec": sae.b_dec})
    with pytest.raises(tm.InvalidInputError, match="another SAE"):
        tm.FeatureDashboards.load(tmp_path / "d", sae=other)


def test_an_sae_whose_hook_the_model_lacks_is_refused(model, tmp_path):
    from numpy_checkpoints import write_sae

    wide = tm.SAE.load(write_sae(tmp_path / "w", "topk", 576, 64, hook="blocks.15.hook_resid_pre", k=4))
    with pytest.raises(tm.HookError):
        dashboards(model, wide, tmp_path / "d")


def test_the_feature_command_exports_and_reads_neuronpedia_json(model, sae, tmp_path, capsys):
    dash = dashboards(model, sae, tmp_path / "d", n_tokens=300)
    f = int(np.argmax(dash.count))
    assert main(["feature", str(tmp_path / "d"), str(f), "--neuronpedia", str(tmp_path / "one.json")]) == 0
    assert str(json.loads((tmp_path / "one.json").read_text())["index"]) == str(f)
    assert main(["feature", str(tmp_path / "d"), "all", "--neuronpedia", str(tmp_path / "all.json")]) == 0
    assert len(json.loads((tmp_path / "all.json").read_text())) == dash.n_features
    capsys.readouterr()
    assert main(["feature", str(tmp_path / "all.json"), str(f)]) == 0
    assert f"feature #{f}" in capsys.readouterr().out
    assert main(["feature", str(tmp_path / "d"), "all"]) == 2
    assert "needs --neuronpedia" in capsys.readouterr().err
    assert main(["feature", str(tmp_path / "d"), str(dash.n_features)]) == 2
    assert "out of range" in capsys.readouterr().err


def test_a_whole_corpus_shows_its_count_not_a_total_of_zero(model, sae, tmp_path, capsys):
    dashboards(model, sae, tmp_path / "d", progress=True)  # n_tokens=None: the total is not known
    err = capsys.readouterr().err
    assert "tokens/s" in err and "/0 [" not in err and "-" not in err.replace("-gpt2", "")


def test_the_feature_command_refuses_the_dashboards_of_a_retrained_sae(model, sae, tmp_path, capsys):
    folder = tmp_path / "sae"
    shutil.copytree(DEMO_SAE, folder, ignore=shutil.ignore_patterns("dashboards", "feature_labels.json"))
    dashboards(model, tm.SAE.load(folder), folder / "dashboards", n_tokens=200)
    assert main(["feature", str(folder), "3"]) == 0
    retrained = tm.SAE.load(folder)
    w_dec = retrained.W_dec.copy()
    w_dec[0] *= -1
    tm.SAE(retrained.cfg, {"W_enc": retrained.W_enc, "b_enc": retrained.b_enc, "W_dec": w_dec,
                           "b_dec": retrained.b_dec}).save(folder)
    capsys.readouterr()
    assert main(["feature", str(folder), "3"]) == 2
    assert "another SAE" in capsys.readouterr().err
