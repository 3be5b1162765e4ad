"""Train a standard ReLU SAE on the demo model's blocks.2.hook_resid_pre and save it in SAELens's format.

The activations are HF `hidden_states[2]` (the raw residual stream entering
block 2, no weight processing), over [BOS] + 255-token windows of the training
text. The BOS position is excluded from training and from every metric (its
residual is an outlier that carries no text); when the SAE is spliced in for
the CE-loss metrics, the BOS position is left untouched as well.

Training: inputs scaled by a constant so that E||x||^2 = d_in, loss =
||x - x_hat||^2 + l1 * sum_i f_i * ||W_dec[i]|| with decoder rows kept at unit
norm, Adam, dead features resampled twice. The scale is folded into b_enc and
b_dec on saving, so the saved SAE reads raw activations (normalize_activations
"none") and its feature activations are in raw residual units.

Writes models/demo-gpt2/saes/blocks.2.hook_resid_pre/{cfg.json, sae_weights.safetensors,
sparsity.safetensors, metrics.json, feature_labels.json}.

Usage: python training/train_sae.py [--l1 5] [--d-sae 2048]
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import GPT2LMHeadModel

from train_model import BOS, encode_split, lm_loss, val_windows

ROOT = Path(__file__).resolve().parent.parent
LAYER = 2
HOOK = f"blocks.{LAYER}.hook_resid_pre"


# ----------------------------------------------------------------- activations
class _Stop(Exception):
    pass


def _block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The residual stream a GPT2Block receives (positional or keyword, depending on the transformers version)."""
    return args[0] if args else kwargs["hidden_states"]


@torch.no_grad()
def collect_resid(model: GPT2LMHeadModel, windows: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Residual stream entering block LAYER at every non-BOS position: [n_windows * (seq-1), d_model].

    A pre-hook on block LAYER grabs its input and stops the forward pass there.
    """
    grabbed = []

    def grab(module, args, kwargs):
        x = _block_input(args, kwargs)
        grabbed.append(x[:, 1:].reshape(-1, x.shape[-1]).clone())
        raise _Stop

    handle = model.transformer.h[LAYER].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for chunk in windows.split(batch):
            try:
                model(chunk)
            except _Stop:
                pass
    finally:
        handle.remove()
    return torch.cat(grabbed)


@torch.no_grad()
def ce_with_patch(model: GPT2LMHeadModel, windows: torch.Tensor, patch=None, batch: int = 32) -> float:
    """Mean next-token loss; `patch` (if given) rewrites the non-BOS residual entering block LAYER."""

    def hook(module, args, kwargs):
        x = _block_input(args, kwargs).clone()
        x[:, 1:] = patch(x[:, 1:])
        if args:
            return (x, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": x}

    handle = model.transformer.h[LAYER].register_forward_pre_hook(hook, with_kwargs=True) if patch else None
    try:
        losses = [lm_loss(model(chunk).logits, chunk) * len(chunk) for chunk in windows.split(batch)]
    finally:
        if handle:
            handle.remove()
    return float(torch.stack(losses).sum() / len(windows))


# ----------------------------------------------------------------- the SAE
class SAE(torch.nn.Module):
    """Standard ReLU SAE in SAELens's parameterisation (apply_b_dec_to_input=True)."""

    def __init__(self, d_in: int, d_sae: int, b_dec_init: torch.Tensor):
        super().__init__()
        w_dec = F.normalize(torch.randn(d_sae, d_in), dim=1)
        self.W_dec = torch.nn.Parameter(w_dec)
        self.W_enc = torch.nn.Parameter(0.1 * w_dec.T.clone())  # tied init (scaled down): features start as their own readers
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(b_dec_init.clone())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.data = F.normalize(self.W_dec.data, dim=1)

    @torch.no_grad()
    def drop_parallel_grad(self) -> None:
        """Remove the part of W_dec's gradient that would only change row norms."""
        if self.W_dec.grad is not None:
            w = self.W_dec.data
            self.W_dec.grad -= (self.W_dec.grad * w).sum(1, keepdim=True) * w


@torch.no_grad()
def resample_dead(sae: SAE, acts: torch.Tensor, dead: torch.Tensor, gen: torch.Generator) -> int:
    """Point dead features at inputs the SAE reconstructs worst (Anthropic's resampling, simplified)."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return 0
    sample = acts[torch.randint(len(acts), (16384,), generator=gen)]
    err = (sample - sae.decode(sae.encode(sample))).pow(2).sum(1)
    picks = torch.multinomial(err, n_dead, replacement=n_dead > len(sample), generator=gen)
    directions = F.normalize(sample[picks] - sae.b_dec, dim=1)
    alive_norm = sae.W_enc[:, ~dead].norm(dim=0).mean() if (~dead).any() else 1.0
    idx = dead.nonzero().squeeze(1)
    sae.W_dec.data[idx] = directions
    sae.W_enc.data[:, idx] = directions.T * alive_norm * 0.2
    sae.b_enc.data[idx] = 0.0
    return n_dead


def train_sae(acts: torch.Tensor, d_sae: int, l1: float, steps: int, batch: int, lr: float, seed: int,
              max_minutes: float, log_every: int = 100) -> tuple[SAE, int]:
    """acts are already scaled so that E||x||^2 = d_in. Returns the SAE and the number of steps taken.

    Progress is the larger of steps done / steps and time used / max_minutes, so a
    slow (shared) machine trains for fewer steps but still completes the schedule.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    sae = SAE(acts.shape[1], d_sae, acts[:100000].mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    resample_points = [0.2, 0.4]  # fractions of progress at which dead features are resampled
    fired = torch.zeros(d_sae, dtype=torch.bool)
    t0, step, progress = time.time(), 0, 0.0
    while progress < 1.0:
        x = acts[torch.randint(len(acts), (batch,), generator=gen)]
        f = sae.encode(x)
        x_hat = sae.decode(f)
        mse = (x - x_hat).pow(2).sum(1).mean()
        warm = min(1.0, progress / 0.05)  # ramp the L1 in, so few features die at the start
        sparsity = (f * sae.W_dec.norm(dim=1)).sum(1).mean()
        lr_now = lr * min(1.0, 5 * (1 - progress))  # linear decay over the last 20 %
        for g in opt.param_groups:
            g["lr"] = lr_now
        loss = mse + warm * l1 * sparsity
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.drop_parallel_grad()
        opt.step()
        sae.normalize_decoder()
        fired |= (f > 0).any(0)
        if step % log_every == 0:
            l0 = (f > 0).float().sum(1).mean()
            fve = 1 - mse / (x - x.mean(0)).pow(2).sum(1).mean()
            print(f"  step {step} ({progress:.0%}): mse {mse:.3f} fve {fve:.3f} l0 {l0:.1f} ({time.time() - t0:.0f}s)", flush=True)
        if step % 300 == 299:
            fired = torch.zeros(d_sae, dtype=torch.bool)  # dead = silent over the last <= 300 batches
        step += 1
        progress = max(step / steps, (time.time() - t0) / (60 * max_minutes))
        if resample_points and progress >= resample_points[0] and step % 300 > 100:
            resample_points.pop(0)
            n = resample_dead(sae, acts, ~fired, gen)
            opt = torch.optim.Adam(sae.parameters(), lr=lr_now)  # fresh moments for the new directions
            fired = torch.zeros(d_sae, dtype=torch.bool)
            print(f"  step {step}: resampled {n} dead features", flush=True)
    print(f"  finished after {step} steps ({time.time() - t0:.0f}s): mse {mse:.3f} l0 {(f > 0).float().sum(1).mean():.1f}", flush=True)
    return sae, step


# ----------------------------------------------------------------- saving in SAELens format
def saelens_weights(sae: SAE, scale: float) -> dict[str, torch.Tensor]:
    """Undo the input scaling: f and W are unchanged, the biases are divided by the scale."""
    return {
        "W_enc": sae.W_enc.detach().clone().contiguous(),
        "b_enc": (sae.b_enc.detach() / scale).contiguous(),
        "W_dec": sae.W_dec.detach().clone().contiguous(),
        "b_dec": (sae.b_dec.detach() / scale).contiguous(),
    }


def _sae_lens_version() -> str:
    try:
        from importlib.metadata import version

        return version("sae-lens")
    except Exception:  # sae-lens not installed: the format written here is v6's
        return "6.0.0"


def saelens_cfg(d_in: int, d_sae: int) -> dict:
    return {
        "architecture": "standard",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": "demo-gpt2",
            "hook_name": HOOK,
            "hook_head_index": None,
            "prepend_bos": True,
            "context_size": 256,
            "dataset_path": "training/.cache/corpus/train.txt (Austen + KJV, built by training/build_corpus.py)",
            "model_from_pretrained_kwargs": {},
            "exclude_special_tokens": [BOS],
            # Without a version >= 6, sae_lens treats the file as a pre-6.0 config and drops the metadata.
            "sae_lens_version": _sae_lens_version(),
            "sae_lens_training_version": None,
        },
    }


def encode_raw(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return F.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])


def decode_raw(w: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
    return f @ w["W_dec"] + w["b_dec"]


def check_saelens_load(path: Path, w: dict[str, torch.Tensor], x: torch.Tensor) -> float:
    """Load with sae_lens and compare its encode/decode with ours; returns the max abs difference."""
    from sae_lens import SAE as LensSAE

    lens = LensSAE.load_from_disk(str(path), device="cpu")
    with torch.no_grad():
        f_lens = lens.encode(x)
        diff = max(float((f_lens - encode_raw(w, x)).abs().max()), float((lens.decode(f_lens) - decode_raw(w, f_lens)).abs().max()))
    print(f"sae_lens {type(lens).__name__} loaded; max |diff| vs our encode/decode = {diff:.2e}", flush=True)
    return diff


# ----------------------------------------------------------------- metrics
@torch.no_grad()
def evaluate(model, w, val: torch.Tensor, val_acts: torch.Tensor) -> dict:
    f = torch.cat([encode_raw(w, c) for c in val_acts.split(8192)])
    x_hat = torch.cat([decode_raw(w, c) for c in f.split(8192)])
    total_var = (val_acts - val_acts.mean(0)).pow(2).sum(1).mean()
    clean = ce_with_patch(model, val)
    spliced = ce_with_patch(model, val, lambda x: decode_raw(w, encode_raw(w, x)))
    zero = ce_with_patch(model, val, torch.zeros_like)
    density = (f > 0).float().mean(0)
    return {
        "n_tokens": len(val_acts),
        "l0": float((f > 0).float().sum(1).mean()),
        "l1": float(f.sum(1).mean()),
        "explained_variance": float(1 - (val_acts - x_hat).pow(2).sum(1).mean() / total_var),
        "mse_per_token": float((val_acts - x_hat).pow(2).sum(1).mean()),
        "ce_clean": clean,
        "ce_sae": spliced,
        "ce_zero_ablation": zero,
        "ce_loss_recovered": (zero - spliced) / (zero - clean),
        "delta_lm_loss": spliced - clean,
        "dead_features_val": int((density == 0).sum()),
        "_density": density,
    }


# ----------------------------------------------------------------- feature dashboards (small)
@torch.no_grad()
def top_contexts(w, acts: torch.Tensor, features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k activations and their token indices for the chosen features, streaming over acts."""
    best_v = torch.full((len(features), k), -1.0)
    best_i = torch.zeros((len(features), k), dtype=torch.long)
    for start in range(0, len(acts), 16384):
        f = encode_raw(w, acts[start : start + 16384])[:, features].T  # [n_feat, chunk]
        v, i = f.topk(min(k, f.shape[1]), dim=1)
        all_v = torch.cat([best_v, v], 1)
        all_i = torch.cat([best_i, i + start], 1)
        best_v, order = all_v.topk(k, dim=1)
        best_i = all_i.gather(1, order)
    return best_v, best_i


def snippet(tok: Tokenizer, windows: torch.Tensor, flat_idx: int, before: int = 12, after: int = 3) -> str:
    """Text around a token, the token itself wrapped in «»."""
    body = windows.shape[1] - 1
    row, pos = divmod(int(flat_idx), body)
    ids = windows[row, 1:].tolist()
    left = tok.decode(ids[max(0, pos - before) : pos])
    mid = tok.decode([ids[pos]])
    right = tok.decode(ids[pos + 1 : pos + 1 + after])
    return (left + "«" + mid + "»" + right).replace("\n", "⏎")


def feature_labels(tok, model, w, windows, acts, density, n_features: int = 200, k: int = 20) -> dict:
    alive = (density > 0).nonzero().squeeze(1)
    features = alive[density[alive].argsort(descending=True)][:n_features]
    top_v, top_i = top_contexts(w, acts, features, k)
    w_u = model.transformer.wte.weight.detach().T  # [d_model, vocab]
    logits = w["W_dec"][features] @ w_u
    out = {}
    for row, feat in enumerate(features.tolist()):
        idxs = [int(i) for v, i in zip(top_v[row], top_i[row]) if v > 0]
        body = windows.shape[1] - 1
        max_tokens = [tok.decode([int(windows[i // body, 1 + i % body])]) for i in idxs]
        up = logits[row].topk(8)
        down = (-logits[row]).topk(8)
        promoted = [tok.decode([int(t)]) for t in up.indices]
        common, count = collections.Counter(max_tokens).most_common(1)[0] if max_tokens else ("", 0)
        if count >= 0.5 * max(1, len(max_tokens)):
            label = f"token {common.strip() or repr(common)!s}"
        else:
            label = "fires on " + ", ".join(repr(t) for t, _ in collections.Counter(max_tokens).most_common(3))
        out[str(feat)] = {
            "label": label,
            "density": round(float(density[feat]), 5),
            "max_activation": round(float(top_v[row, 0]), 3),
            "top_contexts": [
                {"activation": round(float(v), 3), "text": snippet(tok, windows, i)} for v, i in zip(top_v[row, :5].tolist(), idxs[:5])
            ],
            "promoted_tokens": [[t, round(float(v), 3)] for t, v in zip(promoted, up.values)],
            "suppressed_tokens": [[tok.decode([int(t)]), round(-float(v), 3)] for t, v in zip(down.indices, down.values)],
        }
    return out


# ----------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/demo-gpt2")
    parser.add_argument("--corpus", type=Path, default=ROOT / "training/.cache/corpus")
    parser.add_argument("--train-tokens", type=int, default=1_500_000)
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--l1", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--max-minutes", type=float, default=10.0, help="stop (with the schedule completed) after this long")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-windows", type=int, default=None, help="limit held-out windows (for quick tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tok = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    model = GPT2LMHeadModel.from_pretrained(args.model, dtype=torch.float32).eval()
    train_windows = val_windows(encode_split(tok, args.corpus / "train.txt"), 256)  # non-overlapping
    train_windows = train_windows[: args.train_tokens // 255 + 1]
    val = val_windows(encode_split(tok, args.corpus / "val.txt"), 256)[: args.val_windows]

    t0 = time.time()
    acts = collect_resid(model, train_windows)
    val_acts = collect_resid(model, val)
    scale = float((acts.shape[1] / acts[:200000].pow(2).sum(1).mean()).sqrt())
    print(f"activations: train {tuple(acts.shape)}, val {tuple(val_acts.shape)}, scale {scale:.4f} ({time.time() - t0:.0f}s)", flush=True)

    sae, steps_done = train_sae(acts * scale, args.d_sae, args.l1, args.steps, args.batch, args.lr, args.seed, args.max_minutes)
    w = saelens_weights(sae, scale)

    out = args.model / "saes" / HOOK
    out.mkdir(parents=True, exist_ok=True)
    (out / "cfg.json").write_text(json.dumps(saelens_cfg(acts.shape[1], args.d_sae), indent=2) + "\n")
    save_file(w, str(out / "sae_weights.safetensors"))

    metrics = evaluate(model, w, val, val_acts)
    metrics.pop("_density")
    metrics["saelens_max_abs_diff"] = check_saelens_load(out, w, val_acts[:4096])
    train_density = torch.zeros(args.d_sae)
    for c in acts.split(16384):
        train_density += (encode_raw(w, c) > 0).float().sum(0)
    train_density /= len(acts)
    # SAELens convention: log10 of each feature's firing frequency (dead features get -10).
    save_file({"sparsity": torch.log10(train_density + 1e-10)}, str(out / "sparsity.safetensors"))
    metrics["dead_features_train"] = int((train_density == 0).sum())
    metrics.update({"d_sae": args.d_sae, "l1_coefficient": args.l1, "steps": steps_done, "batch": args.batch,
                    "train_tokens": len(acts), "input_scale": scale, "bos_position": "excluded"})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2), flush=True)

    labels = feature_labels(tok, model, w, train_windows, acts, train_density)
    (out / "feature_labels.json").write_text(json.dumps(labels, ensure_ascii=False, separators=(",", ":")))
    print(f"wrote {len(labels)} feature labels; done in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
