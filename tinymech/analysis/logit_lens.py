"""Logit lens: read every point of the residual stream through the final
LayerNorm and the unembedding, as if the model stopped there."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from ..ops import log_sum_exp, top_k
from ..cache import ActivationCache
from ..errors import AnalysisError, whole_number
from ..ops import final_norm
from .params import unembed_bias
from ..text import format_table
from .tokens import token_ids
from ..text import token_labels

LN_MODES = ("recompute", "frozen")


def residual_points(n_layers: int) -> list[tuple[str, str]]:
    """(label, hook name) of every residual point in forward order:
    "0_pre", "0_mid", "0_post", "1_pre", ... ("{l}_post" equals "{l+1}_pre")."""
    return [
        (f"{layer}_{where}", f"blocks.{layer}.hook_resid_{where}")
        for layer in range(n_layers)
        for where in ("pre", "mid", "post")
    ]


def distinct_points(n_layers: int) -> list[tuple[str, str]]:
    """The residual points that differ: the embeddings ("0_pre"), then each
    layer after attention ("{l}_mid") and after its MLP ("{l}_post"); every
    other "{l}_pre" repeats "{l-1}_post"."""
    return [(label, name) for label, name in residual_points(n_layers)
            if label == "0_pre" or not label.endswith("_pre")]


def unembed(model, normalized: np.ndarray) -> np.ndarray:
    """Logits [..., d_vocab] of vectors that went through ln_final already."""
    logits = np.asarray(normalized, dtype=np.float32) @ model.W_U
    bias = unembed_bias(model)
    return logits if bias is None else logits + bias


@dataclasses.dataclass(frozen=True, eq=False)
class LogitLensResult:
    """What each residual point predicts. Arrays have no batch axis when the
    input was one sequence: [row, pos, ...]; otherwise [row, batch, pos, ...].

    labels:        one per distinct residual point in forward order: "0_pre" (the
                   embeddings), then "{layer}_mid" and "{layer}_post" of each layer
                   ("{layer}_pre" of a later layer is "{layer-1}_post": not repeated)
    top_ids:       [row, (batch,) pos, k] int64, most probable first
    top_probs:     [row, (batch,) pos, k] float32
    answer_ids:    [n_answers] int64, or None
    answer_probs:  [row, (batch,) pos, n_answers] float32, or None
    answer_ranks:  [row, (batch,) pos, n_answers] int64, 1 = the most probable token, or None
    tokens:        the input [(batch,) pos]
    positions:     the input positions the pos axis holds (all of them by default)
    """

    labels: list[str]
    top_ids: np.ndarray
    top_probs: np.ndarray
    answer_ids: np.ndarray | None
    answer_probs: np.ndarray | None
    answer_ranks: np.ndarray | None
    tokens: np.ndarray
    ln: str
    model: object = dataclasses.field(repr=False)
    positions: list[int] | None = None

    def table(self, pos: int = -1, batch: int = 0) -> str:
        """The table of one input position (negative: from the end) of one sequence of a batch,
        among those read."""
        n_seq = 1 if self.tokens.ndim == 1 else len(self.tokens)
        batch = whole_number(batch, "batch", -n_seq, AnalysisError, maximum=n_seq - 1) % n_seq
        seq = self.tokens if self.tokens.ndim == 1 else self.tokens[batch]
        # refused, not wrapped: pos 99 of 8 tokens would show position 3
        position = whole_number(pos, "pos", -len(seq), AnalysisError, maximum=len(seq) - 1) % len(seq)
        read = list(range(len(seq))) if self.positions is None else self.positions
        if position not in read:
            raise AnalysisError(f"the lens was read at positions {read}, not at {pos}")
        column = read.index(position)

        def at(a):
            return a[:, column] if self.tokens.ndim == 1 else a[:, batch, column]

        ids, probs = at(self.top_ids), at(self.top_probs)
        k = ids.shape[-1]
        headers = ["resid"] + [f"top {i + 1}" for i in range(k)]
        answers = [] if self.answer_ids is None else token_labels(self.model, self.answer_ids)
        headers += [f"{a} p (rank)" for a in answers]
        rows = []
        for r, label in enumerate(self.labels):
            names = token_labels(self.model, ids[r])
            row = [label] + [f"{n} {p:.3f}" for n, p in zip(names, probs[r])]
            if answers:
                row += [f"{p:.3g} ({rank})" for p, rank in zip(at(self.answer_probs)[r], at(self.answer_ranks)[r])]
            rows.append(row)
        current = token_labels(self.model, [seq[position]])[0]
        title = f"Logit lens (ln_final {self.ln}) at position {position} {current!r}"
        return format_table(headers, rows, title=title, align="l" * (k + 1) + "r" * len(answers))

    def __str__(self):
        return self.table()


def lens_hook_names(n_layers: int) -> list[str]:
    """The hook points a logit lens reads (cache them to pass cache= to logit_lens)."""
    return [name for _, name in distinct_points(n_layers)] + ["ln_final.hook_scale"]


def logit_lens(model, input, answers=None, k: int = 5, ln: str = "recompute",
               prepend_bos: bool | None = None, positions=None, cache=None) -> LogitLensResult:
    """The top-k next tokens (and the probability and rank of `answers`) read
    off every distinct residual point: the embeddings (0_pre), then resid_mid
    and resid_post of each layer (see distinct_points).

    input: text, a list of texts of equal token length, or token ids [batch, pos] / [pos].
    answers: tokens to follow, as strings (each exactly one token) or ids.
    ln: "recompute" applies ln_final afresh to each residual point;
        "frozen" divides every point by the scale ln_final really used at that
        position in the full run (so rows are linear in the residual).
    positions: an index or a list of them (negative from the end): read the
        lens there only (the unembedding is most of the work); None: everywhere.
    cache: the activations of a run of the same input holding lens_hook_names,
        so that no forward pass runs.
    The last row ("{n_layers-1}_post", recompute) is the model's own output.
    """
    if ln not in LN_MODES:
        raise AnalysisError(f"ln must be one of {LN_MODES}, not {ln!r}")
    if not (isinstance(k, (int, np.integer)) and 1 <= k <= model.cfg.d_vocab):
        raise AnalysisError(f"k must be an integer in [1, {model.cfg.d_vocab}], got {k!r}")
    answer_ids = None if answers is None else token_ids(model, answers)
    if answer_ids is not None and answer_ids.size == 0:
        raise AnalysisError("answers is a token or a non-empty list of tokens (or None for no answers)")
    if cache is not None and not isinstance(cache, (ActivationCache, Mapping)):
        raise AnalysisError(f"cache is the input's run_with_cache cache holding lens_hook_names, "
                            f"not {type(cache).__name__}")
    bos = model._bos(prepend_bos)  # read once: the run of the tokens takes the convention they were made with
    tokens = model.tokens_of(input, prepend_bos=bos, same_length=True)
    chosen = _positions(positions, tokens.shape[1])
    points = distinct_points(model.cfg.n_layers)
    if cache is None:
        _, cache = model.run_with_cache(tokens, names_filter=lens_hook_names(model.cfg.n_layers), return_type=None,
                                        prepend_bos=bos)

    def at_chosen(name):
        if name not in cache:
            raise AnalysisError(f"the cache has no {name}: capture analysis.lens_hook_names(n_layers) in it")
        act = np.asarray(cache[name])
        if act.shape[:2] != tokens.shape:
            raise AnalysisError(f"the cache's {name} is {list(act.shape)}, not of the input's [batch, pos] "
                                f"{list(tokens.shape)}")
        return act[:, chosen]

    scale = at_chosen("ln_final.hook_scale") if ln == "frozen" else None

    # Each point normalized, then unembedded a block of rows at a time: one
    # read of W_U serves a block.
    normed = np.stack([final_norm(model, at_chosen(name), scale) for _, name in points])
    flat = normed.reshape(-1, normed.shape[-1])
    step = max(1, _LOGITS_PER_BLOCK // model.cfg.d_vocab)
    blocks = [_read_logits(unembed(model, flat[i : i + step]), k, answer_ids) for i in range(0, len(flat), step)]

    def stack(field, dtype):
        if answer_ids is None and field >= 2:
            return None
        arr = np.concatenate([b[field] for b in blocks]).astype(dtype)
        arr = arr.reshape(normed.shape[:3] + arr.shape[1:])  # [row, batch, pos, ...]
        return arr[:, 0] if tokens.shape[0] == 1 else arr

    return LogitLensResult(
        labels=[label for label, _ in points],
        top_ids=stack(0, np.int64),
        top_probs=stack(1, np.float32),
        answer_ids=answer_ids,
        answer_probs=stack(2, np.float32),
        answer_ranks=stack(3, np.int64),
        tokens=tokens[0].astype(np.int64) if tokens.shape[0] == 1 else tokens.astype(np.int64),
        ln=ln,
        model=model,
        positions=chosen,
    )


def _positions(positions, n: int) -> list[int]:
    """Absolute positions in [0, n) from None (all), an index or a list of indices."""
    if positions is None:
        return list(range(n))
    wanted = np.atleast_1d(np.asarray(positions))
    if wanted.ndim != 1 or wanted.size == 0 or not np.issubdtype(wanted.dtype, np.integer):
        raise AnalysisError(f"positions must be an integer or a non-empty list of integers, not {positions!r}")
    bad = [int(p) for p in wanted if not -n <= p < n]
    if bad:
        raise AnalysisError(f"position {bad[0]} is outside the input's {n} tokens")
    return [int(p) % n for p in wanted]


_LOGITS_PER_BLOCK = 1 << 24  # floats of logits computed at once (64 MB)


def _read_logits(logits: np.ndarray, k: int, answer_ids) -> tuple:
    """Of logits [rows, vocab]: the top k ids and their probabilities, and the
    answers' probabilities and ranks (1 = most probable) when asked for."""
    log_z = log_sum_exp(logits)[:, None]
    ids, top = top_k(logits, k)
    fields = (ids, np.exp(top - log_z))
    if answer_ids is None:
        return fields
    picked = logits[:, answer_ids]  # [rows, n_answers]
    ranks = np.stack([1 + (logits > picked[:, [a]]).sum(-1) for a in range(len(answer_ids))], -1)
    return fields + (np.exp(picked - log_z), ranks)
