"""Saliency: which input tokens pushed a prediction. Gradient × input and
integrated gradients at the input embeddings, per token, on the core's backward.

The input is the token embedding (hook_embed, what TransformerLens and Captum
users attribute to), or with embeddings="token+pos" the residual stream's start
(hook_embed + hook_pos_embed: rotary models add no position vector, so there the
two are the same). Every sequence of a batch is explained by its own metric.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import AnalysisError, InvalidInputError, TinymechError
from ..gradients import _checked_grad, _ids, metric_gradient, parse_metric
from ..text import format_table, token_labels
from .attribution import _per_sequence
from .patching import hooks_read_the_batch

METHODS = ("grad_x_input", "integrated_gradients")
EMBEDDINGS = ("token", "token+pos")
RULES = ("gauss_legendre", "riemann", "trapezoid")
TARGET_METRICS = ("log_prob", "logit")
MAX_STEPS = 1024
TOKENS_PER_PASS = 2048  # tokens of (alpha, sequence) rows in one forward+backward: the tape grows with them


@dataclasses.dataclass(frozen=True, eq=False)
class SaliencyResult:
    """Per-token attributions of one metric per sequence.

    scores:         [batch, pos] float64: sum over d_model of (input - baseline) × gradient
                    (gradient × input: the gradient at the input; integrated gradients: its
                    mean along the straight path from the baseline)
    tokens:         [batch, pos] int64; labels: their readable strings, per sequence
    metric_value:   [batch] the metric at the input
    baseline_value: [batch] the metric at the baseline (integrated gradients), else None
    gap:            [batch] scores.sum(-1) - (metric_value - baseline_value): completeness's
                    error, which shrinks as steps grow (integrated gradients), else None
    target:         [batch] the token ids explained by the default metric (None with metric=)
    position:       where the default metric reads (a non-negative index; None with metric=)
    """

    scores: np.ndarray
    tokens: np.ndarray
    labels: list[list[str]]
    method: str
    embeddings: str
    metric: str  # what was explained, in words
    metric_value: np.ndarray
    baseline_value: np.ndarray | None
    gap: np.ndarray | None
    target: np.ndarray | None
    position: int | None
    steps: int | None
    rule: str | None

    def top(self, k: int = 5, batch: int = 0, sign: str | None = None) -> list[tuple[int, str, float]]:
        """(position, label, score) of the k tokens with the largest |score|, or with sign="+"
        ("-") the k that pushed the metric up (down) the most."""
        scores = self._row(batch)
        if sign not in (None, "+", "-"):
            raise AnalysisError(f"sign must be None, '+' or '-', not {sign!r}")
        if not (isinstance(k, (int, np.integer)) and k >= 1):
            raise AnalysisError(f"k must be a positive integer, not {k!r}")
        key = {None: -np.abs(scores), "+": -scores, "-": scores}[sign]
        order = [int(i) for i in np.argsort(key, kind="stable")[:k]]
        if sign is not None:
            order = [i for i in order if (scores[i] > 0 if sign == "+" else scores[i] < 0)]
        return [(i, self.labels[batch][i], float(scores[i])) for i in order]

    def table(self, batch: int = 0) -> str:
        """Each token of one sequence with its score and share of the total size."""
        scores = self._row(batch)
        size = np.abs(scores).sum()
        rows = [[str(i), label, f"{s:+.4f}", f"{s / size:+.0%}" if size > 0 else "-"]
                for i, (label, s) in enumerate(zip(self.labels[batch], scores))]
        rows.append(["", "sum", f"{scores.sum():+.4f}", ""])
        title = f"{self.describe()} of {self.metric}: {self.metric_value[batch]:+.4f}"
        if self.gap is not None:
            title += (f" (baseline {self.baseline_value[batch]:+.4f}, completeness gap "
                      f"{self.gap[batch]:+.2e})")
        return format_table(["pos", "token", "score", "share"], rows, title=title, align="rlrr")

    def describe(self) -> str:
        what = "Gradient × input" if self.method == "grad_x_input" else \
            f"Integrated gradients ({self.steps} {self.rule} steps)"
        return what + (" (token + position embeddings)" if self.embeddings == "token+pos" else "")

    def _row(self, batch) -> np.ndarray:
        n = self.scores.shape[0]
        if not (isinstance(batch, (int, np.integer)) and -n <= batch < n):
            raise AnalysisError(f"batch {batch!r} is outside the {n} sequences")
        return self.scores[batch]

    def __str__(self):
        return self.table()


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas in [0, 1], weights summing to 1) of a rule for the mean over [0, 1]."""
    if rule == "gauss_legendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return (x + 1) / 2, w / 2
    if rule == "riemann":  # midpoints
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    w = np.full(steps, 1.0 / (steps - 1))
    w[[0, -1]] /= 2
    return np.linspace(0.0, 1.0, steps), w


class _Objective:
    """The metric of each row of a run, a row belonging to sequence s: (value, d value / d logits)."""

    def __init__(self, model, tokens, metric, target, position, target_metric):
        batch, n_pos = tokens.shape
        V = model.cfg.d_vocab
        self.tokens, self.metric, self.kind = tokens, metric, target_metric
        self.position, self.target, self.args = None, None, ()
        if metric is None:
            self.position = position % n_pos
            if target is not None:
                self.target = _per_sequence(model, target, batch)
        elif not callable(metric):
            name, args = parse_metric(metric)
            self.metric = name
            self.args = tuple(_ids(a, batch, V, f"{name}'s token ids") for a in args)

    def describe(self, model) -> str:
        if self.metric is None:
            shown = token_labels(model, self.target[:1])[0] + (" ..." if len(set(self.target)) > 1 else "")
            what = f"log p({shown})" if self.kind == "log_prob" else f"logit({shown})"
            return f"{what} at position {self.position}"
        if callable(self.metric):
            return f"the metric {getattr(self.metric, '__name__', 'function')}"
        return f"the metric {self.metric!r}"

    def resolve_target(self, logits: np.ndarray) -> None:
        """The default target: the model's top prediction (logits of the input's own run)."""
        if self.metric is None and self.target is None:
            self.target = logits[:, self.position].argmax(-1).astype(np.int64)

    def row(self, logits: np.ndarray, s: int) -> tuple[float, np.ndarray]:
        """(value, G [pos, d_vocab]) of sequence s's metric at one row's logits [pos, d_vocab]."""
        if self.metric is None:
            G = np.zeros(logits.shape, dtype=np.float64)
            x = logits[self.position].astype(np.float64)
            t = self.target[s]
            if self.kind == "logit":
                G[self.position, t] = 1.0
                return float(x[t]), G
            p = np.exp(x - x.max())
            p /= p.sum()
            G[self.position] = -p
            G[self.position, t] += 1.0
            return float(np.log(p[t])), G
        if callable(self.metric):
            value, G = metric_gradient(self.metric, logits[None], None)  # value: one number, checked there
            if not np.isfinite(value):
                raise AnalysisError(f"the metric function's value is {value}")
            return value, _checked_grad(G, (1,) + logits.shape, from_metric=True)[0]
        metric = (self.metric,) + tuple(a[s] for a in self.args)
        value, G = metric_gradient(metric, logits[None], self.tokens[s : s + 1])
        return float(value), G[0]


def _backward(model, tokens, objective: _Objective, seq: np.ndarray, hooks, prepend_bos: bool, first: bool = False):
    """One forward+backward of rows tokens [n, pos] (row r is sequence seq[r]) with forward hooks:
    (metric values [n], the cache holding hook_embed (and hook_pos_embed) and their gradients).
    prepend_bos: whether the tokens were made with a BOS first (a left-padded run reads a BOS that
    is the pad token as padding otherwise)."""
    values = np.empty(len(seq))

    def metric(logits):
        if first:
            objective.resolve_target(logits)
        G = np.empty(logits.shape, dtype=np.float32)
        for r, s in enumerate(seq):
            values[r], G[r] = objective.row(logits[r], s)
        return float(values.sum()), G  # a sum: each row's gradient is its own metric's

    names = [n for n in ("hook_embed", "hook_pos_embed") if n in model.hook_names()]
    try:
        _, cache = model.run_with_cache(tokens, names_filter=names, hooks=hooks, incl_bwd=True, metric=metric,
                                        prepend_bos=prepend_bos)
    except InvalidInputError as e:  # our own errors, raised inside the metric: as they are
        if isinstance(e.__cause__, TinymechError):
            raise e.__cause__ from None
        raise
    return values, cache


def _whole(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise AnalysisError(f"{name} must be an integer in [{low}, {high}], not {value!r}")
    return int(value)


def _baseline(baseline, shape: tuple) -> np.ndarray:
    """The baseline broadcast to the inputs' [batch, pos, d_model]."""
    if isinstance(baseline, str):
        if baseline != "zero":
            raise AnalysisError(f"baseline must be 'zero' or an array, not {baseline!r}")
        return np.zeros(shape, dtype=np.float32)
    try:
        arr = np.asarray(baseline)
    except ValueError:  # numpy refuses ragged nested lists
        raise AnalysisError("a baseline array is rectangular: its rows must have one length") from None
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise AnalysisError(f"a baseline array holds numbers, not dtype {arr.dtype}")
    B, T, D = shape
    if arr.shape not in ((D,), (T, D), (B, T, D)):
        raise AnalysisError(f"a baseline is [d_model] ({D}), [pos, d_model] ({T}, {D}) or [batch, pos, d_model] "
                            f"({B}, {T}, {D}), not shape {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise AnalysisError("the baseline contains NaN or infinity")
    return np.ascontiguousarray(np.broadcast_to(arr, shape), dtype=np.float32)


def saliency(model, input, metric=None, target=None, method: str = "grad_x_input", steps: int = 32,
             baseline="zero", position: int = -1, embeddings: str = "token", rule: str = "gauss_legendre",
             target_metric: str = "log_prob", prepend_bos: bool | None = None, batch_size: int | None = None
             ) -> SaliencyResult:
    """Which tokens pushed a prediction: per-token attributions [batch, pos] at the input embeddings.

    input: text, texts of one token length, or token ids [batch, pos] / [pos].
    metric: None explains the log-probability (target_metric="logit": the logit) of `target` at
        `position` (default: the model's top prediction there, per sequence); or one of
        tinymech.gradients' metrics ("loss", ("logit_diff", correct, wrong), ("log_prob", ids),
        f(logits) -> (value, grad_logits)), each applied to each sequence alone (a function
        gets one sequence's logits [1, pos, d_vocab]).
    target: a token (string of one token or id), or one per sequence, for the default metric.
    method: "grad_x_input" (the gradient at the input, times the input) or
        "integrated_gradients": (input - baseline) times the mean gradient along the straight
        path from the baseline, over `steps` points of `rule` ("gauss_legendre", "riemann":
        midpoints, "trapezoid"); the rows of several points run in one batch (batch_size rows
        at a time, default as many as fit TOKENS_PER_PASS tokens).
    baseline: "zero" or an array [d_model], [pos, d_model] or [batch, pos, d_model] in the
        space of the input (e.g. model.W_E[pad_id] for a pad-token baseline).
    embeddings: "token" (hook_embed) or "token+pos" (hook_embed + hook_pos_embed).
    """
    if method not in METHODS:
        raise AnalysisError(f"method must be one of {METHODS}, not {method!r}")
    if embeddings not in EMBEDDINGS:
        raise AnalysisError(f"embeddings must be one of {EMBEDDINGS}, not {embeddings!r}")
    if rule not in RULES:
        raise AnalysisError(f"rule must be one of {RULES}, not {rule!r}")
    if target_metric not in TARGET_METRICS:
        raise AnalysisError(f"target_metric must be one of {TARGET_METRICS}, not {target_metric!r}")
    steps = _whole(steps, "steps", 2 if rule == "trapezoid" else 1, MAX_STEPS)
    if batch_size is not None:
        batch_size = _whole(batch_size, "batch_size", 1, 1 << 20)
    bos = model._bos(prepend_bos)  # read once: every run of the tokens takes the convention they were made with
    tokens = model.tokens_of(input, prepend_bos=bos, same_length=True)
    B, T = tokens.shape
    if isinstance(position, bool) or not (isinstance(position, (int, np.integer)) and -T <= position < T):
        raise AnalysisError(f"position {position!r} is outside a sequence of {T} tokens")
    if metric is not None and (target is not None or position != -1 or target_metric != "log_prob"):
        raise AnalysisError("target=, position= and target_metric= choose what the default metric reads; "
                            "a metric= reads its own")
    if method == "grad_x_input" and not (isinstance(baseline, str) and baseline == "zero"):
        raise AnalysisError("a baseline goes with method='integrated_gradients'")
    objective = _Objective(model, tokens, metric, target, position, target_metric)

    # the input's own run: the input, its gradient, the metric there (and the default target)
    values, cache = _backward(model, tokens, objective, np.arange(B), [], bos, first=True)
    with_pos = embeddings == "token+pos" and "hook_pos_embed" in cache
    x = cache["hook_embed"] + cache["hook_pos_embed"] if with_pos else cache["hook_embed"]
    x0 = _baseline(baseline, x.shape)
    result = dict(metric_value=values, baseline_value=None, gap=None, steps=None, rule=None)
    if method == "grad_x_input":
        scores = (x.astype(np.float64) * cache["hook_embed_grad"]).sum(-1)
    else:
        scores, f0 = _integrated(model, tokens, objective, x, x0, with_pos, steps, rule, batch_size, bos)
        result.update(baseline_value=f0, gap=scores.sum(-1) - (values - f0), steps=steps, rule=rule)
    return SaliencyResult(
        scores=scores,
        tokens=tokens.astype(np.int64),
        labels=[token_labels(model, row) for row in tokens],
        method=method,
        embeddings=embeddings,
        metric=objective.describe(model),
        target=objective.target,
        position=objective.position,
        **result,
    )


def _integrated(model, tokens, objective, x, x0, with_pos: bool, steps: int, rule: str, batch_size,
                prepend_bos: bool):
    """(scores [batch, pos], metric at the baseline [batch]). Each row of a run is one sequence at
    one point x0 + alpha (x - x0): a forward hook puts it at hook_embed (hook_pos_embed zeroed
    when the position embedding is part of the input). The backward's gradient at hook_embed
    is d metric / d (the embedding downstream) at that point, the path's gradient."""
    B, T, _ = x.shape
    alphas, weights = quadrature(rule, steps)
    if alphas[0] != 0.0:  # the baseline's own value, for the completeness gap: one more point
        alphas, weights = np.concatenate([[0.0], alphas]), np.concatenate([[0.0], weights])
    point_of = np.repeat(np.arange(len(alphas)), B)
    seq_of = np.tile(np.arange(B), len(alphas))
    # the user's hooks see the input's batch alone: one point of the path per pass
    per_pass = B if hooks_read_the_batch(model) else batch_size or max(1, TOKENS_PER_PASS // T)
    mean_grad = np.zeros(x.shape, dtype=np.float64)
    f0 = np.empty(B)
    for start in range(0, len(seq_of), per_pass):
        k, s = point_of[start : start + per_pass], seq_of[start : start + per_pass]
        a = alphas[k].astype(np.float32)[:, None, None]
        at = x0[s] + a * (x[s] - x0[s])
        hooks = [("hook_embed", lambda act, hook, at=at: at)]
        if with_pos:
            hooks.append(("hook_pos_embed", lambda act, hook: np.zeros_like(act)))
        values, cache = _backward(model, tokens[s], objective, s, hooks, prepend_bos)
        grad = cache["hook_embed_grad"]
        for r in range(len(s)):
            mean_grad[s[r]] += weights[k[r]] * grad[r]
            if k[r] == 0:
                f0[s[r]] = values[r]
    return ((x - x0).astype(np.float64) * mean_grad).sum(-1), f0
