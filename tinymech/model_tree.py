"""TransformerLens's module tree over a Model's weights: model.embed.W_E,
model.blocks[l].attn.W_Q, model.blocks[l].mlp.W_in, model.ln_final.w,
model.unembed.W_U, ..., and the parameters under TransformerLens's names
(named_parameters, state_dict). Each module reads the Model's weights when asked:
nothing is copied up front.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Iterator

import numpy as np

from .errors import InvalidIndexError, read_only_attribute, read_only_weight
from .factored_matrix import FactoredMatrix
from .hooks import HookPoint, mode_of


class Module:
    """A read-only view of some of a Model's weights, named as TransformerLens's module."""

    PARAMETERS: tuple[str, ...] = ()

    def __init__(self, model, hooks_at: str | None = None):
        self.model = model
        self.cfg = model.cfg
        object.__setattr__(self, "_hooks_at", hooks_at)  # the prefix of this module's hook points

    def __getattr__(self, name: str):
        """A hook point of this module as an attribute (blocks[0].attn.hook_z), as TransformerLens's;
        only for what normal lookup did not find."""
        prefix = self.__dict__.get("_hooks_at")
        if prefix is not None and name.startswith("hook_"):
            return hook_point(self.model, f"{prefix}.{name}", name, self)
        return object.__getattribute__(self, name)  # normal lookup's own error (a property's message)

    def __setattr__(self, name: str, value) -> None:
        error = read_only_attribute(self, name, type(self).__name__)  # W_E, ln1.w, OV, ...: Python's would say "no setter"
        if error:
            raise error
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        error = read_only_attribute(self, name, type(self).__name__)
        if error:
            raise error
        super().__delattr__(name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        """(name, array) for each of TransformerLens's parameters of this module, in its order."""
        for name in self.PARAMETERS:
            yield prefix + name, getattr(self, name)
        for child_name, child in self._children():
            yield from child.named_parameters(f"{prefix}{child_name}.")

    def _children(self) -> list[tuple[str, Module]]:
        return []

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(name for name, _ in self.named_parameters())})"


class Embed(Module):
    PARAMETERS = ("W_E",)

    @property
    def W_E(self) -> np.ndarray:
        return self.model.W_E


class PosEmbed(Module):
    PARAMETERS = ("W_pos",)

    @property
    def W_pos(self) -> np.ndarray:
        return self.model.W_pos


class Unembed(Module):
    PARAMETERS = ("W_U", "b_U")

    @property
    def W_U(self) -> np.ndarray:
        return self.model.W_U

    @property
    def b_U(self) -> np.ndarray:
        return self.model.b_U


class Norm(Module):
    """LayerNorm (w, b), RMSNorm (w), or, once folded into the next weights
    (normalization_type LNPre/RMSPre), one without parameters, as in TransformerLens."""

    def __init__(self, model, w: np.ndarray | None, b: np.ndarray | None, hooks_at: str | None = None):
        super().__init__(model, hooks_at)
        self.PARAMETERS = {"LN": ("w", "b"), "RMS": ("w",)}.get(model.cfg.normalization_type, ())
        self._w, self._b = w, b

    def _parameter(self, name: str, value):
        if name not in self.PARAMETERS:
            raise AttributeError(f"a {self.cfg.normalization_type} norm has no parameter {name!r}")
        return value

    @property
    def w(self) -> np.ndarray:
        return self._parameter("w", self._w)

    @property
    def b(self) -> np.ndarray:
        return self._parameter("b", self._b)


class LayerWeight:
    """A layer module's attribute: the model's per-layer weight of the same name at the module's layer."""

    def __set_name__(self, owner, name: str):
        self.name = name

    def __get__(self, module, owner=None):
        if module is None:
            return self
        stack = getattr(module.model, self.name)
        if stack is None:  # W_gate of an MLP without a gate
            raise AttributeError(f"this model's {type(module).__name__} has no {self.name}")
        return stack(module.layer)

    def __set__(self, module, value):  # without it, an assignment would land on a throwaway module, unused
        raise read_only_weight(f"{type(module).__name__}.{self.name}")

    def __delete__(self, module):
        raise read_only_weight(f"{type(module).__name__}.{self.name}")


class KeyValueOnce(LayerWeight):
    """_W_K, _W_V, _b_K, _b_V of grouped-query attention: each key/value head once, [n_key_value_heads, ...]."""

    def __get__(self, module, owner=None):
        if module is None:
            return self
        c = module.cfg
        if c.n_key_value_heads is None:
            raise AttributeError(f"{self.name} belongs to grouped-query attention; this model's is {self.name[1:]}")
        return getattr(module, self.name[1:])[:: c.n_heads // c.n_key_value_heads]  # the first of each repeat


class Attention(Module):
    """One layer's attention: W_Q, W_K, W_V [head, d_model, d_head], W_O [head, d_head, d_model],
    their biases, OV and QK. With grouped-query attention, W_K/W_V/b_K/b_V repeat each key/value
    head per query head and _W_K/_W_V/_b_K/_b_V hold each once, as TransformerLens's."""

    W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O = (LayerWeight() for _ in range(8))
    _W_K, _W_V, _b_K, _b_V = (KeyValueOnce() for _ in range(4))

    def __init__(self, model, layer: int):
        super().__init__(model, f"blocks.{layer}.attn")
        self.layer = layer
        grouped = model.cfg.n_key_value_heads is not None  # TransformerLens's GroupedQueryAttention
        kv = ("_W_K", "_W_V", "_b_K", "_b_V") if grouped else ("W_K", "W_V", "b_K", "b_V")
        self.PARAMETERS = ("W_Q", "W_O", "b_Q", "b_O") + kv

    @property
    def OV(self) -> FactoredMatrix:
        """[head, d_model, d_model]: W_V @ W_O."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        """[head, d_model, d_model]: W_Q @ W_K.T."""
        return FactoredMatrix(self.W_Q, np.swapaxes(self.W_K, -1, -2))


class MLP(Module):
    """One layer's MLP: W_in [d_model, d_mlp], W_out [d_mlp, d_model], b_in, b_out, and W_gate for a gated MLP."""

    W_in, W_out, W_gate, b_in, b_out = (LayerWeight() for _ in range(5))

    def __init__(self, model, layer: int):
        super().__init__(model, f"blocks.{layer}.mlp")
        self.layer = layer
        gated = model.cfg.gated_mlp
        self.PARAMETERS = ("W_in", "W_out", "W_gate", "b_in", "b_out") if gated else ("W_in", "b_in", "W_out", "b_out")


class Block(Module):
    """model.blocks[l]: ln1, attn, ln2, mlp."""

    def __init__(self, model, layer: int):
        super().__init__(model, f"blocks.{layer}")
        self.layer = layer
        weights = model._weights["layers"][layer]
        self.ln1 = Norm(model, weights["ln1_w"], weights["ln1_b"], f"blocks.{layer}.ln1")
        self.ln2 = Norm(model, weights["ln2_w"], weights["ln2_b"], f"blocks.{layer}.ln2")
        self.attn = Attention(model, layer)
        self.mlp = MLP(model, layer)

    def _children(self):
        return [("ln1", self.ln1), ("ln2", self.ln2), ("attn", self.attn), ("mlp", self.mlp)]


class Blocks(Sequence):
    """model.blocks: the layers' Blocks, indexed as TransformerLens's ModuleList (negative indices
    count back, a slice gives a tuple); each Block is made when asked for."""

    def __init__(self, model):
        self._model = model
        self._n_layers = model.cfg.n_layers

    def __len__(self) -> int:
        return self._n_layers

    def __iter__(self) -> Iterator[Block]:
        return (Block(self._model, layer) for layer in range(self._n_layers))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(Block(self._model, layer) for layer in range(self._n_layers)[index])
        if isinstance(index, (bool, np.bool_)):  # True would read as block 1
            raise InvalidIndexError(f"model.blocks: a layer is a whole number, not {index!r}")
        try:
            layer = operator.index(index)
        except TypeError:
            raise InvalidIndexError(f"model.blocks: a layer is a whole number, not {index!r}") from None
        n = self._n_layers
        if not -n <= layer < n:
            raise InvalidIndexError(f"model.blocks[{layer}]: layer {layer} is out of range for a model with {n} "
                                    f"layers (0 to {n - 1}, or -{n} to -1 from the end)")
        return Block(self._model, layer % n)

    def __add__(self, other):  # model.blocks was a tuple: blocks + (...) still joins them
        return tuple(self) + tuple(other)

    def __repr__(self):
        return f"Blocks({self._n_layers} x Block)"


def hook_point(model, full: str, name: str, owner):
    """model's hook point `full` as an attribute `name` of owner; AttributeError where it has none
    (a point of a mode that is off names the mode)."""
    if full in model._hook_names:
        return HookPoint(full, model._hook_contexts, model)
    if full in model._hook_ids and mode_of(full):
        raise AttributeError(f"{full} is computed only after model.set_{mode_of(full)}(True), as in TransformerLens",
                             name=name, obj=owner)
    raise AttributeError(f"{type(owner).__name__!r} object has no attribute {name!r}", name=name, obj=owner)


def top_modules(model) -> list[tuple[str, Module]]:
    """The model's modules with parameters, in TransformerLens's order."""
    modules = [("embed", Embed(model))]
    if model.cfg.positional_embedding_type != "rotary":
        modules.append(("pos_embed", PosEmbed(model)))
    modules += [(f"blocks.{layer}", Block(model, layer)) for layer in range(model.cfg.n_layers)]
    modules += [("ln_final", Norm(model, model.ln_final_w, model.ln_final_b)), ("unembed", Unembed(model))]
    return modules


def named_parameters(model) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) for each of TransformerLens's parameters: embed.W_E, blocks.0.ln1.w, ..., unembed.b_U."""
    for prefix, module in top_modules(model):
        yield from module.named_parameters(prefix + ".")
