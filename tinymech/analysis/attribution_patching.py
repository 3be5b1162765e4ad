"""Attribution patching (Nanda 2023; Syed et al. 2023): activation patching's
results approximated to first order from one forward of the source run and one
forward + backward of the target run. Patching index i changes the metric by about
    (source activation - target activation)[i] · d metric / d activation[i],
the gradient taken at the target run, summed over what one patch covers (d_head,
d_model, all positions for the *_all_pos kinds), so every head, position and
neuron is scored at the cost of about three forward passes."""
from __future__ import annotations

import numpy as np

from ..errors import AnalysisError, InvalidInputError
from ..gradients import metric_gradient, parse_metric
from ..text import token_labels
from .patching import (ACTIVATIONS, PatchingResult, call_user, checked_pair, layout, logit_diff_metric, one_number,
                       require_function)

# Kinds activation patching sweeps too (the same axes), and kinds it would need a run per
# index for, which a gradient scores at once: each head's queries, keys, values and
# pattern over all positions, and each MLP neuron, at each position or summed over them.
KINDS = {
    **ACTIVATIONS,
    **{f"head_{part}": (f"attn.hook_{part}", ("layer", "head")) for part in ("q", "k", "v", "pattern")},
    "mlp_post": ("mlp.hook_post", ("layer", "pos", "neuron")),
    "mlp_post_all_pos": ("mlp.hook_post", ("layer", "neuron")),
}


def attribution_patch(model, clean, corrupted, metric=None, answers=None, over: str = "head_z",
                      mode: str = "denoise", prepend_bos: bool | None = None) -> PatchingResult:
    """Attribution patching of every index of one activation kind (see KINDS) at once.

    clean, corrupted: texts or token ids of one shape [batch, pos], unpadded (positions of the
        two runs correspond one to one).
    metric: what the gradient is taken of, mean over the batch as patch_activations' metrics:
        by default the logit difference of `answers` (correct, incorrect), as patch_activations;
        a metric made by logit_diff_metric (or any function with a `value_and_grad` attribute);
        a built-in metric of the backward ("loss", ("logit_diff", correct, wrong), ("log_prob", ids));
        or a function f(logits) -> (value, d value / d logits). A function returning only a number
        is refused: its gradient with respect to the logits is what the approximation needs.
    over: a key of KINDS; the result has activation patching's axes for that kind.
    mode: "denoise" (the gradient at the corrupted run, clean activations patched in) or
        "noise" (the gradient at the clean run, corrupted activations patched in).

    Returns a PatchingResult (method "attribution") whose values estimate the metric after
    each patch: the target run's metric plus the first-order change.
    """
    clean_tokens, corrupted_tokens, bos = checked_pair(model, clean, corrupted, over, KINDS, "over", mode,
                                                       prepend_bos)
    for tokens in (clean_tokens, corrupted_tokens):
        mask = model._attention_mask(tokens, None, bos)
        if mask is not None and not np.all(mask):
            raise AnalysisError("attribution patching takes no padded batch (the clean and corrupted runs' "
                                "positions must correspond one to one): give sequences of one length")
    value_and_grad = metric_function(model, metric, answers, clean_tokens.shape[0])
    suffix, axes = KINDS[over]
    source, target = (clean_tokens, corrupted_tokens) if mode == "denoise" else (corrupted_tokens, clean_tokens)
    names = [f"blocks.{layer}.{suffix}" for layer in range(model.cfg.n_layers)]
    source_logits, source_acts = model.run_with_cache(source, names_filter=names, prepend_bos=bos)
    source_score = _value(value_and_grad(source_logits, source))
    target_score, target_acts = _backward(model, target, names, value_and_grad, bos)
    values = np.stack([first_order_change(source_acts[name], target_acts[name], target_acts[name + "_grad"],
                                          layout_of(suffix), axes[1:]) for name in names]) + target_score
    clean_score, corrupted_score = (source_score, target_score) if mode == "denoise" else (target_score, source_score)
    return PatchingResult(values=values, axes=axes, activation=over, mode=mode, clean=clean_score,
                          corrupted=corrupted_score,
                          pos_labels=token_labels(model, clean_tokens[0]) if "pos" in axes else None,
                          method="attribution")


def layout_of(hook_suffix: str) -> tuple[str, ...]:
    """The axes after the batch of this hook point's activation, all of them: patching's
    layout and the last axis (a neuron for mlp.hook_post; d_model or d_head otherwise)."""
    axes = layout(hook_suffix)
    if hook_suffix.endswith(("hook_pattern", "hook_attn_scores")):
        return axes
    return axes + ("neuron" if hook_suffix.endswith("mlp.hook_post") else "feature",)


def first_order_change(source, target, grad, activation_layout: tuple[str, ...], keep: tuple[str, ...]):
    """sum over the batch and every axis not in keep of (source - target) * grad, in float64,
    as an array over keep (in keep's order)."""
    letters = dict(zip(("batch",) + activation_layout, "abcdefgh"))
    operand = "".join(letters.values())
    diff = np.asarray(source, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    return np.einsum(f"{operand},{operand}->{''.join(letters[a] for a in keep)}", diff,
                     np.asarray(grad, dtype=np.float64))


def metric_function(model, metric, answers, n_sequences: int):
    """The metric as a function (logits, tokens) -> (value, d value / d logits), checked before any run."""
    if metric is None:
        if answers is None:
            raise AnalysisError("give a metric, or answers (correct, incorrect) for the logit difference")
        metric = logit_diff_metric(model, answers, n_sequences)
    elif answers is not None:
        raise AnalysisError("give a metric or answers, not both")
    if hasattr(metric, "value_and_grad"):
        return lambda logits, tokens: _called(metric.value_and_grad, logits)
    if isinstance(metric, (str, tuple, list)):
        parse_metric(metric)
        return lambda logits, tokens: metric_gradient(metric, logits, tokens)
    require_function(metric, "a metric", " or a built-in metric name")

    def checked(logits, tokens):
        out = _called(metric, logits)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise AnalysisError(
                f"attribution patching needs the metric's gradient with respect to the logits, but "
                f"{getattr(metric, '__name__', 'the metric')!r} returned {type(out).__name__}: give a function "
                "logits -> (value, grad_logits), a built-in metric (('logit_diff', correct, wrong), "
                "('log_prob', ids), 'loss'), analysis.logit_diff_metric(...), or answers=")
        return out

    return checked


def _called(fn, logits):
    """The user's metric at these logits; its errors said as activation patching says them (the
    source run calls it outside the backward, which would say so too)."""
    return call_user(fn, "metric function", logits)


def _value(value_and_grad_result) -> float:
    return one_number(value_and_grad_result[0])


def _backward(model, tokens, names, value_and_grad, prepend_bos: bool) -> tuple[float, dict]:
    """The target run: (its metric, cache of names and their gradients)."""
    seen = []

    def recorded(logits):
        out = value_and_grad(logits, tokens)
        seen.append(_value(out))
        return out

    try:
        _, cache = model.run_with_cache(tokens, names_filter=names, incl_bwd=True, metric=recorded,
                                        prepend_bos=prepend_bos)
    except InvalidInputError as e:  # the backward wraps a metric's error: ours is said as it is
        if isinstance(e.__cause__, AnalysisError):
            raise e.__cause__ from None
        raise
    return seen[0], cache
