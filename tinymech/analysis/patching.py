"""Activation patching: run one input while replacing one activation (a layer's
residual at one position, one head's output, ...) by its value in another
run, and measure the output with a metric. Each patch is a tm.patch
intervention applied by the core; the source run is captured once."""
from __future__ import annotations

import csv
import dataclasses
from typing import Callable

import numpy as np

from ..hooks import patch
from ..errors import AnalysisError
from ..progress import ProgressFn, progress_function
from ..text import format_grid
from .tokens import token_ids
from ..text import token_labels

# activation -> (hook name within a block, the axes one patch is indexed by)
ACTIVATIONS = {
    "resid_pre": ("hook_resid_pre", ("layer", "pos")),
    "resid_mid": ("hook_resid_mid", ("layer", "pos")),
    "attn_out": ("hook_attn_out", ("layer", "pos")),
    "attn_out_all_pos": ("hook_attn_out", ("layer",)),
    "mlp_out": ("hook_mlp_out", ("layer", "pos")),
    "mlp_out_all_pos": ("hook_mlp_out", ("layer",)),
    "head_z": ("attn.hook_z", ("layer", "head")),
    "head_z_by_pos": ("attn.hook_z", ("layer", "head", "pos")),
}
MODES = ("denoise", "noise")


@dataclasses.dataclass(frozen=True, eq=False)
class PatchingResult:
    """values: the metric after each patch, one axis per name in `axes`
    ([layer, pos], [layer, head], [layer, head, pos] or [layer]), ready for a heatmap.
    clean / corrupted: the metric on the unpatched clean / corrupted runs.
    mode: "denoise" (clean activations patched into the corrupted run) or
    "noise" (corrupted activations patched into the clean run).
    pos_labels: the clean input's tokens (of its first sequence), when there is a pos axis."""

    values: np.ndarray
    axes: tuple[str, ...]
    activation: str
    mode: str
    clean: float
    corrupted: float
    pos_labels: list[str] | None = None

    @property
    def normalized(self) -> np.ndarray:
        """(values - corrupted) / (clean - corrupted): 1 where the patched run
        scores like the clean run, 0 where it scores like the corrupted one."""
        gap = self.clean - self.corrupted
        if gap == 0:
            raise AnalysisError("the clean and corrupted runs score the same: nothing to normalize by")
        return (self.values - self.corrupted) / gap

    def labelled_grid(self) -> tuple[np.ndarray, list[str], list[str], str]:
        """(grid, row labels, column labels, title): the normalized values as
        2-D rows (layers, or layer-heads for per-position head patching), or the
        raw metric when clean and corrupted score the same."""
        title = (f"Patching {self.activation} ({self.mode}), normalized: 1 = clean {self.clean:+.4f}, "
                 f"0 = corrupted {self.corrupted:+.4f}")
        try:
            grid = self.normalized
        except AnalysisError:
            grid, title = self.values, f"Patching {self.activation} ({self.mode}), metric (clean = corrupted)"
        n_layers = grid.shape[0]
        if self.axes == ("layer",):
            return grid[:, None], [f"L{l}" for l in range(n_layers)], ["value"], title
        if self.axes == ("layer", "head", "pos"):
            rows = [f"L{l}H{h}" for l in range(n_layers) for h in range(grid.shape[1])]
            return grid.reshape(len(rows), -1), rows, self._pos_columns(grid.shape[-1]), title
        if self.axes[1] == "head":
            columns = [f"H{h}" for h in range(grid.shape[1])]
        else:
            columns = self._pos_columns(grid.shape[1])
        return grid, [f"L{l}" for l in range(n_layers)], columns, title

    def __str__(self):
        grid, rows, columns, title = self.labelled_grid()
        return format_grid(grid, rows, columns, title)

    def heatmap(self) -> str:
        """The grid as shaded cells for a terminal, on a scale diverging from 0
        (normalized: the corrupted run's score): 0 is blank, values above are
        blocks and values below dashes, denser the farther from 0."""
        from ..text import heatmap

        grid, rows, columns, title = self.labelled_grid()
        return heatmap(grid, rows, columns, title, diverging=True)

    def save(self, path) -> None:
        """Write the result: a .csv of the labelled grid (normalized, as printed),
        or a .npz of the raw values with axes, activation, mode, clean and corrupted."""
        path = str(path)
        if path.endswith(".npz"):
            np.savez(path, values=self.values, axes=np.array(self.axes), activation=self.activation,
                     mode=self.mode, clean=self.clean, corrupted=self.corrupted,
                     pos_labels=np.array(self.pos_labels or [], dtype=str))
        elif path.endswith(".csv"):
            grid, rows, columns, _ = self.labelled_grid()
            with open(path, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f)
                writer.writerow([""] + columns)
                writer.writerows([row] + [repr(float(v)) for v in values] for row, values in zip(rows, grid))
        else:
            raise AnalysisError(f"save writes a .csv or a .npz file, not {path!r}")

    def _pos_columns(self, n: int) -> list[str]:
        if not self.pos_labels:
            return [str(p) for p in range(n)]
        return [f"{p}:{label}" for p, label in enumerate(self.pos_labels)]


def logit_diff_metric(model, answers, n_sequences: int | None = None) -> Callable[[np.ndarray], float]:
    """A metric logits [batch, pos, d_vocab] -> mean over the batch of
    logit(correct) - logit(incorrect) at the last position.
    answers: one (correct, incorrect) pair, or one pair per sequence; tokens as
    single-token strings or ids."""
    pairs = np.asarray(answers, dtype=object)
    if pairs.ndim == 1:
        pairs = pairs[None]
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise AnalysisError("answers are (correct, incorrect) token pairs: one pair, or one per sequence")
    good, bad = token_ids(model, pairs[:, 0]), token_ids(model, pairs[:, 1])
    if n_sequences is not None and len(good) not in (1, n_sequences):
        raise AnalysisError(f"give one answer pair or one per sequence ({n_sequences}), not {len(good)}")

    def metric(logits: np.ndarray) -> float:
        last = np.asarray(logits)[:, -1]
        rows = np.arange(last.shape[0])
        return float(np.mean(last[rows, good] - last[rows, bad]))

    metric.last_position_only = True
    return metric


def patch_activations(model, clean, corrupted, activation: str, metric=None, answers=None, mode: str = "denoise",
                      prepend_bos: bool = True, progress: bool | ProgressFn | None = None) -> PatchingResult:
    """Patch every index of one activation kind (see ACTIVATIONS) in turn.

    clean, corrupted: texts or token ids of the same shape [batch, pos].
    metric: logits [batch, pos, d_vocab] -> float; by default the logit
        difference of `answers` (see logit_diff_metric). A metric with the
        attribute last_position_only = True is given the last position's
        logits only, [batch, 1, d_vocab], in the patched runs.
    mode: "denoise" runs the corrupted input with clean activations patched in;
        "noise" runs the clean input with corrupted activations patched in.
    progress: True for a progress line on stderr, or a function called as
        progress(done, total) after each forward pass (one pass carries several
        patches side by side when the input is short).
    """
    progress = progress_function(progress)
    if activation not in ACTIVATIONS:
        raise AnalysisError(f"activation must be one of {list(ACTIVATIONS)}, not {activation!r}")
    if mode not in MODES:
        raise AnalysisError(f"mode must be one of {MODES}, not {mode!r}")
    clean_tokens = model.tokens_of(clean, prepend_bos=prepend_bos)
    corrupted_tokens = model.tokens_of(corrupted, prepend_bos=prepend_bos)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise AnalysisError(
            f"clean {list(clean_tokens.shape)} and corrupted {list(corrupted_tokens.shape)} inputs must have "
            "the same shape, so that positions correspond"
        )
    if metric is None:
        if answers is None:
            raise AnalysisError("give a metric, or answers (correct, incorrect) for the logit difference")
        metric = logit_diff_metric(model, answers, clean_tokens.shape[0])
    suffix, axes = ACTIVATIONS[activation]
    names = [f"blocks.{layer}.{suffix}" for layer in range(model.cfg.n_layers)]
    source, target = (clean_tokens, corrupted_tokens) if mode == "denoise" else (corrupted_tokens, clean_tokens)

    source_logits, source_acts = model.run_with_cache(source, names_filter=names)
    source_score = float(metric(source_logits))
    # A patch in block l leaves blocks 0..l-1 as in the target's own run: each
    # patched run starts at block l from the target's residual there.
    starts = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]
    target_logits, target_acts = model.run_with_cache(target, names_filter=names + starts)
    target_score = float(metric(target_logits))
    extent = {"layer": model.cfg.n_layers, "head": model.cfg.n_heads, "pos": target.shape[1]}
    values = np.zeros([extent[a] for a in axes])
    last_only = bool(getattr(metric, "last_position_only", False))
    # hooks of an enclosing model.hooks(...) may expect the input's batch size
    logits_per_patch = target.shape[0] * (1 if last_only else target.shape[1]) * model.cfg.d_vocab
    group = 1 if model.context_hooks else _patches_per_run(target.size, logits_per_patch)
    done = 0
    for layer, (name, start) in enumerate(zip(names, starts)):
        indices = [i for i in np.ndindex(values.shape) if i[0] == layer]
        for first in range(0, len(indices), group):
            chunk = indices[first : first + group]
            patched = _patched_activations(target_acts[name], source_acts[name], [dict(zip(axes, i)) for i in chunk])
            resid = np.concatenate([target_acts[start]] * len(chunk))
            logits = model.forward(resid, logits="last" if last_only else "all", hooks=[(name, patch(patched))],
                                   start_at_layer=layer)
            for index, own in zip(chunk, np.split(logits, len(chunk))):  # copy j of the batch carries patch j
                values[index] = metric(own[:, None] if last_only else own)
            done += len(chunk)
            if progress is not None:
                progress(done, values.size)
    clean_score, corrupted_score = (source_score, target_score) if mode == "denoise" else (target_score, source_score)
    return PatchingResult(
        values=values,
        axes=axes,
        activation=activation,
        mode=mode,
        clean=clean_score,
        corrupted=corrupted_score,
        pos_labels=token_labels(model, clean_tokens[0]) if "pos" in axes else None,
    )


# Patched runs share one forward until it has this many rows (short prompts
# then read the weights once for many patches) or its logits this many floats.
_ROWS_PER_RUN = 256
_LOGITS_PER_RUN = 1 << 24


def _patches_per_run(rows: int, logits_per_patch: int) -> int:
    """How many patched copies of the input (rows tokens each) one forward carries."""
    return max(1, min(_ROWS_PER_RUN // rows, _LOGITS_PER_RUN // logits_per_patch))


def _patched_activations(target, source, patches) -> np.ndarray:
    """[len(patches) * batch, ...]: the target's activation, with patch j's
    slice (its pos and head, or all of it) from the source in copy j."""
    out = np.repeat(np.asarray(target)[None], len(patches), axis=0)
    for j, at in enumerate(patches):
        index = (slice(None), at.get("pos", slice(None))) + ((at["head"],) if "head" in at else ())
        out[j][index] = source[index]
    return out.reshape((-1,) + out.shape[2:])


def patch_resid_pre(model, clean, corrupted, metric=None, answers=None, mode="denoise", **kw) -> PatchingResult:
    """The residual stream before each layer, at each position: values [layer, pos]."""
    return patch_activations(model, clean, corrupted, "resid_pre", metric, answers, mode, **kw)


def patch_attn_out(model, clean, corrupted, metric=None, answers=None, mode="denoise", by_position=True,
                   **kw) -> PatchingResult:
    """Each layer's attention output: values [layer, pos], or [layer] (all positions at once)."""
    activation = "attn_out" if by_position else "attn_out_all_pos"
    return patch_activations(model, clean, corrupted, activation, metric, answers, mode, **kw)


def patch_mlp_out(model, clean, corrupted, metric=None, answers=None, mode="denoise", by_position=True,
                  **kw) -> PatchingResult:
    """Each layer's MLP output: values [layer, pos], or [layer] (all positions at once)."""
    activation = "mlp_out" if by_position else "mlp_out_all_pos"
    return patch_activations(model, clean, corrupted, activation, metric, answers, mode, **kw)


def patch_head_z(model, clean, corrupted, metric=None, answers=None, mode="denoise", **kw) -> PatchingResult:
    """Each head's output (its hook_z) at every position at once: values [layer, head]."""
    return patch_activations(model, clean, corrupted, "head_z", metric, answers, mode, **kw)


def patch_head_z_by_pos(model, clean, corrupted, metric=None, answers=None, mode="denoise", **kw) -> PatchingResult:
    """Each head's output (its hook_z) at each position: values [layer, head, pos]."""
    return patch_activations(model, clean, corrupted, "head_z_by_pos", metric, answers, mode, **kw)
