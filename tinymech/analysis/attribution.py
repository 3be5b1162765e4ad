"""Direct logit attribution: a logit (or a logit difference) split into what
each writer of the residual stream adds to it directly, with ln_final's scale
frozen at its value in the real run (the split is then exact)."""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from ..errors import AnalysisError
from ..ops import norm_centers
from .params import attn_out_bias, ln_final_params, unembed_bias
from ..text import format_table
from .tokens import token_ids
from ..text import token_labels


@dataclasses.dataclass(frozen=True, eq=False)
class LogitAttribution:
    """The parts of a logit (difference). With one input sequence the arrays have
    no batch axis; otherwise a last batch axis.

    labels: one per component: "embed", "pos_embed" (learned positions only), then for each layer l
            "L{l}H{h}" (each head's z·W_O), "L{l}_b_O" (the attention output
            bias), "L{l}_mlp"; finally "ln_final_bias" (ln_final's bias, if a
            LayerNorm, and b_U if any, through the unembedding: the same for every input)
    values: [component, (batch)] float64; values.sum(0) equals `logit`
    logit:  the model's real logit (difference) [(batch)]
    token, incorrect_token: the ids compared [(batch)] (incorrect_token may be None)
    position: the position read (a non-negative index)
    """

    labels: list[str]
    values: np.ndarray
    logit: np.ndarray
    token: np.ndarray
    incorrect_token: np.ndarray | None
    position: int
    n_layers: int
    n_heads: int
    model: object = dataclasses.field(repr=False)

    def __getitem__(self, label: str):
        if label not in self.labels:
            raise AnalysisError(f"no component {label!r}: the labels are {', '.join(self.labels[:6])}, ... "
                                "(see .labels)")
        return self.values[self.labels.index(label)]

    @property
    def head_values(self) -> np.ndarray:
        """The heads' parts as [layer, head, (batch)], for a heatmap."""
        idx = [i for i, label in enumerate(self.labels) if re.fullmatch(r"L\d+H\d+", label)]
        return self.values[idx].reshape((self.n_layers, self.n_heads) + self.values.shape[1:])

    @property
    def mlp_values(self) -> np.ndarray:
        """The MLPs' parts [layer, (batch)]."""
        return self.values[[self.labels.index(f"L{l}_mlp") for l in range(self.n_layers)]]

    def table(self, top: int | None = 15) -> str:
        """The largest parts (by size, of the batch mean), then the total."""
        values = self.values if self.values.ndim == 1 else self.values.mean(1)
        order = np.argsort(-np.abs(values), kind="stable")[:top]
        rows = [[self.labels[i], f"{values[i]:+.4f}"] for i in order]
        rows.append(["sum", f"{values.sum():+.4f}"])
        rows.append(["real logit" + (" diff" if self.incorrect_token is not None else ""),
                     f"{np.mean(self.logit):+.4f}"])
        # the ids may differ per sequence: name them all, not the first one only
        what = f"logit({self._named(self.token)})"
        if self.incorrect_token is not None:
            what += f" - logit({self._named(self.incorrect_token)})"
        batch = "" if self.values.ndim == 1 else f", mean over {self.values.shape[1]} sequences"
        return format_table(["component", "direct effect"], rows,
                            title=f"Direct logit attribution of {what} at position {self.position}{batch}")

    def __str__(self):
        return self.table()

    def _named(self, ids) -> str:
        """One token's label, or "each sequence's: a, b, ..." when the batch's ids differ."""
        ids = np.atleast_1d(ids)
        if (ids == ids[0]).all():
            return token_labels(self.model, ids[:1])[0]
        labels = token_labels(self.model, ids[:4])
        return "each sequence's: " + ", ".join(labels[:3]) + (", ..." if len(ids) > 3 else "")


def logit_attribution(model, input, token, incorrect_token=None, position: int = -1,
                      prepend_bos: bool | None = None) -> LogitAttribution:
    """Split the logit of `token` (minus that of `incorrect_token`) at `position`
    into embed, pos_embed, each head of each layer, each layer's b_O, each MLP
    and the ln_final bias. Each part is the component centered, divided by
    ln_final's real scale at that position, times ln_final's weight, dotted with
    the unembedding direction; the parts sum to the real logit (difference).

    input: text, texts of equal token length, or token ids [batch, pos] / [pos].
    token, incorrect_token: a string of one token or an id, or one per sequence.
    """
    cfg = model.cfg
    bos = model._bos(prepend_bos)  # read once: the run of the tokens takes the convention they were made with
    tokens = model.tokens_of(input, prepend_bos=bos, same_length=True)
    batch, n_pos = tokens.shape
    if not (isinstance(position, (int, np.integer)) and -n_pos <= position < n_pos):
        raise AnalysisError(f"position {position!r} is outside a sequence of {n_pos} tokens")
    pos = int(position) % n_pos
    good = _per_sequence(model, token, batch)
    bad = None if incorrect_token is None else _per_sequence(model, incorrect_token, batch)

    # rotary models add no position embedding to the residual stream
    embeds = [("hook_embed", "embed"), ("hook_pos_embed", "pos_embed")][: 2 if "hook_pos_embed" in
                                                                        model.hook_names() else 1]
    names = [name for name, _ in embeds] + ["ln_final.hook_scale"]
    for layer in range(cfg.n_layers):
        names += [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out"]
    logits, cache = model.run_with_cache(tokens, names_filter=names, prepend_bos=bos)

    labels = [label for _, label in embeds]
    parts = [cache[name][:, pos] for name, _ in embeds]  # each [batch, d_model]
    for layer in range(cfg.n_layers):
        z = cache[f"blocks.{layer}.attn.hook_z"][:, pos].astype(np.float64)  # [batch, head, d_head]
        heads = np.einsum("bhd,hdm->hbm", z, model.W_O[layer].astype(np.float64))
        parts += list(heads)
        labels += [f"L{layer}H{h}" for h in range(cfg.n_heads)]
        parts.append(np.broadcast_to(attn_out_bias(model, layer), (batch, cfg.d_model)))
        parts.append(cache[f"blocks.{layer}.hook_mlp_out"][:, pos])
        labels += [f"L{layer}_b_O", f"L{layer}_mlp"]
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in parts])  # [component, batch, d_model]

    ln_w, ln_b = ln_final_params(model)
    unembed_dir = model.W_U[:, good].T.astype(np.float64)  # [batch, d_model]
    if bad is not None:
        unembed_dir = unembed_dir - model.W_U[:, bad].T
    scale = cache["ln_final.hook_scale"][:, pos].astype(np.float64)  # [batch, 1]
    centered = stack - stack.mean(-1, keepdims=True) if norm_centers(model) else stack
    values = (centered / scale * (unembed_dir * ln_w)).sum(-1)  # [component, batch]
    constant = np.zeros(batch) if ln_b is None else unembed_dir @ ln_b.astype(np.float64)
    b_U = unembed_bias(model)
    if b_U is not None:
        constant = constant + b_U[good] - (0.0 if bad is None else b_U[bad])
    values = np.concatenate([values, constant[None]])
    labels.append("ln_final_bias")

    rows = np.arange(batch)
    logit = logits[rows, pos, good].astype(np.float64)
    if bad is not None:
        logit = logit - logits[rows, pos, bad]
    one = batch == 1
    return LogitAttribution(
        labels=labels,
        values=values[:, 0] if one else values,
        logit=logit[0] if one else logit,
        token=good[0] if one else good,
        incorrect_token=None if bad is None else (bad[0] if one else bad),
        position=pos,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        model=model,
    )


def _per_sequence(model, token, batch: int) -> np.ndarray:
    """[batch] ids from one token or from one token per sequence."""
    ids = token_ids(model, token)
    if len(ids) == 1:
        return np.repeat(ids, batch)
    if len(ids) != batch:
        raise AnalysisError(f"give one token or one per sequence ({batch}), not {len(ids)}")
    return ids
