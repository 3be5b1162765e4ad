"""SAE encode / decode throughput: tinymech's C++ core vs SAELens on torch (CPU),
same weights, same number of threads.

The SAE is made by SAELens (random weights, biases set so that about `--l0`
features fire per token, as in trained SAEs), saved with its save_model and
loaded by tinymech. Timed, per batch of `--tokens` activations:
  encode   dense feature activations [tokens, d_sae]
  decode   reconstruction from those dense activations
  forward  encode + decode in one call (tinymech never densifies)
and `forward` on one token, the cost of a splice at each generation step.

Usage: python benchmarks/bench_sae.py [--d-in 768] [--d-sae 24576] [--tokens 512]
       [--threads N] [--arch standard|topk] [--repeats 5]

sae_rows(...) returns the measurements as report rows.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import warnings

import numpy as np

from report import row, target
from timing import evict_from_page_cache, times_interleaved

FORWARD_TARGET = target(">=", 3.0)  # encode + decode, tinymech speed / SAELens speed


def make_lens_sae(arch: str, d_in: int, d_sae: int, l0: int, seed: int = 0):
    import sae_lens
    import torch

    torch.manual_seed(seed)
    if arch == "topk":
        sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=l0))
    else:
        sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.normal_(0.0, d_in**-0.5)  # unit-variance pre-activations for unit-variance inputs
        sae.W_dec.normal_(0.0, d_in**-0.5)
        sae.b_dec.zero_()
        # a threshold q with P(N(0,1) > q) = l0 / d_sae, so about l0 features fire
        q = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1.0 - l0 / d_sae)))
        sae.b_enc.fill_(-q if arch == "standard" else 0.0)
    return sae.eval()


def sae_rows(arch: str = "standard", d_in: int = 768, d_sae: int = 24576, tokens: int = 512, l0: int = 64,
             repeats: int = 5) -> list:
    """Throughput (tok/s) of encode, decode, forward (encode + decode) on a
    batch of `tokens` activations and forward on one token, tinymech vs
    SAELens on the same weights. Rows "sae-encode", "sae-decode",
    "sae-forward", "sae-forward-1"; ratio tinymech / SAELens; each row holds
    the measured `l0` and `name`."""
    import torch

    from tinymech.sae.sae import SAE

    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        lens = make_lens_sae(arch, d_in, d_sae, l0)
        lens.save_model(tmp)
        evict_from_page_cache(tmp)  # mapped as a file read cold, as the model's are
        ours = SAE.load(tmp)
        x = np.random.default_rng(0).standard_normal((tokens, d_in)).astype(np.float32)
        xt = torch.from_numpy(x)
        one, one_t = x[:1], xt[:1]
        feats = ours.encode(x)
        with torch.inference_mode():
            feats_t = lens.encode(xt)
            assert np.abs(feats - feats_t.numpy()).max() <= 1e-4 * np.abs(feats).max(), "encodings differ"
            measured_l0 = float((feats > 0).sum(-1).mean())
            cases = {
                "encode": (lambda: ours.encode(x), lambda: lens.encode(xt), tokens),
                "decode": (lambda: ours.decode(feats), lambda: lens.decode(feats_t), tokens),
                "forward": (lambda: ours.forward(x), lambda: lens(xt), tokens),
                "forward 1 token": (lambda: ours.forward(one), lambda: lens(one_t), 1),
            }
            rows = []
            for name, (ours_fn, lens_fn, n) in cases.items():
                t_ours, t_lens = times_interleaved([ours_fn, lens_fn], repeats)
                task = {"forward": "encode + decode (forward)", "forward 1 token": "forward"}.get(name, name)
                kind = "" if arch == "standard" else f"{arch}-"  # the target is the standard SAE's
                rows.append(row(f"sae-{kind}" + name.replace(" token", "").replace(" ", "-"),
                                f"{'TopK ' if arch == 'topk' else ''}SAE {task}, {n} token{'s' * (n > 1)}",
                                n / t_ours, n / t_lens, "tok/s", t_lens / t_ours, ref_name="SAELens",
                                target=FORWARD_TARGET if name == "forward" and not kind else None,
                                note=f"{arch} {d_in}->{d_sae}, L0 {measured_l0:.0f}", name=name, l0=measured_l0))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=768)
    parser.add_argument("--d-sae", type=int, default=24576)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--l0", type=int, default=64)
    parser.add_argument("--arch", choices=("standard", "topk"), default="standard")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    import tinymech as tm

    torch.set_num_threads(args.threads)
    tm.set_num_threads(args.threads)
    rows = sae_rows(args.arch, args.d_in, args.d_sae, args.tokens, args.l0, args.repeats)
    print(f"{args.arch} SAE {args.d_in} -> {args.d_sae}, {args.tokens} tokens, L0 {rows[0]['l0']:.0f}, "
          f"{args.threads} threads (tinymech kernels: {tm._core.kernels.variant()}, torch {torch.__version__})")
    print(f"{'':16} {'tinymech tok/s':>15} {'SAELens tok/s':>15} {'ratio':>7}")
    for r in rows:
        print(f"{r['name']:16} {r['tinymech']:15,.0f} {r['reference']:15,.0f} {r['ratio']:6.2f}x")


if __name__ == "__main__":
    main()
