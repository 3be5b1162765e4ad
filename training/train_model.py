"""Train the bundled demo model: a 4-layer GPT-2 on Austen + the King James Bible.

A share of every batch holds sequences with a repeated span (random tokens or
a chunk of natural text, written twice), because natural text rewards copying
only weakly and we want induction heads to form within an hour on 2 CPU cores.

While training it records, to models/demo-gpt2/training_dynamics.json:
train/val loss, the per-position loss on repeated random token sequences, and
each head's induction and previous-token scores (TransformerLens head-detector
"mul" score: sum(A * D) / sum(A), averaged over the sequences).

With --end-time (UTC, HH:MM) the cosine schedule runs over wall-clock time and
training stops at that time, whatever CPU share it gets; --steps fixes the
step count instead. State is saved every 250 steps to the cache, so an
interrupted run can continue with --resume.

Usage: nice -n 10 python training/train_model.py --end-time 12:15
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import GPT2Config, GPT2LMHeadModel

ROOT = Path(__file__).resolve().parent.parent
EOT = "<|endoftext|>"
BOS = 0


# ----------------------------------------------------------------- data
def encode_split(tok: Tokenizer, path: Path) -> np.ndarray:
    """One token stream: every document is preceded by <|endoftext|>."""
    docs = path.read_text(encoding="utf-8").split(EOT)
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.append(BOS)
        ids.extend(enc.ids)
    return np.asarray(ids, dtype=np.int64)


class BatchSampler:
    """Random windows of the training stream, a share of them with a repeated span.

    Every sequence starts with BOS (as the model will be used), followed by
    seq_len - 1 tokens.
    """

    def __init__(self, stream: np.ndarray, vocab_size: int, batch: int, seq_len: int, repeat_share: float, seed: int,
                 max_copies: int = 2):
        self.stream, self.vocab_size, self.max_copies = stream, vocab_size, max_copies
        self.batch, self.body = batch, seq_len - 1
        self.n_repeat = round(batch * repeat_share)
        self.rng = np.random.default_rng(seed)

    def natural(self, n: int) -> np.ndarray:
        start = self.rng.integers(0, len(self.stream) - n)
        return self.stream[start : start + n]

    def repeated(self) -> np.ndarray:
        """Natural text with a span inserted 2..max_copies times in a row at a random place."""
        copies = int(self.rng.integers(2, self.max_copies + 1))
        length = int(self.rng.integers(4, min(100, self.body // copies)))
        if self.rng.random() < 0.5:
            span = self.rng.integers(1, self.vocab_size, size=length)  # random tokens: pure copying
        else:
            span = self.natural(length)  # natural text: copying as it happens in real documents
        host = self.natural(self.body)
        at = int(self.rng.integers(0, self.body - copies * length + 1))
        return np.concatenate([host[:at], *([span] * copies), host[at:]])[: self.body]

    def next(self) -> torch.Tensor:
        rows = [self.repeated() for _ in range(self.n_repeat)]
        rows += [self.natural(self.body) for _ in range(self.batch - self.n_repeat)]
        body = torch.from_numpy(np.stack(rows))
        return torch.cat([torch.full((self.batch, 1), BOS), body], dim=1)


def val_windows(stream: np.ndarray, seq_len: int) -> torch.Tensor:
    """Non-overlapping validation windows, each with BOS in front."""
    body = seq_len - 1
    n = len(stream) // body
    windows = torch.from_numpy(stream[: n * body].reshape(n, body))
    return torch.cat([torch.full((n, 1), BOS), windows], dim=1)


# ----------------------------------------------------------------- baselines
def ngram_baselines(train: np.ndarray, val: np.ndarray, vocab_size: int) -> dict:
    """Unigram and interpolated-bigram cross-entropy (nats/token) on the same tokens.

    The bigram mixes P(b|a) with the unigram, weight chosen on validation from a
    small grid (so it is a slightly optimistic baseline).
    """
    uni_counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0  # add-one
    p_uni = uni_counts / uni_counts.sum()
    pairs = train[:-1] * vocab_size + train[1:]
    pair_ids, pair_counts = np.unique(pairs, return_counts=True)
    prev_counts = np.bincount(train[:-1], minlength=vocab_size).astype(np.float64)

    def bigram_prob(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        keys = a * vocab_size + b
        idx = np.clip(np.searchsorted(pair_ids, keys), 0, len(pair_ids) - 1)
        count = np.where(pair_ids[idx] == keys, pair_counts[idx], 0)
        return count / np.maximum(prev_counts[a], 1.0)

    def ce(a: np.ndarray, b: np.ndarray, lam: float) -> float:
        return float(-np.log(lam * bigram_prob(a, b) + (1 - lam) * p_uni[b]).mean())

    va, vb = val[:-1], val[1:]
    lams = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    val_bigram = {lam: ce(va, vb, lam) for lam in lams}
    best = min(val_bigram, key=val_bigram.get)
    return {
        "unigram_train": float(-np.log(p_uni[train]).mean()),
        "unigram_val": float(-np.log(p_uni[val]).mean()),
        "bigram_train": ce(train[:-1], train[1:], best),
        "bigram_val": val_bigram[best],
        "bigram_interpolation_weight": best,
    }


# ----------------------------------------------------------------- model
def make_model(vocab_size: int, seq_len: int) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=seq_len,
        n_embd=256,
        n_layer=4,
        n_head=8,
        n_inner=1024,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=BOS,
        eos_token_id=BOS,
        pad_token_id=BOS,
        attn_implementation="sdpa",  # ~30% faster to train on CPU; probes switch to eager
    )
    return GPT2LMHeadModel(config)


def lm_loss(logits: torch.Tensor, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy; with reduction='none' returns [batch, seq-1]."""
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction=reduction)
    return loss if reduction == "mean" else loss.view(tokens.shape[0], -1)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """Weight decay on matrices only (not on biases, LayerNorm gains, or position embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "wpe" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


class Schedule:
    """Linear warmup over `warmup` steps, then cosine decay to 10 % of the peak as progress goes 0 -> 1.

    With a fixed step count, progress counts steps. With an end time, it counts
    wall-clock time up to that deadline: the machine is shared with compile
    jobs, so the speed varies and a step count fixed in advance would overrun.
    Training stops when progress reaches 1.
    """

    def __init__(self, peak: float, warmup: int, total_steps: int | None, end_time: str | None, progress: float = 0.0):
        self.peak, self.warmup, self.total_steps = peak, warmup, total_steps
        self.deadline = time.time() + seconds_until(end_time) if end_time else None
        self.p0, self.t0, self.last = progress, None, progress  # progress when this process started counting

    def progress(self, step: int) -> float:
        if step < self.warmup:
            return 0.0
        if self.total_steps is not None:
            self.last = (step - self.warmup) / max(1, self.total_steps - self.warmup)
        else:
            now = time.time()
            if self.t0 is None:
                self.t0 = now
            self.last = self.p0 + (1 - self.p0) * (now - self.t0) / max(1e-9, self.deadline - self.t0)
        return min(1.0, self.last)

    def lr(self, step: int, progress: float, floor_frac: float = 0.1) -> float:
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        return self.peak * (floor_frac + (1 - floor_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------- interpretability probes
def repeated_random_tokens(vocab_size: int, n_seq: int, half: int, seed: int) -> torch.Tensor:
    """[BOS] + r + r with r random tokens (no BOS inside): the standard induction probe."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(1, vocab_size, (n_seq, half), generator=g)
    return torch.cat([torch.full((n_seq, 1), BOS), r, r], dim=1)


def detection_patterns(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Previous-token and induction patterns D [batch, seq, seq] (TransformerLens definitions)."""
    b, n = tokens.shape
    prev = torch.diag(torch.ones(n - 1), -1).expand(b, n, n)
    same = tokens[:, :, None] == tokens[:, None, :]
    duplicate = (same & torch.ones(n, n, dtype=torch.bool).tril(-1)).float()  # j < i, tok_j == tok_i
    induction = torch.zeros(b, n, n)
    induction[:, :, 1:] = duplicate[:, :, :-1]  # attend to the token after the earlier copy
    induction[:, :, 0] = 0
    return prev, induction


def head_scores(attentions: tuple[torch.Tensor, ...], pattern: torch.Tensor) -> list[list[float]]:
    """'mul' score per layer and head: sum(A * D) / sum(A) per sequence, mean over sequences."""
    out = []
    for a in attentions:  # [batch, head, q, k]
        score = (a * pattern[:, None]).sum((-1, -2)) / a.sum((-1, -2))
        out.append([round(float(s), 4) for s in score.mean(0)])
    return out


@torch.no_grad()
def probe(model: GPT2LMHeadModel, rep_tokens: torch.Tensor, val: torch.Tensor) -> dict:
    """Val loss, repeated-sequence loss curve and head scores for the current weights."""
    model.eval()
    model.set_attn_implementation("eager")  # only eager attention returns the patterns
    half = (rep_tokens.shape[1] - 1) // 2
    out = model(rep_tokens, output_attentions=True)
    per_pos = lm_loss(out.logits, rep_tokens, reduction="none").mean(0)  # predicting tokens 1..2*half
    prev, induction = detection_patterns(rep_tokens)
    val_loss = torch.stack([lm_loss(model(chunk).logits, chunk) for chunk in val.split(16)]).mean()
    model.set_attn_implementation("sdpa")
    model.train()
    return {
        "val_loss": round(float(val_loss), 4),
        "rep_loss_first_half": round(float(per_pos[:half].mean()), 4),
        "rep_loss_second_half": round(float(per_pos[half:].mean()), 4),
        "rep_loss_per_position": [round(float(x), 3) for x in per_pos],
        "induction_score": head_scores(out.attentions, induction),
        "prev_token_score": head_scores(out.attentions, prev),
    }


# ----------------------------------------------------------------- saving
def save_fp16_checkpoint(model: GPT2LMHeadModel, path: Path) -> None:
    """config.json + fp16 model.safetensors (half the size of the float32 weights)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(path / "config.json")
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, separators=(",", ":")))
    tmp.replace(path)  # atomic, so a reader never sees half a file


def seconds_until(hhmm: str) -> float:
    now = dt.datetime.now(dt.timezone.utc)
    h, m = map(int, hhmm.split(":"))
    end = now.replace(hour=h, minute=m, second=0, microsecond=0)
    return (end - now).total_seconds() % 86400  # an end time past midnight means tomorrow


# ----------------------------------------------------------------- main loop
def probe_due(step: int) -> bool:
    """Dense probes early, every 100 steps later (a resumed run may still be waiting for its induction head)."""
    return step % 50 == 0 if step <= 1500 else step % 100 == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "training/.cache/corpus")
    parser.add_argument("--out", type=Path, default=ROOT / "models/demo-gpt2")
    parser.add_argument("--work", type=Path, default=ROOT / "training/.cache/run")
    parser.add_argument("--end-time", default=None, help="UTC HH:MM at which training should finish")
    parser.add_argument("--steps", type=int, default=None, help="fixed step count instead of --end-time")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--repeat-share", type=float, default=0.6)
    parser.add_argument("--max-copies", type=int, default=4, help="a repeated span appears 2..max_copies times")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--set-progress", type=float, default=None, help="with --resume: schedule position to continue from")
    args = parser.parse_args()
    assert args.steps or args.end_time, "give --steps or --end-time"

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer.from_file(str(args.out / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    train_stream = encode_split(tok, args.corpus / "train.txt")
    val_stream = encode_split(tok, args.corpus / "val.txt")
    baselines = ngram_baselines(train_stream, val_stream, vocab)
    print(f"train {len(train_stream):,} tokens, val {len(val_stream):,}; baselines {baselines}", flush=True)

    sampler = BatchSampler(train_stream, vocab, args.batch, args.seq_len, args.repeat_share, args.seed, args.max_copies)
    val_all = val_windows(val_stream, args.seq_len)
    val_probe = val_all[torch.randperm(len(val_all), generator=torch.Generator().manual_seed(1))[:64]]
    rep_tokens = repeated_random_tokens(vocab, n_seq=20, half=50, seed=2)

    model = make_model(vocab, args.seq_len)
    opt = make_optimizer(model, args.lr, args.weight_decay)
    n_params = sum(p.numel() for p in model.parameters())
    dynamics = {
        "description": "Probes during training. Scores are TransformerLens head-detector 'mul' scores "
        "[layer][head] on 20 sequences of [BOS] + 50 random tokens repeated twice; "
        "rep_loss_per_position[t] is the loss of predicting token t+1. val_loss is on 64 fixed windows.",
        "n_params": n_params,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "repeat_share": args.repeat_share,
        "max_copies": args.max_copies,
        "baselines": baselines,
        "records": [],
    }
    step, recent, progress = 0, [], 0.0
    state_path = args.work / "state.pt"
    if args.resume and state_path.exists():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, dynamics = state["step"], state["dynamics"]
        dynamics.pop("total_steps", None)
        # Older states stored a planned step count instead of the schedule's progress.
        progress = state.get("progress", (step - args.warmup) / max(1, (state.get("total_steps") or step) - args.warmup))
        sampler.rng = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed at step {step}, schedule progress {progress:.3f}", flush=True)
        dynamics.setdefault("resumes", []).append({"step": step, "repeat_share": args.repeat_share,
                                                   "max_copies": args.max_copies, "end_time": args.end_time})
    if args.set_progress is not None:  # on resume: move the cosine back (raise the LR) or forward
        progress = args.set_progress
        dynamics["resumes"][-1]["set_progress"] = progress
    schedule = Schedule(args.lr, args.warmup, args.steps, None if args.steps else args.end_time, max(0.0, progress))
    dynamics["schedule"] = f"{args.steps} steps" if args.steps else f"cosine over wall-clock time until {args.end_time} UTC"

    model.train()
    while True:
        progress = schedule.progress(step)
        finished = progress >= 1.0
        if probe_due(step) or finished:
            record = {"step": step, "tokens_seen": step * args.batch * args.seq_len, "lr": round(schedule.lr(step, progress), 6),
                      "train_loss": round(float(np.mean(recent)), 4) if recent else None, **probe(model, rep_tokens, val_probe)}
            recent = []
            dynamics["records"].append(record)
            write_json(args.out / "training_dynamics.json", dynamics)
            best_ind = max(max(row) for row in record["induction_score"])
            print(f"step {step}: train {record['train_loss']} val {record['val_loss']} rep {record['rep_loss_first_half']:.2f}"
                  f"/{record['rep_loss_second_half']:.2f} best induction {best_ind:.3f} lr {record['lr']:.2e} "
                  f"progress {progress:.3f} ({time.strftime('%H:%M:%S')})", flush=True)
            if step <= 1500 or step % 200 == 0:
                save_fp16_checkpoint(model, args.work / "checkpoints" / f"step_{step}")
        if finished:
            break

        for group in opt.param_groups:
            group["lr"] = schedule.lr(step, progress)
        tokens = sampler.next()
        loss = lm_loss(model(tokens).logits, tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent.append(loss.item())
        step += 1
        if step % 250 == 0:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "progress": progress,
                        "dynamics": dynamics, "rng": sampler.rng, "torch_rng": torch.get_rng_state()}, state_path)

    # Final: full validation loss, then float32 weights for the bundle.
    # The train loss above includes the repeated-span sequences; for the baselines
    # comparison, also measure plain training text (as many windows as validation has).
    model.eval()
    train_all = val_windows(train_stream, args.seq_len)
    train_eval = train_all[torch.randperm(len(train_all), generator=torch.Generator().manual_seed(3))[: len(val_all)]]
    with torch.no_grad():
        full_val = torch.stack([lm_loss(model(c).logits, c) for c in val_all.split(16)]).mean()
        train_nat = torch.stack([lm_loss(model(c).logits, c) for c in train_eval.split(16)]).mean()
    dynamics["final"] = {"steps": step, "tokens_seen": step * args.batch * args.seq_len,
                         "val_loss_full": round(float(full_val), 4), "val_tokens": int(val_all[:, 1:].numel()),
                         "train_loss_natural_text": round(float(train_nat), 4), "train_eval_tokens": int(train_eval[:, 1:].numel())}
    write_json(args.out / "training_dynamics.json", dynamics)
    model.save_pretrained(args.out, safe_serialization=True)
    print(f"done: full val loss {float(full_val):.4f}; saved to {args.out}", flush=True)


if __name__ == "__main__":
    main()
