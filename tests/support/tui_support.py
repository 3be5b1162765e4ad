"""Helpers shared by the TUI tests (their fixtures are in tests/tui/conftest.py):
a seeded random GPT-2 with the demo model's tokenizer and a seeded random SAE in
SAELens's format, so that every screen the tests look at is the same on every run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

import tinymech as tm
from dashboard_factory import synthetic_folder
from model_factory import make_hf_gpt2
from tinymech.sae.sae import SAE
from tinymech.tui.app import make_app

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Mr Darcy bowed to Elizabeth. Mr Darcy bowed"
MODEL_SHAPE = dict(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=8192)
SAE_HOOK = "blocks.1.hook_resid_pre"
D_SAE = 64


def build_model_dir(parent: Path) -> Path:
    """The model in parent/tui-test-model: a fixed name, as the title bar shows it."""
    path = parent / "tui-test-model"
    make_hf_gpt2(path, seed=0, **MODEL_SHAPE)
    shutil.copy(ROOT / "models" / "demo-gpt2" / "tokenizer.json", path / "tokenizer.json")
    return path


def build_sae_dir(path: Path, d_in: int = MODEL_SHAPE["n_embd"], hook: str = SAE_HOOK, seed: int = 0) -> Path:
    """A standard ReLU SAE with unit-norm decoder rows and a few labelled features."""
    rng = np.random.default_rng(seed)
    w_dec = rng.normal(size=(D_SAE, d_in)).astype(np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    path.mkdir(parents=True, exist_ok=True)
    save_file(
        {"W_enc": np.ascontiguousarray(w_dec.T), "b_enc": np.full(D_SAE, -0.2, np.float32),
         "W_dec": w_dec, "b_dec": np.zeros(d_in, np.float32)},
        str(path / "sae_weights.safetensors"),
    )
    cfg = {"d_in": d_in, "d_sae": D_SAE, "architecture": "standard", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "dtype": "float32", "device": "cpu",
           "metadata": {"hook_name": hook, "model_name": "tui-test", "prepend_bos": True}}
    (path / "cfg.json").write_text(json.dumps(cfg))
    labels = {str(f): {"label": f"test feature {f}"} for f in range(0, D_SAE, 2)}
    (path / "feature_labels.json").write_text(json.dumps(labels))
    return path


def with_dashboards(sae_dir: Path, path: Path) -> Path:
    """A copy of the SAE at path with synthetic dashboards where tm.feature_dashboards
    puts them (feature f fires on dashboard_factory.WORDS[f % len(WORDS)])."""
    shutil.copytree(sae_dir, path)
    synthetic_folder(path / "dashboards", n_features=D_SAE)
    return path


def make_test_app(model_dir: Path, sae_dir: Path | None, prompt: str = PROMPT):
    model = tm.load(model_dir)
    return make_app(model, [SAE.load(sae_dir)] if sae_dir else [], prompt)


async def settle(pilot) -> None:
    """Let every worker finish and the screen catch up with their results (which
    may start more work: feature effects, steered losses)."""
    for _ in range(20):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        if not any(w.is_running for w in pilot.app.workers):
            return


async def ready(pilot) -> None:
    """Settle, then leave the prompt field the app opens in, for the keys."""
    await settle(pilot)
    await pilot.press("escape")
