"""The command line's handling of bad input and closed output, across subcommands."""
import os
import subprocess
import sys

import pytest

from tinymech.io import sources as loading, smollm2
from tinymech.cli import main


def assert_one_line_error(status, captured, fragment):
    assert status == 2 and captured.out == ""
    assert captured.err.startswith("tinymech: error:") and captured.err.count("\n") == 1, captured.err
    assert fragment in captured.err


@pytest.mark.parametrize("threads", ["0", "-2", "two"])
def test_threads_must_be_positive(capsys, threads):
    assert_one_line_error(main(["--threads", threads, "info"]), capsys.readouterr(), "--threads")


def test_dynamics_resolves_smollm2_like_load(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(smollm2, "find_gguf", lambda: tmp_path / "smollm2.gguf")  # a GGUF: no dynamics beside it
    monkeypatch.setattr(loading, "_download", lambda repo_id: pytest.fail(f"went to the hub for {repo_id!r}"))
    assert_one_line_error(main(["dynamics", "-m", "smollm2"]), capsys.readouterr(),
                          "no training_dynamics.json beside this model")


def test_dynamics_of_a_gguf_file_says_it_has_none(tmp_path, capsys):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"")  # never read: dynamics only needs to know where the model is
    assert_one_line_error(main(["dynamics", "-m", str(gguf)]), capsys.readouterr(),
                          "no training_dynamics.json beside this model")


def test_model_help_names_every_kind_of_model(capsys):
    with pytest.raises(SystemExit):
        main(["info", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert ".gguf file" in help_text and '"smollm2"' in help_text and "hub id" in help_text


@pytest.mark.parametrize("args", [["dynamics"], ["info"], ["generate", "hi", "-n", "3"]])
def test_closed_stdout_ends_quietly(args):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written, as after `| head -1`
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    try:
        res = subprocess.run([sys.executable, "-m", "tinymech", *args], stdout=write_end, stderr=subprocess.PIPE,
                             text=True, env=env, timeout=300, cwd=os.path.dirname(__file__))
    finally:
        os.close(write_end)
    assert res.stderr == "" and res.returncode == 141


@pytest.mark.parametrize("args, fragment", [
    (["--top-k", "5"], "--top-k need -t > 0"),
    (["--top-p", "0.01"], "--top-p need -t > 0"),
    (["--seed", "7"], "--seed need -t > 0"),
    (["--top-k", "1", "--seed", "3", "-t", "0"], "--top-k and --seed need -t > 0"),
])
def test_sampling_options_without_sampling_are_refused(capsys, args, fragment):
    # at the default -t 0 they were accepted and did nothing: the continuation was the greedy one
    assert_one_line_error(main(["generate", "Mr Darcy", *args]), capsys.readouterr(), fragment)


@pytest.mark.parametrize("args, fragment", [
    (["--arch", "standard", "--k", "5"], "--k is for topk, batchtopk SAEs, not standard"),
    (["--arch", "jumprelu", "--k", "5"], "--k is for topk, batchtopk SAEs, not jumprelu"),
    (["--k", "4", "--coefficient", "1000"], "--coefficient is for the other SAEs, not topk: its sparsity is --k"),
    (["--arch", "batchtopk", "--k", "4", "--coefficient", "0"], "--coefficient is for the other SAEs, not batchtopk"),
])
def test_train_sae_options_its_method_ignores_are_refused_before_collecting(tmp_path, capsys, args, fragment):
    # --coefficient with topk trained the same weights whatever its value; --k with standard was
    # refused only after every activation had been collected
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Mr Darcy bowed to Elizabeth. " * 200)
    argv = ["train-sae", "--hook", "blocks.1.hook_resid_pre", "--corpus", str(corpus), "--tokens", "1000",
            "--out", str(tmp_path / "sae"), *args]
    assert_one_line_error(main(argv), capsys.readouterr(), fragment)
    assert not any(tmp_path.glob("sae*"))  # nothing collected, nothing written


@pytest.mark.parametrize("args, fragment", [
    (["--dashboards", "{tmp}", "--dashboards", "{tmp}/nowhere"], "2 dashboards given for 1 SAE(s): one per SAE"),
    (["--dashboards", "{tmp}/nowhere\x1b[2J"], "no feature dashboards at {tmp}/nowhere␛[2J"),
])
def test_tui_refuses_dashboards_it_would_drop(tmp_path, capsys, args, fragment):
    # the bundled model has one SAE: a second --dashboards was dropped without a word, and one
    # that did not exist was found missing only once the app had opened
    with pytest.raises(SystemExit) as exit:
        main(["tui", *(a.format(tmp=tmp_path) for a in args)])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1 and fragment.format(tmp=tmp_path) in err


def test_train_sae_refuses_to_replace_an_sae_before_collecting(tmp_path, capsys):
    # the folder's SAE was replaced by a new run without a word; --overwrite says to
    (tmp_path / "sae").mkdir()
    (tmp_path / "sae" / "cfg.json").write_text("{}")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Mr Darcy bowed to Elizabeth. " * 200)
    argv = ["train-sae", "--hook", "blocks.1.hook_resid_pre", "--corpus", str(corpus), "--tokens", "1000",
            "--k", "4", "--out", str(tmp_path / "sae")]
    assert_one_line_error(main(argv), capsys.readouterr(), "pass overwrite=True (--overwrite)")
    assert not (tmp_path / "sae.activations").exists()  # nothing collected
