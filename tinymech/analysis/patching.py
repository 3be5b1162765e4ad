"""Activation patching: run one input while replacing one activation (a layer's
residual at one position, one head's output, ...) by its value in another
run, and measure the output with a metric. Each patch is a tm.patch
intervention applied by the core; the source run is captured once."""
from __future__ import annotations

import csv
import dataclasses
import itertools
from pathlib import Path
from typing import Callable

import numpy as np

from ..hooks import patch
from ..errors import AnalysisError, InvalidInputError, TinymechError
from ..gradients import _one_number
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
    pos_labels: the clean input's tokens (of its first sequence), when there is a pos axis.
    method: "activation" (patched runs) or "attribution" (their first-order estimate,
    attribution_patching.py, which also has [layer, neuron] and [layer, pos, neuron] kinds)."""

    values: np.ndarray
    axes: tuple[str, ...]
    activation: str
    mode: str
    clean: float
    corrupted: float
    pos_labels: list[str] | None = None
    method: str = "activation"

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
        name = "Attribution patching" if self.method == "attribution" else "Patching"
        title = (f"{name} {self.activation} ({self.mode}), normalized: 1 = clean {self.clean:+.4f}, "
                 f"0 = corrupted {self.corrupted:+.4f}")
        try:
            grid = self.normalized
        except AnalysisError:
            grid, title = self.values, f"{name} {self.activation} ({self.mode}), metric (clean = corrupted)"
        n_layers = grid.shape[0]
        if self.axes == ("layer",):
            return grid[:, None], [f"L{l}" for l in range(n_layers)], ["value"], title
        if self.axes[-1] == "neuron":  # [layer, (pos,) neuron]: a row per layer (and position)
            columns = [f"N{n}" for n in range(grid.shape[-1])]
            if len(self.axes) == 2:
                return grid, [f"L{l}" for l in range(n_layers)], columns, title
            rows = [f"L{l} {p}" for l in range(n_layers) for p in self._pos_columns(grid.shape[1])]
            return grid.reshape(len(rows), -1), rows, columns, title
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
        or a .npz of the raw values with axes, activation, mode, clean and corrupted.
        Missing folders on the way are made (as SAE.save makes its folder); a file that
        cannot be written raises AnalysisError naming it."""
        path = str(path)
        if path.endswith(".npz"):
            def write():
                np.savez(path, values=self.values, axes=np.array(self.axes), activation=self.activation,
                         mode=self.mode, clean=self.clean, corrupted=self.corrupted, method=self.method,
                         pos_labels=np.array(self.pos_labels or [], dtype=str))
        elif path.endswith(".csv"):
            grid, rows, columns, _ = self.labelled_grid()

            def write():
                with open(path, "w", encoding="utf-8", newline="") as f:
                    writer = csv.writer(f)
                    writer.writerow([""] + columns)
                    writer.writerows([row] + [repr(float(v)) for v in values] for row, values in zip(rows, grid))
        else:
            raise AnalysisError(f"save writes a .csv or a .npz file, not {path!r}")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write()
        except FileExistsError as e:  # mkdir's word for a file where a folder goes
            raise AnalysisError(f"cannot write {path!r}: {e.filename} is a file, not a folder") from e
        except (OSError, ValueError) as e:  # ValueError: a NUL in the name
            where = f" ({e.filename})" if getattr(e, "filename", None) not in (None, path) else ""
            raise AnalysisError(f"cannot write {path!r}: {getattr(e, 'strerror', None) or e}{where}") from e

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

    def value_and_grad(logits: np.ndarray) -> tuple[float, np.ndarray]:
        """(metric, d metric / d logits): what attribution patching differentiates."""
        grad = np.zeros(np.shape(logits), dtype=np.float32)
        rows, n = np.arange(grad.shape[0]), grad.shape[0]
        np.add.at(grad[:, -1], (rows, np.broadcast_to(good, n)), 1.0 / n)
        np.add.at(grad[:, -1], (rows, np.broadcast_to(bad, n)), -1.0 / n)
        return metric(logits), grad

    metric.last_position_only = True
    metric.value_and_grad = value_and_grad
    return metric


def checked_pair(model, clean, corrupted, kind, kinds, what: str, mode, prepend_bos: bool | None):
    """(clean tokens, corrupted tokens, prepend_bos): the inputs as token ids of one shape, after
    checking `kind` (a key of `kinds`, named `what`) and `mode`, and the prepend_bos every run of
    them takes: what activation and attribution patching both need before they run anything."""
    if not isinstance(kind, str) or kind not in kinds:
        raise AnalysisError(f"{what} must be one of {list(kinds)}, not {kind!r}")
    if not isinstance(mode, str) or mode not in MODES:
        raise AnalysisError(f"mode must be one of {MODES}, not {mode!r}")
    prepend_bos = model._bos(prepend_bos)  # None: the model's default, read once for every run
    clean_tokens = model.tokens_of(clean, prepend_bos=prepend_bos, same_length=True)
    corrupted_tokens = model.tokens_of(corrupted, prepend_bos=prepend_bos, same_length=True)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise AnalysisError(
            f"clean {list(clean_tokens.shape)} and corrupted {list(corrupted_tokens.shape)} inputs must have "
            "the same shape, so that positions correspond"
        )
    return clean_tokens, corrupted_tokens, prepend_bos


def patch_activations(model, clean, corrupted, activation: str, metric=None, answers=None, mode: str = "denoise",
                      prepend_bos: bool | None = None, progress: bool | ProgressFn | None = None) -> PatchingResult:
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
    clean_tokens, corrupted_tokens, bos = checked_pair(model, clean, corrupted, activation, ACTIVATIONS,
                                                       "activation", mode, prepend_bos)
    if metric is None:
        if answers is None:
            raise AnalysisError("give a metric, or answers (correct, incorrect) for the logit difference")
        metric = logit_diff_metric(model, answers, clean_tokens.shape[0])
    require_function(metric, "a metric")
    suffix, axes = ACTIVATIONS[activation]
    source, target = (clean_tokens, corrupted_tokens) if mode == "denoise" else (corrupted_tokens, clean_tokens)
    names = [f"blocks.{layer}.{suffix}" for layer in range(model.cfg.n_layers)]
    source_logits, source_acts = model.run_with_cache(source, names_filter=names, prepend_bos=bos)
    source_score = score(metric, source_logits)
    extents = axis_extents(model, target.shape[1], suffix)
    shape = [extents[axis] for axis in axes]
    values, target_score = run_patches(model, target, source_acts, lambda layer: names[layer],
                                       list(np.ndindex(*shape)), slice_setter(layout(suffix), axes), metric,
                                       progress, prepend_bos=bos)
    values = values.reshape(shape)
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


# Where a patch's axes lie in an activation [batch, ...]: attention patterns and
# scores are [batch, head, dest_pos, src_pos]; q, k, v, z, result [batch, pos, head, ...];
# the others [batch, pos, ...].
_PATTERN_LAYOUT = ("head", "dest_pos", "src_pos")
_HEAD_LAYOUT = ("pos", "head")


def layout(hook_name: str) -> tuple[str, ...]:
    """The axes after the batch in this hook point's activation, as patches name them."""
    if hook_name.endswith(("hook_pattern", "hook_attn_scores")):
        return _PATTERN_LAYOUT
    if hook_name.endswith(("hook_q", "hook_k", "hook_v", "hook_z", "hook_result")):
        return _HEAD_LAYOUT
    return ("pos",)


def axis_extents(model, n_pos: int, hook_name: str) -> dict[str, int]:
    """How many indices each patch axis has (TransformerLens's names too: head_index):
    keys and values have the model's key-value heads."""
    heads = model.cfg.n_heads
    if hook_name.endswith(("hook_k", "hook_v")) and model.cfg.n_key_value_heads:
        heads = model.cfg.n_key_value_heads
    return {"layer": model.cfg.n_layers, "pos": n_pos, "dest_pos": n_pos, "src_pos": n_pos,
            "head": heads, "head_index": heads}


def slice_setter(activation_layout: tuple[str, ...], axes: tuple[str, ...]):
    """A patch setter (TransformerLens's signature): setter(activation, index, source)
    copies the source's slice at index (one value per name in axes, the layer first)
    into the activation, whose axes after the batch are activation_layout.
    setter.check_indices(indices, shape) refuses, as the setter would, the first of indices
    that does not fit an activation of this shape after the batch: a sweep checks them all
    before its first forward pass."""

    def check(index, sizes: dict[str, int]) -> None:
        # zip would drop what does not pair up: a short index would patch a whole layer
        if len(index) != len(axes):
            raise AnalysisError(f"this patch setter takes an index ({', '.join(axes)}), not {tuple(index)}: "
                                f"give index_axis_names / index_df columns {list(axes)}")
        for axis, i in zip(axes, index):
            n = sizes.get(axis)
            if n is not None and not -n <= i < n:
                raise AnalysisError(f"index {tuple(index)}: {axis} {i} is outside the activation's "
                                    f"{n} (from {-n} to {n - 1})")

    def setter(activation, index, source):
        check(index, {axis: np.shape(activation)[1 + k] for k, axis in enumerate(activation_layout)})
        at = dict(zip(axes, index))
        where = (slice(None),) + tuple(at.get(axis, slice(None)) for axis in activation_layout)
        activation[where] = source[where]
        return activation

    def check_indices(indices, shape: tuple[int, ...]) -> None:
        rows = np.asarray(indices, dtype=np.int64).reshape(len(indices), -1)
        if len(rows) and rows.shape[1] != len(axes):
            check(tuple(int(i) for i in rows[0]), {})
        sizes = dict(zip(activation_layout, shape))
        outside = np.zeros(len(rows), dtype=bool)
        for k, axis in enumerate(axes):
            if axis in sizes:
                outside |= (rows[:, k] < -sizes[axis]) | (rows[:, k] >= sizes[axis])
        if outside.any():
            check(tuple(int(i) for i in rows[np.argmax(outside)]), sizes)

    setter.check_indices = check_indices
    return setter


def score(metric, logits) -> float:
    """The metric's value on these logits, checked to be one number."""
    return one_number(call_user(metric, "metric function", logits))


def one_number(value) -> float:
    """A metric's value as a float: AnalysisError unless it is one number (as gradients reads one)."""
    try:
        return _one_number(value)
    except InvalidInputError as e:
        raise AnalysisError(f"the metric must return one number, not {str(e).partition(', not ')[2]}") from None


def require_function(fn, what: str, also: str = "") -> None:
    """AnalysisError unless fn can be called (checked before any run)."""
    if not callable(fn):
        raise AnalysisError(f"{what} is a function{also}, not {type(fn).__name__}")


def call_user(fn, what: str, *args):
    """fn(*args), a function of the user's: what it raises becomes an AnalysisError naming it
    (the original kept as __cause__); tinymech's own errors pass as they are."""
    try:
        return fn(*args)
    except TinymechError:
        raise
    except Exception as e:
        raise AnalysisError(f"the {what} {getattr(fn, '__name__', fn)!r} raised {type(e).__name__}: {e}") from e


def hooks_read_the_batch(model) -> bool:
    """Whether the model's runs carry the user's hooks (model.hooks, add_hook), which may read
    across the batch: an analysis then gives them the input's batch alone in each run."""
    return bool(model.context_hooks or model._added_hooks)


def users_edits_on(model) -> bool:
    """Whether the user's hooks or SAEs (add_sae) edit the model's runs: a run started at block l
    from a residual cached after them would apply one at blocks.l.hook_resid_pre a second time."""
    return hooks_read_the_batch(model) or bool(model._saes)


def run_patches(model, target, source, hook_name, indices, setter, metric,
                progress: ProgressFn | None = None, prepend_bos: bool | None = None) -> tuple[np.ndarray, float]:
    """Run the target tokens [batch, pos] once per index with one activation patched.

    index[0] is a layer; the activation at hook_name(layer) becomes
    setter(activation, index, source[hook_name(layer)]), source mapping hook names to
    activations of the target's shapes (a cache of another run).
    Returns (the metric after each patch, [len(indices)]; the metric on the target's own run).
    A padded target is masked as a run of it is (model._attention_mask: left padding), whether
    a BOS was prepended to it as prepend_bos says (None: the model's default, read once).
    At a point an attached SAE writes (add_sae), the patch sets what the cache holds there:
    the SAE's output, which the rest of the model reads (a hook on the point edits its input).
    """
    layers = sorted({int(index[0]) for index in indices})
    mask = model._attention_mask(target, None, model._bos(prepend_bos))
    names = {layer: hook_name(layer) for layer in layers}
    sae_outputs = {sae.cfg.output_hook for sae, _ in model._saes.values()}
    # A patch in block l leaves blocks 0..l-1 as in the target's own run: each
    # patched run starts at block l from the target's residual there.
    starts = {layer: f"blocks.{layer}.hook_resid_pre" for layer in layers}
    target_logits, target_acts = model.run_with_cache(target, names_filter=[*names.values(), *starts.values()],
                                                      attention_mask=mask)
    target_score = score(metric, target_logits)
    sources = {layer: _source_activation(source, names[layer], target_acts[names[layer]].shape) for layer in layers}
    values = np.zeros(len(indices))
    last_only = bool(getattr(metric, "last_position_only", False))
    from_start = users_edits_on(model)  # else each patched run starts at its block from the cached residual
    logits_per_patch = target.shape[0] * (1 if last_only else target.shape[1]) * model.cfg.d_vocab
    group = 1 if hooks_read_the_batch(model) else _patches_per_run(target.size, logits_per_patch)
    done = 0
    for layer, run in itertools.groupby(range(len(indices)), key=lambda j: int(indices[j][0])):
        run = list(run)
        name = names[layer]
        for first in range(0, len(run), group):
            chunk = run[first : first + group]
            patched = _patched_activations(target_acts[name], sources[layer], [indices[j] for j in chunk], setter)
            masks = None if mask is None else np.tile(mask, (len(chunk), 1))
            start = np.concatenate([target if from_start else target_acts[starts[layer]]] * len(chunk))
            logits = model.forward(start, logits="last" if last_only else "all", hooks=[_patch_hook(
                name, patched, name in sae_outputs)], start_at_layer=None if from_start else layer,
                attention_mask=masks)
            for j, own in zip(chunk, np.split(logits, len(chunk))):  # copy k of the batch carries patch k
                values[j] = score(metric, own[:, None] if last_only else own)
            done += len(chunk)
            if progress is not None:
                progress(done, len(indices))  # what it raises passes as it is: a way to stop a sweep
    return values, target_score


def _patch_hook(name: str, patched: np.ndarray, sae_writes_it: bool):
    """The hook that puts patched at the point name; where an attached SAE writes it, at the SAE's
    output (a Python hook: the splice takes no intervention there), the value its cache holds."""
    if sae_writes_it:
        return f"{name}.hook_sae_output", lambda activation, hook: patched
    return name, patch(patched)


def _source_activation(source, name: str, shape) -> np.ndarray:
    """source[name], checked to have the target activation's shape."""
    try:
        activation = np.asarray(source[name])
    except KeyError:
        raise AnalysisError(f"the clean cache has no {name!r}: cache the clean run with a names_filter "
                            "that keeps it (or none)") from None
    if activation.shape != tuple(shape):
        raise AnalysisError(f"the clean cache's {name} is {list(activation.shape)} where the corrupted run's "
                            f"is {list(shape)}: the clean and corrupted tokens must have one shape")
    return activation


# Patched runs share one forward until it has this many rows (short prompts
# then read the weights once for many patches) or its logits this many floats.
_ROWS_PER_RUN = 256
_LOGITS_PER_RUN = 1 << 24


def _patches_per_run(rows: int, logits_per_patch: int) -> int:
    """How many patched copies of the input (rows tokens each) one forward carries."""
    return max(1, min(_ROWS_PER_RUN // rows, _LOGITS_PER_RUN // logits_per_patch))


def _patched_activations(target, source, indices, setter) -> np.ndarray:
    """[len(indices) * batch, ...]: the target's activation, patched by
    setter(copy j, indices[j], source) in copy j."""
    out = np.repeat(np.asarray(target)[None], len(indices), axis=0)
    for j, index in enumerate(indices):
        patched = np.asarray(call_user(setter, "patch setter", out[j], [int(i) for i in index], source))
        if patched.shape != out[j].shape:
            raise AnalysisError(f"the patch setter returned shape {list(patched.shape)} for an activation "
                                f"of shape {list(out[j].shape)}")
        out[j] = patched
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
