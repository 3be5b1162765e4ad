"""Sampling options of generate, streaming callbacks, and the command line."""
import os
import subprocess
import sys

import numpy as np
import pytest

import tinymech as tm
from tinymech.cli import main
from tinymech.text import printable
from model_factory import SHAPES, save_tokenizer
from numpy_checkpoints import write_gpt2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen")
    write_gpt2(path, std=0.3, **SHAPES["odd"])
    save_tokenizer(path, SHAPES["odd"]["vocab_size"])
    return path


@pytest.fixture(scope="module")
def model(model_dir):
    return tm.load(model_dir)


def test_sampling_is_reproducible_per_seed(model):
    prompt = np.array([[0, 5, 9]])
    a = model.generate(prompt, max_new_tokens=12, temperature=1.0, seed=7, stop_at_eos=False)
    b = model.generate(prompt, max_new_tokens=12, temperature=1.0, seed=7, stop_at_eos=False)
    c = model.generate(prompt, max_new_tokens=12, temperature=1.0, seed=8, stop_at_eos=False)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_top_k_1_and_tiny_top_p_are_greedy(model):
    prompt = np.array([[0, 5, 9]])
    greedy = model.generate(prompt, max_new_tokens=10, stop_at_eos=False)
    np.testing.assert_array_equal(
        model.generate(prompt, max_new_tokens=10, temperature=2.0, top_k=1, seed=0, stop_at_eos=False), greedy)
    np.testing.assert_array_equal(
        model.generate(prompt, max_new_tokens=10, temperature=0.5, top_p=1e-6, seed=0, stop_at_eos=False), greedy)


def test_on_token_streams_and_can_stop(model):
    seen = []
    out = model.generate(np.array([[0, 1]]), max_new_tokens=10, stop_at_eos=False,
                         on_token=lambda ids: seen.append(int(ids[0])) or len(seen) == 4)
    assert len(seen) == 4 and list(out[0, 2:]) == seen


def test_batch_generate(model):
    prompts = np.array([[0, 3, 4], [0, 7, 8]])
    both = model.generate(prompts, max_new_tokens=6, stop_at_eos=False)
    for i in range(2):
        np.testing.assert_array_equal(both[i], model.generate(prompts[i : i + 1], max_new_tokens=6, stop_at_eos=False)[0])


def test_stop_at_eos(model):
    eos = model.cfg.eos_token_id
    out = model.generate(np.array([[0, 1]]), max_new_tokens=20, temperature=3.0, seed=1)
    new = out[0, 2:]
    if eos in new:  # after the first EOS nothing else is generated
        assert out.shape[1] == 2 + int(np.argmax(new == eos)) + 1


def test_bad_sampling_arguments(model):
    for kwargs in (dict(temperature=-1), dict(temperature=1, top_k=0), dict(temperature=1, top_p=1.5)):
        with pytest.raises(ValueError):
            model.generate(np.array([[0, 1]]), max_new_tokens=2, **kwargs)


def run_cli(*args):
    # cwd: the tests folder, so `-m` cannot pick up a source tree without the compiled core
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "tinymech", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=os.path.dirname(__file__))


def test_cli_generate_matches_python(model_dir, model):
    res = run_cli("generate", "--model", str(model_dir), "The cat", "-n", "8")
    assert res.returncode == 0, res.stderr
    # control characters in the continuation show as pictures (see test_terminal_safety.py)
    assert res.stdout.rstrip("\n") == printable(model.generate("The cat", max_new_tokens=8), keep="\n\t")


def test_cli_generate_bf16_matches_python(model_dir):
    bf16 = tm.load(model_dir, dtype="bf16")
    res = run_cli("generate", "--model", str(model_dir), "--dtype", "bf16", "The cat", "-n", "8")
    assert res.returncode == 0, res.stderr
    assert res.stdout.rstrip("\n") == printable(bf16.generate("The cat", max_new_tokens=8), keep="\n\t")
    info = run_cli("info", "--model", str(model_dir), "--dtype", "bf16")
    assert info.returncode == 0 and "bf16 weights" in info.stdout


def test_cli_info(model_dir):
    res = run_cli("info", "--model", str(model_dir))
    assert res.returncode == 0 and "n_layers: 3" in res.stdout and "hook points" in res.stdout
    assert "  _model:" not in res.stdout and "chat_template" in res.stdout  # the config's fields, nothing private


def test_cli_error_is_one_line(tmp_path):
    res = run_cli("generate", "--model", str(tmp_path / "nope"), "hi")
    assert res.returncode == 2
    assert res.stderr.startswith("tinymech: error:") and "Traceback" not in res.stderr


def assert_one_line_error(status, captured, *fragments):
    assert status == 2
    assert captured.out == ""  # nothing printed before the error was noticed
    assert captured.err.startswith("tinymech: error:") and captured.err.count("\n") == 1, captured.err
    for fragment in fragments:
        assert fragment in captured.err


@pytest.mark.parametrize("bad, option", [
    (["-n", "-3"], "--max-new-tokens"),
    (["-n", "many"], "--max-new-tokens"),
    (["-t", "-1"], "--temperature"),
    (["-t", "nan"], "--temperature"),
    (["--top-p", "2"], "--top-p"),
    (["--top-p", "0"], "--top-p"),
    (["--top-k", "0", "-t", "1"], "--top-k"),
    (["--seed", "-1"], "--seed"),  # numpy's generator takes no negative seed
])
def test_cli_rejects_bad_sampling_arguments_before_any_output(capsys, bad, option):
    status = main(["generate", "hi", *bad])
    assert_one_line_error(status, capsys.readouterr(), option)


def test_cli_checks_the_context_in_the_users_terms(capsys):
    status = main(["generate", "x", "-n", "500"])  # the bundled model: "x" is BOS + 1 token, context 256
    assert_one_line_error(status, capsys.readouterr(), "the prompt is 2 tokens and --max-new-tokens asks for 500 "
                          "more: 502 > the model's context of 256 tokens")


def test_cli_refuses_a_prompt_longer_than_the_context_without_echoing_it(capsys):
    status = main(["generate", "x " * 300, "-n", "0"])
    assert_one_line_error(status, capsys.readouterr(), "the prompt is", "more than the model's context of 256")


def test_cli_library_errors_during_generation_are_one_line(model_dir, capsys, monkeypatch):
    def failing_generate(self, prompt, on_token=None, **kwargs):
        on_token(np.array([5]))  # some text is out before the library objects
        raise ValueError("a check the command line\ndoes not know of")

    monkeypatch.setattr(tm.Model, "generate", failing_generate)
    status = main(["generate", "--model", str(model_dir), "hi"])
    captured = capsys.readouterr()
    assert status == 2 and captured.out.startswith("hi") and captured.out.endswith("\n")
    assert captured.err == "tinymech: error: a check the command line does not know of\n"


@pytest.mark.parametrize("kwargs, match", [
    (dict(stop_at_eos="no"), "stop_at_eos must be True or False"),  # read as True: it stopped at EOS
    (dict(on_token=5), "on_token is a function"),  # TypeError, after a forward pass
    (dict(on_token=lambda ids: np.array([True, False])), "on_token returns True to stop"),  # numpy's ValueError
])
def test_generate_checks_its_flag_and_callback(model, kwargs, match):
    with pytest.raises(tm.InvalidInputError, match=match):
        model.generate("Mr Darcy", max_new_tokens=2, **kwargs)
