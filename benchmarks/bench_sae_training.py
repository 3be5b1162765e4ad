"""TopK SAE training: tinymech's trainer vs SAELens's SAETrainer (torch, CPU) and vs
a plain torch TopK loop written the way EleutherAI's sparsify writes it, on the same
stored activations, in the same order, with the same hyperparameters and threads.

    python benchmarks/bench_sae_training.py [--tokens N] [--models smollm2,demo] [--threads N]
                                            [--lr 3e-3] [--batch-size 4096] [--corpus PATH]

Activations: tm.collect_activations over the corpus (training/.cache/corpus/train.txt,
built by training/build_corpus.py), 128-token rows, BOS and EOS positions left out,
cached under benchmarks/.cache/sae_training/; the last 16 rows are held out. SmolLM2-135M
blocks.15.hook_resid_pre -> 4608 latents and the bundled demo GPT-2
blocks.2.hook_resid_pre -> 2048 latents, k 32. The training activations are scaled
once, as SAELens's normalize_activations="expected_average_only_in" does (sqrt(d_in) /
mean norm), and all three trainers read the same scaled batches (store.batches); each
trained SAE is then saved in SAELens's format and loaded by tinymech with the scale
folded in.

The contenders, one step of each in turn per batch (a slow minute of the machine then
slows all three alike), the first `--warmup` steps untimed:
  tinymech   tinymech.sae.trainer.Trainer("topk"), started from SAELens's initial weights
  SAELens    TopKTrainingSAE under its SAETrainer, fed through SAETrainer.step (the
             seam its fit() loop calls; fit() adds only tqdm, logging and checkpoints);
             dense activations: its use_sparse_activations fails in backward on CPU
             (torch 2.13: aten::view on SparseCPU)
  torch loop a sparsify-style loop: encoder Linear, ReLU, top-k, a backward through
             the k chosen latents only (dW as one sparse product), embedding_bag
             decoding, FVU loss, AuxK on latents dead for 10M tokens, unit-norm
             decoder rows, Adam (eager: no torch.compile, no Triton on CPU)
All use one constant learning rate and no warm-up: 3e-3 by default, ten times
SAELens's, so that the quick run's 16-20 steps reach a telling explained variance.
Quality: explained variance on the held-out activations and, for the demo model, the
CE loss recovered (tm.sae_metrics) on the held-out token rows.

sae_training_rows(...) returns the measurements as report rows.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from report import Skipped, row, target
from timing import SETTLE_SECONDS

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(__file__).resolve().parent / ".cache" / "sae_training"
CORPUS = ROOT / "training" / ".cache" / "corpus" / "train.txt"
SPEED_TARGET = target(">=", 5.0)  # tinymech tokens/s / SAELens tokens/s
QUALITY_MARGIN = 0.005  # tinymech's EV and CE recovered may trail the reference by this much
MODELS = {  # name: (tm.load argument, hook, d_sae)
    "smollm2": ("smollm2", "blocks.15.hook_resid_pre", 4608),
    "demo": (None, "blocks.2.hook_resid_pre", 2048),
}
QUICK_TOKENS = {"smollm2": 65536, "demo": 81920}  # 16 and 20 steps of 4096: the default run


# ---- activations ----------------------------------------------------------------------------

def activations(name: str, n_tokens: int, context: int, corpus: Path) -> tuple:
    """(model, store): the activations tm.collect_activations collects once into the cache."""
    import tinymech as tm

    if not corpus.exists():
        raise Skipped(f"no corpus at {corpus} (python training/build_corpus.py builds it)")
    source, hook, _ = MODELS[name]
    model = tm.load(source) if source else tm.load()
    out = CACHE / f"{name}-{context}-{n_tokens}"
    return model, tm.collect_activations(model, hook, corpus, n_tokens, out=out, context=context)


def heldout_split(store, rows: int) -> tuple:
    """(held-out token rows [rows, context], their activations' count): the last `rows`
    rows of the store, whose activations are its last ones (the excluded positions,
    BOS and EOS, have none)."""
    kept = ~np.isin(store.tokens[:-rows], store.meta["excluded_token_ids"])
    return np.asarray(store.tokens[-rows:]), store.n_tokens - int(kept.sum())


# ---- the three trainers ---------------------------------------------------------------------

class LensTrainer:
    """SAELens's TopKTrainingSAE under its own SAETrainer."""
    name = "SAELens"

    def __init__(self, d_in, d_sae, k, lr, batch_size, steps, seed):
        import torch
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.config import SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer

        torch.manual_seed(seed)
        self.sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu"))
        cfg = SAETrainerConfig(total_training_samples=steps * batch_size, train_batch_size_samples=batch_size,
                               lr=lr, lr_end=lr / 10, device="cpu")  # lr_end: the runner's default
        self.trainer = SAETrainer(cfg, self.sae, data_provider=iter(()))  # batches come through step()

    def initial_params(self) -> dict:
        return {k: v.detach().numpy().copy() for k, v in self.sae.state_dict().items()}

    def step(self, x, xt):
        self.trainer.maybe_reset_sparsity()  # as fit() does before each step
        self.trainer.step(xt)
        self.trainer.n_training_steps += 1

    def save(self, path, hook):
        self.sae.cfg.metadata.hook_name = hook
        self.sae.save_inference_model(path)


class TinymechTrainer:
    """tinymech's Trainer, from the same initial weights as SAELens's."""
    name = "tinymech"

    def __init__(self, d_in, d_sae, k, lr, batch_size, init: dict, seed):
        from tinymech.sae.trainer import Trainer

        # dead after SAELens's dead_feature_window of 1000 steps
        self.lr, self.trainer = lr, Trainer("topk", d_in, d_sae, k=k, seed=seed, dead_tokens=1000 * batch_size)
        self.trainer.set_params(**{n: init[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")})

    def step(self, x, xt):
        self.trainer.step(x, lr=self.lr)

    def save(self, path, hook):
        write_lens_format(path, self.trainer.sae_weights(), self.trainer.sae_config(), hook)


def _topk_encoder():
    """relu(x W^T + b), its k largest per row; the backward touches those k latents only
    (sparsify's FusedEncoder idea: embedding_bag for dx, a sparse product for dW)."""
    import torch
    import torch.nn.functional as F

    class TopKEncoder(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, k):
            pre = torch.relu(F.linear(x, weight, bias))
            values, indices = pre.topk(k, dim=-1, sorted=False)
            ctx.save_for_backward(x, weight, indices, values)
            return values, indices, pre

        @staticmethod
        def backward(ctx, grad_values, _grad_indices, _grad_pre):
            x, weight, indices, values = ctx.saved_tensors
            grad = grad_values * (values > 0)  # the ReLU's gradient
            grad_x = F.embedding_bag(indices, weight, mode="sum", per_sample_weights=grad)
            rows = torch.arange(x.shape[0]).repeat_interleave(indices.shape[1])
            chosen = torch.sparse_coo_tensor(torch.stack([indices.reshape(-1), rows]), grad.reshape(-1),
                                             (weight.shape[0], x.shape[0]))
            grad_w = torch.sparse.mm(chosen, x)
            grad_b = torch.zeros_like(weight[:, 0]).index_add_(0, indices.reshape(-1), grad.reshape(-1))
            return grad_x, grad_w, grad_b, None

    return TopKEncoder


class TorchLoopTrainer:
    """A plain torch TopK SAE loop as EleutherAI's sparsify writes it (its own init:
    nn.Linear's, the decoder a unit-norm copy, b_dec the first batch's mean)."""
    name = "torch loop"
    DEAD_TOKENS = 10_000_000  # sparsify's dead_feature_threshold
    AUXK_ALPHA = 1 / 32

    def __init__(self, d_in, d_sae, k, lr, seed):
        import torch

        torch.manual_seed(seed)
        self.k, self.encode = k, _topk_encoder().apply
        self.encoder = torch.nn.Linear(d_in, d_sae)
        with torch.no_grad():
            self.encoder.bias.zero_()
        self.W_dec = torch.nn.Parameter(self.encoder.weight.detach().clone())
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        self._unit_norm_decoder()
        self.optimizer = torch.optim.Adam([self.encoder.weight, self.encoder.bias, self.W_dec, self.b_dec], lr=lr)
        self.tokens_since_fired = torch.zeros(d_sae, dtype=torch.long)
        self.first = True

    def _unit_norm_decoder(self):
        import torch

        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True) + torch.finfo(torch.float32).eps

    def _decode(self, values, indices):
        import torch.nn.functional as F

        return F.embedding_bag(indices, self.W_dec, mode="sum", per_sample_weights=values)

    def step(self, x, xt):
        import torch

        if self.first:
            with torch.no_grad():
                self.b_dec.copy_(xt.mean(0))
            self.first = False
        values, indices, pre = self.encode(xt - self.b_dec, self.encoder.weight, self.encoder.bias, self.k)
        error = xt - (self._decode(values, indices) + self.b_dec)
        total_variance = (xt - xt.mean(0)).pow(2).sum()
        loss = error.pow(2).sum() / total_variance + self.AUXK_ALPHA * self._auxk(pre, error, total_variance)
        loss.backward()
        with torch.no_grad():  # keep only the gradient orthogonal to each decoder row
            grad = self.W_dec.grad
            grad -= (grad * self.W_dec).sum(1, keepdim=True) * self.W_dec
        self.optimizer.step()
        self.optimizer.zero_grad()
        self._unit_norm_decoder()
        self.tokens_since_fired += xt.shape[0]
        self.tokens_since_fired[indices.reshape(-1)] = 0

    def _auxk(self, pre, error, total_variance):
        import torch

        dead = self.tokens_since_fired > self.DEAD_TOKENS
        n_dead = int(dead.sum())
        if n_dead == 0:
            return error.new_tensor(0.0)
        k_aux = error.shape[1] // 2
        scale, k_aux = min(n_dead / k_aux, 1.0), min(k_aux, n_dead)
        values, indices = torch.where(dead[None], pre, -torch.inf).topk(k_aux, sorted=False)
        return scale * (self._decode(values, indices) - error.detach()).pow(2).sum() / total_variance

    def save(self, path, hook):
        weights = {"W_enc": self.encoder.weight.detach().T, "b_enc": self.encoder.bias.detach(),
                   "W_dec": self.W_dec.detach(), "b_dec": self.b_dec.detach()}
        d_sae, d_in = self.W_dec.shape
        write_lens_format(path, {n: w.numpy() for n, w in weights.items()},
                          {"architecture": "topk", "k": self.k, "d_in": d_in, "d_sae": d_sae}, hook)


def write_lens_format(path, weights: dict, cfg: dict, hook: str) -> None:
    """sae_weights.safetensors + cfg.json as SAELens saves an inference SAE."""
    from safetensors.numpy import save_file

    Path(path).mkdir(parents=True, exist_ok=True)
    save_file({n: np.ascontiguousarray(w, dtype=np.float32) for n, w in weights.items()},
              str(Path(path) / "sae_weights.safetensors"))
    cfg = {"apply_b_dec_to_input": True, "normalize_activations": "none", "dtype": "float32",
           "metadata": {"hook_name": hook}, **cfg}
    (Path(path) / "cfg.json").write_text(json.dumps(cfg))


# ---- training and evaluation ----------------------------------------------------------------

def train_interleaved(trainers, batches, warmup: int) -> list:
    """Seconds each trainer spent on the steps after the first `warmup`, one step
    of each in turn per batch."""
    import torch

    seconds = [0.0] * len(trainers)
    for i, x in enumerate(batches):
        xt = torch.from_numpy(x)
        for j, trainer in enumerate(trainers):
            time.sleep(SETTLE_SECONDS)  # let the last contender's threads stop spinning
            t0 = time.perf_counter()
            trainer.step(x, xt)
            if i >= warmup:
                seconds[j] += time.perf_counter() - t0
    return seconds


def explained_variance(sae, x: np.ndarray) -> float:
    """1 - E||x - x̂||² / (E||x||² - ||E x||²), as tm.sae_metrics and SAELens define it."""
    x64 = x.astype(np.float64)
    residual = ((x64 - sae.forward(x).astype(np.float64)) ** 2).sum(1).mean()
    variance = (x64 ** 2).sum(1).mean() - (x64.mean(0) ** 2).sum()
    return float(1.0 - residual / variance)


def run_model(name: str, tokens: int, lr: float, batch_size: int, k: int, context: int, warmup: int,
              corpus: Path = CORPUS, seed: int = 0, holdout_rows: int = 16) -> dict:
    """Trains the three contenders on one model's activations; returns their
    seconds per step and tokens/s, held-out explained variance (and CE loss
    recovered), and the shapes."""
    import tinymech as tm
    from tinymech.sae.sae import SAE

    steps = max(tokens // batch_size, warmup + 1)
    model, store = activations(name, steps * batch_size + (holdout_rows + 2) * context, context, corpus)
    heldout_tokens, holdout = heldout_split(store, holdout_rows)
    hook, d_sae, d_in = MODELS[name][1], MODELS[name][2], store.d_in
    x_train = store.inputs[:store.n_tokens - holdout]
    scale = float(np.sqrt(d_in) / np.linalg.norm(x_train, axis=1).mean())  # SAELens's expected_average_only_in
    stream = store.batches(batch_size, seed=seed, holdout=holdout)
    batches = (x * np.float32(scale) for x, _ in itertools.islice(stream, steps))

    lens = LensTrainer(d_in, d_sae, k, lr, batch_size, steps, seed)
    trainers = [TinymechTrainer(d_in, d_sae, k, lr, batch_size, lens.initial_params(), seed), lens,
                TorchLoopTrainer(d_in, d_sae, k, lr, seed)]
    seconds = train_interleaved(trainers, batches, warmup)
    timed = (steps - warmup) * batch_size
    out = {"steps": steps, "d_in": d_in, "d_sae": d_sae, "timed_tokens": timed, "corpus": store.meta["corpus"],
           "seconds": {}, "tok_s": {}, "ev": {}, "ce": {}}
    heldout, _ = store.rows(store.n_tokens - holdout, store.n_tokens)
    for trainer, s in zip(trainers, seconds):
        out["seconds"][trainer.name], out["tok_s"][trainer.name] = s / (steps - warmup), timed / s
        with tempfile.TemporaryDirectory() as tmp:
            trainer.save(tmp, hook)
            sae = SAE.load(tmp, norm_scaling_factor=scale)
        out["ev"][trainer.name] = explained_variance(sae, heldout)
        if name == "demo":
            metrics = tm.sae_metrics(model, sae, heldout_tokens, ignore_tokens=store.meta["excluded_token_ids"])
            out["ce"][trainer.name] = metrics.ce_loss_recovered
    return out


# ---- the roofline ---------------------------------------------------------------------------

def machine_limits() -> tuple:
    """(FMA peak GF/s, read bandwidth GB/s) from the core's native probes, or None each."""
    from tinymech import _core

    kernels = _core.kernels
    peak = kernels.fma_peak_gflops() if hasattr(kernels, "fma_peak_gflops") else None
    bandwidth = kernels.read_bandwidth_gbs() if hasattr(kernels, "read_bandwidth_gbs") else None
    return peak, bandwidth


def step_floor(n: int, d_in: int, d_sae: int, k: int, peak: float | None, bandwidth: float | None) -> dict:
    """What one TopK training step on n tokens must cost at least: the dense encoder
    GEMM (2 n d_in d_sae FLOPs) at the FMA peak, and Adam's pass over the parameters,
    their gradients and both moments (read 4, write 3 floats each) at the read
    bandwidth. The sparse decode and backward gather about 4 rows of d_in floats per
    chosen latent (n k of them), mostly from cache; their time at the read bandwidth
    is an upper estimate. Seconds are None where the probe is missing."""
    adam_bytes = 4 * 7 * (2 * d_in * d_sae + d_sae + d_in)
    gather_bytes = 4 * 4 * n * k * d_in
    flops = 2 * n * d_in * d_sae
    return {"gflop": flops / 1e9, "adam_mb": adam_bytes / 1e6, "gather_mb": gather_bytes / 1e6,
            "gemm_s": flops / (peak * 1e9) if peak else None,
            "adam_s": adam_bytes / (bandwidth * 1e9) if bandwidth else None,
            "gather_s": gather_bytes / (bandwidth * 1e9) if bandwidth else None}


def roofline_text(out: dict, n: int, k: int, limits: tuple) -> list:
    """Per contender, the share of its step that each part of the floor would take."""
    f = step_floor(n, out["d_in"], out["d_sae"], k, *limits)
    if f["gemm_s"] is None or f["adam_s"] is None:
        return ["  (no native probes of the FMA peak and read bandwidth in this build)"]
    lines = [f"  per step of {n} tokens: encoder GEMM {f['gflop']:.1f} GFLOP = {f['gemm_s'] * 1e3:.0f} ms at the "
             f"{limits[0]:.0f} GF/s FMA peak; Adam {f['adam_mb']:.0f} MB = {f['adam_s'] * 1e3:.0f} ms and sparse "
             f"gathers {f['gather_mb']:.0f} MB = {f['gather_s'] * 1e3:.0f} ms at {limits[1]:.1f} GB/s"]
    for name, s in out["seconds"].items():
        lines.append(f"  {name:<11}{s * 1e3:7.0f} ms/step: encoder GEMM at peak {f['gemm_s'] / s:4.0%}, Adam at "
                     f"bandwidth {f['adam_s'] / s:4.0%}, gathers from memory {f['gather_s'] / s:4.0%}")
    return lines


# ---- rows -----------------------------------------------------------------------------------

def _quality_rows(tag: str, what: str, values: dict, label: str) -> list:
    """tinymech's held-out quality vs SAELens's (same recipe, same initial weights:
    target no lower than theirs - QUALITY_MARGIN) and vs the torch loop's (sparsify's
    recipe and init, which differ: no target)."""
    ours, rows = values["tinymech"], []
    for ref, suffix in (("SAELens", ""), ("torch loop", "-loop")):
        theirs = values[ref]
        note = f"Δ {ours - theirs:+.4f}"
        if ref != "SAELens":
            note += "; sparsify's recipe: b_dec = batch mean, unit-norm decoder, no clipping"
        rows.append(row(f"sae-train-{tag}-{label}{suffix}", f"SAE training {tag}: {what}, held out", ours, theirs,
                        ref_name=ref, note=note.lstrip("; "),
                        target=target(">=", round(theirs - QUALITY_MARGIN, 4), of="value") if ref == "SAELens" else None))
    return rows


def _speed_rows(name: str, out: dict, floor: dict, note: str) -> list:
    """tinymech's tokens/s vs SAELens's (target ≥5×) and vs the torch loop's."""
    tok, ours = out["tok_s"], out["tok_s"]["tinymech"]
    if floor["gemm_s"]:
        note += f"; encoder GEMM at peak {floor['gemm_s'] / out['seconds']['tinymech']:.0%} of tinymech's step"
    return [row(f"sae-train-{name}{suffix}", f"SAE training {name} {MODELS[name][1]}", ours, tok[ref], "tok/s",
                ours / tok[ref], ref_name=ref, target=SPEED_TARGET if ref == "SAELens" else None,
                note=note if ref == "SAELens" else note.split(";")[0])
            for ref, suffix in (("SAELens", ""), ("torch loop", "-loop"))]


def sae_training_rows(tokens: dict | None = None, models=("smollm2", "demo"), lr: float = 3e-3,
                      batch_size: int = 4096, k: int = 32, context: int = 128, warmup: int = 2,
                      corpus: Path = CORPUS, verbose: bool = False) -> list:
    """Rows per model: "sae-train-<model>" (tokens/s, ratio tinymech / SAELens,
    target ≥5×), "sae-train-<model>-loop" (ratio tinymech / torch loop), the held-out
    explained variance vs each ("-ev", "-ev-loop") and, for the demo model, the CE
    loss recovered ("-ce", "-ce-loop"); targets: no lower than SAELens's - 0.005.
    A model that is not installed (SmolLM2) is left out; Skipped when none is left."""
    import tinymech as tm

    tokens = {**QUICK_TOKENS, **(tokens or {})}
    limits = machine_limits()
    rows, missing = [], []
    for name in models:
        try:
            out = run_model(name, tokens[name], lr, batch_size, k, context, warmup, Path(corpus))
        except tm.ModelNotFoundError as e:
            missing.append(f"{name}: {e}")
            print(f"sae_training: {name} skipped: {e}", file=sys.stderr)
            continue
        floor = step_floor(batch_size, out["d_in"], out["d_sae"], k, *limits)
        rows += _speed_rows(name, out, floor, f"{out['d_in']}->{out['d_sae']} k{k}, {out['steps']} steps of "
                            f"{batch_size}, lr {lr:g}")
        rows += _quality_rows(name, "explained variance", out["ev"], "ev")
        if out["ce"]:
            rows += _quality_rows(name, "CE loss recovered", out["ce"], "ce")
        if verbose:
            print(f"{name}: activations of {out['corpus']}; {out['timed_tokens']} timed tokens per contender")
            print("\n".join(roofline_text(out, batch_size, k, limits)))
    if not rows:
        raise Skipped("; ".join(missing))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, help="training tokens per model (default: a quick run, "
                        + ", ".join(f"{m} {n}" for m, n in QUICK_TOKENS.items()) + ")")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--lr", type=float, default=3e-3, help="constant learning rate (default: high, for the quick run)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--corpus", default=str(CORPUS), help="text file or folder (tm.read_corpus)")
    args = parser.parse_args()

    import torch

    import tinymech as tm
    from report import format_table

    torch.set_num_threads(args.threads)
    tm.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    tokens = {m: args.tokens for m in models} if args.tokens else None
    print(f"{args.threads} threads, tinymech kernels {tm._core.kernels.variant()}, torch {torch.__version__}")
    rows = sae_training_rows(tokens, models, args.lr, args.batch_size, args.k, warmup=args.warmup,
                             corpus=args.corpus, verbose=True)
    print(format_table(rows))


if __name__ == "__main__":
    main()
