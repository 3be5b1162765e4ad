"""ActivationCache: the activations captured by run_with_cache, looked up and
combined as in TransformerLens (cache["pattern", 3], accumulated_resid,
decompose_resid, stack_head_results, stack_neuron_results, stack_activation,
apply_ln_to_stack, logit_attrs)."""
from __future__ import annotations

import numbers
import sys
import warnings
from collections import Counter
from collections.abc import Mapping
from typing import Iterator

import numpy as np

from .errors import array_of, true_or_false, whole_number
from .errors import HookError, InvalidIndexError, InvalidInputError, InvalidTokensError
from .ops import final_norm, norm_centers
from .hooks import get_act_name


class ActivationCache:
    def __init__(self, activations: dict[str, np.ndarray], model, has_batch_dim: bool = True):
        """{hook name: activation} and the model they came from, as TransformerLens's constructor
        takes them; activations that are not numpy arrays (tensors, lists) are read as arrays, so
        that every method computes with numpy (a dict of arrays is kept as it is: cache_dict)."""
        if not isinstance(activations, Mapping):
            raise InvalidInputError(f"an ActivationCache is built from a dict {{hook name: activation}}, "
                                    f"not {type(activations).__name__}")
        if not (type(activations) is dict and all(type(a) is np.ndarray for a in activations.values())):
            activations = {name: _numbers(a, f"the cache's {name!r}") for name, a in activations.items()}
        self._acts = activations
        self.model = model
        self.has_batch_dim = true_or_false(has_batch_dim, "has_batch_dim")

    def __deepcopy__(self, memo) -> "ActivationCache":
        """A copy of the activations that shares the model (models do not change; pickling
        a cache, by contrast, pickles its model: see Model.__reduce__)."""
        import copy

        memo[id(self.model)] = self.model
        new = ActivationCache.__new__(ActivationCache)
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def remove_batch_dim(self) -> "ActivationCache":
        """Drops the batch axis of a cache of one sequence, in place, as
        TransformerLens's does (cache["pattern", 0] is then [head, q, k]); returns the cache."""
        if self.has_batch_dim:
            batches = {a.shape[0] for a in self._acts.values()}
            if batches - {1}:
                raise InvalidInputError(f"remove_batch_dim needs a cache of one sequence, not {max(batches)}")
            self._acts = {name: a[0] for name, a in self._acts.items()}
            self.has_batch_dim = False
        return self

    def to(self, device) -> "ActivationCache":
        """The cache itself, as TransformerLens's cache.to(device) after moving it: tinymech's
        activations are numpy arrays on the CPU (another device, or a dtype, warns)."""
        if not (isinstance(device, str) or type(device).__module__.split(".")[0] == "torch"):
            raise InvalidInputError(f"device must be a string such as 'cpu' (or a torch.device), "
                                    f"not {type(device).__name__}")
        if str(device).removeprefix("torch.").split(":")[0] not in ("cpu", "float32"):
            warnings.warn(f"to({str(device)!r}): tinymech's cache holds numpy arrays on the CPU, and stays as it is",
                          stacklevel=3)
        return self

    def apply_slice_to_batch_dim(self, batch_slice) -> "ActivationCache":
        """A new cache of these sequences, as TransformerLens's: batch_slice is its Slice (an int
        picks one and drops the batch axis, a tuple is slice(*tuple), a slice or a list of indices
        picks those). Entries whose first axis is not the batch's (the most common) are kept whole."""
        if not self.has_batch_dim:
            raise InvalidInputError("apply_slice_to_batch_dim needs a cache with a batch axis; this one's was "
                                    "removed (remove_batch_dim)")
        single = isinstance(batch_slice, numbers.Integral) or getattr(batch_slice, "ndim", None) == 0
        if single:  # a 0-d integer array or tensor too
            batch_slice = whole_number(batch_slice, "batch_slice", error=InvalidIndexError)
        counts = Counter(a.shape[0] for a in self._acts.values() if a.ndim > 0).most_common(1)
        batch = counts[0][0] if counts else 1
        sliced = {name: _index(a, batch_slice, axis=0, what="batch_slice") if a.ndim > 0 and a.shape[0] == batch
                  else a for name, a in self._acts.items()}
        return ActivationCache(sliced, self.model, has_batch_dim=not single)

    def toggle_autodiff(self, mode: bool = False) -> None:
        """TransformerLens's sets torch's global autodiff (torch.set_grad_enabled(mode)) and warns
        that it did; so does this where torch is loaded. tinymech's numpy cache has no autodiff."""
        mode = true_or_false(mode, "toggle_autodiff's mode")
        torch = sys.modules.get("torch")  # not imported here: a numpy user has no autodiff to toggle
        if torch is not None and hasattr(torch, "set_grad_enabled"):
            torch.set_grad_enabled(mode)
            warnings.warn(f"changed the global state: torch's autodiff is now {'on' if mode else 'off'} "
                          "(tinymech's cache holds numpy arrays, which have none)", stacklevel=3)
        else:
            warnings.warn("tinymech computes with numpy arrays, without autodiff: toggle_autodiff changes nothing",
                          stacklevel=3)

    # ---- mapping ----------------------------------------------------------------

    def _key(self, key) -> str:
        if isinstance(key, tuple):
            name, *rest = key
            layer = rest[0] if rest else None
            if layer is not None:
                n = self.model.cfg.n_layers
                layer = whole_number(layer, "a cache key's layer", error=KeyError)
                if not -n <= layer < n:
                    raise KeyError(f"layer {layer} is out of range for a model with {n} layers")
                layer %= n
            return get_act_name(name, layer, rest[1] if len(rest) > 1 else None)
        if not isinstance(key, str):
            raise KeyError(f"a cache key is a hook name or (name, layer[, layer type]), not {key!r}")
        return get_act_name(key) if key not in self._acts else key

    def __getitem__(self, key) -> np.ndarray:
        name = self._key(key)
        try:
            return self._acts[name]
        except KeyError:
            raise KeyError(f"{name!r} was not cached; cached: {len(self._acts)} hook points "
                           f"(pass names_filter to run_with_cache to choose them)") from None

    def __contains__(self, key) -> bool:
        try:
            return self._key(key) in self._acts
        except (HookError, KeyError):
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._acts)

    def __len__(self) -> int:
        return len(self._acts)

    def keys(self):
        return self._acts.keys()

    def values(self):
        return self._acts.values()

    def items(self):
        return self._acts.items()

    def __repr__(self):
        return f"ActivationCache({len(self._acts)} hook points)"

    @property
    def cache_dict(self) -> dict[str, np.ndarray]:
        """{hook name: activation}, TransformerLens's attribute: the cache's own dict (not a copy)."""
        return self._acts

    # ---- residual stream --------------------------------------------------------

    def _n_layers(self, layer):
        """A layer argument as 0..n_layers (n_layers: the unembed; -1 is n_layers too, as in TransformerLens)."""
        n = self.model.cfg.n_layers
        if layer is None:
            return n
        layer = whole_number(layer, "layer")
        if not -(n + 1) <= layer <= n:
            raise InvalidInputError(f"layer {layer} is out of range: 0..{n} (or -1 for {n}, the unembed)")
        return layer + n + 1 if layer < 0 else layer

    def _block(self, layer) -> int:
        """A block's index, 0..n_layers - 1 (negative ones count back)."""
        n = self.model.cfg.n_layers
        layer = whole_number(layer, "layer")
        if not -n <= layer < n:
            raise InvalidIndexError(f"layer {layer} is out of range for a model with {n} layers")
        return layer % n

    def accumulated_resid(self, layer=None, incl_mid=False, apply_ln=False, pos_slice=None,
                          mlp_input=False, return_labels=False):
        """The residual stream entering each layer up to and including `layer`, and
        the final resid_post when layer is None (or -1): [component, batch, pos, d_model].
        incl_mid adds each earlier layer's resid_mid, mlp_input `layer`'s own.
        apply_ln at the unembed applies ln_final to each component with its own
        statistics (the logit lens, as TransformerLens does); before a layer it
        uses that layer's cached scale (apply_ln_to_stack)."""
        n = self.model.cfg.n_layers
        layer = self._n_layers(layer)
        parts, labels = [], []
        for l in range(layer + 1):
            if l == n:
                parts.append(self[f"blocks.{n - 1}.hook_resid_post"])
                labels.append("final_post")
                break
            parts.append(self[f"blocks.{l}.hook_resid_pre"])
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                parts.append(self[f"blocks.{l}.hook_resid_mid"])
                labels.append(f"{l}_mid")
        stack = np.stack([_pos(p, pos_slice) for p in parts])
        if apply_ln:
            stack = final_norm(self.model, stack) if layer == n else \
                self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def decompose_resid(self, layer=None, mlp_input=False, mode="all", apply_ln=False,
                        pos_slice=None, incl_embeds=True, return_labels=False):
        """The residual stream at `layer` as the sum of its writers:
        embed, pos_embed (learned positions), then each earlier layer's attn_out and mlp_out."""
        if mode not in ("all", "attn", "mlp"):
            raise InvalidInputError(f"mode must be 'all', 'attn' or 'mlp', not {mode!r}")
        stop = self._n_layers(layer)
        parts, labels = [], []
        if incl_embeds:  # rotary models have no position embedding to add
            parts.append(self["hook_embed"])
            labels.append("embed")
            if "hook_pos_embed" in self.model.hook_names():
                parts.append(self["hook_pos_embed"])
                labels.append("pos_embed")
        for l in range(stop):
            if mode in ("all", "attn"):
                parts.append(self[f"blocks.{l}.hook_attn_out"])
                labels.append(f"{l}_attn_out")
            if mode in ("all", "mlp"):
                parts.append(self[f"blocks.{l}.hook_mlp_out"])
                labels.append(f"{l}_mlp_out")
        if mlp_input and layer is not None and stop < self.model.cfg.n_layers and mode in ("all", "attn"):
            parts.append(self[f"blocks.{stop}.hook_attn_out"])
            labels.append(f"{stop}_attn_out")
        stack = _pos(np.stack(parts), pos_slice)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def head_results(self, layer: int) -> np.ndarray:
        """Each head's output z_h · W_O[h] at `layer`: [batch, pos, head, d_model]
        (no batch axis after remove_batch_dim)."""
        layer = self._block(layer)
        name = f"blocks.{layer}.attn.hook_result"
        if name in self._acts:
            return self._acts[name]
        z = self[f"blocks.{layer}.attn.hook_z"]
        W_O = self.model.W_O[layer]  # [head, d_head, d_model]
        return np.einsum("...phd,hdm->...phm", z, W_O, optimize=True).astype(np.float32)

    def stack_head_results(self, layer=-1, return_labels=False, incl_remainder=False,
                           pos_slice=None, apply_ln=False):
        """Every head's output for layers before `layer` (-1: all layers):
        [layer * head, batch, pos, d_model], labelled "L{l}H{h}"."""
        cfg = self.model.cfg
        stop = self._n_layers(layer)
        parts, labels = [], []
        for l in range(stop):
            r = self.head_results(l)
            for h in range(cfg.n_heads):
                parts.append(r[..., h, :])
                labels.append(f"L{l}H{h}")
        stack = np.stack(parts) if parts else np.zeros((0,) + self["hook_embed"].shape, np.float32)
        if incl_remainder:
            stack = np.concatenate([stack, (self._resid_before(stop) - stack.sum(0))[None]])
            labels.append("remainder")
        stack = _pos(stack, pos_slice)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer if layer != -1 else None, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def compute_head_results(self) -> None:
        """Adds every layer's blocks.{l}.attn.hook_result [batch, pos, head, d_model]
        to the cache (from hook_z and W_O), as TransformerLens's does."""
        for layer in range(self.model.cfg.n_layers):
            self._acts[f"blocks.{layer}.attn.hook_result"] = self.head_results(layer)

    def stack_activation(self, activation_name: str, layer=-1, sublayer_type=None) -> np.ndarray:
        """cache[activation_name, l, sublayer_type] of every layer before `layer`
        (-1 or None: all layers), stacked: [layers, ...]."""
        stop = self._n_layers(layer)
        return np.stack([self[(activation_name, l, sublayer_type)] for l in range(stop)])

    def get_neuron_results(self, layer: int, neuron_slice=None, pos_slice=None) -> np.ndarray:
        """Each MLP neuron's write to the residual stream at `layer`, its
        activation times its row of W_out: [batch, pos, neuron, d_model]."""
        layer = self._block(layer)
        acts = _index(_pos(self[f"blocks.{layer}.mlp.hook_post"], pos_slice), neuron_slice, axis=-1,
                      what="neuron_slice")
        W_out = _index(self.model.W_out[layer], neuron_slice, axis=0, what="neuron_slice")
        return acts[..., None] * W_out

    def stack_neuron_results(self, layer=-1, pos_slice=None, neuron_slice=None, return_labels=False,
                             incl_remainder=False, apply_ln=False):
        """Every neuron's write for the layers before `layer` (-1: all):
        [layer * neuron, batch, pos, d_model], labelled "L{l}N{n}"; incl_remainder
        adds the rest of the residual stream there. Large: d_mlp components per layer."""
        stop = self._n_layers(layer)
        if isinstance(neuron_slice, (int, np.integer)):  # one neuron keeps its axis in the stack
            neuron_slice = [int(neuron_slice)]
        elif getattr(neuron_slice, "ndim", None) == 0:  # a 0-d integer array or tensor is one too
            neuron_slice = [whole_number(neuron_slice, "neuron_slice", error=InvalidIndexError)]
        neurons = _index(np.arange(self.model.cfg.d_mlp), neuron_slice, axis=0, what="neuron_slice")
        labels = [f"L{l}N{n}" for l in range(stop) for n in neurons]
        parts = [np.moveaxis(self.get_neuron_results(l, neuron_slice, pos_slice), -2, 0) for l in range(stop)]
        stack = np.concatenate(parts) if parts else np.zeros((0,) + _pos(self["hook_embed"], pos_slice).shape,
                                                             np.float32)
        if incl_remainder:
            stack = np.concatenate([stack, (_pos(self._resid_before(stop), pos_slice) - stack.sum(0))[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, None if stop == self.model.cfg.n_layers else stop,
                                           pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def get_full_resid_decomposition(self, layer=None, mlp_input=False, expand_neurons=True, apply_ln=False,
                                     pos_slice=None, return_labels=False):
        """The residual stream at `layer` (before its MLP with mlp_input) as the sum
        of every head's output, every neuron's write (or each MLP's output, without
        expand_neurons), the embeddings and the biases, in TransformerLens's order:
        [component, batch, pos, d_model] labelled "L{l}H{h}", "L{l}N{n}" (or
        "{l}_mlp_out"), "embed", "pos_embed", "bias"."""
        stop = self._n_layers(layer)
        attn_stop = stop + int(mlp_input and stop < self.model.cfg.n_layers)  # layer `stop`'s heads too
        stack, labels = self.stack_head_results(attn_stop, pos_slice=pos_slice, return_labels=True)
        parts = [stack]
        if stop > 0:
            if expand_neurons:
                mlps, mlp_labels = self.stack_neuron_results(stop, pos_slice=pos_slice, return_labels=True)
            else:
                mlps, mlp_labels = self.decompose_resid(stop, mlp_input=mlp_input, mode="mlp", pos_slice=pos_slice,
                                                        incl_embeds=False, return_labels=True)
            parts.append(mlps)
            labels = labels + mlp_labels
        for name, label in (("hook_embed", "embed"), ("hook_pos_embed", "pos_embed")):
            if name in self.model.hook_names():  # rotary models have no position embedding
                parts.append(_pos(self[name], pos_slice)[None])
                labels = labels + [label]
        parts.append(np.broadcast_to(self._accumulated_bias(attn_stop, stop if expand_neurons else 0),
                                     stack.shape[1:])[None])
        labels = labels + ["bias"]
        full = np.concatenate(parts)
        if apply_ln:
            full = self.apply_ln_to_stack(full, None if stop == self.model.cfg.n_layers else stop, mlp_input,
                                          pos_slice=pos_slice)
        return (full, labels) if return_labels else full

    def _accumulated_bias(self, attn_layers: int, mlp_layers: int) -> np.ndarray:
        """What the biases add to the residual stream: b_O of the first attn_layers
        layers, b_out of the first mlp_layers."""
        m = self.model
        total = np.zeros(m.cfg.d_model, np.float32)
        for l in range(attn_layers):
            total += m.b_O[l]
        for l in range(mlp_layers):
            total += m.b_out[l]
        return total

    def _resid_before(self, layer: int) -> np.ndarray:
        """The residual stream entering `layer` (the final one for n_layers). TransformerLens
        takes resid_post of layer - 1, which for layer 0 wraps round to the last layer's."""
        n = self.model.cfg.n_layers
        return self[f"blocks.{layer}.hook_resid_pre"] if layer < n else self[f"blocks.{n - 1}.hook_resid_post"]

    def apply_ln_to_stack(self, residual_stack, layer=None, mlp_input=False, pos_slice=None,
                          batch_slice=None, has_batch_dim=True):
        """Center each component (LayerNorm models) and divide by the cached norm scale the
        stack's sum went through (ln_final for layer None), as TransformerLens does.
        The LayerNorm's weight and bias are not applied. pos_slice is taken to be
        applied to the stack already; batch_slice is applied here to both."""
        residual_stack = _numbers(residual_stack, "residual_stack")
        layer = self._n_layers(layer)  # -1 and None: the unembed, as in TransformerLens
        if layer == self.model.cfg.n_layers:
            scale = self["ln_final.hook_scale"]
        else:
            scale = self[f"blocks.{layer}.{'ln2' if mlp_input else 'ln1'}.hook_scale"]
        scale = _pos(scale, pos_slice)
        if has_batch_dim:
            residual_stack = _index(residual_stack, batch_slice, axis=1, what="batch_slice")
        if self.has_batch_dim:  # a stack without one takes the first sequence's scale
            scale = _index(scale, batch_slice, axis=0, what="batch_slice") if has_batch_dim else scale[0]
        try:
            return self._scaled(residual_stack, scale)
        except ValueError as e:  # numpy's broadcasting
            raise InvalidInputError(f"the residual stack {list(np.shape(residual_stack))} does not fit the cached "
                                    f"scale {list(scale.shape)} (pos_slice and batch_slice must be those the stack "
                                    f"was taken with): {e}") from None

    def _scaled(self, residual_stack, scale) -> np.ndarray:
        if norm_centers(self.model):  # an RMSNorm does not center (as in TransformerLens)
            residual_stack = residual_stack - residual_stack.mean(-1, keepdims=True)
        return residual_stack / scale

    def logit_attrs(self, residual_stack, tokens, incorrect_tokens=None, pos_slice=None,
                    batch_slice=None, has_batch_dim=True):
        """Each component's direct contribution to the logit of `tokens` (minus
        `incorrect_tokens`), after apply_ln_to_stack: [component, ...]. A token is a
        single-token string, an id, or an array of ids ([batch] or [batch, pos]); incorrect_tokens
        has the shape of tokens, as in TransformerLens."""
        direction = self._direction(tokens, "tokens")
        if incorrect_tokens is not None:
            if _token_shape(tokens) != _token_shape(incorrect_tokens):
                raise InvalidInputError(f"tokens and incorrect_tokens must have the same shape, not "
                                        f"{list(_token_shape(tokens))} and {list(_token_shape(incorrect_tokens))}")
            direction = direction - self._direction(incorrect_tokens, "incorrect_tokens")
        scaled = self.apply_ln_to_stack(residual_stack, None, pos_slice=pos_slice,
                                        batch_slice=batch_slice, has_batch_dim=has_batch_dim)
        try:
            return (scaled * direction).sum(-1)
        except ValueError as e:  # numpy's broadcasting
            raise InvalidInputError(f"tokens {list(_token_shape(tokens))} do not fit the residual stack's "
                                    f"{list(scaled.shape[1:-1])} batch and position axes: {e}") from None

    def _direction(self, tokens, what: str) -> np.ndarray:
        """The unembedding direction(s) of a token argument: [d_model] or [..., d_model]."""
        if tokens is None or isinstance(tokens, (bytes, float)) or (
                not isinstance(tokens, str) and _numbers(tokens, what, InvalidTokensError).dtype.kind not in "iu"):
            raise InvalidTokensError(f"{what} must be a single-token string, a token id or an array of ids, "
                                     f"not {tokens!r}")
        return self.model.tokens_to_residual_directions(tokens)


def _numbers(x, what: str, error=InvalidInputError) -> np.ndarray:
    """x as an array of numbers; a ragged list or objects refused by name, a tensor numpy cannot
    read (array_of) too."""
    try:
        arr = array_of(x, what, error)
    except error:
        if not isinstance(x, (list, tuple)):
            raise
        arr = np.asarray(None)  # a ragged list: not an array of numbers
    if arr.dtype.kind not in "biuf":
        raise error(f"{what} must be an array of numbers, not {x!r:.60}")
    return arr


def _token_shape(tokens) -> tuple:
    """The shape TransformerLens checks tokens by: () for a string or an int."""
    return () if isinstance(tokens, str) else np.shape(tokens)


def _index(x: np.ndarray, selection, axis: int, what: str = "pos_slice") -> np.ndarray:
    """TransformerLens's Slice along one axis: None keeps all, an int picks one
    (dropping the axis), a tuple is slice(*tuple), a slice or a list of indices picks those.
    One that does not fit the axis is an InvalidIndexError naming `what`."""
    if selection is None:
        return x
    try:
        if isinstance(selection, tuple):
            selection = slice(*selection)
        elif not isinstance(selection, (int, np.integer, slice)):
            selection = array_of(selection, what, InvalidIndexError)
        index = [slice(None)] * x.ndim
        index[axis] = selection
        return x[tuple(index)]
    except (IndexError, TypeError, ValueError) as e:
        size = x.shape[axis] if -x.ndim <= axis < x.ndim else 0
        raise InvalidIndexError(f"{what} {selection!r} does not fit an axis of {size}: {e}") from None


def position_slice(name: str, x: np.ndarray, pos_slice) -> np.ndarray:
    """pos_slice applied to a captured activation's position axis, as TransformerLens's
    run_with_cache(pos_slice=) does (an int keeps the axis, length 1): before the head axis at
    q, k, v, z and result (and tinymech's rot_q, rot_k), the query axis of scores and patterns,
    else the one before last."""
    if x.ndim < 2:
        return x
    name = name.removesuffix("_grad")  # a gradient is laid out as its activation
    if isinstance(pos_slice, (int, np.integer)):
        pos_slice = [pos_slice]  # as TransformerLens's run_with_cache: an int keeps the axis
    headed = name.endswith(("hook_q", "hook_k", "hook_v", "hook_z", "hook_result", "hook_rot_q", "hook_rot_k"))
    try:
        return _index(x, pos_slice, axis=-3 if headed else -2)
    except InvalidIndexError as e:
        raise InvalidIndexError(f"{name}: {e}") from None


def _pos(x: np.ndarray, pos_slice) -> np.ndarray:
    """pos_slice applied to the position axis ([..., pos, d])."""
    return _index(x, pos_slice, axis=-2)
