"""The command line's options: --version, --threads on either side of the
subcommand, help on every option, info's listing, prompts that are not UTF-8."""
import os
import re
import subprocess
import sys

import pytest

import tinymech as tm
from tinymech.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out == f"tinymech {tm.__version__}\n"


@pytest.fixture
def restore_threads():
    before = tm.get_num_threads()
    yield
    tm.set_num_threads(before)


@pytest.mark.parametrize("argv, threads", [
    (["--threads", "1", "info"], 1),
    (["info", "--threads", "1"], 1),
    (["--threads", "2", "info", "--threads", "1"], 1),  # the later one counts
])
def test_threads_before_or_after_the_subcommand(capsys, restore_threads, argv, threads):
    assert main(argv) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"threads: {threads}")


def test_threads_after_the_subcommand_is_checked(capsys):
    assert main(["dynamics", "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinymech: error:") and "--threads" in err and err.count("\n") == 1


def test_every_generate_option_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for described in ("prompt the text to continue", "--max-new-tokens MAX_NEW_TOKENS how many tokens",
                      "--top-k TOP_K with -t > 0: sample among the k most probable", "--top-p TOP_P with -t > 0: sample among",
                      "--seed SEED seed of the sampling", "--threads THREADS threads to use"):
        assert described in text


def test_info_lists_each_blocks_hook_names_once(capsys):
    assert main(["info"]) == 0  # the bundled demo model: 4 layers
    out = capsys.readouterr().out
    names = tm.load().hook_names()
    assert f"hook points: {len(names)}\n  hook_embed, hook_pos_embed\n  blocks.{{0..3}}.{{hook_resid_pre, " in out
    assert "\n  ln_final.hook_scale, ln_final.hook_normalized, unembed.hook_in, unembed.hook_out\n" in out
    listing = out[out.index("hook points"):]
    in_braces = re.search(r"blocks\.\{0\.\.3\}\.\{([^}]*)\}", listing).group(1)
    assert [name.strip() for name in in_braces.split(",")] == [
        name[len("blocks.0."):] for name in names if name.startswith("blocks.0.")]
    assert "blocks.1." not in listing
    assert all(name in listing for name in names if not name.startswith("blocks."))


def test_a_prompt_that_is_not_utf8_is_one_line(capsys):
    # bytes that are not UTF-8 reach sys.argv as lone surrogates
    for argv in (["generate", "\udcff\udcfe"], ["tui", "\udcff"]):
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1
        assert "expected UTF-8 text" in captured.err


def test_a_prompt_that_is_not_utf8_from_the_shell():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    res = subprocess.run([sys.executable, "-m", "tinymech", "generate", b"\xff\xfe"], capture_output=True, env=env,
                         timeout=300, cwd=os.path.dirname(__file__))
    assert res.returncode == 2 and res.stdout == b""
    assert res.stderr.startswith(b"tinymech: error: argument prompt: expected UTF-8 text") and b"Traceback" not in res.stderr
