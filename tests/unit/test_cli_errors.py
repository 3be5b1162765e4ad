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
