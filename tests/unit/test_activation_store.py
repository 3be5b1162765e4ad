"""collect_activations and ActivationStore: activations from a corpus on disk
(what run_with_cache gives at the kept positions), resumable, refused when
they would mix two collections or do not fit; shuffled batches; the
`tinymech collect` command. On the bundled model."""
import io
import json
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

import tinymech as tm
from tinymech import progress
from tinymech.arch.bf16 import from_bf16, to_bf16
from tinymech.cli import main
from tinymech.sae import activations

HOOK, HOOK_OUT = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"
TEXTS = [f"Chapter {i}. It is a truth universally acknowledged, that a single man in possession of a good "
         f"fortune must be in want of a wife; number {i * 7}." for i in range(40)]


@pytest.fixture(scope="module")
def model():
    return tm.load()


def collect(model, out, n_tokens=600, **kwargs):
    kwargs = {"context": 16, "batch_size": 4, "progress": False} | kwargs
    return tm.collect_activations(model, HOOK, TEXTS, n_tokens, out=out, **kwargs)


def files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_activations_are_the_models_at_the_kept_positions(model, tmp_path):
    store = collect(model, tmp_path / "a", hook_out=HOOK_OUT)
    rows = np.asarray(store.tokens)
    bos = model.tokenizer.bos_token_id
    assert rows.shape[1] == 16 and (rows[:, 0] == bos).all()
    np.testing.assert_array_equal(rows, tm.tokenize_and_concatenate(model, TEXTS, 16)[: len(rows)])
    _, cache = model.run_with_cache(rows, names_filter=[HOOK, HOOK_OUT], return_type=None)
    keep = ~np.isin(rows, [bos, model.tokenizer.eos_token_id])
    assert keep.sum() > store.n_tokens > keep[:-1].sum()  # the last row in part, with EOS between texts left out
    assert store.meta["excluded_token_ids"] == [bos] and store.meta["prepend_bos"]
    x, y = store.rows(0, store.n_tokens)
    np.testing.assert_allclose(x, cache[HOOK][keep][: store.n_tokens], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, cache[HOOK_OUT][keep][: store.n_tokens], rtol=1e-5, atol=1e-5)
    assert (store.n_tokens, store.d_in, store.d_out) == (600, model.cfg.d_model, model.cfg.d_model)
    assert store.inputs.dtype == np.float32 and store.outputs.shape == (600, model.cfg.d_model)
    assert store.meta["hook"] == HOOK and store.meta["hook_out"] == HOOK_OUT and store.meta["shape"] == [600, 256]


def test_heads_are_flattened_and_runs_stop_after_the_hooks_block(model, tmp_path, monkeypatch):
    stops = []
    run = type(model).run_with_cache
    monkeypatch.setattr(type(model), "run_with_cache", lambda self, *a, **k: stops.append(k["stop_at_layer"])
                        or run(self, *a, **k))
    store = tm.collect_activations(model, "blocks.2.attn.hook_z", TEXTS, 50, out=tmp_path / "z", context=16,
                                   progress=False)
    assert store.d_in == model.cfg.n_heads * model.cfg.d_head and set(stops) == {3}
    tm.collect_activations(model, "hook_embed", TEXTS, 50, out=tmp_path / "e", context=16, progress=False)
    tm.collect_activations(model, "ln_final.hook_normalized", TEXTS, 50, out=tmp_path / "f", context=16,
                           progress=False)
    assert stops[-2:] == [0, None]
    with pytest.raises(tm.HookError, match="key positions"):
        tm.collect_activations(model, "blocks.0.attn.hook_pattern", TEXTS, 50, out=tmp_path / "p", progress=False)
    with pytest.raises(tm.HookError, match="unknown hook point"):
        tm.collect_activations(model, "blocks.9.hook_resid_pre", TEXTS, 50, out=tmp_path / "p", progress=False)


def test_bf16_store_reads_back_within_rounding(model, tmp_path):
    full = collect(model, tmp_path / "f", hook_out=HOOK_OUT)
    half = collect(model, tmp_path / "h", hook_out=HOOK_OUT, dtype="bf16")
    assert half.inputs.dtype == np.uint16 and half.meta["dtype"] == "bf16"
    for a, b in zip(full.rows(0, 600), half.rows(0, 600)):
        np.testing.assert_array_equal(b, from_bf16(to_bf16(a)))
        np.testing.assert_allclose(b, a, rtol=2**-8, atol=0)
    assert (tmp_path / "h" / "inputs.bin").stat().st_size == 600 * 256 * 2


class Stop(Exception):
    pass


def test_an_interrupted_collection_continues_into_the_same_files(model, tmp_path, monkeypatch):
    whole = collect(model, tmp_path / "whole")

    def stop_at_the_third_report(done, total):
        if done > 200:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect(model, tmp_path / "cut", progress=stop_at_the_third_report)
    header = json.loads((tmp_path / "cut" / "activations.json").read_text())
    assert not header["complete"] and 200 < header["tokens_written"] < 600
    with pytest.raises(tm.InvalidInputError, match="run it again with the same arguments"):
        tm.ActivationStore.open(tmp_path / "cut")
    # a writer interrupted after the data, before the header: the extra bytes are cut off on resuming
    append = activations._DataFiles.append

    def append_then_stop(self, tokens, acts):
        append(self, tokens, acts)
        raise Stop

    monkeypatch.setattr(activations._DataFiles, "append", append_then_stop)
    with pytest.raises(Stop):
        collect(model, tmp_path / "cut")
    monkeypatch.undo()
    assert json.loads((tmp_path / "cut" / "activations.json").read_text()) == header
    calls = []
    resumed = collect(model, tmp_path / "cut", progress=lambda done, total: calls.append(done))
    assert calls[0] > header["tokens_written"] and calls[-1] == 600
    assert files(tmp_path / "cut") == files(tmp_path / "whole")
    np.testing.assert_array_equal(resumed.inputs, whole.inputs)
    # a complete store is returned as it is
    assert files(tmp_path / "cut") == files(collect(model, tmp_path / "cut").folder)


def test_a_store_is_continued_only_by_the_same_collection(model, tmp_path):
    out = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        collect(model, out, progress=lambda done, total: (_ for _ in ()).throw(KeyboardInterrupt))
    for kwargs, key in (({"dtype": "bf16"}, "dtype"), ({"context": 32}, "context"), ({"hook_out": HOOK_OUT}, "hook_out")):
        with pytest.raises(tm.InvalidInputError, match=f"collected with {key} "):
            collect(model, out, **kwargs)
    with pytest.raises(tm.InvalidInputError, match="collected with hook "):
        tm.collect_activations(model, HOOK_OUT, TEXTS, 600, out=out, context=16, progress=False)
    with pytest.raises(tm.InvalidInputError, match="collected with corpus "):
        tm.collect_activations(model, HOOK, tmp_path, 600, out=out, context=16, progress=False)
    with pytest.raises(tm.InvalidInputError, match="pass resume=True"):
        collect(model, out, resume=False)
    collect(model, out)
    with pytest.raises(tm.InvalidInputError, match="complete collection of 600 tokens, not 700"):
        collect(model, out, n_tokens=700)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(tm.InvalidInputError, match="not empty and holds no activation store"):
        collect(model, tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_a_corpus_that_runs_out_keeps_its_tokens(model, tmp_path):
    out = tmp_path / "s"
    with pytest.raises(tm.InvalidInputError, match=r"ran out after (\d+) of the 100000 tokens") as e:
        collect(model, out, n_tokens=100_000)
    n = int(e.value.args[0].split("after ")[1].split()[0])
    store = collect(model, out, n_tokens=n)
    assert store.n_tokens == n and store.meta["complete"]


def test_too_little_disk_space_is_refused_before_writing(model, tmp_path, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(tm.InvalidInputError, match=r"600000 more tokens into .* needs 618\.0 MB of disk space, and only 1\.0 MB are free"):
        collect(model, tmp_path / "s", n_tokens=600_000)
    assert not (tmp_path / "s").exists()


def test_bad_arguments(model, tmp_path):
    for kwargs, match in (({"dtype": "float16"}, "dtype must be"), ({"context": 1}, "context must be >= 2"),
                          ({"context": 10_000}, "context must be <="), ({"n_tokens": 0}, "n_tokens must be"),
                          ({"batch_size": 0}, "batch_size must be")):
        with pytest.raises(tm.InvalidInputError, match=match):
            collect(model, tmp_path / "s", **kwargs)
    with pytest.raises(tm.InvalidInputError, match="holds no text"):
        tm.collect_activations(model, HOOK, ["", "  "], 10, out=tmp_path / "s", progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(tm.InvalidInputError, match="is not a folder"):
        collect(model, tmp_path / "file")


def test_opening_a_damaged_store_is_refused(model, tmp_path):
    out = tmp_path / "s"
    collect(model, out, hook_out=HOOK_OUT)
    header = json.loads((out / "activations.json").read_text())

    def refused(match, **changes):
        (out / "activations.json").write_text(json.dumps(header | changes))
        with pytest.raises(tm.InvalidInputError, match=match):
            tm.ActivationStore.open(out)

    refused("format version 2", version=2)
    refused("not a tinymech activation store", format="safetensors")
    refused("d_in must be <=", d_in=2**64)
    refused("inputs.bin is truncated", n_tokens=601, tokens_written=601)
    refused("inputs.bin is longer than its header says", n_tokens=599, tokens_written=599)
    refused("d_out must be given exactly when hook_out is", hook_out=None)
    refused("tokens_written .* exceeds n_tokens", tokens_written=601)
    refused("d_in must be a whole number", d_in="256")
    refused("excluded token id must be", excluded_token_ids=[-1])
    refused("dtype must be", dtype="int8")
    (out / "activations.json").write_text("{")
    with pytest.raises(tm.InvalidInputError, match="not valid JSON"):
        tm.ActivationStore.open(out)
    (out / "activations.json").write_text(json.dumps(header))
    with open(out / "outputs.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(tm.InvalidInputError, match="outputs.bin is truncated"):
        tm.ActivationStore.open(out)
    with pytest.raises(tm.InvalidInputError, match="no activation store at"):
        tm.ActivationStore.open(tmp_path / "none")


@pytest.fixture
def small_windows(monkeypatch):
    """Chunks of 8 rows, windows of 3 chunks: several windows in a small store."""
    monkeypatch.setattr(activations, "CHUNK_ROWS", 8)
    monkeypatch.setattr(activations, "WINDOW_CHUNKS", 3)


def test_batches_are_a_permutation_per_epoch_and_deterministic(model, tmp_path, small_windows):
    store = collect(model, tmp_path / "s", n_tokens=203, hook_out=HOOK_OUT)
    x_all, y_all = store.rows(0, 203)
    index = {row.tobytes(): i for i, row in enumerate(x_all)}

    def ids(batch):
        return [index[row.tobytes()] for row in batch[0]]

    # batches of one row show the stream's order: epochs follow one another, each a permutation of its own
    ones = store.batches(1, seed=3)
    stream = [i for _ in range(416) for i in ids(next(ones))]
    assert sorted(stream[:203]) == sorted(stream[203:406]) == list(range(203))
    assert stream[:203] != list(range(203)) and stream[203:406] != stream[:203]
    got = list(store.batches(16, seed=3, epochs=1))
    assert [len(x) for x, _ in got] == [16] * 12 + [11]
    for k, batch in enumerate(got):
        assert ids(batch) == sorted(stream[16 * k : min(16 * k + 16, 203)])  # rows within a batch in the store's order
        np.testing.assert_array_equal(batch[1], y_all[ids(batch)])  # pairs stay paired
    again = list(store.batches(16, seed=3, epochs=1))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(got, again))
    assert [ids(b) for b in store.batches(16, seed=4, epochs=1)] != [ids(b) for b in got]
    # endless by default: a batch spans two epochs
    endless = store.batches(16, seed=3)
    assert [ids(next(endless)) for _ in range(26)][12] == sorted(stream[192:208])
    # resumed from a token offset: the same stream from there
    resumed = store.batches(16, seed=3, start_token=37)
    for k in range(20):
        assert ids(next(resumed)) == sorted(stream[37 + 16 * k : 53 + 16 * k])
    # the holdout tail is never served
    held = [i for b in store.batches(10, seed=3, holdout=50, epochs=1) for i in ids(b)]
    assert sorted(held) == list(range(153))


def test_batches_arguments(model, tmp_path):
    store = collect(model, tmp_path / "s", n_tokens=20)
    for kwargs, match in (({"batch_size": 0}, "batch_size must be"), ({"batch_size": 4, "holdout": 20}, "holdout must be"),
                          ({"batch_size": 4, "start_token": -1}, "start_token must be"),
                          ({"batch_size": 4, "epochs": 0}, "epochs must be")):
        with pytest.raises(tm.InvalidInputError, match=match):
            store.batches(**kwargs)
    with pytest.raises(tm.InvalidInputError, match="stop must be <= 20"):
        store.rows(0, 21)
    assert store.outputs is None and store.rows(3, 5)[1] is None and store.rows(3, 5)[0].shape == (2, 256)


def test_progress_line_shows_the_rate_of_a_resumed_job(monkeypatch):
    clock = iter([0.0, 2.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    progress.ProgressLine(out, "collecting", unit="tokens", start_done=600)(1000, 1400)
    assert out.getvalue() == "collecting 1000/1400 [#################.......] 0:02 elapsed, 0:02 left, 200 tokens/s\n"


def test_collect_command(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("<|endoftext|>".join(TEXTS))
    argv = ["collect", "--hook", HOOK, "--corpus", str(corpus), "--tokens", "300", "--out", str(tmp_path / "s"),
            "--context", "32", "--dtype", "bf16"]
    assert main(argv) == 0
    assert "300 tokens, d_in=256, bf16" in capsys.readouterr().out
    store = tm.ActivationStore.open(tmp_path / "s")
    assert store.meta["context"] == 32 and str(corpus) in store.meta["corpus"]
    assert main(argv[:-1] + ["float32"]) == 2
    assert "collected with dtype 'bf16', not 'float32'" in capsys.readouterr().err
    assert main(argv[:6] + ["0", "--out", str(tmp_path / "t")]) == 2
    assert "expected a whole number >= 1" in capsys.readouterr().err


def test_bad_progress_or_corpus_leaves_no_folder(model, tmp_path):
    with pytest.raises(tm.InvalidInputError, match="progress must be"):
        collect(model, tmp_path / "s", progress="yes")
    with pytest.raises(tm.InvalidInputError, match="text_field must be a string"):
        collect(model, tmp_path / "s", text_field=3)
    with pytest.raises(tm.InvalidInputError, match="no corpus file or folder"):
        tm.collect_activations(model, HOOK, tmp_path / "none.txt", 10, out=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_collect_command_interrupted(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tm, "collect_activations", interrupted)
    argv = ["collect", "--hook", HOOK, "--corpus", str(tmp_path), "--tokens", "30", "--out", str(tmp_path / "s")]
    assert main(argv) == 130
    assert "the same command continues it" in capsys.readouterr().err


@pytest.mark.parametrize("rows", [0, 1])
def test_a_store_whose_token_rows_cannot_hold_its_activations_is_refused(tmp_path, rows):
    """rows_written 0 raised IndexError in train_sae's holdout; 1 sent trained text to the CE evaluation."""
    import json as _json

    model = tm.load(str(Path(__file__).resolve().parents[2] / "models" / "demo-gpt2"))
    corpus = tmp_path / "c.txt"
    corpus.write_text((Path(__file__).resolve().parents[2] / "README.md").read_text())
    tm.collect_activations(model, "blocks.1.hook_resid_pre", corpus, 500, out=tmp_path / "s", context=64,
                           progress=False)
    header = _json.loads((tmp_path / "s" / "activations.json").read_text())
    header["rows_written"] = rows
    (tmp_path / "s" / "activations.json").write_text(_json.dumps(header))
    tokens = np.fromfile(tmp_path / "s" / "tokens.bin", dtype=np.int32).reshape(-1, 64)
    tokens[:rows].tofile(tmp_path / "s" / "tokens.bin")
    with pytest.raises(tm.InvalidInputError, match="do not hold the store's 500 activations"):
        tm.ActivationStore.open(tmp_path / "s")
