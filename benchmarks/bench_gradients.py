"""The backward: tinymech's forward + backward against torch autograd through HF
transformers' GPT-2 on the same random GPT-2-small-shaped weights and threads,
in one process, and what a backward costs relative to a forward of the same input.

    python benchmarks/bench_gradients.py [--threads N] [--layers 12] [--repeats 3]

Both sides compute the gradient of one logit at the last position with respect to
the token embeddings, through every block, with no weight gradients (HF's weights
have requires_grad off; tinymech never computes them): tinymech's
run_with_cache(incl_bwd=True, names_filter="hook_embed"), torch's
hf(inputs_embeds=e).logits[0, -1, t].backward(). Each side's cost is its
(forward + backward) time over its own plain forward's (all logits; torch's under
inference_mode).

gradient_rows(model, hf, ...) returns the measurements as report rows.
"""
from __future__ import annotations

import numpy as np

from report import row, target
from timing import bench_parser, random_tokens, times_interleaved

COST_TARGET = target("<=", 2.5, of="value")  # (forward + backward) / forward, tinymech's


def gradient_rows(model, hf, *, tokens=(128, 512), repeats: int = 3) -> list:
    """Rows `backward-N` (forward + backward tok/s vs torch autograd's, ratio tinymech / torch)
    and `backward-cost-N` ((forward + backward) / forward: tinymech's, torch's beside it)."""
    import torch

    d_vocab = model.cfg.d_vocab
    frozen = [p.requires_grad for p in hf.parameters()]
    for p in hf.parameters():
        p.requires_grad_(False)
    rows = []
    try:
        for n in tokens:
            ids = random_tokens(d_vocab, n, seed=n)
            tt = torch.as_tensor(ids)
            G = np.zeros((1, n, d_vocab), np.float32)
            G[0, -1, 7] = 1.0

            def ours_fb():
                return model.run_with_cache(ids, prepend_bos=False, incl_bwd=True, grad_logits=G,
                                            names_filter=lambda name: name == "hook_embed")[1]["hook_embed_grad"]

            def torch_f():
                with torch.inference_mode():
                    hf(tt)

            def torch_fb():
                e = hf.transformer.wte(tt).detach().requires_grad_(True)
                hf(inputs_embeds=e).logits[0, -1, 7].backward()
                return e.grad

            ref = torch_fb()[None].numpy()  # the same numbers first: a fast wrong backward is no result
            error = float(np.abs(ours_fb() - ref).max() / np.abs(ref).max())
            if error > 1e-3:
                raise AssertionError(f"tinymech's gradient differs from torch's by {error:.1e} of its largest")
            f, fb, tf, tfb = times_interleaved([lambda: model(ids, prepend_bos=False), ours_fb, torch_f, torch_fb],
                                               repeats)
            rows.append(row(f"backward-{n}", f"forward + backward, {n} tokens (to the embeddings)", n / fb, n / tfb,
                            "tok/s", tfb / fb, ref_name="torch autograd", seconds=fb, tokens=n,
                            note=f"gradients equal to {error:.0e} of the largest"))
            rows.append(row(f"backward-cost-{n}", f"(forward + backward) / forward, {n} tokens", fb / f, tfb / tf,
                            "× forward", ref_name="torch", target=COST_TARGET, seconds=fb, tokens=n))
    finally:
        for p, was in zip(hf.parameters(), frozen):
            p.requires_grad_(was)
    return rows


def main():
    args = bench_parser(__doc__.splitlines()[0]).parse_args()

    import torch

    import tinymech as tm
    from gpt2_small import gpt2_small

    torch.set_num_threads(args.threads)
    tm.set_num_threads(args.threads)
    with gpt2_small(args.layers) as (_, hf, model):
        print(f"gpt2-small shape ({args.layers} layers), {args.threads} threads, "
              f"kernels {tm._core.kernels.variant()}, torch {torch.__version__}")
        for r in gradient_rows(model, hf, repeats=args.repeats):
            print(f"{r['task']:<52}{r['tinymech']:>10.2f}{r['reference']:>10.2f} {r['unit']}")


if __name__ == "__main__":
    main()
