"""benchmarks/bench_gradients.py times tinymech's backward beside torch autograd's on the same
weights, after checking that the two give the same gradient."""
from __future__ import annotations

from pathlib import Path

import tinymech as tm

ROOT = Path(__file__).resolve().parents[2]


def test_gradient_rows_time_the_same_gradients(monkeypatch, tmp_path):
    import torch
    import transformers

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_gradients

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=3, n_embd=60, n_positions=32, vocab_size=97, bos_token_id=0, eos_token_id=0)).eval()
    hf.save_pretrained(tmp_path)
    rows = bench_gradients.gradient_rows(tm.load(tmp_path), hf, tokens=(1, 9), repeats=1)
    assert [r["id"] for r in rows] == ["backward-1", "backward-cost-1", "backward-9", "backward-cost-9"]
    assert all(r["tinymech"] > 0 and r["reference"] > 0 for r in rows)
    assert all(p.requires_grad for p in hf.parameters())  # given back as they were
