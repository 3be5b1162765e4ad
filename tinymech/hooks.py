"""Hook names and interventions.

Hook points carry TransformerLens's names ("blocks.3.attn.hook_z", ...).
A hook is a pair (name, action) where the action is either

- a Python function fn(activation, hook) -> array | None, called with a numpy
  copy of the activation (None keeps in-place edits), or
- an Intervention (zero_ablate, mean_ablate, patch, add, scale, fill): data
  that the C++ core applies itself, during prefill and KV-cached generation.

The name may also be a predicate on names, as in TransformerLens.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Callable, Iterable, Sequence, Union

import numpy as np

from . import _core
from .errors import array_of, real_number, whole_number
from .errors import HookError

_SHORT_NAMES = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "rot_q": "attn.hook_rot_q",
    "rot_k": "attn.hook_rot_k",
    "attn_scores": "attn.hook_attn_scores",
    "scores": "attn.hook_attn_scores",
    "pattern": "attn.hook_pattern",
    "attn": "attn.hook_pattern",
    "z": "attn.hook_z",
    "result": "attn.hook_result",
    "pre": "mlp.hook_pre",
    "post": "mlp.hook_post",
    "mlp_pre": "mlp.hook_pre",
    "mlp_post": "mlp.hook_post",
    "pre_linear": "mlp.hook_pre_linear",
    "mid": "mlp.hook_mid",
    "attn_in": "hook_attn_in",
    "q_input": "hook_q_input",
    "k_input": "hook_k_input",
    "v_input": "hook_v_input",
    "mlp_in": "hook_mlp_in",
    "scale": "hook_scale",
    "normalized": "hook_normalized",
}


# TransformerLens's other names for some of them (its get_act_name's act_name_alias)
_ALIASES = {
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_mid": "mid",
}
# TransformerLens's shorthands for a layer_type (its layer_type_alias); "" is the block itself
_LAYER_TYPES = {"a": "attn", "attn": "attn", "attention": "attn", "m": "mlp", "mlp": "mlp",
                "b": "", "block": "", "blocks": "", "": ""}
# a norm's layer_type: its attention's norm (ln1) or its MLP's (ln2)
_NORMS = {"ln1": "ln1", "ln2": "ln2", "attn": "ln1", "mlp": "ln2"}
# "k6", "scale4ln1", "resid_pre5b": a name, the layer, then a layer type (as TransformerLens parses them)
_COMPACT = re.compile(r"([a-z_]+?)(\d+)([a-z][a-z0-9_]*)?")


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """TransformerLens's utils.get_act_name: ("pattern", 3) -> "blocks.3.attn.hook_pattern",
    with its aliases ("key", "query", "value", "attn_logits", ...) and layer types ("a", "m",
    "ln1", ...). Also takes compact names ('k6', 'scale4ln1') and full names (returned unchanged)."""
    if not isinstance(name, str):
        raise HookError(f"an activation name is a string, not {name!r}")
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    m = _COMPACT.fullmatch(name)
    if layer is None and m and _ALIASES.get(m.group(1), m.group(1)) in _SHORT_NAMES:
        name, layer, layer_type = m.group(1), int(m.group(2)), m.group(3) or layer_type
    name = _ALIASES.get(name, name)
    if name not in _SHORT_NAMES:
        known = sorted(set(_SHORT_NAMES) | set(_ALIASES))
        raise HookError(f"unknown activation name {name!r}; known: {', '.join(known)}")
    layer = _act_layer(layer)
    suffix = _SHORT_NAMES[name]
    if name in ("embed", "pos_embed"):
        return suffix
    if name in ("scale", "normalized"):
        return _norm_point(name, suffix, layer, layer_type)
    if layer is None:
        raise HookError(f"{name!r} needs a layer")
    return f"blocks.{layer}.{suffix}"  # the point's place follows from its name, whatever layer_type says


def _act_layer(layer) -> int | None:
    """get_act_name's layer: a whole number, or digits as TransformerLens's parse gives them."""
    if isinstance(layer, str) and layer.isdigit():
        return int(layer)
    return None if layer is None else whole_number(layer, "layer", error=HookError)


def _norm_point(name: str, suffix: str, layer: int | None, layer_type: str | None) -> str:
    """A norm's hook: ln_final's without a layer, else the block's ln1 or ln2."""
    if layer is None:
        return f"ln_final.{suffix}"
    ln = _NORMS.get(_LAYER_TYPES.get(layer_type or "", layer_type or ""))
    if ln is None:
        raise HookError(f"{name!r} at a layer needs layer_type 'ln1' or 'ln2' (or 'a'/'attn', 'm'/'mlp')")
    return f"blocks.{layer}.{ln}.{suffix}"


# The points TransformerLens computes only in a mode (HookedTransformer's set_use_* setters):
# each point's last name -> its mode. A model lists them (hook_names, hook_dict) while it is on.
MODE_POINTS = {
    "hook_attn_in": "use_attn_in",
    "hook_q_input": "use_split_qkv_input",
    "hook_k_input": "use_split_qkv_input",
    "hook_v_input": "use_split_qkv_input",
    "hook_mlp_in": "use_hook_mlp_in",
}


def mode_of(name: str) -> str | None:
    """The mode a hook point needs (MODE_POINTS), or None."""
    return MODE_POINTS.get(name.rpartition(".")[2])


def hook_registry(n_layers: int, ids: Sequence[int]) -> tuple[list[str], dict[str, int]]:
    """The names of the hook points with these core ids (those the architecture has), in order."""
    every = _core.hook_names(n_layers)
    names = [every[i] for i in ids]
    return names, {every[i]: i for i in ids}


@dataclasses.dataclass(frozen=True)
class HookPoint:
    """What a hook function receives as `hook`: the point's name and layer, and its ctx, as
    TransformerLens's HookPoint.ctx: a dict the model keeps for the point, which a hook may
    fill and read again in later runs, until reset_hooks() (clear_contexts=True) replaces it
    with a new one (a reference kept to the old one keeps what it held, as in TransformerLens)."""

    name: str
    contexts: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)  # the model's: name -> ctx
    model: object = dataclasses.field(default=None, compare=False, repr=False)  # the model, where one asked for it

    def add_hook(self, hook, dir: str = "fwd", is_permanent: bool = False, level=None, prepend: bool = False) -> None:
        """TransformerLens's HookPoint.add_hook (model.blocks[0].attn.hook_z.add_hook(fn)): the
        model's add_hook at this point."""
        if self.model is None:
            raise HookError(f"hooks are added to {self.name} through the model: model.add_hook({self.name!r}, fn), "
                            f"or model.hook_dict[{self.name!r}].add_hook(fn)")
        self.model.add_hook(self.name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    @property
    def ctx(self) -> dict:
        return self.contexts.setdefault(self.name, {})

    def clear_context(self) -> None:
        self.contexts[self.name] = {}

    def __reduce__(self):  # a copy or a pickle takes its own ctx, not every point's
        return HookPoint, (self.name, {self.name: self.ctx})

    def layer(self) -> int:
        m = re.match(r"blocks\.(\d+)\.", self.name)
        if not m:
            raise HookError(f"{self.name} is not inside a block")
        return int(m.group(1))


@dataclasses.dataclass(frozen=True)
class Intervention:
    """An edit the C++ core applies at a hook point (see the constructors below)."""

    op: str  # "fill" | "replace" | "add" | "scale"
    values: np.ndarray | None = None
    scalar: float = 0.0
    heads: tuple[int, ...] = ()
    positions: tuple[int, ...] = ()


def _ints(x, what: str) -> tuple[int, ...]:
    """Head or position indices: one whole number or several (no bools, no 1.7)."""
    if x is None:
        return ()
    try:
        items = list(x)
    except TypeError:  # one index (or something whole_number refuses by name)
        items = [x]
    out = tuple(whole_number(i, what, 0, error=HookError) for i in items)
    if any(i >= 2**31 for i in out):
        raise HookError(f"{what} {max(out)} is out of range")
    return out


def _targets(heads, positions) -> dict:
    """An Intervention's heads and positions, checked."""
    return dict(heads=_ints(heads, "heads"), positions=_ints(positions, "positions"))


def _floats(x, masked: bool = False) -> np.ndarray | None:
    """Finite float32 values; with masked, -inf too (attention scores hold
    -inf where a query may not look: a patch or fill may put it there)."""
    if x is None:
        return None
    arr = array_of(x, "intervention values", HookError)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise HookError(f"intervention values must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not (np.isfinite(arr) | (masked & (arr == -np.inf))).all():
        hint = "" if masked else " (-inf: patch and fill only)"
        raise HookError(f"intervention values contain NaN or infinity{hint}")
    return arr


def _scalar(x, what: str, masked: bool = False) -> float:
    value = real_number(x, what, error=HookError)
    if not (np.isfinite(value) or (masked and value == -np.inf)):
        raise HookError(f"{what} must be a finite number{' or -inf' if masked else ''}, not {value}")
    return value


def zero_ablate(heads=None, positions=None) -> Intervention:
    """Set the activation (or the given heads / absolute positions) to zero."""
    return Intervention("fill", None, 0.0, **_targets(heads, positions))


def mean_ablate(mean, heads=None, positions=None) -> Intervention:
    """Replace by a mean activation: [head, d_head] per head, or one slice broadcast."""
    return Intervention("fill", _floats(mean), 0.0, **_targets(heads, positions))


def fill(value, heads=None, positions=None) -> Intervention:
    """Set to a constant (a number) or to a vector broadcast over batch and positions."""
    ndim = getattr(value, "ndim", None)  # a 0-d tensor numpy cannot read (bfloat16) is still a number
    if (array_of(value, "a fill value", HookError).ndim if ndim is None else ndim) == 0:
        return Intervention("fill", None, _scalar(value, "a fill value", masked=True), **_targets(heads, positions))
    return Intervention("fill", _floats(value, masked=True), 0.0, **_targets(heads, positions))


def patch(source, heads=None, positions=None) -> Intervention:
    """Replace with another run's activation (TransformerLens shape, e.g. from a cache).

    The source covers absolute positions 0..P-1; positions it does not cover are
    left alone (so a patch from the prompt stays valid during generation).
    """
    return Intervention("replace", _floats(source, masked=True), 0.0, **_targets(heads, positions))


def add(vector, coeff: float = 1.0, positions=None, heads=None) -> Intervention:
    """Add coeff * vector (steering); vector broadcasts over batch and positions."""
    return Intervention("add", _floats(vector), _scalar(coeff, "coeff"), **_targets(heads, positions))


def scale(factor: float, heads=None, positions=None) -> Intervention:
    return Intervention("scale", None, _scalar(factor, "a scale factor"), **_targets(heads, positions))


HookAction = Union[Callable, Intervention]
HookSpec = tuple  # (name | predicate, HookAction)


def matches(predicate, name: str) -> bool:
    """Whether a names predicate takes `name`; what it raises (or a result with no truth value,
    such as a numpy array) is a HookError naming it, as a hook function's error is."""
    try:
        return bool(predicate(name))
    except Exception as e:
        raise HookError(f"names predicate {getattr(predicate, '__name__', predicate)!r} raised "
                        f"{type(e).__name__} on {name!r}: {e}") from e


def resolve_names(model, name_or_filter) -> list[str]:
    """Hook names matched by a name, a list of names, or a predicate."""
    known = model._hook_ids
    if callable(name_or_filter):
        return [n for n in model._hook_names if matches(name_or_filter, n)]
    if isinstance(name_or_filter, str):
        names = [name_or_filter]
    elif isinstance(name_or_filter, Iterable) and not isinstance(name_or_filter, bytes):
        names = list(name_or_filter)
    else:  # list(3) would escape as a TypeError
        raise HookError(f"a hook point is a name, a list of names or a predicate on names, got {name_or_filter!r}")
    out = []
    for n in names:
        if not isinstance(n, str):
            raise HookError(f"hook names are strings, got {n!r}")
        if mode_of(n) and n in known and n not in model._hook_names:  # a point of a mode that is off
            raise HookError(f"{n!r} is computed only after model.set_{mode_of(n)}(True), as in TransformerLens")
        if n not in known:
            close = difflib.get_close_matches(n, model._hook_names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else "; see model.hook_names()"
            raise HookError(f"unknown hook point {n!r}{hint}")
        out.append(n)
    return out


def _wrap_function(fn: Callable, name: str, contexts: dict | None = None):
    """fn as the core's callback at `name`; its `hook` reads its ctx from contexts (the model's)."""
    hook = HookPoint(name, {} if contexts is None else contexts)

    def call(activation: np.ndarray):
        try:
            out = fn(activation, hook=hook)
        except Exception as e:
            if isinstance(e, HookError) and getattr(fn, "names_its_errors", False):
                raise  # an SAE's Python splice: the hook that failed inside it is named already
            raise HookError(f"hook function {getattr(fn, '__name__', fn)!r} at {name!r} raised "
                            f"{type(e).__name__}: {e}") from e
        if out is None:
            return activation
        out = array_of(out, f"the value hook function {getattr(fn, '__name__', fn)!r} at {name!r} returned",
                       HookError)
        if out.shape != activation.shape:
            raise HookError(
                f"hook function at {name!r} returned shape {list(out.shape)}, expected {list(activation.shape)}"
            )
        if not np.issubdtype(out.dtype, np.floating):
            raise HookError(f"hook function at {name!r} returned dtype {out.dtype}, expected floats")
        return np.ascontiguousarray(out, dtype=np.float32)

    return call


def build_plan(model, specs: Iterable[HookSpec], capture: Iterable[str] = ()) -> _core.HookPlan:
    """One core HookPlan: user hooks in order, then captures (so caches see edits)."""
    plan = _core.HookPlan(model.cfg.n_layers)
    plan.attention_input = model._attention_input()
    ids = model._hook_ids
    for spec in specs:
        try:
            name_or_filter, action = spec
        except (TypeError, ValueError):
            raise HookError(f"a hook is a (name, function or intervention) pair, got {spec!r}") from None
        for name in resolve_names(model, name_or_filter):
            hid = ids[name]
            if isinstance(action, Intervention):
                _add_intervention(plan, hid, name, action)
            elif isinstance(action, _core.NativeHook):
                plan.native(hid, action)
            elif callable(action):
                plan.callback(hid, _wrap_function(action, name, model._hook_contexts))
            else:
                raise HookError(f"the action for {name!r} must be a function or an Intervention, got {action!r}")
    for name in dict.fromkeys(capture):  # a name given twice is captured once
        plan.capture(ids[name])
    return plan


# The core's table of hook points (csrc/core/hooks.cpp's kHooks), by name
# (after "blocks.N." for a block's points).
HOOK_TABLE = {row["name"]: row for row in _core.hook_table()}
_HEADED = tuple(name for name, row in HOOK_TABLE.items() if row["heads"])


def hook_row(name: str) -> dict:
    """The table's row for a hook point's full name ("blocks.3.attn.hook_z")."""
    return HOOK_TABLE[re.sub(r"^blocks\.\d+\.", "", name)]


def _add_intervention(plan, hid: int, name: str, iv: Intervention):
    if iv.heads and not name.endswith(_HEADED):
        raise HookError(f"{name!r} has no head axis; heads can be chosen only at {', '.join(_HEADED)}")
    heads, positions = list(iv.heads), list(iv.positions)
    if any(p < 0 for p in positions):
        raise HookError("positions are absolute and must be >= 0")
    if iv.op == "fill":
        plan.fill(hid, iv.values, iv.scalar, heads, positions)
    elif iv.op == "replace":
        plan.replace(hid, iv.values, heads, positions)
    elif iv.op == "add":
        plan.add(hid, iv.values, iv.scalar, heads, positions)
    elif iv.op == "scale":
        plan.scale(hid, iv.scalar, heads, positions)
    else:
        raise HookError(f"unknown intervention {iv.op!r}")
