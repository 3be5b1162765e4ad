"""The model work behind the TUI. Every method here may take a while, so the
app calls them from worker threads; each returns an immutable result that
widgets only read."""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, Sequence

import numpy as np

import tinymech as tm
from tinymech import analysis
from tinymech.analysis.logit_lens import distinct_points
from tinymech.errors import InvalidInputError
from tinymech.ops import log_sum_exp, top_k
from tinymech.sae.dashboards import FeatureDashboards
from tinymech.sae.dashboards.neuronpedia import import_neuronpedia
from tinymech.sae.dashboards.store import INDEX

from .display import token_label, token_labels

HEAD_SCORES = ("previous_token", "induction", "duplicate_token")
TOP_K = 10  # predictions and logit-lens tokens kept per position
TOP_FEATURES = 12  # SAE features kept per position
DASHBOARDS_FOLDER = "dashboards"  # where tm.feature_dashboards writes them inside an SAE's folder


def _frozen(array) -> np.ndarray:
    out = np.array(array)  # a private copy nobody else can write to
    out.setflags(write=False)
    return out


@dataclasses.dataclass(frozen=True)
class SaeInfo:
    index: int
    hook_name: str
    d_sae: int
    labels: Mapping[int, str]

    @property
    def title(self) -> str:
        return f"SAE {self.hook_name} ({self.d_sae})"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    n_layers: int
    n_heads: int
    d_model: int
    n_ctx: int
    saes: tuple[SaeInfo, ...]

    @property
    def title(self) -> str:
        return f"{self.name} ({self.n_layers}L {self.n_heads}H d{self.d_model})"


@dataclasses.dataclass(frozen=True, eq=False)  # arrays inside: compared by identity
class FeatureActs:
    """One SAE's feature activations over the prompt."""

    sae: SaeInfo
    acts: np.ndarray  # [pos, d_sae]
    top_ids: np.ndarray  # [pos, TOP_FEATURES], most active first
    top_values: np.ndarray  # [pos, TOP_FEATURES]


@dataclasses.dataclass(frozen=True, eq=False)  # arrays inside: compared by identity
class Analysis:
    """Everything the panels show about one prompt."""

    prompt: str
    token_ids: np.ndarray  # [pos]
    tokens: tuple[str | bytes, ...]  # each token's text, or its bytes if they are part of a character
    labels: tuple[str, ...]  # how the tokens show, characters cut across tokens joined (display.token_labels)
    bos: bool  # whether token 0 is the BOS the model prepended
    vocab_size: int
    losses: np.ndarray  # [pos]: loss of predicting token i from the tokens before it (nan at 0)
    top_ids: np.ndarray  # [pos, TOP_K]: the most likely next tokens after position i
    top_probs: np.ndarray  # [pos, TOP_K]
    top_tokens: tuple[tuple[str | bytes, ...], ...]  # decoded top_ids
    next_rank: np.ndarray  # [pos]: rank of the actual next token (0 = top; -1 after the last)
    next_prob: np.ndarray  # [pos]
    patterns: np.ndarray  # [layer, head, query, key]
    head_scores: Mapping[str, np.ndarray]  # HEAD_SCORES -> [layer, head]
    lens_labels: tuple[str, ...]  # one per logit-lens row (embed, L0 attn, L0 mlp, ...)
    lens_at: Callable[..., "LensAt"]  # (position, token followed or None) -> the lens there, computed once asked for
    features: tuple[FeatureActs, ...]

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


@dataclasses.dataclass(frozen=True, eq=False)
class LensAt:
    """The logit lens at one position, a row per lens_labels entry."""

    ids: np.ndarray  # [row, TOP_K], most probable first
    probs: np.ndarray  # [row, TOP_K]
    tokens: tuple[tuple[str | bytes, ...], ...]  # [row][k] decoded
    answer: int | None  # the token followed, if any
    answer_ranks: np.ndarray | None  # [row]: its rank, 1 = the most probable
    answer_probs: np.ndarray | None  # [row]


@dataclasses.dataclass(frozen=True, eq=False)
class TokenSaliency:
    """Gradient × input of each token toward the top prediction after one position."""

    position: int
    target: int  # the token predicted there, which the scores explain
    target_label: str  # as a chip shows it
    scores: np.ndarray  # [pos]: log-probability pushed by each token; nan after `position`


@dataclasses.dataclass(frozen=True, eq=False)  # arrays inside: compared by identity
class AttributionMap:
    """Attribution patching of every head's output (analysis.attribution_patch, head_z,
    denoise) for a prompt against a corrupted variant of one token length: the
    estimated change of logit(correct) - logit(wrong) at the last position when the
    head's clean output is patched into the corrupted run."""

    prompt: str  # the clean prompt (the analysis it belongs to)
    corrupted: str  # how the corruption reads: the typed prompt, or "@pos old → new"
    correct: str  # the clean run's top prediction (label)
    wrong: str  # the corrupted run's (its runner-up where both runs agree)
    values: np.ndarray  # [layer, head]: the estimated change of the metric
    clean: float  # the metric on the clean run
    corrupted_score: float  # and on the corrupted run

    @property
    def shares(self) -> np.ndarray:
        """values as shares of the clean - corrupted gap (1: the head alone restores it)."""
        gap = self.clean - self.corrupted_score
        return self.values / gap if gap != 0 else np.zeros_like(self.values)


@dataclasses.dataclass(frozen=True)
class FeatureEffects:
    """The tokens a feature's decoder direction promotes and suppresses."""

    sae_index: int
    feature: int
    promoted: tuple[tuple[str | bytes, float], ...]
    suppressed: tuple[tuple[str | bytes, float], ...]


@dataclasses.dataclass(frozen=True)
class Steer:
    """An intervention for generation: a feature added or clamped, or a head ablated."""

    mode: str = "off"  # off | add | clamp | ablate
    strength: float = 8.0
    sae_index: int = 0
    feature: int | None = None
    layer: int = 0
    head: int = 0

    MODES = ("off", "add", "clamp", "ablate")
    FEATURE_MODES = ("add", "clamp")  # the modes that need an SAE, and use the strength

    @staticmethod
    def modes(has_sae: bool) -> tuple[str, ...]:
        """The modes on offer: without an SAE there is no feature to steer with."""
        return Steer.MODES if has_sae else tuple(m for m in Steer.MODES if m not in Steer.FEATURE_MODES)

    @property
    def active(self) -> bool:
        if self.mode in self.FEATURE_MODES:
            return self.feature is not None
        return self.mode == "ablate"

    def describe(self) -> str:
        if self.mode == "add" and self.feature is not None:
            return f"add {self.strength:g} × #{self.feature}"
        if self.mode == "clamp" and self.feature is not None:
            return f"clamp #{self.feature} to {self.strength:g}"
        if self.mode == "ablate":
            return f"ablate L{self.layer}H{self.head}"
        if self.mode in self.FEATURE_MODES:
            return f"{self.mode}: pick a feature first (Enter in Features)"
        return "off"


class Backend:
    def __init__(self, model: tm.Model, saes: Sequence = (), dashboards: Sequence = ()):
        """dashboards: a dashboards folder per SAE, in order (None or missing: the SAE's own
        dashboards/ folder, if it has one)."""
        self.model = model
        self.saes = list(saes)
        self._dashboards = list(dashboards)
        cfg = model.cfg
        sae_infos = tuple(
            SaeInfo(i, sae.cfg.hook_name, int(sae.cfg.d_sae), MappingProxyType(dict(sae.labels)))
            for i, sae in enumerate(self.saes)
        )
        name = cfg.model_name or (model.path.rstrip("/").split("/")[-1] if model.path else "model")
        self.info = ModelInfo(name, cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.n_ctx, sae_infos)
        self._lens_labels = tuple(label for label, _ in distinct_points(cfg.n_layers))

    # ---- tokens -------------------------------------------------------------------

    def _decode_each(self, ids) -> tuple[str | bytes, ...]:
        """Each token's text, or its bytes where they are not whole UTF-8 on their
        own (a piece of a character: the tokenizer's text would be U+FFFD)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        tokenizer = self.model.tokenizer.backend
        return tuple(_bytes_if_partial(tokenizer, int(i), t) for i, t in zip(ids, self.model.to_str_tokens(ids)))

    def _decode_rows(self, rows) -> tuple[tuple[str | bytes, ...], ...]:
        return tuple(self._decode_each(r) for r in rows)

    def decode(self, ids) -> str:
        return self.model.to_string(np.asarray(ids, dtype=np.int64))

    # ---- one prompt ---------------------------------------------------------------

    def analyze(self, prompt: str) -> Analysis:
        model, cfg = self.model, self.model.cfg
        # BOS first when the tokenizer has one (and the model's default has it); a TinymechError on bad input
        bos = model.tokenizer is not None and model.tokenizer.bos_token_id is not None and model.cfg.default_prepend_bos
        tokens = model.tokens_of(prompt, prepend_bos=bos)  # [1, pos]
        names = [f"blocks.{l}.attn.hook_pattern" for l in range(cfg.n_layers)]
        names += analysis.lens_hook_names(cfg.n_layers)
        names += [sae.cfg.hook_name for sae in self.saes if sae.cfg.hook_name not in names]
        (logits, losses), cache = model.run_with_cache(
            tokens, names_filter=names, return_type="both", loss_per_token=True
        )
        ids, logits = tokens[0], logits[0]  # [pos], [pos, vocab]
        top_ids, top_logits = top_k(logits, min(TOP_K, cfg.d_vocab))
        top_probs = np.exp(top_logits - log_sum_exp(logits)[:, None])
        next_rank = np.full(len(ids), -1)
        next_prob = np.full(len(ids), np.nan, dtype=np.float32)
        next_prob[:-1] = np.exp(-losses[0])
        for pos in range(len(ids) - 1):
            next_rank[pos] = int((logits[pos] > logits[pos, ids[pos + 1]]).sum())
        patterns = np.stack([cache["pattern", l][0] for l in range(cfg.n_layers)])
        lens_at = self._lens_reader(tokens, cache)
        lens_at(len(ids) - 1, int(top_ids[-1, 0]))  # where the selection starts, following the top prediction
        # BOS soaks up most heads' attention (a resting place): scored as
        # shares of the attention elsewhere, an induction head stands out
        # on one repeated sentence (demo model's L3H0: 0.08 with BOS, 0.70 without)
        scores = analysis.head_scores(model, tokens, cache=cache, prepend_bos=False, exclude_bos=bos)
        features = tuple(self._feature_acts(i, cache[sae.cfg.hook_name][0]) for i, sae in enumerate(self.saes))
        decoded = self._decode_each(ids)
        return Analysis(
            prompt=prompt,
            token_ids=_frozen(ids),
            tokens=decoded,
            labels=tuple(token_labels(decoded, bos)),
            bos=bos,
            vocab_size=cfg.d_vocab,
            losses=_frozen(np.concatenate([[np.nan], losses[0]]).astype(np.float32)),
            top_ids=_frozen(top_ids),
            top_probs=_frozen(top_probs),
            top_tokens=self._decode_rows(top_ids),
            next_rank=_frozen(next_rank),
            next_prob=_frozen(next_prob),
            patterns=_frozen(patterns),
            head_scores=MappingProxyType({k: _frozen(scores[k]) for k in HEAD_SCORES}),
            lens_labels=self._lens_labels,
            lens_at=lens_at,
            features=features,
        )

    def _lens_reader(self, tokens: np.ndarray, cache) -> Callable[..., LensAt]:
        """The logit lens at a position, following a token (or none), from the
        analysis run's cache, computed once when first asked for: every position
        at once would unembed every row at every position (seconds for a long
        prompt on GPT-2 small)."""

        @functools.lru_cache(maxsize=256)
        def lens_at(pos: int, answer: int | None = None) -> LensAt:
            lens = analysis.logit_lens(self.model, tokens, answers=None if answer is None else [answer], k=TOP_K,
                                       prepend_bos=False, positions=[pos], cache=cache)
            rows = [lens.labels.index(label) for label in self._lens_labels]
            ids = lens.top_ids[rows, 0]  # [row, k]

            def of_answer(values):  # [row], or None without an answer
                return None if values is None else _frozen(values[rows, 0, 0])

            return LensAt(_frozen(ids), _frozen(lens.top_probs[rows, 0]), self._decode_rows(ids), answer,
                          of_answer(lens.answer_ranks), of_answer(lens.answer_probs))

        return lens_at

    def _feature_acts(self, index: int, acts: np.ndarray) -> FeatureActs:
        sae = self.saes[index]
        top_ids, top_values = sae.top_features(acts, min(TOP_FEATURES, sae.cfg.d_sae))
        return FeatureActs(self.info.saes[index], _frozen(sae.encode(acts)), _frozen(top_ids), _frozen(top_values))

    def feature_effects(self, sae_index: int, feature: int, k: int = 6) -> FeatureEffects:
        e = self.saes[sae_index].logit_effects(self.model, feature, k)
        return FeatureEffects(sae_index, feature, self._pairs(e.promoted, e.promoted_tokens, e.promoted_values),
                              self._pairs(e.suppressed, e.suppressed_tokens, e.suppressed_values))

    def _pairs(self, ids, tokens, values) -> tuple[tuple[str | bytes, float], ...]:
        """(token, value) pairs of logit_effects' decoded tokens (the TUI's model has
        a tokenizer), a piece of a character as its bytes."""
        tokenizer = self.model.tokenizer.backend
        return tuple((_bytes_if_partial(tokenizer, int(i), t), float(v)) for i, t, v in zip(ids, tokens, values))

    # ---- attribution patching -------------------------------------------------------

    def attribution(self, a: Analysis, selected: int, corrupted: str = "") -> AttributionMap:
        """Each head's attribution (AttributionMap) for the analysed prompt against `corrupted`
        (a prompt of its token length), or when that is empty against the prompt with the
        selected token swapped for the model's likeliest other token there."""
        model = self.model
        clean = np.asarray(a.token_ids, dtype=np.int64)[None]
        if corrupted:
            bad = model.tokens_of(corrupted, prepend_bos=a.bos).astype(np.int64)
            if bad.shape != clean.shape:
                raise InvalidInputError(f"the corrupted prompt is {bad.shape[1]} tokens and the prompt "
                                        f"{clean.shape[1]}: attribution patching pairs them position by position")
            what = corrupted
        else:
            if selected < 1:  # the token before it predicts the swap
                raise InvalidInputError("select a token after the first to swap it, or type a corrupted prompt")
            old = int(a.token_ids[selected])
            new = next(int(t) for t in a.top_ids[selected - 1] if int(t) != old)
            bad = clean.copy()
            bad[0, selected] = new
            what = f"@{selected} {a.labels[selected]} → {token_label(self._decode_each([new])[0])}"
        correct = int(a.top_ids[-1, 0])
        wrong = next(int(t) for t in np.argsort(-model.forward(bad, logits="last")[0])[:2] if int(t) != correct)
        result = analysis.attribution_patch(model, clean, bad, answers=[(correct, wrong)], over="head_z",
                                            prepend_bos=False)
        return AttributionMap(a.prompt, what, token_label(a.top_tokens[-1][0]),
                              token_label(self._decode_each([wrong])[0]), _frozen(result.values - result.corrupted),
                              result.clean, result.corrupted)

    # ---- feature dashboards -------------------------------------------------------

    def dashboards_folder(self, sae_index: int) -> Path | None:
        """The dashboards folder of an SAE: the one given for it, else its folder's
        dashboards/ when that holds an index; None when it has none."""
        given = self._dashboards[sae_index] if sae_index < len(self._dashboards) else None
        if given is not None:
            return Path(given)
        path = self.saes[sae_index].path
        folder = Path(path) / DASHBOARDS_FOLDER if path else None
        return folder if folder is not None and (folder / INDEX).is_file() else None

    def load_dashboards(self, sae_index: int) -> FeatureDashboards:
        """The SAE's dashboards (reading them takes a while for thousands of features), refused
        when they name another SAE. Where nothing shows they are this SAE's, each dashboard says
        so (their `unverified`): a warning from this worker thread would reach no one."""
        folder = self.dashboards_folder(sae_index)
        if folder is None:
            raise InvalidInputError(f"SAE {self.info.saes[sae_index].hook_name} has no feature dashboards")
        sae = self.saes[sae_index]
        if folder.is_file():  # a Neuronpedia export (tm.export_neuronpedia, or Neuronpedia's own)
            return import_neuronpedia(folder, sae=sae, trust_unverified=True)
        return FeatureDashboards.load(folder, sae=sae, trust_unverified=True)

    # ---- interventions ------------------------------------------------------------

    def steer_hooks(self, steer: Steer) -> list:
        if not steer.active:
            return []
        if steer.mode == "ablate":
            return [(f"blocks.{steer.layer}.attn.hook_z", tm.zero_ablate(heads=[steer.head]))]
        return [self.saes[steer.sae_index].steer(steer.feature, steer.strength, mode=steer.mode)]

    def steered_losses(self, token_ids: np.ndarray, steer: Steer) -> np.ndarray:
        """Per-token loss with the intervention applied ([pos], nan at 0)."""
        losses = self.model.run_with_hooks(
            np.asarray(token_ids)[None], fwd_hooks=self.steer_hooks(steer), return_type="loss", loss_per_token=True
        )
        return _frozen(np.concatenate([[np.nan], losses[0]]).astype(np.float32))

    def generate(
        self,
        token_ids: np.ndarray,
        max_new_tokens: int,
        steer: Steer | None,
        on_text: Callable[[str], bool],
        seed: int = 0,
        temperature: float = 0.7,
    ) -> str:
        """Continue the tokens, calling on_text(continuation so far) after every
        token; on_text returning True stops. Returns the continuation."""
        ids = np.asarray(token_ids, dtype=np.int64)[None]
        max_new_tokens = max(0, min(max_new_tokens, self.model.cfg.n_ctx - ids.shape[1]))
        new: list[int] = []

        def on_token(next_ids: np.ndarray) -> bool:
            new.append(int(next_ids[0]))
            return bool(on_text(self.decode(new)))

        self.model.generate(
            ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            on_token=on_token,
            hooks=self.steer_hooks(steer) if steer else (),
        )
        return self.decode(new)

    # ---- saliency -------------------------------------------------------------------

    def saliency(self, token_ids, position: int) -> TokenSaliency:
        """Which tokens pushed the model's top prediction after `position` (cached per tokens and position)."""
        return self._saliency(tuple(int(i) for i in np.asarray(token_ids).reshape(-1)), int(position))

    @functools.lru_cache(maxsize=256)
    def _saliency(self, ids: tuple, position: int) -> TokenSaliency:
        result = analysis.saliency(self.model, np.array(ids)[None], position=position, prepend_bos=False)
        scores = result.scores[0].astype(np.float32)
        scores[position + 1 :] = np.nan  # later tokens cannot push it
        target = int(result.target[0])
        return TokenSaliency(position, target, token_label(self._decode_each([target])[0]), _frozen(scores))


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's (GPT-2's) characters for bytes: the printable Latin-1
    bytes stand for themselves, the others for U+0100 on, in byte order."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    moved = [b for b in range(256) if b not in kept]
    return {**{chr(b): b for b in kept}, **{chr(0x100 + i): b for i, b in enumerate(moved)}}


_BYTE_LEVEL = _byte_level_alphabet()
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece-style byte tokens


def _bytes_if_partial(tokenizer, token_id: int, text: str) -> str | bytes:
    """A token's bytes, from its vocabulary entry, when they are not whole UTF-8
    on their own (its decoded text has U+FFFD); else (or when the vocabulary
    entry does not tell) its text."""
    from tokenizers.decoders import ByteLevel

    if "\ufffd" not in text:
        return text
    piece = tokenizer.id_to_token(token_id) or ""
    if m := _BYTE_FALLBACK.fullmatch(piece):
        data = bytes([int(m.group(1), 16)])
    elif isinstance(tokenizer.decoder, ByteLevel) and all(c in _BYTE_LEVEL for c in piece):
        data = bytes(_BYTE_LEVEL[c] for c in piece)
    else:
        return text
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return data
    return text


def loss_scale(d_vocab: int) -> float:
    """The loss of a uniform guess: the top of the loss color scale."""
    return math.log(d_vocab)
