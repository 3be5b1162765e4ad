"""How well an SAE reconstructs a model's activations, with SAELens's
definitions (sae_lens/evals.py):

- L0: mean number of active features per token; L1: mean sum of activations.
- MSE: mean over tokens of ||x - x̂||² (summed over the hook's width).
- Explained variance: 1 - E||x - x̂||² / (E||x||² - ||E x||²), sums in float64.
- CE loss with the model clean, with the SAE spliced in, and with the hook
  zero-ablated; CE loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean);
  delta LM loss = CE_sae - CE_clean.
- Feature density: the fraction of tokens on which each feature fires; dead
  features never fire, dense ones fire on more than `dense_threshold`.

Tokens listed in ignore_tokens (e.g. BOS) are left out: the SAE and the zero
ablation leave their positions untouched, and they count in no metric (the
CE loss predicted *from* them is dropped, as in SAELens). By default these are
the tokens the SAE was trained without (its config's exclude_special_tokens:
a list of ids, or true for the model's BOS and EOS).
x is the activation the SAE reads, x̂ its reconstruction; for a transcoder x
is the clean activation at its output hook.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .. import hooks as _hooks
from .splice import check_hooks, hook_widths


@dataclasses.dataclass(frozen=True)
class SAEMetrics:
    n_tokens: int
    l0: float
    l1: float
    mse: float
    explained_variance: float
    ce_clean: float
    ce_sae: float
    ce_zero_ablation: float
    ce_loss_recovered: float
    delta_lm_loss: float
    dead_features: int
    dense_features: int
    feature_density: np.ndarray  # [d_sae]

    def as_dict(self) -> dict:
        """The scalar metrics (feature_density left out)."""
        return _scalars(self)


def _scalars(metrics) -> dict:
    return {f.name: getattr(metrics, f.name) for f in dataclasses.fields(metrics) if f.name != "feature_density"}


@dataclasses.dataclass
class _Sums:
    d_sae: int
    rows: int = 0
    l0: float = 0.0
    l1: float = 0.0
    sq_resid: float = 0.0
    sq_norm: float = 0.0
    sum_x: np.ndarray | None = None
    fired: np.ndarray | None = None
    ce: dict = dataclasses.field(default_factory=lambda: {"clean": [0.0, 0], "sae": [0.0, 0], "zero": [0.0, 0]})

    def add_ce(self, which: str, losses: np.ndarray, mask: np.ndarray):
        self.ce[which][0] += float(losses[mask].astype(np.float64).sum())
        self.ce[which][1] += int(mask.sum())

    def ce_mean(self, which: str) -> float:
        total, n = self.ce[which]
        return total / n if n else float("nan")


def _add_splice_record(sums: _Sums, splice, keep_rows: np.ndarray, d_out: int):
    last = splice.last()
    offsets, indices, values = last["codes"]
    counts = np.diff(offsets)
    row_of = np.repeat(np.arange(len(counts)), counts)
    kept = keep_rows[row_of]
    sums.rows += int(keep_rows.sum())
    sums.l0 += float(counts[keep_rows].sum())
    sums.l1 += float(values[kept].astype(np.float64).sum())
    sums.fired += np.bincount(indices[kept], minlength=sums.d_sae)
    error = last["error"].reshape(-1, d_out)[keep_rows].astype(np.float64)
    x = error + last["output"].reshape(-1, d_out)[keep_rows]  # output = x̂ where the SAE ran
    sums.sq_resid += float((error**2).sum())
    sums.sq_norm += float((x**2).sum())
    sums.sum_x = x.sum(0) + (0 if sums.sum_x is None else sums.sum_x)


def _block_of(hook_name: str) -> int:
    """The block a hook point lies in; 0 for the embeddings' and ln_final's."""
    try:
        return _hooks.HookPoint(hook_name).layer()
    except _hooks.HookError:
        return 0


def _default_ignored(model, sae) -> tuple[int, ...]:
    excluded = sae.cfg.metadata.get("exclude_special_tokens")
    if excluded is True:
        return tuple(t for t in (model.cfg.bos_token_id, model.cfg.eos_token_id) if t is not None)
    if isinstance(excluded, (list, tuple)):
        return tuple(int(t) for t in excluded)
    return ()


def sae_metrics(model, sae, tokens, batch_size: int = 8, ignore_tokens=None, dense_threshold: float = 0.1,
                prepend_bos: bool = True) -> SAEMetrics:
    """Reconstruction and downstream-loss metrics of `sae` on `model` over tokens
    [batch, pos] (or texts), run batch_size sequences at a time. ignore_tokens:
    token ids to leave out (None: those the SAE's config excludes)."""
    check_hooks(model, sae.cfg)
    if ignore_tokens is None:
        ignore_tokens = _default_ignored(model, sae)
    tokens = model.tokens_of(tokens, prepend_bos=prepend_bos)
    out_hook = sae.cfg.output_hook
    rows_per_token = hook_widths(model.cfg, out_hook)[0] // sae.d_out
    sums = _Sums(sae.d_sae, fired=np.zeros(sae.d_sae, np.int64))
    first = min(_block_of(sae.cfg.hook_name), _block_of(out_hook))
    for start in range(0, tokens.shape[0], max(1, int(batch_size))):
        batch = tokens[start : start + batch_size]
        keep = ~np.isin(batch, np.asarray(list(ignore_tokens), dtype=np.int64))
        keep_rows = np.repeat(keep.reshape(-1), rows_per_token)
        ce_mask = keep[:, :-1]
        # the three runs differ from block `first` on: the edited runs start there from the clean residual
        if first > 0:
            clean, cache = model.run_with_cache(batch, names_filter=f"blocks.{first}.hook_resid_pre",
                                                return_type="loss", loss_per_token=True)
            edited = dict(input=cache[f"blocks.{first}.hook_resid_pre"], start_at_layer=first, tokens=batch)
        else:
            clean, edited = model(batch, return_type="loss", loss_per_token=True), dict(input=batch)
        sums.add_ce("clean", clean, ce_mask)

        name, splice = sae.as_hook(keep_error=False)
        splice.set_recording(True, False)
        splice.set_bypass((~keep_rows).astype(np.uint8))
        sums.add_ce("sae", model.run_with_hooks(**edited, fwd_hooks=[(name, splice)], return_type="loss",
                                                loss_per_token=True), ce_mask)
        _add_splice_record(sums, splice, keep_rows, sae.d_out)

        if keep.all():
            ablate = _hooks.zero_ablate()
        else:
            def ablate(act, hook, ignored=~keep):  # zero where the SAE ran, as the splice would
                return act * ignored.reshape(ignored.shape + (1,) * (act.ndim - 2))
        sums.add_ce("zero", model.run_with_hooks(**edited, fwd_hooks=[(out_hook, ablate)], return_type="loss",
                                                 loss_per_token=True), ce_mask)

    n = max(sums.rows, 1)
    variance = sums.sq_norm / n - float(((sums.sum_x / n) ** 2).sum()) if sums.rows else 0.0
    mse = sums.sq_resid / n
    explained = (1.0 if mse < 1e-10 else 0.0) if variance < 1e-10 else 1.0 - mse / variance
    clean, spliced, zero = sums.ce_mean("clean"), sums.ce_mean("sae"), sums.ce_mean("zero")
    density = (sums.fired / n).astype(np.float32)
    return SAEMetrics(
        n_tokens=sums.rows // rows_per_token,
        l0=sums.l0 / n,
        l1=sums.l1 / n,
        mse=mse,
        explained_variance=explained,
        ce_clean=clean,
        ce_sae=spliced,
        ce_zero_ablation=zero,
        ce_loss_recovered=(zero - spliced) / (zero - clean) if zero != clean else float("nan"),
        delta_lm_loss=spliced - clean,
        dead_features=int((sums.fired == 0).sum()),
        dense_features=int((density > dense_threshold).sum()),
        feature_density=density,
    )


@dataclasses.dataclass(frozen=True)
class ReconstructionMetrics:
    """An SAE's reconstruction of stored activations (no model run): SAELens's definitions."""

    n_tokens: int
    l0: float
    l1: float
    mse: float
    explained_variance: float
    dead_features: int
    dense_features: int
    feature_density: np.ndarray  # [d_sae]

    def as_dict(self) -> dict:
        """The scalar metrics (feature_density left out)."""
        return _scalars(self)


def reconstruction_metrics(sae, x, y=None, chunk: int = 4096, dense_threshold: float = 0.1) -> ReconstructionMetrics:
    """L0, L1, MSE, explained variance and feature densities of `sae` on rows x [n, d_in]
    (the target is y [n, d_out] for a transcoder, else x), chunk rows at a time."""
    x = np.asarray(x)
    y = None if y is None else np.asarray(y)
    return reconstruction_metrics_over(sae, lambda a, b: (x[a:b], None if y is None else y[a:b]), len(x), chunk,
                                       dense_threshold)


def reconstruction_metrics_over(sae, read, n: int, chunk: int = 4096,
                                dense_threshold: float = 0.1) -> ReconstructionMetrics:
    """reconstruction_metrics over n rows that read(start, stop) -> (x, y or None) gives a chunk at a
    time (rows of an activation store, never all in memory at once)."""
    fired = np.zeros(sae.d_sae, np.int64)
    l0 = l1 = sq_resid = sq_norm = 0.0
    sum_y = np.zeros(sae.d_out, np.float64)
    for start in range(0, n, chunk):
        xs, ys = read(start, min(start + chunk, n))
        xs = np.ascontiguousarray(xs, dtype=np.float32)
        ys = (xs if ys is None else ys).astype(np.float64)
        _, indices, values = sae._core.encode_sparse(xs)  # CSR
        l0 += len(indices)
        l1 += float(values.astype(np.float64).sum())
        fired += np.bincount(indices, minlength=sae.d_sae)
        sq_resid += float(((ys - sae.forward(xs)) ** 2).sum())
        sq_norm += float((ys**2).sum())
        sum_y += ys.sum(0)
    m = max(n, 1)
    variance = sq_norm / m - float(((sum_y / m) ** 2).sum())
    mse = sq_resid / m
    explained = (1.0 if mse < 1e-10 else 0.0) if variance < 1e-10 else 1.0 - mse / variance
    density = (fired / m).astype(np.float32)
    return ReconstructionMetrics(n_tokens=n, l0=l0 / m, l1=l1 / m, mse=mse, explained_variance=explained,
                                 dead_features=int((fired == 0).sum()),
                                 dense_features=int((density > dense_threshold).sum()), feature_density=density)
