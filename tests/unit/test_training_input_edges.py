"""Callers' mistakes around training, collecting, corpora and metrics, refused with a precise
tinymech error, and before the long work (collecting, training) rather than after it. On the
bundled model, at tiny sizes."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest

import tinymech as tm
from tinymech import cli, utils
from tinymech.sae import train as train_module
from tinymech.sae.metrics import reconstruction_metrics
from tinymech.sae.train_data import as_activations

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo-gpt2"
SAE_DIR = DEMO / "saes" / "blocks.2.hook_resid_pre"
TEXTS = [f"Chapter {i}. It is a truth universally acknowledged, that a single man in possession of a good "
         f"fortune must be in want of a wife; number {i * 7}." for i in range(40)]


@pytest.fixture(scope="module")
def model():
    return tm.load()


@pytest.fixture(scope="module")
def sae():
    return tm.SAE.load(SAE_DIR)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("tinymech: error: "), err
    return err


class _NoArray:
    """What np.asarray meets in a torch tensor that requires grad: __array__ raising torch's RuntimeError."""

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("Can't call numpy() on Tensor that requires grad")


# ---- 7: a transcoder writing a hook point before the one it reads ----

def test_collecting_a_transcoder_that_writes_before_it_reads_is_refused_at_once(model, tmp_path):
    with pytest.raises(tm.HookError, match="comes before it .*are hook and hook_out swapped"):
        tm.collect_activations(model, "blocks.2.hook_resid_pre", TEXTS, 100, out=tmp_path / "acts", context=16,
                               hook_out="blocks.0.hook_resid_pre", progress=False)
    assert not (tmp_path / "acts").exists()


def test_a_store_with_reversed_hooks_is_refused_before_training(model, tmp_path, monkeypatch):
    """A store written before collect_activations checked the order: train_sae trained it whole, then
    refused the finished SAE's config (only a checkpoint was left)."""
    store = tm.collect_activations(model, "blocks.0.hook_resid_pre", TEXTS, 200, out=tmp_path / "acts", context=16,
                                   hook_out="blocks.2.hook_resid_pre", progress=False)
    header = json.loads((store.folder / "activations.json").read_text())
    header["hook"], header["hook_out"] = header["hook_out"], header["hook"]  # both 256 wide: a whole store
    (store.folder / "activations.json").write_text(json.dumps(header))
    monkeypatch.setattr(tm.sae.Trainer, "step", lambda *a, **k: pytest.fail("trained before refusing"))
    with pytest.raises(tm.HookError, match="comes before it"):
        tm.train_sae(tmp_path / "acts", d_sae=32, k=4, batch_size=32, out=tmp_path / "tc", progress=False)
    assert not (tmp_path / "tc").exists()


def test_the_config_to_save_is_read_before_the_first_step(tmp_path, monkeypatch):
    steps = []
    real_step = tm.sae.Trainer.step
    monkeypatch.setattr(tm.sae.Trainer, "step", lambda self, *a, **k: steps.append(1) or real_step(self, *a, **k))

    def refuse(config):
        raise tm.SAELoadError("cfg.json: refused")

    monkeypatch.setattr(train_module, "_parse", refuse)
    x = np.random.default_rng(0).normal(size=(256, 8)).astype(np.float32)
    with pytest.raises(tm.SAELoadError, match="refused"):
        tm.train_sae(x, d_sae=16, k=2, batch_size=64, progress=False)
    assert steps == []


# ---- 8: train-sae refuses what its flags decide before collecting ----

@pytest.mark.parametrize("extra, message", [
    (["--skip"], "skip=True makes a skip transcoder"),
    (["--hook-out", "blocks.0.hook_resid_pre"], "comes before it"),
    (["--k", "5000"], "k=5000 exceeds d_sae=2048"),
    (["--batch-size", "4096"], "batch_size 4096 exceeds"),
    (["--d-sae", "1000000000"], "choose a smaller d_sae"),
])
def test_train_sae_refuses_flag_mistakes_before_collecting(tmp_path, capsys, extra, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((DEMO / "MODEL_CARD.md").read_text())
    argv = ["train-sae", "--hook", "blocks.1.hook_resid_pre", "--corpus", str(corpus), "--tokens", "300",
            "--k", "4", "--batch-size", "64", "--context", "32", "--out", str(tmp_path / "sae")]
    if extra[0] == "--hook-out":
        argv[2] = "blocks.2.hook_resid_pre"
    assert cli.main(argv + extra) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "sae").exists() and not (tmp_path / "sae.activations").exists()


def test_a_corpus_without_a_row_is_refused_before_anything_is_written(model, tmp_path):
    with pytest.raises(tm.InvalidInputError, match="holds less than one row of 16 tokens"):
        tm.collect_activations(model, "blocks.1.hook_resid_pre", ["Mr Darcy"], 10, out=tmp_path / "a", context=16)
    assert not (tmp_path / "a").exists()
    # an iterator is not read twice: the check leaves it to the collection
    once = tm.collect_activations(model, "blocks.1.hook_resid_pre", iter(TEXTS), 100, out=tmp_path / "b",
                                  context=16, progress=False)
    twice = tm.collect_activations(model, "blocks.1.hook_resid_pre", TEXTS, 100, out=tmp_path / "c", context=16,
                                   progress=False)
    np.testing.assert_array_equal(once.rows(0, 100)[0], twice.rows(0, 100)[0])


def test_check_training_refuses_what_train_sae_would_without_writing(tmp_path):
    from tinymech.sae.train import check_training
    from tinymech.sae.train_data import PlannedActivations

    planned = PlannedActivations(1000, 16)
    check_training(planned, d_sae=32, k=4, batch_size=64, out=tmp_path / "sae")
    with pytest.raises(tm.InvalidInputError, match="k=40 exceeds d_sae=32"):
        check_training(planned, d_sae=32, k=40, out=tmp_path / "sae")
    with pytest.raises(tm.InvalidInputError, match="unknown training option"):
        check_training(planned, k=4, batch_size=64, not_an_option=1)
    assert not (tmp_path / "sae").exists()


# ---- 9: an empty corpus path, and a dict of columns ----

def test_an_empty_corpus_path_is_refused_not_read_as_the_current_folder(model, sae, tmp_path, monkeypatch, capsys):
    (tmp_path / "private_notes.md").write_text("notes, not a corpus\n" * 200)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(tm.InvalidInputError, match='the corpus "" names no file or folder'):
        tm.read_corpus("")
    with pytest.raises(tm.InvalidInputError, match='the corpus ""'):
        tm.collect_activations(model, "blocks.1.hook_resid_pre", "", 50, out=tmp_path / "acts", context=16)
    with pytest.raises(tm.InvalidInputError, match='the corpus ""'):
        tm.feature_dashboards(model, sae, "", n_tokens=50, context=16, out=tmp_path / "dash", progress=False)
    assert cli.main(["collect", "--hook", "blocks.1.hook_resid_pre", "--corpus", "", "--tokens", "50",
                     "--out", str(tmp_path / "cli"), "--context", "16"]) == 2
    assert 'the corpus ""' in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private_notes.md"]


def test_a_dict_of_columns_is_read_by_its_text_column(model):
    columns = {"text": TEXTS[:10], "id": list(range(10))}
    assert list(tm.read_corpus(columns)) == TEXTS[:10]
    assert list(tm.read_corpus({"body": TEXTS[:2]}, text_field="body")) == TEXTS[:2]
    assert list(tm.read_corpus({"text": TEXTS[0]})) == [TEXTS[0]]  # one row
    rows = tm.tokenize_and_concatenate(model, TEXTS[:10], max_length=8)
    assert len(rows) > 0
    np.testing.assert_array_equal(tm.tokenize_and_concatenate(model, columns, max_length=8), rows)
    np.testing.assert_array_equal(utils.tokenize_and_concatenate(columns, model.tokenizer, max_length=8)["tokens"],
                                  rows)
    for call in (lambda: list(tm.read_corpus({"title": ["a"], "body": ["b"]})),
                 lambda: tm.tokenize_and_concatenate(model, {"title": ["a"]}, max_length=8),
                 lambda: utils.tokenize_and_concatenate({"title": ["a"]}, model.tokenizer, max_length=8)):
        with pytest.raises(tm.InvalidInputError, match="'text' column.*its keys: 'title'"):
            call()


# ---- 10: sae_metrics' and reconstruction_metrics' arguments ----

@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(batch_size=-2), "batch_size must be >= 1"),
    (dict(batch_size=2.5), "batch_size must be a whole number"),
    (dict(batch_size=None), "batch_size must be a whole number"),
    (dict(ignore_tokens=5), "ignore_tokens must be a list of token ids"),
    (dict(ignore_tokens=[10**20]), "must be <= 8191"),
    (dict(ignore_tokens=[None]), "must be a whole number"),
    (dict(ignore_tokens=[1.5]), "must be a whole number"),
    (dict(ignore_tokens=[-1]), "must be >= 0"),
    (dict(dense_threshold="0.1"), "dense_threshold must be a number"),
    (dict(dense_threshold=None), "dense_threshold must be a number"),
    (dict(dense_threshold=float("nan")), r"dense_threshold must be a fraction"),
])
def test_sae_metrics_refuses_bad_arguments(model, sae, kwargs, message):
    tokens = model.to_tokens(["Mr Darcy walked in to the room"] * 2)
    with pytest.raises(tm.InvalidInputError, match=message):
        tm.sae_metrics(model, sae, tokens, **kwargs)


def test_sae_metrics_takes_token_ids_of_any_integer_kind(model, sae):
    tokens = model.to_tokens(["Mr Darcy walked in to the room"] * 2)
    bos = model.tokenizer.bos_token_id
    same = [tm.sae_metrics(model, sae, tokens, ignore_tokens=ids).n_tokens
            for ids in ([bos], (np.int64(bos),), np.array([bos]))]
    assert same == [same[0]] * 3 and same[0] < tokens.size


@pytest.mark.parametrize("chunk, message", [(-1, ">= 1"), (0, ">= 1"), (2.5, "whole number")])
def test_reconstruction_metrics_refuses_a_bad_chunk(sae, chunk, message):
    x = np.random.default_rng(0).normal(size=(10, 256)).astype(np.float32)
    with pytest.raises(tm.InvalidInputError, match=f"chunk must be .*{message}"):
        reconstruction_metrics(sae, x, chunk=chunk)
    with pytest.raises(tm.SAEInputError, match="x cannot be read as an array"):
        reconstruction_metrics(sae, [[1.0] * 256, [1.0]])


# ---- 11: out inside a file, or None ----

def test_an_out_inside_a_file_or_none_is_refused(model, sae, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(tm.InvalidInputError, match="is inside .*afile, which is a file"):
        tm.collect_activations(model, "blocks.1.hook_resid_pre", TEXTS, 100, out=afile / "sub", context=16)
    with pytest.raises(tm.InvalidInputError, match="out must be a folder's path"):
        tm.collect_activations(model, "blocks.1.hook_resid_pre", TEXTS, 100, out=None, context=16)
    with pytest.raises(tm.InvalidInputError, match="is inside .*afile, which is a file"):
        tm.feature_dashboards(model, sae, TEXTS, n_tokens=100, context=16, out=afile / "sub", progress=False)
    for call in (lambda: tm.collect_activations(model, "blocks.1.hook_resid_pre", TEXTS, 100, out="", context=16),
                 lambda: tm.feature_dashboards(model, sae, TEXTS, n_tokens=100, context=16, out="")):
        with pytest.raises(tm.InvalidInputError, match='out="" names no folder'):  # not the current folder
            call()
    assert cli.main(["collect", "--hook", "blocks.1.hook_resid_pre", "--corpus", str(DEMO / "MODEL_CARD.md"),
                     "--tokens", "50", "--out", str(afile / "sub"), "--context", "16"]) == 2
    assert "which is a file" in one_line_error(capsys)


# ---- 12: activations a numpy array cannot be made of; a list [x, y] ----

def test_a_list_x_y_trains_a_transcoder_as_a_tuple_does(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(256, 8)).astype(np.float32), rng.normal(size=(256, 4)).astype(np.float32)
    args = dict(d_sae=16, k=2, batch_size=64, n_tokens=128, progress=False)
    from_list, from_tuple = tm.train_sae([x, y], **args), tm.train_sae((x, y), **args)
    assert from_list.cfg.is_transcoder and from_list.d_out == 4
    np.testing.assert_array_equal(from_list.W_dec, from_tuple.W_dec)
    assert as_activations([[1.0, 2.0], [3.0, 4.0]]).n_tokens == 2  # two rows, not a pair


@pytest.mark.parametrize("acts", [[[1.0, 2.0], [1.0]], _NoArray(), ([[1.0]] * 8, _NoArray())],
                         ids=["ragged", "requires-grad", "pair"])
def test_activations_numpy_cannot_read_are_an_sae_input_error(acts):
    with pytest.raises(tm.SAEInputError, match="cannot be read as an array.*detach"):
        tm.train_sae(acts, d_sae=16, k=2, batch_size=4, progress=False)


def test_batches_and_to_numpy_refuse_what_numpy_cannot_read():
    with pytest.raises(tm.InvalidInputError, match="rows cannot be read as an array"):
        list(tm.batches([[1], [1, 2]], 2))
    with pytest.raises(tm.InvalidInputError, match="rows must be an array"):
        list(tm.batches(None, 2))
    with pytest.raises(tm.InvalidInputError, match="cannot be read as an array"):
        utils.to_numpy([[1], [1, 2]])
    np.testing.assert_array_equal(utils.to_numpy([[1, 2]]), [[1, 2]])


# ---- 15: a model argument that is not a model ----

def test_a_model_argument_that_is_not_a_model(model, sae, tmp_path):
    for call in (lambda: tm.sae_metrics(None, sae, "Mr Darcy walked in"),
                 lambda: tm.collect_activations(None, "blocks.1.hook_resid_pre", TEXTS, 10, out=tmp_path / "a"),
                 lambda: utils.test_prompt("Mr", "Darcy", None),
                 lambda: tm.feature_dashboards(None, sae, TEXTS, out=tmp_path / "d")):
        with pytest.raises(tm.InvalidInputError, match="model must be a tinymech model"):
            call()
    with pytest.raises(tm.InvalidInputError, match="sae must be a tm.SAE"):
        tm.sae_metrics(model, None, "Mr Darcy walked in")
    with pytest.raises(tm.InvalidInputError, match="utils.tokenize_and_concatenate"):  # TransformerLens's order
        tm.tokenize_and_concatenate(TEXTS, model.tokenizer, max_length=8)
    with pytest.raises(tm.InvalidInputError, match="texts must be"):
        tm.tokenize_and_concatenate(model, None)
    with pytest.raises(tm.InvalidInputError, match="dataset must be"):
        utils.tokenize_and_concatenate(None, model.tokenizer)
    with pytest.raises(tm.NoTokenizerError, match="needs a tokenizer"):
        utils.tokenize_and_concatenate(TEXTS, None)
    assert not any(tmp_path.iterdir())


def test_tokenize_and_concatenate_defaults_to_rows_the_model_can_run(model):
    rows = tm.tokenize_and_concatenate(model, TEXTS * 5)  # TransformerLens's 1024 exceeds this model's 256
    assert rows.shape[1] == model.cfg.n_ctx == 256 and len(rows) > 0
    model(rows[:1])


# ---- the command's last resort for what the system refuses ----

def test_an_os_error_is_one_line_naming_the_path_not_a_traceback(monkeypatch, capsys):
    def refused(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/some/where/acts")

    monkeypatch.setitem(cli.COMMANDS, "info", refused)
    assert cli.main(["info"]) == 1
    assert "Permission denied: /some/where/acts" in one_line_error(capsys)

    def bug(args):
        raise ZeroDivisionError("a programming error")

    monkeypatch.setitem(cli.COMMANDS, "info", bug)
    with pytest.raises(ZeroDivisionError):  # not hidden
        cli.main(["info"])


def test_an_out_the_system_cannot_look_up_is_refused_by_name(tmp_path):
    # regression: a name too long to look up escaped train_sae and collect_activations as the OS's OSError
    from tinymech.io.files import folder_to_write

    for name in (tmp_path / ("x" * 300), str(tmp_path / "a\0b")):
        with pytest.raises(tm.InvalidInputError, match="out=.* cannot be a folder"):
            folder_to_write(name)
        with pytest.raises(tm.InvalidInputError, match="out=.* cannot be a folder"):
            tm.train_sae(np.zeros((64, 4), np.float32), d_sae=8, n_tokens=64, out=name)
