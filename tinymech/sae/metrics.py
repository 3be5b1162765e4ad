"""How well an SAE reconstructs a model's activations, with SAELens's
definitions (sae_lens/evals.py):

- L0: mean number of active features per token; L1: mean sum of |activations|.
- MSE: mean over tokens of ||x - x̂||² (summed over the hook's width).
- Explained variance: 1 - E||x - x̂||² / (E||x||² - ||E x||²), sums in float64.
- CE loss with the model clean, with the SAE spliced in, and with the hook
  zero-ablated; CE loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean);
  delta LM loss = CE_sae - CE_clean.
- Feature density: the fraction of tokens on which each feature fires; dead
  features never fire, dense ones fire on more than `dense_threshold`.

Tokens listed in ignore_tokens (e.g. BOS) are left out: the SAE leaves their
positions untouched, and they count in no metric (the CE loss predicted *from*
them is dropped, as in SAELens); the zero ablation zeroes them too, as SAELens's. By default these are
the tokens the SAE was trained without (its config's exclude_special_tokens:
a list of ids, or true for the model's BOS and EOS).
x is the activation the SAE reads, x̂ its reconstruction; for a transcoder x
is the clean activation at its output hook.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .. import hooks as _hooks
from ..errors import InvalidInputError, SAEInputError, array_of, check_model, real_number, whole_number
from .architectures import ARCHITECTURES
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
    fired: np.ndarray = None  # [d_sae] int64, set in __post_init__
    ce: dict = dataclasses.field(default_factory=lambda: {"clean": [0.0, 0], "sae": [0.0, 0], "zero": [0.0, 0]})

    def __post_init__(self):
        if self.fired is None:
            self.fired = np.zeros(self.d_sae, np.int64)

    def add(self, indices: np.ndarray, values: np.ndarray, target: np.ndarray, recon: np.ndarray) -> None:
        """Rows of one chunk: their active features (flat over the rows), the target and its reconstruction."""
        target = target.astype(np.float64)
        self.rows += len(target)
        self.l0 += len(indices)
        self.l1 += float(np.abs(values.astype(np.float64)).sum())  # AbsTopK's values may be negative
        self.fired += np.bincount(indices, minlength=self.d_sae)
        self.sq_resid += float(((target - recon) ** 2).sum())
        self.sq_norm += float((target**2).sum())
        self.sum_x = target.sum(0) + (0 if self.sum_x is None else self.sum_x)

    def reconstruction(self, dense_threshold: float, rows_per_token: int = 1) -> "ReconstructionMetrics":
        n = max(self.rows, 1)
        variance = self.sq_norm / n - float(((self.sum_x / n) ** 2).sum()) if self.rows else 0.0
        mse = self.sq_resid / n
        explained = (1.0 if mse < 1e-10 else 0.0) if variance < 1e-10 else 1.0 - mse / variance
        density = (self.fired / n).astype(np.float32)
        return ReconstructionMetrics(n_tokens=self.rows // rows_per_token, l0=self.l0 / n, l1=self.l1 / n, mse=mse,
                                     explained_variance=explained, dead_features=int((self.fired == 0).sum()),
                                     dense_features=int((density > dense_threshold).sum()), feature_density=density)

    def add_ce(self, which: str, losses: np.ndarray, mask: np.ndarray):
        self.ce[which][0] += float(losses[mask].astype(np.float64).sum())
        self.ce[which][1] += int(mask.sum())

    def ce_mean(self, which: str) -> float:
        total, n = self.ce[which]
        return total / n if n else float("nan")


def _add_splice_record(sums: _Sums, splice, keep_rows: np.ndarray, d_out: int):
    last = splice.last()
    offsets, indices, values = last["codes"]
    kept = keep_rows[np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))]
    error = last["error"].reshape(-1, d_out)[keep_rows].astype(np.float64)
    recon = last["output"].reshape(-1, d_out)[keep_rows]  # output = x̂ where the SAE ran
    sums.add(indices[kept], values[kept], error + recon, recon)


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
                prepend_bos: bool | None = None) -> SAEMetrics:
    """Reconstruction and downstream-loss metrics of `sae` on `model` over tokens
    [batch, pos] (or texts), run batch_size sequences at a time. ignore_tokens:
    token ids to leave out (None: those the SAE's config excludes)."""
    check_model(model, hint=" (tm.sae_metrics(model, sae, tokens))")
    _check_sae(sae)
    check_hooks(model, sae.cfg)
    batch_size = whole_number(batch_size, "batch_size", 1)
    dense_threshold = _threshold(dense_threshold)
    ignore_tokens = _default_ignored(model, sae) if ignore_tokens is None else _token_ids(ignore_tokens, model)
    tokens = model.tokens_of(tokens, prepend_bos=prepend_bos, same_length=True)
    out_hook = sae.cfg.output_hook
    rows_per_token = hook_widths(model.cfg, out_hook)[0] // sae.d_out
    sums = _Sums(sae.d_sae)
    first = min(_block_of(sae.cfg.hook_name), _block_of(out_hook))
    ignored = np.asarray(ignore_tokens, dtype=np.int64)
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size]
        keep = ~np.isin(batch, ignored)
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

        # every position, ignored ones too, as SAELens's zero ablation (only the losses are masked)
        sums.add_ce("zero", model.run_with_hooks(**edited, fwd_hooks=[(out_hook, _hooks.zero_ablate())],
                                                 return_type="loss", loss_per_token=True), ce_mask)

    rec = sums.reconstruction(dense_threshold, rows_per_token)
    clean, spliced, zero = sums.ce_mean("clean"), sums.ce_mean("sae"), sums.ce_mean("zero")
    return SAEMetrics(
        n_tokens=rec.n_tokens, l0=rec.l0, l1=rec.l1, mse=rec.mse, explained_variance=rec.explained_variance,
        ce_clean=clean,
        ce_sae=spliced,
        ce_zero_ablation=zero,
        ce_loss_recovered=(zero - spliced) / (zero - clean) if zero != clean else float("nan"),
        delta_lm_loss=spliced - clean,
        dead_features=rec.dead_features, dense_features=rec.dense_features, feature_density=rec.feature_density,
    )


def _check_sae(sae) -> None:
    if not (hasattr(sae, "cfg") and hasattr(sae, "_core") and hasattr(sae, "d_sae")):
        raise InvalidInputError(f"sae must be a tm.SAE (tm.SAE.load(...)), not {type(sae).__name__}")


def _token_ids(ids, model) -> tuple[int, ...]:
    """ignore_tokens as token ids of the model's vocabulary (1.5 would leave no token out, silently)."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__") or getattr(ids, "ndim", 1) != 1:
        raise InvalidInputError(f"ignore_tokens must be a list of token ids (e.g. [model.tokenizer.bos_token_id]), "
                                f"not {ids!r}")
    return tuple(whole_number(t, "each of ignore_tokens (a token id)", 0, maximum=model.cfg.d_vocab - 1)
                 for t in ids)


def _threshold(value) -> float:
    """dense_threshold: a fraction of the tokens."""
    value = real_number(value, "dense_threshold")
    if not 0 <= value <= 1:  # NaN too: no feature would be dense, silently
        raise InvalidInputError(f"dense_threshold must be a fraction of the tokens, in [0, 1], not {value}")
    return value


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
    _check_sae(sae)
    x = _rows_of(x, sae.d_in, "x")
    y = None if y is None else _rows_of(y, sae.d_out, "y")
    if y is not None and len(y) != len(x):
        raise SAEInputError(f"y has {len(y)} rows but x {len(x)}: a target per row")
    return reconstruction_metrics_over(sae, lambda a, b: (x[a:b], None if y is None else y[a:b]), len(x), chunk,
                                       dense_threshold)


def _rows_of(a, width: int, what: str) -> np.ndarray:
    """Rows [n, width] of numbers (SAEInputError otherwise)."""
    a = array_of(a, what, SAEInputError)
    if a.ndim != 2 or a.shape[1] != width or a.dtype.kind not in "iuf":
        raise SAEInputError(f"{what} must be rows [n, {width}] of numbers, not shape {list(a.shape)} of {a.dtype}")
    return a


def reconstruction_metrics_over(sae, read, n: int, chunk: int = 4096,
                                dense_threshold: float = 0.1) -> ReconstructionMetrics:
    """reconstruction_metrics over n rows that read(start, stop) -> (x, y or None) gives a chunk at a
    time (rows of an activation store, never all in memory at once)."""
    chunk = whole_number(chunk, "chunk", 1)  # -1 would measure no row, and say so only by n_tokens=0
    dense_threshold = _threshold(dense_threshold)
    if ARCHITECTURES[sae.cfg.architecture].sequential:
        raise SAEInputError("a temporal SAE reads whole sequences, not rows of activations: measure it on a "
                            "model's runs (tm.sae_metrics)")
    sums = _Sums(sae.d_sae)
    for start in range(0, n, chunk):
        xs, ys = read(start, min(start + chunk, n))
        xs = np.ascontiguousarray(xs, dtype=np.float32)
        _, indices, values = sae._core.encode_sparse(xs)  # CSR
        sums.add(indices, values, xs if ys is None else ys, sae.forward(xs))
    return sums.reconstruction(dense_threshold)
