"""TransformerLens's transformer_lens.patching under its names, as `tinymech.patching`:

    from tinymech import patching
    _, clean_cache = model.run_with_cache(clean_tokens)
    patching.get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, metric)   # [layer, pos]

Each function takes (model, corrupted_tokens, clean_cache, patching_metric), the metric
a function of the patched logits [batch, pos, d_vocab] (numpy) returning a number, and
returns a numpy array in TransformerLens's axis order. The patches run on
analysis.patching's sweep: each patched run starts at the patched block, and the
patches of one block run side by side in one batch.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..cache import ActivationCache
from ..errors import AnalysisError, HookError
from ..hooks import get_act_name
from .patching import axis_extents, layout, run_patches, slice_setter

__all__ = [
    "generic_activation_patch",
    "get_act_patch_attn_head_all_pos_every",
    "get_act_patch_attn_head_by_pos_every",
    "get_act_patch_attn_head_k_all_pos",
    "get_act_patch_attn_head_k_by_pos",
    "get_act_patch_attn_head_out_all_pos",
    "get_act_patch_attn_head_out_by_pos",
    "get_act_patch_attn_head_pattern_all_pos",
    "get_act_patch_attn_head_pattern_by_pos",
    "get_act_patch_attn_head_pattern_dest_src_pos",
    "get_act_patch_attn_head_q_all_pos",
    "get_act_patch_attn_head_q_by_pos",
    "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_v_by_pos",
    "get_act_patch_attn_out",
    "get_act_patch_block_every",
    "get_act_patch_mlp_out",
    "get_act_patch_resid_mid",
    "get_act_patch_resid_pre",
    "layer_head_dest_src_pos_pattern_patch_setter",
    "layer_head_pattern_patch_setter",
    "layer_head_pos_pattern_patch_setter",
    "layer_head_vector_patch_setter",
    "layer_pos_head_vector_patch_setter",
    "layer_pos_patch_setter",
]

# TransformerLens's patch setters: (corrupted_activation, index, clean_activation) -> patched
layer_pos_patch_setter = slice_setter(("pos",), ("layer", "pos"))
layer_pos_head_vector_patch_setter = slice_setter(("pos", "head"), ("layer", "pos", "head"))
layer_head_vector_patch_setter = slice_setter(("pos", "head"), ("layer", "head"))
layer_head_pattern_patch_setter = slice_setter(layout("hook_pattern"), ("layer", "head"))
layer_head_pos_pattern_patch_setter = slice_setter(layout("hook_pattern"), ("layer", "head", "dest_pos"))
layer_head_dest_src_pos_pattern_patch_setter = slice_setter(layout("hook_pattern"),
                                                            ("layer", "head", "dest_pos", "src_pos"))


def generic_activation_patch(model, corrupted_tokens, clean_cache, patching_metric, patch_setter, activation_name,
                             index_axis_names=None, index_df=None, return_index_df: bool = False):
    """Patch the activation `activation_name` (e.g. "z", "resid_pre") of the clean run
    into the corrupted run at every index, and measure each patched run with the metric.

    The indices are every combination of index_axis_names (the layer first; "pos",
    "head" / "head_index", "dest_pos", "src_pos"), giving an array with one axis per
    name, or the rows of index_df (a [n, axes] integer table, the layer first, e.g. a
    pandas DataFrame), giving one value per row. patch_setter(corrupted_activation,
    index, clean_activation) returns the patched activation [batch, ...].
    return_index_df=True also returns the indices as a pandas DataFrame.
    Every index is checked before the first forward pass (by a slice setter's check_indices).
    """
    bos = model._bos(None)  # the model's default, read once: every run of the tokens takes it
    tokens = model.tokens_of(corrupted_tokens, prepend_bos=bos)
    if not isinstance(clean_cache, (ActivationCache, Mapping)):
        kind = type(clean_cache)
        raise AnalysisError(f"clean_cache is the clean run's cache (tinymech's model.run_with_cache), "
                            f"not {kind.__module__}.{kind.__qualname__}")
    if not callable(patching_metric) or not callable(patch_setter):
        raise AnalysisError("patching_metric and patch_setter are functions")
    hook_name = _hook_namer(model, activation_name)
    if (index_axis_names is None) == (index_df is None):
        raise AnalysisError("give index_axis_names or index_df, not both or neither")
    if index_df is None:
        shape = _shape(model, tokens.shape[1], hook_name(0), index_axis_names)
        indices = list(np.ndindex(*shape))
    else:
        indices = _index_rows(model, index_df)
        shape = [len(indices)]
    _check_indices(patch_setter, indices, clean_cache, hook_name(indices[0][0]), tokens.shape[0])
    values, _ = run_patches(model, tokens, clean_cache, hook_name, indices, patch_setter, patching_metric,
                            prepend_bos=bos)
    values = values.reshape(shape)
    if not return_index_df:
        return values
    if index_df is None:
        index_df = _data_frame(np.array(indices, dtype=np.int64).reshape(-1, len(shape)), list(index_axis_names))
    return values, index_df


def _check_indices(setter, indices, clean_cache, name: str, batch: int) -> None:
    """A slice setter's refusal of a bad index, before any forward pass rather than when the sweep
    reaches it. The clean activation's shape is the patched one's in any sweep that runs (run_patches
    refuses others): where the cache lacks it, or it has another batch, that refusal comes first."""
    check = getattr(setter, "check_indices", None)
    if check is None or name not in clean_cache:
        return
    shape = np.shape(clean_cache[name])
    if len(shape) > 1 and shape[0] == batch:
        check(indices, shape[1:])


def _hook_namer(model, activation_name):
    """layer -> the hook name of activation_name at that layer (TransformerLens's get_act_name)."""
    if not isinstance(activation_name, str):
        raise AnalysisError(f"activation_name is a name such as 'z' or 'resid_pre', not {activation_name!r}")
    try:
        name = get_act_name(activation_name, 0)
    except HookError as e:
        raise AnalysisError(str(e)) from None
    if not name.startswith("blocks.") or name not in model.hook_names():
        raise AnalysisError(f"this model has no hook point {name!r} in its blocks to patch")
    return lambda layer: get_act_name(activation_name, layer)


def _shape(model, n_pos: int, hook_name: str, axis_names) -> list[int]:
    extents = axis_extents(model, n_pos, hook_name)
    names = [axis_names] if isinstance(axis_names, str) else list(axis_names)
    unknown = [name for name in names if name not in extents]
    if unknown or not names or names[0] != "layer":
        raise AnalysisError(f"index_axis_names start with 'layer' and name axes among {list(extents)}, "
                            f"not {names}")
    return [extents[name] for name in names]


def _index_rows(model, index_df) -> list[tuple[int, ...]]:
    """index_df's rows as integer tuples, each starting with a layer of the model."""
    rows = np.asarray(index_df)
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] == 0 or not np.issubdtype(rows.dtype, np.integer):
        raise AnalysisError(f"index_df is a table of integer indices [n, axes], the layer first, "
                            f"not shape {list(rows.shape)} of {rows.dtype}")
    bad = rows[(rows[:, 0] < 0) | (rows[:, 0] >= model.cfg.n_layers), 0]
    if bad.size:
        raise AnalysisError(f"index_df's layer {bad[0]} is outside the model's {model.cfg.n_layers} layers")
    return [tuple(int(i) for i in row) for row in rows]


def _data_frame(rows: np.ndarray, columns: list[str]):
    try:
        import pandas
    except ImportError:
        raise AnalysisError("return_index_df returns a pandas DataFrame: install pandas") from None
    return pandas.DataFrame(rows, columns=columns)


def _sweep(name: str, activation_name: str, setter, axes: tuple[str, ...], what: str):
    """One of TransformerLens's get_act_patch_* functions: generic_activation_patch with
    this setter, activation and index axes."""

    def sweep(model, corrupted_tokens, clean_cache, patching_metric) -> np.ndarray:
        return generic_activation_patch(model, corrupted_tokens, clean_cache, patching_metric, setter,
                                        activation_name, index_axis_names=axes)

    sweep.__name__ = sweep.__qualname__ = name
    sweep.__doc__ = f"Activation patching of {what}: the metric per patch, [{', '.join(axes)}]."
    return sweep


_BY_POS = ("layer", "pos", "head")
get_act_patch_resid_pre = _sweep("get_act_patch_resid_pre", "resid_pre", layer_pos_patch_setter,
                                 ("layer", "pos"), "the residual stream before each block, at each position")
get_act_patch_resid_mid = _sweep("get_act_patch_resid_mid", "resid_mid", layer_pos_patch_setter,
                                 ("layer", "pos"), "the residual stream between attention and MLP, at each position")
get_act_patch_attn_out = _sweep("get_act_patch_attn_out", "attn_out", layer_pos_patch_setter,
                                ("layer", "pos"), "each attention layer's output, at each position")
get_act_patch_mlp_out = _sweep("get_act_patch_mlp_out", "mlp_out", layer_pos_patch_setter,
                               ("layer", "pos"), "each MLP's output, at each position")
get_act_patch_attn_head_out_by_pos = _sweep("get_act_patch_attn_head_out_by_pos", "z",
                                            layer_pos_head_vector_patch_setter, _BY_POS,
                                            "each head's output (hook_z), at each position")
get_act_patch_attn_head_q_by_pos = _sweep("get_act_patch_attn_head_q_by_pos", "q", layer_pos_head_vector_patch_setter,
                                          _BY_POS, "each head's queries, at each position")
get_act_patch_attn_head_k_by_pos = _sweep("get_act_patch_attn_head_k_by_pos", "k", layer_pos_head_vector_patch_setter,
                                          _BY_POS, "each key-value head's keys, at each position")
get_act_patch_attn_head_v_by_pos = _sweep("get_act_patch_attn_head_v_by_pos", "v", layer_pos_head_vector_patch_setter,
                                          _BY_POS, "each key-value head's values, at each position")
get_act_patch_attn_head_pattern_by_pos = _sweep(
    "get_act_patch_attn_head_pattern_by_pos", "pattern", layer_head_pos_pattern_patch_setter,
    ("layer", "head_index", "dest_pos"), "each head's attention pattern, at each destination position")
get_act_patch_attn_head_pattern_dest_src_pos = _sweep(
    "get_act_patch_attn_head_pattern_dest_src_pos", "pattern", layer_head_dest_src_pos_pattern_patch_setter,
    ("layer", "head_index", "dest_pos", "src_pos"), "each entry of each head's attention pattern")
get_act_patch_attn_head_out_all_pos = _sweep("get_act_patch_attn_head_out_all_pos", "z",
                                             layer_head_vector_patch_setter, ("layer", "head"),
                                             "each head's output (hook_z), at every position at once")
get_act_patch_attn_head_q_all_pos = _sweep("get_act_patch_attn_head_q_all_pos", "q", layer_head_vector_patch_setter,
                                           ("layer", "head"), "each head's queries, at every position at once")
get_act_patch_attn_head_k_all_pos = _sweep("get_act_patch_attn_head_k_all_pos", "k", layer_head_vector_patch_setter,
                                           ("layer", "head"), "each key-value head's keys, at every position at once")
get_act_patch_attn_head_v_all_pos = _sweep("get_act_patch_attn_head_v_all_pos", "v", layer_head_vector_patch_setter,
                                           ("layer", "head"), "each key-value head's values, at every position at once")
get_act_patch_attn_head_pattern_all_pos = _sweep(
    "get_act_patch_attn_head_pattern_all_pos", "pattern", layer_head_pattern_patch_setter,
    ("layer", "head_index"), "each head's attention pattern, at every position at once")


def _stack_heads(out, q, k, v, pattern) -> np.ndarray:
    """[5, ...]: the five kinds' results, keys and values of grouped-query attention
    padded with zeros to the query heads (the last axis)."""
    def pad(values):
        return np.pad(values, [(0, 0)] * (values.ndim - 1) + [(0, out.shape[-1] - values.shape[-1])])

    return np.stack([out, q, pad(k), pad(v), pattern])


def get_act_patch_attn_head_all_pos_every(model, corrupted_tokens, clean_cache, metric) -> np.ndarray:
    """Each head's output, queries, keys, values and pattern, at every position at once:
    [5, layer, head] (keys and values of grouped-query attention padded with zeros)."""
    args = (model, corrupted_tokens, clean_cache, metric)
    return _stack_heads(get_act_patch_attn_head_out_all_pos(*args), get_act_patch_attn_head_q_all_pos(*args),
                        get_act_patch_attn_head_k_all_pos(*args), get_act_patch_attn_head_v_all_pos(*args),
                        get_act_patch_attn_head_pattern_all_pos(*args))


def get_act_patch_attn_head_by_pos_every(model, corrupted_tokens, clean_cache, metric) -> np.ndarray:
    """Each head's output, queries, keys, values and pattern (by destination), at each
    position: [5, layer, pos, head] (keys and values of grouped-query attention padded with zeros)."""
    args = (model, corrupted_tokens, clean_cache, metric)
    return _stack_heads(get_act_patch_attn_head_out_by_pos(*args), get_act_patch_attn_head_q_by_pos(*args),
                        get_act_patch_attn_head_k_by_pos(*args), get_act_patch_attn_head_v_by_pos(*args),
                        get_act_patch_attn_head_pattern_by_pos(*args).transpose(0, 2, 1))


def get_act_patch_block_every(model, corrupted_tokens, clean_cache, metric) -> np.ndarray:
    """The residual stream before each block, each attention output and each MLP output,
    at each position: [3, layer, pos]."""
    args = (model, corrupted_tokens, clean_cache, metric)
    return np.stack([get_act_patch_resid_pre(*args), get_act_patch_attn_out(*args), get_act_patch_mlp_out(*args)])
