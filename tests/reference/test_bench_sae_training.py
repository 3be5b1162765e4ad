"""benchmarks/bench_sae_training.py: its torch loop's sparse backward is autograd's, and
a small run trains all three contenders on the same batches from the same start."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_sae_training
    return bench_sae_training


def test_the_torch_loops_encoder_backward_is_autograds_through_the_top_k(bench):
    import torch

    torch.manual_seed(0)
    x, w, b = (torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in ((40, 12), (64, 12), (64,)))
    values, indices, _ = bench._topk_encoder().apply(x, w, b, 5)
    grad = torch.randn_like(values)
    ours = torch.autograd.grad((values * grad).sum(), (x, w, b))
    dense = torch.relu(x @ w.T + b).gather(1, indices)  # the same latents, through autograd
    theirs = torch.autograd.grad((dense * grad).sum(), (x, w, b))
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e)


@pytest.mark.slow
def test_a_small_run_gives_tinymech_and_saelens_the_same_start_and_batches(bench, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "CACHE", tmp_path / "cache")
    words = "the a house garden letter morning sister walked said could never quite well young".split()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(np.random.default_rng(0).choice(words, 4000)) + ".\n", encoding="utf-8")
    out = bench.run_model("demo", 3 * 64, lr=3e-3, batch_size=64, k=8, context=32, warmup=1, corpus=corpus)
    assert set(out["tok_s"]) == set(out["ev"]) == set(out["ce"]) == {"tinymech", "SAELens", "torch loop"}
    assert all(math.isfinite(v) for part in ("tok_s", "ev", "ce") for v in out[part].values())
    # the same algorithm from the same weights on the same batches: the same SAE, up to rounding
    assert abs(out["ev"]["tinymech"] - out["ev"]["SAELens"]) < 1e-3
    assert abs(out["ce"]["tinymech"] - out["ce"]["SAELens"]) < 1e-3
