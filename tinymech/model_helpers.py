"""HookedTransformer's helpers on a Model, with TransformerLens's names and meaning:
the module tree (model.blocks[l].attn.W_Q, ...), named_parameters / state_dict,
hook_dict, OV / QK circuits as FactoredMatrix objects and their composition
scores, to_single_token, get_token_position, tokens_to_residual_directions and
loss_fn. Arrays are numpy."""
from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np

from .errors import InvalidInputError, InvalidTokensError
from .factored_matrix import FactoredMatrix, composition_scores
from .hooks import HookPoint
from .model_tree import Blocks, Embed, Norm, PosEmbed, Unembed, hook_point, named_parameters


class ModelHelpers:
    """Mixed into Model (model.py)."""

    def __getattr__(self, name: str):
        """A top-level hook point as an attribute (model.hook_embed), as TransformerLens's; only for
        what normal lookup did not find."""
        if name.startswith("hook_") and "_hook_ids" in self.__dict__:
            return hook_point(self, name, name, self)
        return object.__getattribute__(self, name)  # normal lookup's own error (a property's message)

    # ---- the module tree and its parameters ---------------------------------------

    @property
    def embed(self) -> Embed:
        return Embed(self)

    @property
    def pos_embed(self) -> PosEmbed:
        if self.cfg.positional_embedding_type == "rotary":
            raise AttributeError("a rotary model has no pos_embed (its positions rotate the queries and keys)")
        return PosEmbed(self)

    @property
    def blocks(self) -> Blocks:
        """model.blocks[l].ln1 / .attn / .ln2 / .mlp, each with TransformerLens's weights; a layer
        out of range raises tm.InvalidIndexError."""
        return Blocks(self)

    @property
    def ln_final(self) -> Norm:
        return Norm(self, self.ln_final_w, self.ln_final_b, hooks_at="ln_final")

    @property
    def unembed(self) -> Unembed:
        return Unembed(self, hooks_at="unembed")

    # ---- torch.nn.Module's housekeeping, which notebooks call: tinymech runs on the CPU, in inference ----

    def to(self, device_or_dtype=None, print_details: bool = True):
        """The model itself: it stays on the CPU with its weights' dtype (another device or dtype warns)."""
        text = str(device_or_dtype)
        if device_or_dtype is not None and text.split(":")[0] != "cpu" and text not in ("torch.float32", "float32"):
            warnings.warn(f"to({device_or_dtype!r}): tinymech runs on the CPU with the weights it loaded; "
                          "the model stays as it is", stacklevel=2)
        return self

    def cpu(self):
        return self

    def cuda(self, device=None):
        return self.to("cuda")

    def mps(self):
        return self.to("mps")

    def eval(self):
        """The model itself (tinymech has no dropout or training mode)."""
        return self

    def train(self, mode: bool = True):
        """The model itself: tinymech does not train a model's weights (SAEs: tm.train_sae)."""
        return self

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, array) per parameter, with TransformerLens's names and order
        ("embed.W_E", "blocks.0.ln1.w", "blocks.0.attn.W_Q", ..., "unembed.b_U")."""
        return named_parameters(self)

    def parameters(self) -> Iterator[np.ndarray]:
        return (array for _, array in named_parameters(self))

    def state_dict(self) -> dict[str, np.ndarray]:
        """{name: array} of named_parameters (TransformerLens's buffers, attn.mask and attn.IGNORE, are not weights
        here: the core masks by itself)."""
        return dict(named_parameters(self))

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        """{name: HookPoint} for every hook point, in the order a forward pass reaches them; each
        point's ctx is the dict its hook functions get (TransformerLens's HookPoint.ctx)."""
        return {name: HookPoint(name, self._hook_contexts, self) for name in self.hook_names()}

    # ---- circuits -------------------------------------------------------------------

    @property
    def OV(self) -> FactoredMatrix:
        """[n_layers, head, d_model, d_model]: W_V @ W_O."""
        return FactoredMatrix(np.asarray(self.W_V), np.asarray(self.W_O))

    @property
    def QK(self) -> FactoredMatrix:
        """[n_layers, head, d_model, d_model]: W_Q @ W_K.T."""
        return FactoredMatrix(np.asarray(self.W_Q), np.swapaxes(np.asarray(self.W_K), -1, -2))

    def all_composition_scores(self, mode: str) -> np.ndarray:
        """[layer, head, layer, head]: how much each head's output is read by each later
        head's queries ("Q"), keys ("K") or values ("V"); zero where the second head
        is not in a later layer."""
        left = self.OV
        rights = {"Q": lambda: self.QK, "K": lambda: self.QK.T, "V": lambda: left}
        if mode not in rights:
            raise InvalidInputError(f"mode must be one of 'Q', 'K', 'V', not {mode!r}")
        scores = composition_scores(left, rights[mode](), broadcast_dims=True)
        layers = np.arange(self.cfg.n_layers)
        later = layers[:, None, None, None] < layers[None, None, :, None]
        return np.where(later, scores, np.zeros_like(scores))

    def all_head_labels(self) -> list[str]:
        return [f"L{layer}H{head}" for layer in range(self.cfg.n_layers) for head in range(self.cfg.n_heads)]

    # ---- tokens ----------------------------------------------------------------------

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (mind the leading space: " Paris")."""
        if not isinstance(string, str):
            raise InvalidTokensError(f"to_single_token takes a string, not {type(string).__name__}")
        ids = self.to_tokens(string, prepend_bos=False)[0]
        if len(ids) != 1:
            pieces = self.to_str_tokens(ids) if len(ids) else []
            raise InvalidTokensError(
                f"{string!r} is {len(ids)} tokens {pieces} in this model's vocabulary, not one; "
                f"give a single token or a token id{self._spacing_hint(string)}")
        return int(ids[0])

    def to_single_str_token(self, int_token: int) -> str:
        """The string of one token id."""
        if isinstance(int_token, str):
            raise InvalidTokensError(f"to_single_str_token takes a token id, not the string {int_token!r}")
        return self.to_str_tokens([self._token_id(int_token)])[0]

    def _spacing_hint(self, string: str) -> str:
        """A hint when the string is one token with a leading space (as words after the first are)."""
        spaced = " " + string
        if string and not string.startswith(" ") and self.to_tokens(spaced, prepend_bos=False).shape[1] == 1:
            return f" (did you mean {spaced!r}, with its leading space?)"
        return ""

    def _token_id(self, token) -> int:
        """One token given as a single-token string, an id, or a one-element array of an id."""
        if isinstance(token, str):
            return self.to_single_token(token)
        arr = np.asarray(token)
        if arr.size != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise InvalidTokensError(f"a token is a single-token string or an integer id, not {token!r}")
        return int(self._checked_ids(arr).reshape(()))

    def _checked_ids(self, ids: np.ndarray) -> np.ndarray:
        if ids.size and not (0 <= ids.min() and ids.max() < self.cfg.d_vocab):
            bad = ids.min() if ids.min() < 0 else ids.max()
            raise InvalidTokensError(f"token id {bad} is outside the vocabulary [0, {self.cfg.d_vocab})")
        return ids

    def get_token_position(self, single_token, input, mode: str = "first", prepend_bos: bool | None = None,
                           padding_side: str | None = None) -> int:
        """Where a token first (mode="first") or last ("last") occurs in a text or in
        one sequence of token ids ([pos] or [1, pos]); prepend_bos applies to a text."""
        if mode not in ("first", "last"):
            raise InvalidInputError(f"mode must be 'first' or 'last', not {mode!r}")
        check_padding_side(padding_side)
        if isinstance(input, str):
            bos = self._bos(prepend_bos)
            tokens = self.to_tokens(input, prepend_bos=bos)[0]
        else:
            tokens = np.asarray(input)
            if tokens.ndim == 2 and tokens.shape[0] == 1:
                tokens = tokens[0]
            if tokens.ndim != 1 or not (np.issubdtype(tokens.dtype, np.integer) or tokens.size == 0):
                raise InvalidTokensError(f"get_token_position searches a text or one sequence of token ids "
                                         f"([pos] or [1, pos]), not an array of shape {tokens.shape} and dtype {tokens.dtype}")
        token = self._token_id(single_token)
        found = np.flatnonzero(tokens == token)
        if not len(found):
            raise InvalidInputError(f"token {token} does not occur in the input")
        return int(found[0] if mode == "first" else found[-1])

    def tokens_to_residual_directions(self, tokens) -> np.ndarray:
        """The unembedding direction of each token: [d_model] for one token (a
        single-token string, an id, a one-element array), [..., d_model] for an array of ids."""
        if isinstance(tokens, str) or np.asarray(tokens).size == 1:
            return self.W_U[:, self._token_id(tokens)]
        ids = np.asarray(tokens)
        if ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise InvalidTokensError(f"tokens must be a token, or an array of token ids, not {tokens!r}")
        return self._weights["unembed"][self._checked_ids(ids)]

    def loss_fn(self, logits, tokens, attention_mask=None, per_token: bool = False):
        """The next-token cross-entropy of logits on tokens (see lm_cross_entropy_loss)."""
        return lm_cross_entropy_loss(logits, tokens, attention_mask, per_token)


def check_padding_side(padding_side) -> str | None:
    """TransformerLens's padding_side: "left", "right" or None (the tokenizer's)."""
    if padding_side not in (None, "left", "right"):
        raise InvalidInputError(f"padding_side must be 'left', 'right' or None, not {padding_side!r}")
    return padding_side


def lm_cross_entropy_loss(logits, tokens, attention_mask=None, per_token: bool = False):
    """The loss of predicting each next token (transformer_lens.utils.lm_cross_entropy_loss):
    logits [batch, pos, d_vocab] (or [pos, d_vocab]) on tokens [batch, pos] (or [pos]).
    per_token: the losses [batch, pos - 1]; otherwise their mean, a float. attention_mask
    [batch, pos]: a position counts only where it and the next are both 1 (not padding)."""
    from .model import token_losses  # model.py mixes this module's class in

    logits, tokens = np.asarray(logits), np.asarray(tokens)
    unbatched = logits.ndim == 2
    if unbatched:
        logits, tokens = logits[None], tokens[None]
    if not np.issubdtype(logits.dtype, np.floating) or logits.ndim != 3:
        raise InvalidInputError(f"logits must be floats [batch, pos, d_vocab], not shape {logits.shape} "
                                f"and dtype {logits.dtype}")
    if tokens.shape != logits.shape[:2] or not np.issubdtype(tokens.dtype, np.integer):
        raise InvalidTokensError(f"tokens must be integer ids shaped as the logits' [batch, pos] "
                                 f"{list(logits.shape[:2])}, not shape {list(tokens.shape)} and dtype {tokens.dtype}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= logits.shape[2]):
        raise InvalidTokensError(f"token ids must be in [0, {logits.shape[2]}), the logits' last axis")
    losses = token_losses(logits, tokens)
    counted = losses.size
    if attention_mask is not None:
        mask = np.asarray(attention_mask)
        mask = mask[None] if unbatched else mask
        if mask.shape != tokens.shape:
            raise InvalidInputError(f"attention_mask must be shaped as the tokens {list(tokens.shape)}, "
                                    f"not {list(mask.shape)}")
        keep = (mask[:, :-1] != 0) & (mask[:, 1:] != 0)
        losses = np.where(keep, losses, np.float32(0))
        counted = int(keep.sum())
    if per_token:
        return losses[0] if unbatched else losses
    return float(losses.sum() / counted) if counted else float("nan")
