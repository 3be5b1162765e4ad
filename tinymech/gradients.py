"""Gradients: the C++ core's reverse pass behind TransformerLens's incl_bwd and backward hooks.

A backward run is a forward that records a tape (what the chain rule reads),
a metric of its logits giving G = d metric / d logits, and the core's backward
from G, which visits the hook points in reverse order with a second hook plan:
captures (the cache's `name + "_grad"` entries) and backward hooks, which read
and may rewrite a gradient as TransformerLens's do. No weight gradients.

Metrics (`metric=`):
    "loss"                           the mean next-token cross-entropy, as return_type="loss"
    ("logit_diff", correct, wrong)   mean over the batch of logits[b, -1, correct[b]] - logits[b, -1, wrong[b]]
    ("log_prob", token_ids)          mean over the batch of log_softmax(logits[b, -1])[token_ids[b]]
    f(logits) -> (value, G)          a function of the logits [batch, pos, d_vocab] (numpy)
Tokens are ids or strings of exactly one token (" Paris"), one for every sequence or one per
sequence. Or `grad_logits=G` directly.
"""
from __future__ import annotations

import re
from typing import Iterable

import numpy as np

from . import _core
from .errors import HookError, InvalidInputError, array_of
from .hooks import build_plan, resolve_names

METRICS = ("loss", "logit_diff", "log_prob")
FREEZABLE = ("pattern", "scales")


def _ids(ids, batch: int, d_vocab: int, what: str) -> np.ndarray:
    """One token id per sequence: [batch] ints in the vocabulary."""
    arr = array_of(ids, what)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0) or arr.dtype == bool:
        raise InvalidInputError(f"{what} must be token ids (ints), not {ids!r}")
    if arr.ndim == 0:
        arr = np.full(batch, int(arr))
    if arr.shape != (batch,):
        raise InvalidInputError(f"{what} needs one token id, or one per sequence ({batch}), not shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= d_vocab):
        raise InvalidInputError(f"{what}: token id outside the vocabulary [0, {d_vocab})")
    return arr.astype(np.int64)


def _softmax_last(logits: np.ndarray) -> np.ndarray:
    x = logits[:, -1].astype(np.float64)
    x = np.exp(x - x.max(-1, keepdims=True))
    return x / x.sum(-1, keepdims=True)


def parse_metric(metric) -> tuple[str, tuple]:
    """A built-in metric's name and arguments, checked (before the forward runs)."""
    name, args = None, ()
    if isinstance(metric, str):
        name = metric
    elif isinstance(metric, (tuple, list)) and metric and isinstance(metric[0], str):
        name, args = metric[0], tuple(metric[1:])
    if name not in METRICS:
        raise InvalidInputError(f"unknown metric {metric!r}: 'loss', ('logit_diff', correct_ids, wrong_ids), "
                                "('log_prob', token_ids) or a function logits -> (value, grad_logits)")
    wanted = {"loss": 0, "logit_diff": 2, "log_prob": 1}[name]
    if len(args) != wanted:
        raise InvalidInputError(f"metric {name!r} takes {wanted} argument(s), got {len(args)}")
    return name, args


def with_token_ids(model, metric):
    """A built-in metric with its tokens given as strings (each exactly one token, as
    model.to_single_token reads it) turned into ids; anything else as it is."""
    if callable(metric) or isinstance(metric, str):
        return metric
    name, args = parse_metric(metric)

    def ids(a):
        if isinstance(a, str):
            return model.to_single_token(a)
        if isinstance(a, (list, tuple)) and any(isinstance(x, str) for x in a):
            return [model.to_single_token(x) if isinstance(x, str) else x for x in a]
        return a

    return (name,) + tuple(ids(a) for a in args)


def metric_gradient(metric, logits: np.ndarray, tokens: np.ndarray | None,
                    mask: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """(value, d value / d logits) of a metric (see the module's doc) at these logits. mask: a
    padded batch's attention mask; the loss then counts a position only where it and the next
    are real, as lm_cross_entropy_loss."""
    B, T, V = logits.shape
    G = np.zeros((B, T, V), dtype=np.float64)
    rows = np.arange(B)
    if callable(metric):
        try:
            out = metric(logits)
        except Exception as e:  # the user's code: said so, as a hook function's error is
            raise InvalidInputError(f"the metric function {getattr(metric, '__name__', metric)!r} raised "
                                    f"{type(e).__name__}: {e}") from e
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise InvalidInputError(f"a metric function returns (value, grad_logits), not {type(out).__name__}")
        return _one_number(out[0]), out[1]
    name, args = parse_metric(metric)
    if name == "loss":
        if tokens is None or T < 2:
            raise InvalidInputError("the loss metric needs the tokens and at least 2 positions")
        x = logits[:, :-1].astype(np.float64)
        p = np.exp(x - x.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        target = tokens[:, 1:]
        keep = np.ones((B, T - 1), dtype=bool) if mask is None else (mask[:, :-1] != 0) & (mask[:, 1:] != 0)
        n = int(keep.sum())
        if n == 0:
            raise InvalidInputError("the loss metric needs a real token followed by another in some row")
        losses = -np.log(np.take_along_axis(p, target[..., None], -1))[..., 0]
        value = float(losses[keep].sum() / n)
        np.put_along_axis(p, target[..., None], np.take_along_axis(p, target[..., None], -1) - 1.0, -1)
        G[:, :-1] = p * (keep[..., None] / n)
        return value, G
    if name == "logit_diff":
        good, bad = (_ids(a, B, V, f"logit_diff's {w} ids") for a, w in zip(args, ("correct", "wrong")))
        last = logits[:, -1].astype(np.float64)
        value = float((last[rows, good] - last[rows, bad]).mean())
        np.add.at(G[:, -1], (rows, good), 1.0 / B)
        np.add.at(G[:, -1], (rows, bad), -1.0 / B)
        return value, G
    ids = _ids(args[0], B, V, "log_prob's token ids")
    p = _softmax_last(logits)
    value = float(np.log(p[rows, ids]).mean())
    G[:, -1] = -p / B
    G[rows, -1, ids] += 1.0 / B
    return value, G


def _one_number(value) -> float:
    """A metric function's value as a float: one real number (numpy's, a 1-element array, list or
    tuple, a torch scalar still holding its autograd history, a Fraction), not a bool or a string."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]  # float() of a 1-d array is deprecated in numpy
    if not isinstance(value, (bool, np.bool_, str, bytes, bytearray)):
        try:
            return float(value)
        except (TypeError, ValueError, RuntimeError, OverflowError):  # RuntimeError: torch's, for many elements
            pass
    shape = getattr(value, "shape", None)
    what = f"{type(value).__name__}" + (f" of shape {list(shape)}" if shape is not None else "")
    raise InvalidInputError(f"a metric function's value must be one number, not {what}: {value!r:.60}")


def _checked_grad(G, shape: tuple, from_metric: bool = False) -> np.ndarray:
    what = "the metric function's gradient" if from_metric else "grad_logits"
    arr = array_of(G, what)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)) or arr.dtype == bool:
        raise InvalidInputError(f"{what} must be floats, not dtype {arr.dtype}")
    if arr.shape != shape:
        raise InvalidInputError(f"{what} must have the logits' shape {list(shape)}, not {list(arr.shape)}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():  # from a metric: the logits were not finite (a NaN residual input)
        raise InvalidInputError("the metric's gradient d metric / d logits contains NaN or infinity (are the "
                                "logits finite?)" if from_metric else "grad_logits contains NaN or infinity")
    return arr


def _freeze(freeze) -> tuple[bool, bool]:
    try:
        items = [freeze] if isinstance(freeze, str) else list(freeze or ())
    except TypeError:
        items = [freeze]
    for item in items:
        if item not in FREEZABLE:
            raise InvalidInputError(f"freeze takes 'pattern' and/or 'scales', not {item!r}")
    return "pattern" in items, "scales" in items


def first_layer(model, names: Iterable[str]) -> int:
    """The lowest block a backward must reach to visit these hook points (n_layers: none)."""
    low = model.cfg.n_layers
    for name in names:
        m = re.match(r"blocks\.(\d+)\.", name)
        if m:
            low = min(low, int(m.group(1)))
        elif name in ("hook_embed", "hook_pos_embed"):
            low = 0
    return low


def bwd_hook_names(model, specs) -> list[str]:
    names = []
    for spec in specs:
        try:
            name_or_filter, _ = spec
        except (TypeError, ValueError):
            raise HookError(f"a hook is a (name, function or intervention) pair, got {spec!r}") from None
        names += resolve_names(model, name_or_filter)
    return names


def forward_backward(model, tokens: np.ndarray | None, fwd_plan, grad_names: list[str], metric=None,
                     grad_logits=None, bwd_hooks=(), freeze=(), mask: np.ndarray | None = None, start: int = 0,
                     resid: np.ndarray | None = None) -> tuple[np.ndarray, float | None, dict]:
    """A forward recording a tape, the metric, and the backward: (logits, metric value or None,
    {name + "_grad": gradient} for grad_names in forward order). mask: a padded batch's
    attention mask (model._attention_mask), or None. start, resid: a forward from block
    `start`'s residual input (start_at_layer), whose backward stops there; tokens then only
    for a loss."""
    if (metric is None) == (grad_logits is None):
        raise InvalidInputError("a backward needs exactly one of metric= and grad_logits=")
    freeze_pattern, freeze_scales = _freeze(freeze)
    if metric is not None:
        metric = with_token_ids(model, metric)
    specs = list(model._context_bwd_hooks) + [h for h, _ in model._added_bwd_hooks] + list(bwd_hooks)
    tape = _core.Tape(max(start, first_layer(model, list(grad_names) + bwd_hook_names(model, specs))))
    logits = model._core_forward(None, tokens, fwd_plan, "all", start, -1, resid, model._pads(mask), tape=tape)
    value = None
    if metric is not None:
        value, grad_logits = metric_gradient(metric, logits, tokens, mask)
    G = _checked_grad(grad_logits, logits.shape, from_metric=metric is not None)
    plan = build_plan(model, specs, capture=grad_names) if specs or grad_names else None
    try:
        model._core.backward(tape, G, plan, freeze_pattern, freeze_scales)
    except (ValueError, IndexError) as e:
        if plan is None or isinstance(e, HookError):
            raise
        raise HookError(str(e)) from e
    grads = {model._hook_name_of[i]: a for i, a in plan.take_captured()} if plan is not None and grad_names else {}
    return logits, value, {n + "_grad": grads[n] for n in model._hook_names if n in grads}


def check_backward_run(model, stop_at_layer=None) -> None:
    """What a backward cannot do yet, refused precisely."""
    if stop_at_layer is not None:
        raise InvalidInputError("a backward starts from the logits' metric: stop_at_layer is not supported with "
                                "gradients (start_at_layer is)")
    if model._saes:
        raise InvalidInputError("a backward through attached SAEs is not supported yet (reset_saes() first)")


def backward_run(model, input, fwd_plan, grad_names: list[str], return_type, prepend_bos: bool, loss_per_token: bool,
                 start_at_layer, stop_at_layer, tokens, metric, grad_logits, bwd_hooks=(), freeze=(),
                 attention_mask=None, padding_side=None):
    """run_with_cache(incl_bwd=True) and run_with_hooks(bwd_hooks=...): (the run's output, gradients).
    With neither metric nor grad_logits, a loss return type makes the loss the metric (as
    TransformerLens's incl_bwd calls backward() on the loss). A padded batch (texts of
    different lengths, attention_mask, padding_side) is padded as its forward is."""
    check_backward_run(model, stop_at_layer)
    if metric is None and grad_logits is None:
        if return_type not in ("loss", "both"):
            raise InvalidInputError("a backward needs a metric: pass metric= ('loss', ('logit_diff', correct, "
                                    "wrong), ('log_prob', ids) or a function) or grad_logits=, or "
                                    "return_type='loss'")
        metric = "loss"
    if return_type not in ("logits", "loss", "both", None):
        raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, not {return_type!r}")
    start, resid = 0, None
    if start_at_layer is None:
        prepend_bos = model._bos(prepend_bos)
        ids = model.tokens_of(input, prepend_bos=prepend_bos, padding_side=padding_side)
        mask = model._attention_mask(ids, attention_mask, prepend_bos, padding_side)
    else:  # from a block's residual input, as the forward's start_at_layer; tokens= for a loss
        start = model._block_index(start_at_layer, "start_at_layer")
        resid = model._residual_input(input)
        ids = None if tokens is None else model.tokens_of(tokens, prepend_bos=False)
        if ids is not None and ids.shape != resid.shape[:2]:
            raise InvalidInputError(f"tokens {list(ids.shape)} do not match the residual's [batch, pos] "
                                    f"{list(resid.shape[:2])}")
        if ids is None and (return_type in ("loss", "both") or metric == "loss"):
            raise InvalidInputError("a loss starting from a residual needs the tokens: pass tokens=...")
        mask = model._attention_mask(resid.shape[:2], attention_mask)
    logits, _, grads = forward_backward(model, ids, fwd_plan, grad_names, metric, grad_logits, bwd_hooks, freeze,
                                        mask, start, resid)
    return model._package(logits, ids, return_type, loss_per_token, mask), grads
