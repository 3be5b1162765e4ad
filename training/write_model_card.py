"""Write models/demo-gpt2/MODEL_CARD.md from the training outputs (dynamics, SAE metrics, samples).

Usage: python training/write_model_card.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import GPT2LMHeadModel

from train_model import encode_split

ROOT = Path(__file__).resolve().parent.parent
HOOK = "blocks.2.hook_resid_pre"
INDUCTION_MIN = 0.1  # TL "mul" score above which a head counts as an induction head (max here is ~0.5)
# The SAE bundled before the TopK one (standard ReLU + L1, trained by a torch script; git history up to
# a3f7216), measured with tm.sae_metrics on the same held-out rows as this SAE's metrics.json (its
# CE loss recovered again after 1a723df, which zero-ablates every position as SAELens does).
PREVIOUS_SAE = dict(l0=17.393, explained_variance=0.6667, ce_sae=4.6307, ce_loss_score=0.7417, delta_lm_loss=1.8484,
                    dead_features=165)
TRAIN_COMMAND = ("tinymech train-sae --model models/demo-gpt2 --hook blocks.2.hook_resid_pre "
                 "--corpus training/.cache/corpus/train.txt --collect 1532896 --arch topk --d-sae 2048 --k 16 "
                 "--tokens 6000000 --lr 1e-3 --out models/demo-gpt2/saes/blocks.2.hook_resid_pre")
PROMPTS = [
    "It is a truth universally acknowledged, that",
    "In the beginning",
    "And the LORD said unto Moses,",
    "Elizabeth looked at Mr. Darcy and",
]


def ranked_heads(scores: list[list[float]], n: int = 3) -> list[tuple[str, float]]:
    flat = [(f"{layer}.{head}", s) for layer, row in enumerate(scores) for head, s in enumerate(row)]
    return sorted(flat, key=lambda t: -t[1])[:n]


@torch.no_grad()
def continuations(model: GPT2LMHeadModel, tok: Tokenizer) -> list[tuple[str, str, str]]:
    """(prompt, greedy, sampled) with a fixed seed; BOS is prepended as in training."""
    out = []
    torch.manual_seed(0)
    for prompt in PROMPTS:
        ids = torch.tensor([[0] + tok.encode(prompt).ids])
        kw = dict(max_new_tokens=40, pad_token_id=0, attention_mask=torch.ones_like(ids))
        greedy = model.generate(ids, do_sample=False, **kw)[0, ids.shape[1] :]
        sampled = model.generate(ids, do_sample=True, temperature=0.8, top_k=50, **kw)[0, ids.shape[1] :]
        out.append((prompt, tok.decode(greedy.tolist()), tok.decode(sampled.tolist())))
    return out


def formation_step(records: list[dict]) -> int | None:
    """First probe step at which some head's induction score reaches half its final maximum."""
    final = max(max(row) for row in records[-1]["induction_score"])
    for r in records:
        if max(max(row) for row in r["induction_score"]) >= 0.5 * final:
            return r["step"]
    return None


def mix_text(dyn: dict) -> str:
    """The repeated-span mix, including any change made when the run was resumed."""
    text = f"{dyn['repeat_share']:.0%} of sequences, span written {dyn.get('max_copies', 2)} times" if dyn.get("max_copies", 2) == 2 \
        else f"{dyn['repeat_share']:.0%} of sequences, span written 2-{dyn['max_copies']} times"
    for r in dyn.get("resumes", []):
        if r["repeat_share"] != dyn["repeat_share"] or r["max_copies"] != dyn.get("max_copies", 2):
            text += f"; from step {r['step']}: {r['repeat_share']:.0%}, 2-{r['max_copies']} times"
    return text


def schedule_notes(dyn: dict) -> list[str]:
    """How this particular run went (it shared 2 CPU cores with compile jobs)."""
    if not dyn.get("resumes"):
        return [f"Schedule: {dyn.get('schedule', '')}.", ""]
    steps = ", ".join(str(r["step"]) for r in dyn["resumes"])
    moved = [r for r in dyn["resumes"] if "set_progress" in r]
    rewarm = (f" and raise the learning rate again (the cosine moved back to {moved[-1]['set_progress']:.0%} of its course)"
              if moved else "")
    return ["**How this run went.** The machine was shared with compile, test and benchmark jobs, so the speed varied",
            "from 0.1 to 1 step/s. The run was stopped and resumed from its saved state at steps",
            f"{steps}: first to replace the planned step count by a schedule over wall-clock time (cosine decay",
            "until a fixed end time, whatever the speed), then, as no induction head had formed, to strengthen the",
            "repeated-span mix" + rewarm + ". `training_dynamics.json` records the changes (`resumes`).",
            "`training/run_all.py` now starts with the final mix (60 %, 2-4 copies).", ""]


def tinymech_heads(model_dir: Path) -> dict:
    """The heads as tinymech's own detectors find them on the final weights
    (written to heads.json, which tests/test_demo_model.py checks)."""
    import numpy as np

    import tinymech as tm
    from tinymech import analysis

    model = tm.load(model_dir)

    def best(scores: np.ndarray) -> tuple[list[int], float]:
        layer, head = np.unravel_index(int(scores.argmax()), scores.shape)
        return [int(layer), int(head)], round(float(scores.max()), 4)

    raw = analysis.induction_scores(model, seq_len=50, batch=8)
    no_bos = analysis.induction_scores(model, seq_len=50, batch=8, exclude_bos=True)
    prev = analysis.head_scores(model, analysis.repeated_tokens(model, 50, 8))["previous_token"]
    loss = analysis.repeated_sequence_loss(model, seq_len=50, batch=8)
    (ind_head, ind_raw), (ind_head_nb, ind_nb), (prev_head, prev_score) = best(raw), best(no_bos), best(prev)
    return {
        "probe": "tinymech.analysis on [BOS] + 50 random tokens repeated twice, 8 sequences (seed 0)",
        "induction_head": ind_head, "induction_score": ind_raw,
        "induction_head_exclude_bos": ind_head_nb, "induction_score_exclude_bos": ind_nb,
        "previous_token_head": prev_head, "previous_token_score": prev_score,
        "repeated_loss_first_copy": round(float(loss.first_half), 4),
        "repeated_loss_second_copy": round(float(loss.second_half), 4),
    }


def one_line(text: str) -> str:
    return text.replace("\n", " ⏎ ").replace("|", "\\|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/demo-gpt2")
    parser.add_argument("--corpus", type=Path, default=ROOT / "training/.cache/corpus")
    args = parser.parse_args()

    dyn = json.loads((args.model / "training_dynamics.json").read_text())
    cfg = json.loads((args.model / "config.json").read_text())
    licenses = json.loads((args.corpus / "licenses.json").read_text())
    sae_dir = args.model / "saes" / HOOK
    sae = json.loads((sae_dir / "metrics.json").read_text())
    labels = json.loads((sae_dir / "feature_labels.json").read_text())
    tok = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    model = GPT2LMHeadModel.from_pretrained(args.model, dtype=torch.float32).eval()

    n_train = len(encode_split(tok, args.corpus / "train.txt"))
    heads = tinymech_heads(args.model)
    (args.model / "heads.json").write_text(json.dumps(heads, indent=1) + "\n")
    base, final, last = dyn["baselines"], dyn["final"], dyn["records"][-1]
    ind, prev = ranked_heads(last["induction_score"]), ranked_heads(last["prev_token_score"])
    size_mb = sum(p.stat().st_size for p in args.model.parent.rglob("*") if p.is_file()) / 1e6
    ckpts = dyn.get("bundled_checkpoints", [])
    formed = formation_step(dyn["records"])
    has_induction = ind[0][1] >= INDUCTION_MIN
    head_summary = (f"It has an induction head ({ind[0][0]}, score {ind[0][1]:.2f}) and a previous-token head "
                    f"({prev[0][0]}, score {prev[0][1]:.2f})." if has_induction else
                    "**No induction head formed within this run's compute budget** (see below); this version is "
                    "useful for loading, hooking, caching and SAE plumbing, not for induction-circuit demos.")

    L = []  # the card, line by line
    L += ["# demo-gpt2", "",
          "A 4-layer GPT-2-architecture language model (5.3 M parameters) and a sparse autoencoder on its residual",
          "stream, trained from scratch on CPU for tinymech's tests, tutorials and demos. It writes passable",
          "Austen- and King-James-flavoured English. " + head_summary + " It is a toy: do not use it for anything",
          "but exercising interpretability tools.", ""]
    L += ["## Data and licences", "",
          "Built by `training/build_corpus.py` from Debian packages (fetched with `apt-get download`, unpacked with",
          "`dpkg-deb -x`): Jane Austen's six novels (one document per chapter) and the King James Bible (one document",
          "per chapter, verse numbers stripped). Every 20th document is held out for validation.", "",
          "| package | licence |", "|---|---|"]
    L += [f"| `{pkg}` | {info['summary']} |" for pkg, info in licenses.items()]
    L += ["", "The texts themselves are in the public domain; the weights in this folder are released under the",
          "project's licence.", ""]
    L += ["## Tokenizer", "",
          f"Byte-level BPE (`tokenizers`, GPT-2 style pre-tokenizer and decoder, so decode(encode(x)) == x), vocabulary "
          f"{cfg['vocab_size']}, trained on the training split by `training/train_tokenizer.py`. `<|endoftext|>` is id 0 and is",
          "BOS, EOS and padding; every training sequence starts with it. `tokenizer.json` loads with",
          "`tokenizers.Tokenizer.from_file` and with `transformers.AutoTokenizer.from_pretrained(\"models/demo-gpt2\")`.", ""]
    L += ["## Architecture and training", "",
          f"`GPT2LMHeadModel`: {cfg['n_layer']} layers, d_model {cfg['n_embd']}, {cfg['n_head']} heads (d_head "
          f"{cfg['n_embd'] // cfg['n_head']}), d_mlp {cfg['n_inner']}, context {cfg['n_positions']}, `{cfg['activation_function']}`, "
          f"tied embeddings, no dropout; {dyn['n_params']:,} parameters.", "",
          "AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), peak LR 1.5e-3, 200 warmup steps, cosine decay to 10 %,",
          f"gradient clipping 1.0, batch {dyn['batch']} x {dyn['seq_len']} tokens, seeds fixed, `torch.set_num_threads(2)`.",
          f"{final['steps']:,} steps = {final['tokens_seen'] / 1e6:.1f} M tokens (the training split is "
          f"{n_train / 1e6:.2f} M tokens, so at most {final['tokens_seen'] / n_train:.1f} passes over it), on 2 CPU "
          "cores shared with other jobs.", "",
          f"**Repeated spans.** A share of every batch ({mix_text(dyn)}) are sequences in which a span (4-99 tokens; half",
          "the time random tokens, half the time a chunk of natural text) is written several times in a row inside",
          "natural text. Natural text rewards copying only weakly; these sequences are there to make induction heads",
          "form within a small budget.", ""]
    L += schedule_notes(dyn)
    L += ["## Loss", "",
          "Cross-entropy in nats/token on the same tokenization. The bigram baseline interpolates P(b|a) with the unigram",
          f"(weight {base['bigram_interpolation_weight']} chosen on validation, so slightly optimistic).", "",
          "| | train | validation |", "|---|---|---|",
          f"| unigram | {base['unigram_train']:.3f} | {base['unigram_val']:.3f} |",
          f"| bigram | {base['bigram_train']:.3f} | {base['bigram_val']:.3f} |",
          f"| demo-gpt2 | {final['train_loss_natural_text']:.3f} ({final['train_eval_tokens']:,} tokens of training text) | "
          f"{final['val_loss_full']:.3f} ({final['val_tokens']:,} tokens) |", "",
          f"The training loss on the last batches, which include the repeated-span sequences, was {last['train_loss']:.3f}.", ""]
    L += ["## Induction and previous-token heads", "",
          "Scores are TransformerLens head-detector scores (\"mul\": Σ(A ⊙ D) / Σ A, averaged over sequences), on 20",
          "sequences of `<|endoftext|>` + 50 random tokens repeated twice. The induction pattern can only be present in",
          "the second half, so the maximum possible induction score is ≈ 0.5; the previous-token maximum is ≈ 1.", "",
          "| rank | induction head (layer.head) | score | previous-token head | score |", "|---|---|---|---|---|"]
    L += [f"| {i + 1} | {a} | {sa:.3f} | {b} | {sb:.3f} |" for i, ((a, sa), (b, sb)) in enumerate(zip(ind, prev))]
    L += ["", f"Loss on the repeated random sequences: first half {last['rep_loss_first_half']:.2f} nats (random tokens are "
          f"unpredictable: ln {cfg['vocab_size']} = 9.01), second half {last['rep_loss_second_half']:.2f} nats.",
          (f"The induction score first reached half its final value at step {formed} "
           f"({formed * dyn['batch'] * dyn['seq_len'] / 1e6:.2f} M tokens)." if has_induction and formed is not None else
           f"No head reached an induction score of {INDUCTION_MIN} (the best is {ind[0][1]:.3f}, close to the ≈ 0.007 of "
           "uniform attention) and the second half of the repeated sequences is barely easier than the first: in "
           f"{final['tokens_seen'] / 1e6:.1f} M tokens on a shared 2-core machine the model learned mostly local "
           "(bigram-like) statistics. More steps with the repeated-span mix are the fix."),
          "",
          "Measured again on the final weights with tinymech's own detectors (`tinymech.analysis.induction_scores`,",
          "`head_scores`, `repeated_sequence_loss`; 8 sequences, written to `heads.json` and checked by the tests):",
          f"induction head L{heads['induction_head'][0]}H{heads['induction_head'][1]}, score {heads['induction_score']:.3f} "
          f"(≈ 0.5 is the maximum, see above); with attention to BOS left out (`exclude_bos=True`, which removes the",
          f"first half's attention sink from the denominator) L{heads['induction_head_exclude_bos'][0]}H"
          f"{heads['induction_head_exclude_bos'][1]} scores {heads['induction_score_exclude_bos']:.3f}. Previous-token head "
          f"L{heads['previous_token_head'][0]}H{heads['previous_token_head'][1]}, score {heads['previous_token_score']:.3f}. "
          f"Loss on the repeated tokens: {heads['repeated_loss_first_copy']:.2f} nats on the first copy, "
          f"{heads['repeated_loss_second_copy']:.2f} on the second.",
          "",
          "`training_dynamics.json` has, for every probe step, the train and validation loss, both halves' loss, the",
          "per-position loss curve, and every head's induction and previous-token scores.", ""]
    if ckpts:
        where = "around that transition" if has_induction else "from mid-training, for training-dynamics demos"
        L += [f"Intermediate checkpoints (fp16 safetensors + config.json) {where}: "
              + ", ".join(f"`checkpoints/step_{s}`" for s in ckpts) + ".", ""]
    L += ["## Samples", "", "Greedy and sampled (temperature 0.8, top-k 50, seed 0) continuations of 40 tokens, BOS prepended.", ""]
    for prompt, greedy, sampled in continuations(model, tok):
        L += [f"- **{one_line(prompt)}**", f"  - greedy: {one_line(greedy)}", f"  - sampled: {one_line(sampled)}"]
    L += [""]
    L += [f"## SAE: `saes/{HOOK}`", "",
          f"A TopK SAE (d_in {cfg['n_embd']}, d_sae {sae['d_sae']}, k {sae['k']}) on the raw residual stream entering block 2",
          "(HF `hidden_states[2]`; no weight processing, so `model_from_pretrained_kwargs` is empty), trained by",
          "tinymech, natively (its C++ core, no torch), with one command:", "",
          "```", TRAIN_COMMAND, "```", "",
          "`training/train_sae.py` runs the same through `tm.collect_activations` and `tm.train_sae`. The activations:",
          "1.53 M positions of the training text in rows of 128 tokens, **BOS and EOS left out** (here and in every",
          f"metric; with the SAE spliced in, they keep their clean residual). {sae['train_tokens'] / 1e6:.0f} M training tokens",
          f"(four passes over the first 1.5 M), {sae['steps']:,} Adam steps of 4096, learning rate 1e-3 with warm-up and a",
          f"linear decay over the last 20 %, AuxK for latents that stop firing; {sae['seconds'] / 60:.0f} minutes on 2 shared",
          "CPU cores. SAELens v6 format: `cfg.json`, `sae_weights.safetensors`, `sparsity.safetensors` (log10 feature",
          "density on the held-out activations); loads with `sae_lens.SAE.load_from_disk` and `tm.SAE.load`.", "",
          f"Held-out metrics ({sae['n_tokens']:,} activations: the store's last token rows, never trained on; SAELens's",
          "definitions), next to those of the SAE bundled before it (a standard ReLU + L1 SAE trained by a torch script)",
          "measured on the same text:", "",
          "| metric | this SAE (TopK) | previous (ReLU + L1) |", "|---|---|---|",
          f"| L0 | {sae['l0']:.1f} | {PREVIOUS_SAE['l0']:.1f} |",
          f"| explained variance | {sae['explained_variance']:.3f} | {PREVIOUS_SAE['explained_variance']:.3f} |",
          f"| CE loss clean / with SAE / zero-ablated | {sae['ce_clean']:.3f} / {sae['ce_sae']:.3f} / "
          f"{sae['ce_zero_ablation']:.3f} | {sae['ce_clean']:.3f} / {PREVIOUS_SAE['ce_sae']:.3f} / {sae['ce_zero_ablation']:.3f} |",
          f"| CE loss recovered | {sae['ce_loss_score']:.3f} | {PREVIOUS_SAE['ce_loss_score']:.3f} |",
          f"| delta LM loss | {sae['delta_lm_loss']:.3f} | {PREVIOUS_SAE['delta_lm_loss']:.3f} |",
          f"| dead features (never fired on the held-out activations) | {sae['dead_features']} of {sae['d_sae']} | "
          f"{PREVIOUS_SAE['dead_features']} of {sae['d_sae']} |", "",
          "`dashboards/` (`tm.feature_dashboards` over the held-out text, `tinymech feature DIR N` shows one) and",
          f"`feature_labels.json` describe the {len(labels)} labelled live features: top activating contexts (the",
          "max token in «»), top promoted and suppressed tokens (W_dec[f] @ W_U with W_U = wte.T, no final LayerNorm),",
          "and an automatic label made without a language model (the tokens it fires on, the token beside its peaks, a",
          "class of tokens, or what it promotes). Examples:", ""]
    for feat, info in list(labels.items())[:8]:
        ctx = info["top_contexts"][0]["text"] if info["top_contexts"] else ""
        L += [f"- feature {feat} ({info['label']}, density {info['density']:.3f}): `{one_line(ctx)}`; promotes "
              + ", ".join(repr(t) for t, _ in info["promoted_tokens"][:4])]
    L += ["", "## Files", "",
          "- `config.json`, `model.safetensors` (float32), `generation_config.json`: the model (`GPT2LMHeadModel.from_pretrained`).",
          "- `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`: the tokenizer.",
          "- `training_dynamics.json`: probes during training; `heads.json`: the heads tinymech's detectors find.",
          f"- `saes/{HOOK}/`: the SAE, its `metrics.json`, `dashboards/` and `feature_labels.json`."]
    if ckpts:
        L += ["- `checkpoints/step_N/`: fp16 intermediate checkpoints."]
    L += ["", f"Total size of `models/`: {size_mb:.1f} MB.", ""]
    L += ["## Reproduce", "",
          "```", "pip install -e '.[train]'   # torch, transformers, tokenizers, safetensors, rdata (the SAE needs none)",
          "python training/run_all.py --minutes 70   # corpus -> tokenizer -> model -> SAE -> checkpoints -> this card", "```",
          "",
          "Each step is also a script in `training/` (`build_corpus.py`, `train_tokenizer.py`, `train_model.py`,",
          "`train_sae.py` (with its dashboards), `select_checkpoints.py`, `write_model_card.py`). By default the",
          "model trains for a wall-clock budget (`--minutes`, cosine schedule over time), so a faster or idle machine",
          "trains for more steps; pass `--steps` to `run_all.py` for a fixed, machine-independent schedule (the SAE's",
          "is fixed in tokens, and deterministic for a seed and thread count). Seeds are fixed, but CPU kernels and",
          "thread scheduling make the model's runs only approximately bit-reproducible.", ""]
    (args.model / "MODEL_CARD.md").write_text("\n".join(L))
    print(f"wrote {args.model / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
