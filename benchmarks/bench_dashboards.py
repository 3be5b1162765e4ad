"""Feature dashboards: tokens/s of tm.feature_dashboards and where the time goes.

    python benchmarks/bench_dashboards.py [--tokens N] [--models smollm2,demo] [--threads N]

smollm2: the bundled SmolLM2 SAE (blocks.15.hook_resid_pre, 4608 latents, TopK 32) over
SmolLM2-135M activations collected once from the corpus (training/.cache/corpus/train.txt)
into benchmarks/.cache/sae_training/ (the SAE-training benchmark's cache): no forward pass,
the store is read. demo: the bundled demo SAE (2048 latents) over the same corpus as text,
the demo model run on it. Each row gives tokens/s over the whole call and, in its note, the
shares of the model run (or the store read), the SAE's encoding, the core's merge (top-k,
histograms, samples, co-occurrence) and the finish (logit effects, co-occurrence ranking,
labels, writing), and the seconds 10^6 tokens would take at that rate.

The issue's target: 4096 features over 10^6 tokens of SmolLM2 activations within a few
minutes on this 2-core machine (--tokens 1000000 measures it whole).

dashboard_rows(...) returns the measurements as report rows.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from report import Skipped, row, target

ROOT = Path(__file__).resolve().parents[1]
QUICK_TOKENS = {"smollm2": 262144, "demo": 65536}
MINUTES_TARGET = target("<=", 300.0, of="value")  # seconds for 10^6 tokens (extrapolated from the run)
SAES = {"smollm2": ROOT / "models/smollm2/saes/blocks.15.hook_resid_pre",
        "demo": ROOT / "models/demo-gpt2/saes/blocks.2.hook_resid_pre"}


def run_model(name: str, n_tokens: int, store: str | None = None) -> dict:
    import tinymech as tm
    from bench_sae_training import CORPUS, activations

    if not CORPUS.exists():
        raise Skipped(f"no corpus at {CORPUS} (python training/build_corpus.py builds it)")
    sae = tm.SAE.load(SAES[name])
    if name == "smollm2" and store:  # a store collected before (tinymech collect --model smollm2 ...)
        model, corpus = tm.load("smollm2"), tm.ActivationStore.open(store)
    elif name == "smollm2":
        model, corpus = activations("smollm2", n_tokens, 128, CORPUS)
    else:
        model, corpus = tm.load(), CORPUS
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        dash = tm.feature_dashboards(model, sae, corpus, n_tokens=n_tokens, out=out, batch_size=32, progress=False)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tokens": dash.n_tokens, "features": dash.n_features, "parts": dash.meta["seconds"],
            "store": name == "smollm2"}


def dashboard_rows(tokens: dict | None = None, models=("smollm2", "demo"), store: str | None = None) -> list:
    """Rows "dashboards-<model>": tokens/s (value), and the seconds 10^6 tokens take (target <= 300 s)."""
    import tinymech as tm

    tokens = {**QUICK_TOKENS, **(tokens or {})}
    rows, missing = [], []
    for name in models:
        try:
            out = run_model(name, tokens[name], store)
        except tm.ModelNotFoundError as e:
            missing.append(f"{name}: {e}")
            continue
        parts = out["parts"]
        total = out["seconds"]
        shares = ", ".join(f"{'store read' if k == 'model' and out['store'] else k} {v / total:.0%}"
                           for k, v in parts.items())
        rate = out["tokens"] / total
        rows.append(row(f"dashboards-{name}", f"dashboards, {name} SAE ({out['features']} features), "
                        f"{out['tokens']} tokens", rate, unit="tok/s", note=shares))
        rows.append(row(f"dashboards-{name}-1m", f"dashboards, {name}: seconds for 10^6 tokens at that rate",
                        1e6 / rate, unit="s", target=MINUTES_TARGET if name == "smollm2" else None,
                        note="measured whole" if out["tokens"] >= 10**6 else "extrapolated"))
    if not rows:
        raise Skipped("; ".join(missing))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, help="tokens per model (default: "
                        + ", ".join(f"{m} {n}" for m, n in QUICK_TOKENS.items()) + ")")
    parser.add_argument("--models", default="smollm2,demo")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--store", default=None, help="smollm2: an activation store of blocks.15.hook_resid_pre "
                        "to read instead of collecting one")
    args = parser.parse_args()
    import tinymech as tm
    from report import format_table

    tm.set_num_threads(args.threads)
    models = args.models.split(",")
    rows = dashboard_rows({m: args.tokens for m in models} if args.tokens else None, models, args.store)
    print(format_table(rows))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
