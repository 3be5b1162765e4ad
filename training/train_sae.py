"""Train the demo model's SAE on blocks.2.hook_resid_pre with tinymech, natively (no torch), and label its features.

The same run as

    tinymech train-sae --model models/demo-gpt2 --hook blocks.2.hook_resid_pre \\
        --corpus training/.cache/corpus/train.txt --collect 1532896 --arch topk --d-sae 2048 --k 16 \\
        --tokens 6000000 --lr 1e-3 --out models/demo-gpt2/saes/blocks.2.hook_resid_pre --overwrite

(tm.collect_activations over the training text built by training/build_corpus.py, in rows
of 128 tokens with BOS and EOS left out; tm.train_sae, four passes over those activations,
the last 32768 held out for the metrics), then its feature dashboards over the held-out
text (tm.feature_dashboards: dashboards/ and the automatic labels in feature_labels.json),
as `tinymech dashboards --sae models/demo-gpt2/saes/blocks.2.hook_resid_pre --corpus
training/.cache/corpus/val.txt` makes them. cfg.json's metadata names the model and corpus by
their places in the repository rather than this machine's paths.

Writes models/demo-gpt2/saes/blocks.2.hook_resid_pre/{cfg.json, sae_weights.safetensors,
sparsity.safetensors, metrics.json, feature_labels.json, dashboards/}; the activations are kept in
training/.cache/sae-activations (an interrupted collection continues).

Usage: python training/train_sae.py [--resume | --overwrite]  (the bundled SAE is kept unless one is given)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import tinymech as tm
from tinymech.sae.train import check_out

ROOT = Path(__file__).resolve().parent.parent
HOOK = "blocks.2.hook_resid_pre"
COLLECT = 1_532_896  # 1.5 M training activations + 32768 held out, in whole rows
SETTINGS = dict(architecture="topk", d_sae=2048, k=16, n_tokens=6_000_000, lr=1e-3, batch_size=4096,
                holdout=32768, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/demo-gpt2")
    parser.add_argument("--corpus", type=Path, default=ROOT / "training/.cache/corpus/train.txt")
    parser.add_argument("--activations", type=Path, default=ROOT / "training/.cache/sae-activations")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted training from its checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the bundled SAE (or an interrupted training's checkpoint) with a new run")
    parser.add_argument("--text", type=Path, default=ROOT / "training/.cache/corpus/val.txt",
                        help="the held-out text the dashboards read")
    args = parser.parse_args()

    out = args.model / "saes" / HOOK
    check_out(out, resume=args.resume, overwrite=args.overwrite)  # before collecting, which takes long
    model = tm.load(args.model)
    store = tm.collect_activations(model, HOOK, args.corpus, COLLECT, out=args.activations)
    sae = tm.train_sae(store, **SETTINGS, out=out, model=model, resume=args.resume, overwrite=args.overwrite,
                       checkpoint_every=SETTINGS["n_tokens"] // 10)
    cfg = json.loads((out / "cfg.json").read_text())
    cfg["metadata"].update(model_name=args.model.name, dataset_path="training/.cache/corpus/train.txt "
                           "(Austen + KJV, built by training/build_corpus.py)")
    (out / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")

    dash = tm.feature_dashboards(model, tm.SAE.load(out), args.text, out=out / "dashboards", resume=False)
    labels = dash.auto_labels
    print(f"wrote {out}: EV {sae.metrics['explained_variance']:.3f}, CE loss recovered "
          f"{sae.metrics['ce_loss_score']:.3f}; {len(labels)} feature labels")


if __name__ == "__main__":
    main()
