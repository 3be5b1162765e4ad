"""What tm.train_sae writes is SAELens's format: sae_lens.SAE.load_from_disk reads each
architecture's folder and encodes and decodes as tm.SAE.load's does."""
from __future__ import annotations

import numpy as np
import pytest
import sae_lens
import torch

import tinymech as tm


def data(n=3000, d_in=20, d_out=12, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d_in)) * rng.exponential(2.0, d_in) + 3.0).astype(np.float32)
    y = np.tanh(x @ rng.standard_normal((d_in, d_out)).astype(np.float32)).astype(np.float32) * 4
    return x, y


CASES = [
    ("topk", False, False),
    ("batchtopk", False, False),
    ("jumprelu", False, False),
    ("standard", False, False),
    ("standard", True, False),   # a transcoder
    ("jumprelu", True, True),    # a JumpReLU skip transcoder
    ("batchtopk", True, False),  # saved as a JumpReLU transcoder
]


@pytest.mark.parametrize("arch, transcoder, skip", CASES)
def test_saelens_reads_what_train_sae_writes(tmp_path, arch, transcoder, skip):
    x, y = data()
    acts = (x, y) if transcoder else x
    k = 4 if "topk" in arch else None
    tm.train_sae(acts, arch, d_sae=48, k=k, n_tokens=6000, batch_size=500, out=tmp_path / "sae", skip=skip,
                 lr=3e-3, progress=False)
    ours = tm.SAE.load(tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"), device="cpu")
    rows = x[:64]
    with torch.no_grad():
        feats = theirs.encode(torch.from_numpy(rows))
        out = theirs.decode(feats)
        if skip:
            out = out + torch.from_numpy(rows) @ theirs.W_skip.T
    np.testing.assert_allclose(ours.encode(rows), feats.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.forward(rows), out.numpy(), rtol=1e-4, atol=1e-4)
    assert (ours.encode(rows) > 0).any()  # something was learned to fire


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_saved_sae_reloads_in_both_readers(tmp_path, dtype):
    x, _ = data()
    sae = tm.train_sae(x, "topk", d_sae=48, k=4, n_tokens=3000, batch_size=500, lr=3e-3, progress=False)
    sae.save(tmp_path / "copy", dtype=dtype)
    ours = tm.SAE.load(tmp_path / "copy")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "copy"), device="cpu", dtype="float32")
    tol = 1e-6 if dtype == "float32" else 2e-3
    np.testing.assert_allclose(ours.W_dec, sae.W_dec, rtol=tol, atol=tol)
    with torch.no_grad():
        feats = theirs.encode(torch.from_numpy(x[:32]))
    np.testing.assert_allclose(ours.encode(x[:32]), feats.numpy(), rtol=1e-4, atol=1e-4)


def test_saelens_reads_the_metadata_of_a_trained_sae(tmp_path):
    """A cfg.json without metadata.sae_lens_version is a pre-6 config to SAELens, which then drops
    the metadata (hook_name came back None)."""
    from pathlib import Path

    demo = Path(__file__).resolve().parents[2] / "models" / "demo-gpt2"
    model = tm.load(str(demo))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((demo / "MODEL_CARD.md").read_text())
    store = tm.collect_activations(model, "blocks.1.hook_resid_pre", corpus, 2000, out=tmp_path / "acts",
                                   context=64, progress=False)
    tm.train_sae(store, "topk", d_sae=64, k=4, n_tokens=2000, batch_size=500, out=tmp_path / "sae", progress=False)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"), device="cpu")
    assert theirs.cfg.metadata.hook_name == "blocks.1.hook_resid_pre"
    assert theirs.cfg.metadata.context_size == 64 and theirs.cfg.metadata.prepend_bos is True
