"""Model.generate: continuing a text or token ids, with the keywords of
TransformerLens's HookedTransformer.generate (do_sample, freq_penalty,
use_past_kv_cache, return_type, padding_side, verbose, eos_token_id) and
tinymech's own (seed, on_token, hooks, attention_mask)."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np

from .errors import ContextLengthError, InvalidInputError, real_number, true_or_false, whole_number
from .hooks import HookSpec
from .io.tokenizer import texts_in
from .model_helpers import check_padding_side
from .padding import checked_mask, pad_counts
from .ops import sample_next, sampling_settings
from .progress import progress_function


def generate(
    model,
    input,
    max_new_tokens: int = 10,
    *,  # keywords only from here: TransformerLens's positional order differs (stop_at_eos, eos_token_id, ...)
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_at_eos: bool = True,
    on_token: Callable[[np.ndarray], bool | None] | None = None,
    prepend_bos: bool | None = None,
    hooks: Iterable[HookSpec] = (),
    do_sample: bool | None = None,
    freq_penalty: float = 0.0,
    use_past_kv_cache: bool = True,
    return_type: str = "input",
    padding_side: str | None = None,
    verbose: bool = False,
    eos_token_id: int | Iterable[int] | None = None,
    attention_mask=None,
):
    """Continue the input with the KV cache, greedily (temperature 0, the
    default) or by sampling.

    A string in gives the prompt plus continuation as a string (without
    special tokens such as BOS, as TransformerLens's); token ids in give the
    token array [batch, prompt + new] (prompt included).
    on_token(new_ids [batch]) is called after each step; returning True stops.
    Hooks (and those of an enclosing `with model.hooks(...)`) apply at every
    step, to the prompt and to generated positions alike.

    TransformerLens's keywords, with its meaning: do_sample (False: greedy;
    True: sampling, at temperature 1.0 unless one is given), freq_penalty,
    use_past_kv_cache, return_type ("input", "str", "tokens"), padding_side,
    verbose (a progress line on stderr; off by default here), eos_token_id
    (one id or several). A batch of texts of different lengths is padded on
    the left, as TransformerLens pads it for generation: each row continues as
    its text alone would (its padding masked, its positions its own).

    attention_mask [batch, pos] (1: a real token, 0: padding) goes with token ids: each row's
    padding must come before its first real token (left padding, any pad id), and each row then
    continues as it would alone. With texts it is refused (tm.InvalidInputError): generate pads
    and masks texts itself, and a mask of another tokenization would not fit them.

    A prompt may fill the context and one more token be sampled: the last new token is never run.
    """
    texts = texts_in(input)  # read once: an iterator of texts is spent by reading
    if texts is not None:
        input = texts
    as_text = _returns_text(texts is not None, return_type)
    check_padding_side(padding_side)
    if texts is not None and attention_mask is not None:
        raise InvalidInputError("attention_mask goes with token ids: generate pads texts of different lengths "
                                "on the left and masks that padding itself; pass the texts without one")
    if texts is not None and not isinstance(texts, str) and len(texts) > 1:
        padding_side = "left"  # the real tokens end together, so each row's next token is read at the end
    prepend_bos = model._bos(prepend_bos)  # None: the model's default, read once
    tokens = model.tokens_of(input, prepend_bos=prepend_bos, padding_side=padding_side)
    max_new_tokens = whole_number(max_new_tokens, "max_new_tokens", 0)
    temperature, top_k, top_p = sampling_settings(_temperature(temperature, do_sample), top_k, top_p)
    _check_float32_temperature(temperature)
    freq_penalty = _freq_penalty(freq_penalty)
    if temperature == 0:  # greedy decoding ignores it, as TransformerLens's does
        freq_penalty = 0.0
    rng = np.random.default_rng(None if seed is None else whole_number(seed, "seed", 0))
    progress = progress_function(true_or_false(verbose, "verbose"), label="generating", unit="tokens")
    stops, pad = _stop_tokens(model, eos_token_id) if true_or_false(stop_at_eos, "stop_at_eos") else ((), None)
    if on_token is not None and not callable(on_token):  # found out after a forward pass otherwise
        raise InvalidInputError(f"on_token is a function of the new ids, not {type(on_token).__name__}")
    batch, total = tokens.shape[0], tokens.shape[1] + max(max_new_tokens - 1, 0)  # the last new token never runs
    if total > model.cfg.n_ctx:
        raise ContextLengthError(f"a prompt of {tokens.shape[1]} tokens and {max_new_tokens} new ones exceed the "
                                 f"model's context of {model.cfg.n_ctx} (the last new token is not run, so at most "
                                 f"{model.cfg.n_ctx + 1 - tokens.shape[1]} new ones fit)")
    if attention_mask is None:
        pads = _left_padding(model, tokens, prepend_bos, padding_side)
    else:
        pads = _masked_padding(checked_mask(attention_mask, tokens.shape))
    next_logits = Decoder(model, model._plan(hooks), batch, total, true_or_false(use_past_kv_cache, "use_past_kv_cache"),
                          pads)
    counts = _token_counts(tokens, model.cfg.d_vocab) if freq_penalty else None
    out = [tokens.astype(np.int64)]
    finished = np.zeros(batch, dtype=bool)
    if max_new_tokens > 0:
        logits = next_logits(tokens)
    for step in range(max_new_tokens):
        if counts is None:
            nxt = sample_next(logits, temperature, top_k, top_p, rng)
        else:  # as TransformerLens: logits / temperature - freq_penalty * count, in float64 (no inf * 0 = NaN)
            scaled = np.clip(logits.astype(np.float64) / temperature - freq_penalty * counts, F32.min, F32.max)
            nxt = sample_next(scaled, 1.0, top_k, top_p, rng)
        if stops:
            nxt = np.where(finished, pad, nxt)
            finished |= np.isin(nxt, stops)
        out.append(nxt[:, None])
        if counts is not None:
            counts[np.arange(batch), nxt] += 1
        if progress is not None:
            progress(step + 1, max_new_tokens)
        if on_token is not None and _stops(on_token(nxt.copy())):
            break
        if (stops and finished.all()) or step == max_new_tokens - 1:
            break
        logits = next_logits(nxt[:, None].astype(np.int32))
    result = np.concatenate(out, axis=1)
    if not as_text:
        return result
    texts = [_text(model, row) for row in result]
    return texts[0] if len(texts) == 1 else texts


def _left_padding(model, tokens: np.ndarray, prepend_bos, padding_side):
    """The prompt's padding counts for the core when it is padded on the left (as
    TransformerLens's initial attention mask finds it), else None. (TransformerLens also
    masks a token prompt's trailing pad tokens under right padding, then reads the
    continuation after the gap; tinymech reads them as tokens.)"""
    tok = model.tokenizer
    if tok is None or (padding_side or tok.padding_side) != "left":
        return None
    return model._pads(model._attention_mask(tokens, None, model._bos(prepend_bos), "left"))


def _masked_padding(mask: np.ndarray):
    """attention_mask's padding counts for the core, refused unless on the left only: new tokens
    follow a row's last token, so padding after it would sit between them."""
    pads = pad_counts(mask)
    if pads is not None and pads[1].any():
        row = int(np.flatnonzero(pads[1])[0])
        raise InvalidInputError(f"row {row} of attention_mask is padded on the right ({mask[row].tolist()}): "
                                "generate continues each row after its last token, so padding goes before its "
                                "first real token (left padding)")
    return pads


class Decoder:
    """The last position's logits [batch, d_vocab] after the new tokens: with the
    KV cache each call runs only them (the cache keeps the prompt's left padding);
    without it (use_past_kv_cache=False) the whole sequence runs again, as
    TransformerLens does. pads: the prompt's padding counts, or None."""

    def __init__(self, model, plan, batch: int, total: int, use_cache: bool, pads=None):
        self.model, self.plan, self.pads = model, plan, pads
        self.cache = model.new_cache(batch) if use_cache else None
        if self.cache is not None:
            self.cache.reserve(total)  # checked by the caller; no regrowth copies while decoding
        self.sequence = np.zeros((batch, 0), dtype=np.int32)

    def __call__(self, new: np.ndarray) -> np.ndarray:
        if self.cache is not None:
            pads, self.pads = self.pads, None  # the prompt's, once
            return self.model._core_forward(self.cache, new, self.plan, "last", pads=pads)
        self.sequence = np.concatenate([self.sequence, new], axis=1)
        return self.model._core_forward(None, self.sequence, self.plan, "last", pads=self.pads)


RETURN_TYPES = ("input", "str", "tokens")
F32 = np.finfo(np.float32)


def _returns_text(text_in: bool, return_type) -> bool:
    """Whether generate returns text: return_type "str", or "input" with text in."""
    if return_type not in RETURN_TYPES:
        hint = " (tinymech generates from text or token ids, not embeddings)" if return_type == "embeds" else ""
        raise InvalidInputError(f"return_type must be 'input', 'str' or 'tokens', not {return_type!r}{hint}")
    return text_in if return_type == "input" else return_type == "str"


def _temperature(temperature, do_sample) -> float:
    """do_sample as TransformerLens's: False is greedy, True samples (at temperature 1.0
    unless one is given); None leaves it to the temperature (0, the default: greedy)."""
    if do_sample is None:
        return 0.0 if temperature is None else temperature
    if not true_or_false(do_sample, "do_sample"):
        return 0.0
    return 1.0 if temperature is None else temperature


def _check_float32_temperature(temperature: float) -> None:
    """The core samples in float32: a positive temperature that rounds to 0 there cannot scale logits."""
    if 0 < temperature <= float(F32.smallest_subnormal) / 2:  # what rounds to 0 (compared, not cast: no overflow)
        raise InvalidInputError(f"temperature {temperature} rounds to 0 in float32, the precision sampling runs in: "
                                f"use at least {F32.smallest_subnormal:.2g} (the smallest positive float32), or 0 "
                                "(do_sample=False) for greedy decoding")


def _stops(answer) -> bool:
    """What on_token returned, read as 'stop here' by its truth (None goes on)."""
    try:
        return bool(answer)
    except (ValueError, TypeError):  # an array of several values has no one truth
        raise InvalidInputError(f"on_token returns True to stop (or None / False to go on), not {answer!r:.60}") \
            from None


def _freq_penalty(value) -> float:
    penalty = real_number(value, "freq_penalty")
    if not (math.isfinite(penalty) and penalty >= 0):
        raise InvalidInputError(f"freq_penalty must be a finite number >= 0, not {penalty}")
    return penalty


def _stop_tokens(model, eos_token_id) -> tuple[tuple[int, ...], int | None]:
    """(the ids that end a sequence, the id that pads a finished one), as TransformerLens's:
    eos_token_id (one id or several) or else the model's end-of-text token; none: no stop."""
    default = model.cfg.eos_token_id
    if default is None and model.tokenizer is not None:
        default = model.tokenizer.eos_token_id
    if eos_token_id is None:
        return ((default,), default) if default is not None else ((), None)
    ids = list(eos_token_id) if isinstance(eos_token_id, (list, tuple, np.ndarray)) else [eos_token_id]
    ids = tuple(whole_number(i, "eos_token_id", 0, maximum=model.cfg.d_vocab - 1) for i in ids)
    if not ids:
        raise InvalidInputError("eos_token_id must be a token id or a non-empty list of them")
    pad = ids[0] if len(ids) == 1 or default is None else default
    return ids, pad


def _token_counts(tokens: np.ndarray, d_vocab: int) -> np.ndarray:
    """How often each token occurs in each row, [batch, d_vocab] float64."""
    counts = np.zeros((tokens.shape[0], d_vocab))
    for row, ids in zip(counts, tokens):
        row += np.bincount(ids, minlength=d_vocab)
    return counts


def _text(model, row: np.ndarray) -> str:
    """A row as text, without special tokens (BOS, end-of-text), as TransformerLens's."""
    return model._need_tokenizer().decode(row, limit=model.cfg.d_vocab, skip_special_tokens=True)
