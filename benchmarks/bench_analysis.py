"""What a user's analysis costs end to end, against TransformerLens on the
same weights: an activation-patching sweep (tinymech.analysis vs
transformer_lens.patching, same tokens and logit-difference metric) and
capturing one early block's activations (tinymech's run without logits vs
TransformerLens's run_with_cache with stop_at_layer, its fastest way); and
attribution patching against activation patching on IOI (SmolLM2 when
installed, else the demo model): the time of each head map and their correlation.

    python benchmarks/bench_analysis.py [--threads N] [--layers 12] [--repeats R] [--ioi-prompts 20]

A random-weight model of gpt2-small's shape; both libraries use the same
number of threads. analysis_rows(model, tl, ...) returns the report rows.
"""
from __future__ import annotations

import os

import numpy as np

from report import row
from timing import best_time, random_tokens, seconds_of


def _patching_inputs(vocab: int, batch: int, n: int):
    """Clean tokens, the same with one position changed, and answer pairs."""
    clean = random_tokens(vocab, n, seed=11, batch=batch)
    corrupted = clean.copy()
    corrupted[:, n // 2] = (corrupted[:, n // 2] + 1) % vocab
    answers = np.stack([clean[:, -1], corrupted[:, -1] ^ 1], axis=1)
    return clean, corrupted, answers



def patching_rows(model, tl, *, batch: int = 1, n: int = 12) -> list:
    """patch_resid_pre over every (layer, position): tinymech vs TransformerLens."""
    import torch

    os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens's patching shows a progress bar
    from transformer_lens import patching

    from tinymech import analysis

    clean, corrupted, answers = _patching_inputs(model.cfg.d_vocab, batch, n)
    rows = torch.arange(batch)

    def tl_metric(logits):
        last = logits[:, -1]
        return (last[rows, answers[:, 0]] - last[rows, answers[:, 1]]).mean()

    def theirs():
        with torch.no_grad():
            _, cache = tl.run_with_cache(torch.as_tensor(clean))
            patching.get_act_patch_resid_pre(tl, torch.as_tensor(corrupted), cache, tl_metric)

    # each call is many runs: one timed call per library after a warm-up forward
    model(clean), tl(torch.as_tensor(clean))
    ours = seconds_of(lambda: analysis.patch_resid_pre(model, clean, corrupted, answers=answers))
    ref = seconds_of(theirs)
    runs = model.cfg.n_layers * n
    return [row(f"patch-resid-{batch}x{n}", f"activation patching, resid_pre, {batch}x{n} tokens", ours, ref, "s",
                ref / ours, ref_name="TL patching", note=f"{runs} patched runs; logit difference metric")]


def early_capture_rows(model, tl, *, layer: int = 1, n: int = 512, repeats: int = 3) -> list:
    """Capture blocks.{layer}.mlp.hook_post of n tokens: tinymech with no
    logits vs TransformerLens with stop_at_layer=layer + 1."""
    import torch

    name = f"blocks.{layer}.mlp.hook_post"
    ids = random_tokens(model.cfg.d_vocab, n, seed=n)
    ours = best_time(lambda: model.run_with_cache(ids, names_filter=name, return_type=None), repeats)
    tl_ids = torch.as_tensor(ids)

    def theirs():
        with torch.no_grad():
            tl.run_with_cache(tl_ids, names_filter=name, stop_at_layer=layer + 1)

    ref = best_time(theirs, repeats)
    return [row(f"capture-{name}-{n}", f"capture {name}, {n} tokens", ours * 1e3, ref * 1e3, "ms", ref / ours,
                ref_name="TL, stop_at_layer", note="tinymech: return_type=None stops after the block")]


def ioi_attribution_rows(n: int = 20) -> list:
    """IOI's [layer, head] map of head_z on n prompts, by activation patching (a patched run
    per head) and by attribution patching (a forward and a forward + backward per length
    group): the time of each, and the Pearson correlation of the two maps."""
    import tinymech as tm
    from tinymech import analysis
    from tinymech.io import smollm2

    try:
        model, name, note = tm.load(smollm2.find_gguf()), "SmolLM2", ""
    except tm.ModelNotFoundError:
        model, name, note = tm.load(), "demo model", f"SmolLM2 not installed ({smollm2.INSTALL_HINT}); "
    prompts = analysis.make_ioi_prompts(model, n=n)
    model(prompts.clean[0])  # warm-up: page the weights in
    maps = {}

    def sweep(method):
        maps[method] = analysis.ioi_patching(model, prompts, "head_z", method=method)

    attribution = seconds_of(lambda: sweep("attribution"))
    activation = seconds_of(lambda: sweep("activation"))
    r = float(np.corrcoef(maps["attribution"].values.ravel(), maps["activation"].values.ravel())[0, 1])
    heads = model.cfg.n_layers * model.cfg.n_heads
    return [row(f"ioi-attribution-{n}", f"IOI head map, {name}, {n} prompts: attribution vs activation patching",
                attribution, activation, "s", activation / attribution, ref_name="activation patching",
                note=f"{note}Pearson r of the [layer, head] maps {r:.3f}; {heads} heads", pearson_r=r)]


def analysis_rows(model, tl, *, repeats: int = 3, ioi_prompts: int = 20) -> list:
    return (patching_rows(model, tl) + early_capture_rows(model, tl, repeats=repeats)
            + ioi_attribution_rows(ioi_prompts))


def main():
    import torch

    import tinymech as tm
    from bench_hooks import make_tl
    from gpt2_small import gpt2_small
    from report import format_table
    from timing import bench_parser

    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--ioi-prompts", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tm.set_num_threads(args.threads)
    with gpt2_small(args.layers) as (_, hf, model):
        rows = analysis_rows(model, make_tl(hf), repeats=args.repeats, ioi_prompts=args.ioi_prompts)
    print(format_table(rows))


if __name__ == "__main__":
    main()
