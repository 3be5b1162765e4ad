"""Attention head detectors (TransformerLens's head_detector semantics) and
the induction diagnostics on repeated random token sequences."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Callable

import numpy as np

from ..cache import ActivationCache
from ..errors import ContextLengthError, InvalidTokensError, whole_number
from ..errors import AnalysisError
from ..io.tokenizer import texts_in
from ..text import format_grid, format_table

HEAD_NAMES = ("previous_token_head", "duplicate_token_head", "induction_head")
ERROR_MEASURES = ("abs", "mul")
# head_scores' keys, and the detection pattern each one uses
SCORE_PATTERNS = {
    "previous_token": "previous_token_head",
    "duplicate_token": "duplicate_token_head",
    "induction": "induction_head",
}

log = logging.getLogger(__name__)


# ---- detection patterns: [pos, pos], lower triangular, 1 where the head should attend ----

def previous_token_pattern(tokens: np.ndarray) -> np.ndarray:
    """Query i attends to key i - 1."""
    return np.eye(len(tokens), k=-1, dtype=np.float32)


def duplicate_token_pattern(tokens: np.ndarray) -> np.ndarray:
    """Query i attends to each earlier key holding the same token."""
    tokens = np.asarray(tokens)
    return np.tril(tokens[:, None] == tokens[None, :], k=-1).astype(np.float32)


def induction_pattern(tokens: np.ndarray) -> np.ndarray:
    """Query i attends to the token after each earlier copy of its own token
    (the duplicate pattern shifted one key to the right)."""
    shifted = np.zeros((len(tokens), len(tokens)), dtype=np.float32)
    shifted[:, 1:] = duplicate_token_pattern(tokens)[:, :-1]
    return np.tril(shifted)


_PATTERN_BUILDERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "previous_token_head": previous_token_pattern,
    "duplicate_token_head": duplicate_token_pattern,
    "induction_head": induction_pattern,
}


def pattern_similarity(patterns: np.ndarray, detection: np.ndarray, exclude_bos: bool = False,
                       exclude_current_token: bool = False, error_measure: str = "mul") -> np.ndarray:
    """Scores of attention patterns [..., q, k] against a detection pattern
    (broadcast to them), as TransformerLens's compute_head_attention_similarity_score:
    "mul": the share of attention on the pattern, sum(A * D) / sum(A);
    "abs": 1 - round(mean|A - D| * seq_len, 3).
    exclude_bos / exclude_current_token zero attention to key 0 / the diagonal first."""
    a = np.array(patterns, dtype=np.float64)
    d = np.asarray(detection, dtype=np.float64)
    if error_measure == "abs":
        a = np.abs(a - d)
    if exclude_bos:
        a[..., :, 0] = 0
    if exclude_current_token:
        a[..., np.arange(a.shape[-1]), np.arange(a.shape[-1])] = 0
    if error_measure == "mul":
        return (a * d).sum((-2, -1)) / a.sum((-2, -1))
    seq_len = a.shape[-1]
    raw = np.asarray(a.mean((-2, -1)) * seq_len, dtype=np.float32)
    # Python's round on each score, as TransformerLens does
    return np.array([1 - round(float(x), 3) for x in raw.reshape(-1)]).reshape(raw.shape)


# ---- detect_head --------------------------------------------------------------------------

class HeadScores(np.ndarray):
    """detect_head's scores: an [n_layers, n_heads] float32 array that prints
    as a table of layers x heads. What is computed from it (slices, arithmetic,
    reductions) is a plain numpy array."""

    title: str | None = None

    def __array_finalize__(self, obj):
        self.title = getattr(obj, "title", None)

    def __array_wrap__(self, array, context=None, return_scalar=False):
        plain = np.asarray(array)
        return plain[()] if return_scalar else plain

    def __getitem__(self, index):
        return self.view(np.ndarray)[index]

    def __str__(self):
        plain = self.view(np.ndarray)
        if plain.ndim != 2:
            return str(plain)
        return format_grid(plain, [f"L{l}" for l in range(plain.shape[0])], [f"H{h}" for h in range(plain.shape[1])],
                           title=self.title, fmt="{:.3f}")


def detect_head(model, seq, detection_pattern, heads=None, cache=None, *, exclude_bos: bool = False,
                exclude_current_token: bool = False, error_measure: str = "mul") -> HeadScores:
    """Score every head (or only `heads`; the others get -1) for how well its
    attention on `seq` matches `detection_pattern`; TransformerLens's
    head_detector.detect_head. Returns [n_layers, n_heads] float32, a
    HeadScores array that prints as a table.

    seq: a text (BOS prepended as TransformerLens does), a list of texts (the
        scores are averaged over them; named patterns only), or token ids
        ([pos], or [batch, pos] treated like a list).
    detection_pattern: "previous_token_head", "duplicate_token_head",
        "induction_head", or a lower-triangular array [pos, pos].
    heads: [(layer, head), ...] or {layer: [head, ...]}.
    cache: an ActivationCache of seq's run holding the patterns (one sequence).
    error_measure: "mul" (share of attention on the pattern) or "abs"
        (1 - mean absolute difference, scaled; 1 is a perfect match).
    """
    if error_measure not in ERROR_MEASURES:
        raise AnalysisError(f"error_measure must be one of {ERROR_MEASURES}, not {error_measure!r}")
    bos = model._bos(None)  # the model's default, read once: every run of the tokens takes it
    sequences = _sequences(model, seq, bos)
    if isinstance(detection_pattern, str):
        if detection_pattern not in HEAD_NAMES:
            raise AnalysisError(
                f"detection_pattern must be an array or one of {HEAD_NAMES}, not {detection_pattern!r}"
            )
        if cache is not None and len(sequences) > 1:
            raise AnalysisError("a cache holds one sequence's run: pass one sequence with it, or no cache")
        patterns = [_PATTERN_BUILDERS[detection_pattern](tokens) for tokens in sequences]
    else:
        if len(sequences) > 1:
            raise AnalysisError("a detection pattern array fits one sequence: pass one sequence")
        try:
            patterns = [np.asarray(detection_pattern, dtype=np.float32)]
        except (TypeError, ValueError):
            raise AnalysisError(f"a detection pattern array holds numbers (1 where a head should attend), not "
                                f"{np.asarray(detection_pattern).dtype}") from None
    mask = _head_mask(model.cfg, heads)
    scores = []
    for tokens, pattern in zip(sequences, patterns):
        _check_detection_pattern(pattern, len(tokens), error_measure)
        layer_patterns = _layer_patterns(model, tokens[None], cache, bos)
        scores.append(np.stack([
            pattern_similarity(layer_patterns(layer)[0], pattern, exclude_bos, exclude_current_token, error_measure)
            for layer in range(model.cfg.n_layers)
        ]))
    out = np.where(mask, np.mean(scores, axis=0), -1.0).astype(np.float32).view(HeadScores)
    name = detection_pattern if isinstance(detection_pattern, str) else "a detection pattern"
    out.title = f"detect_head: {name} ({error_measure})"
    return out


def _sequences(model, seq, prepend_bos: bool) -> list[np.ndarray]:
    """One int32 token row per sequence, each at least two tokens long."""
    texts = texts_in(seq)
    if texts is not None:
        rows = [model.tokens_of(s, prepend_bos=prepend_bos)[0] for s in ([texts] if isinstance(texts, str) else texts)]
    else:
        rows = list(model.tokens_of(seq))
    for row in rows:
        if len(row) < 2:
            raise InvalidTokensError("head detection needs sequences of at least two tokens")
    return rows


def _check_detection_pattern(pattern: np.ndarray, seq_len: int, error_measure: str):
    if pattern.shape != (seq_len, seq_len) or np.triu(pattern, k=1).any():
        raise AnalysisError(
            f"the detection pattern must be a lower-triangular [{seq_len}, {seq_len}] array "
            f"(sequence length {seq_len}), got shape {list(pattern.shape)}"
        )
    if error_measure == "mul" and not np.isin(pattern, (0, 1)).all():
        log.warning("a detection pattern with values other than 0 and 1 used with error_measure 'mul'")


def _head_mask(cfg, heads) -> np.ndarray:
    """[n_layers, n_heads] bool: the heads to score."""
    if heads is None:
        return np.ones((cfg.n_layers, cfg.n_heads), dtype=bool)
    shape = "heads is [(layer, head), ...] or {layer: [head, ...]}"
    try:
        pairs = [(l, h) for l, hs in heads.items() for h in hs] if isinstance(heads, dict) else list(heads)
        pairs = [tuple(pair) for pair in pairs]
    except TypeError:
        raise AnalysisError(f"{shape}, not {heads!r}") from None
    mask = np.zeros((cfg.n_layers, cfg.n_heads), dtype=bool)
    for pair in pairs:
        if len(pair) != 2:
            raise AnalysisError(f"{shape}: {pair!r} is not a (layer, head) pair")
        layer, head = (whole_number(i, what, error=AnalysisError) for i, what in zip(pair, ("a layer", "a head")))
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise AnalysisError(f"no head L{layer}H{head} in a model of {cfg.n_layers} layers x {cfg.n_heads} heads")
        mask[layer, head] = True
    return mask


def _pattern_names(model) -> list[str]:
    return [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]


def _layer_patterns(model, tokens: np.ndarray, cache, prepend_bos: bool) -> Callable[[int], np.ndarray]:
    """layer -> attention patterns [batch, head, q, k] of tokens [batch, pos] (made with a BOS
    first or not, as prepend_bos says), from the given cache or one run capturing every layer's pattern."""
    names = _pattern_names(model)
    if cache is None:
        _, cache = model.run_with_cache(tokens, names_filter=names, return_type=None, prepend_bos=prepend_bos)
    elif not isinstance(cache, (ActivationCache, Mapping)):
        raise AnalysisError(f"cache is the input's run_with_cache cache, not {type(cache).__name__}")

    def get(layer: int) -> np.ndarray:
        if names[layer] not in cache:
            raise AnalysisError(f"the cache has no {names[layer]}: cache the run with the attention patterns "
                                "(a names_filter keeping hook_pattern, or none)")
        pattern = np.asarray(cache[names[layer]])
        if pattern.ndim == 3:  # a cache without a batch axis
            pattern = pattern[None]
        if pattern.shape[0] != tokens.shape[0] or pattern.shape[-1] != tokens.shape[1]:
            raise AnalysisError(
                f"the cache's patterns {list(pattern.shape)} are not of this input's "
                f"{tokens.shape[0]} sequence(s) of {tokens.shape[1]} tokens"
            )
        return pattern

    return get


# ---- every score on one prompt --------------------------------------------------------------

def head_scores(model, input, cache=None, exclude_bos: bool = False, exclude_current_token: bool = False,
                prepend_bos: bool | None = None) -> dict[str, np.ndarray]:
    """The "previous_token", "duplicate_token" and "induction" scores ("mul",
    as detect_head) of every head on this input's attention patterns:
    {name: [n_layers, n_heads] float32}, averaged over the sequences of a batch.
    One forward pass, or none when `cache` (of this input's run) holds the patterns."""
    bos = model._bos(prepend_bos)  # read once: the run of the tokens takes the convention they were made with
    tokens = model.tokens_of(input, prepend_bos=bos, same_length=True)
    if tokens.shape[1] < 2:
        raise InvalidTokensError("head scores need sequences of at least two tokens")
    return _scores(model, tokens, _layer_patterns(model, tokens, cache, bos), exclude_bos, exclude_current_token)


def _scores(model, tokens, layer_patterns, exclude_bos=False, exclude_current_token=False) -> dict[str, np.ndarray]:
    detections = {
        name: np.stack([_PATTERN_BUILDERS[pattern](row) for row in tokens])[:, None]  # [batch, 1, q, k]
        for name, pattern in SCORE_PATTERNS.items()
    }
    out = {name: np.zeros((model.cfg.n_layers, model.cfg.n_heads), dtype=np.float32) for name in detections}
    for layer in range(model.cfg.n_layers):
        patterns = layer_patterns(layer)
        for name, detection in detections.items():
            out[name][layer] = pattern_similarity(patterns, detection, exclude_bos, exclude_current_token).mean(0)
    return out


# ---- repeated random tokens: induction ----------------------------------------------------

def repeated_tokens(model, seq_len: int = 50, batch: int = 4, seed: int = 0) -> np.ndarray:
    """[batch, 1 + 2 * seq_len] int64: BOS, then seq_len random tokens twice
    (no BOS when the model has none). The tokens of a copy are distinct while
    the vocabulary allows, so each has one continuation to copy; special tokens
    are not drawn."""
    bos = model.cfg.bos_token_id
    if bos is None and model.tokenizer is not None:
        bos = model.tokenizer.bos_token_id
    prefix = [] if bos is None else [bos]
    seq_len = whole_number(seq_len, "seq_len", 1, error=AnalysisError)
    batch = whole_number(batch, "batch", 1, error=AnalysisError)
    seed = whole_number(seed, "seed", 0, error=AnalysisError)  # numpy's generator takes no negative seed
    if len(prefix) + 2 * seq_len > model.cfg.n_ctx:
        raise ContextLengthError(
            f"{len(prefix)} + 2 x {seq_len} tokens exceed the model's context of {model.cfg.n_ctx}"
        )
    special = {t for t in (bos, model.cfg.eos_token_id) if t is not None}
    candidates = np.setdiff1d(np.arange(model.cfg.d_vocab), list(special))
    rng = np.random.default_rng(seed)
    distinct = seq_len <= len(candidates)
    random = np.stack([rng.choice(candidates, size=seq_len, replace=not distinct) for _ in range(batch)])
    starts = np.full((batch, len(prefix)), prefix[0] if prefix else 0)
    return np.concatenate([starts, random, random], axis=1).astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class RepeatedSequenceLoss:
    """Loss on repeated random tokens, averaged over the batch.
    per_position: [pos - 1], entry t is the loss of predicting token t + 1;
    first_half / second_half: the mean loss on predicting the first / second copy
    (an induction head makes the second much lower)."""

    per_position: np.ndarray
    first_half: float
    second_half: float
    seq_len: int

    def __str__(self):
        return (f"loss on {self.seq_len} random tokens repeated: first copy {self.first_half:.3f}, "
                f"second copy {self.second_half:.3f} (drop {self.first_half - self.second_half:.3f})")


def _repeated_loss(losses: np.ndarray, n_prefix: int, seq_len: int) -> RepeatedSequenceLoss:
    """From per-token losses [batch, pos - 1] (losses[:, t] predicts token t + 1)."""
    per_position = losses.mean(0)
    first = per_position[max(n_prefix, 1) - 1 : n_prefix + seq_len - 1]
    second = per_position[n_prefix + seq_len - 1 : n_prefix + 2 * seq_len - 1]
    return RepeatedSequenceLoss(per_position, float(first.mean()), float(second.mean()), seq_len)


def repeated_sequence_loss(model, seq_len: int = 50, batch: int = 4, seed: int = 0) -> RepeatedSequenceLoss:
    """Per-position loss on repeated_tokens(model, seq_len, batch, seed)."""
    tokens = repeated_tokens(model, seq_len, batch, seed)
    losses = model(tokens, return_type="loss", loss_per_token=True, prepend_bos=_has_bos(tokens, seq_len))
    return _repeated_loss(losses, tokens.shape[1] - 2 * seq_len, seq_len)


def _has_bos(tokens: np.ndarray, seq_len: int) -> bool:
    """Whether repeated_tokens put a BOS first: its runs say so, or a left-padded run under
    default_prepend_bos=False would read a BOS that is the pad token as padding."""
    return tokens.shape[1] > 2 * seq_len


def induction_scores(model, seq_len: int = 50, batch: int = 4, seed: int = 0, exclude_bos: bool = False,
                     exclude_current_token: bool = False) -> np.ndarray:
    """Induction scores [n_layers, n_heads] on repeated_tokens(model, seq_len, batch, seed)
    (detect_head's "induction_head", "mul", averaged over the batch)."""
    tokens = repeated_tokens(model, seq_len, batch, seed)
    return head_scores(model, tokens, exclude_bos=exclude_bos, exclude_current_token=exclude_current_token,
                       prepend_bos=_has_bos(tokens, seq_len))["induction"]


# ---- summary ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class HeadSummary:
    """scores: {"previous_token" | "duplicate_token" | "induction": [n_layers, n_heads]};
    loss: the loss on repeated random tokens; source: what the scores were measured on."""

    scores: dict[str, np.ndarray]
    loss: RepeatedSequenceLoss
    source: str
    top: int = 5

    def top_heads(self, name: str, top: int | None = None) -> list[tuple[int, int, float]]:
        """The `top` highest-scoring heads for a score: [(layer, head, score), ...].
        top: a count >= 0 (0: none), or None for the summary's own `top`."""
        if name not in self.scores:
            raise AnalysisError(f"the scores are {list(self.scores)}, not {name!r}")
        top = whole_number(self.top if top is None else top, "top", 0, error=AnalysisError)
        scores = self.scores[name]
        order = np.argsort(-scores, axis=None, kind="stable")[:top]
        return [(int(i) // scores.shape[1], int(i) % scores.shape[1], float(scores.flat[i])) for i in order]

    def __str__(self):
        columns = {name: self.top_heads(name) for name in self.scores}
        rows = [[str(rank + 1)] + [f"L{l}H{h} {s:.3f}" for l, h, s in (columns[n][rank] for n in columns)]
                for rank in range(min(len(c) for c in columns.values()))]
        table = format_table(["#"] + list(columns), rows, title=f"Top heads on {self.source}",
                             align="r" + "l" * len(columns))
        return f"{table}\n{self.loss}"


def head_summary(model, input=None, seq_len: int = 50, batch: int = 4, seed: int = 0, top: int = 5) -> HeadSummary:
    """Previous-token, duplicate-token and induction scores of every head, on
    `input` or (None) on repeated random tokens, with the loss on repeated
    random tokens; print it for the top heads of each (top >= 0; 0 prints none)."""
    # a negative count would slice all heads but the last ones
    top = whole_number(top, "top", 0, error=AnalysisError)
    if input is not None:
        return HeadSummary(head_scores(model, input), repeated_sequence_loss(model, seq_len, batch, seed),
                           "the given input", top)
    # one run gives both the patterns and the loss
    tokens = repeated_tokens(model, seq_len, batch, seed)
    (_, losses), cache = model.run_with_cache(tokens, names_filter=_pattern_names(model), return_type="both",
                                              loss_per_token=True, prepend_bos=_has_bos(tokens, seq_len))
    return HeadSummary(head_scores(model, tokens, cache=cache),
                       _repeated_loss(losses, tokens.shape[1] - 2 * seq_len, seq_len),
                       f"{batch} x {seq_len} random tokens repeated", top)
