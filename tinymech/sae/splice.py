"""Running a model with SAEs spliced in, as SAELens's HookedSAETransformer does.

Each SAE becomes a native hook action (_core.SaeSplice) that replaces the
activation at its hook by the reconstruction, or keeps the error term so the
model's outputs are unchanged (keep_error=True). A transcoder reads its
input hook and writes its output hook. run_with_cache_with_saes also caches
what each SAE saw, under SAELens's names:
`<hook>.hook_sae_input`, `.hook_sae_acts_pre`, `.hook_sae_acts_post`,
`.hook_sae_recons`, `.hook_sae_error` (with keep_error) and `.hook_sae_output`,
where <hook> is the hook the SAE writes (a transcoder's output hook).
"""
from __future__ import annotations

import numpy as np

from ..cache import ActivationCache
from ..errors import HookError
from ..hooks import hook_row, resolve_names

SAE_HOOKS = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons",
             "hook_sae_error", "hook_sae_output")


def hook_widths(mcfg, name: str) -> tuple[int, ...] | None:
    """The widths an SAE may read at a hook (the core's table): its last axis,
    or the last two flattened where it has a head axis (SAELens's hook_z
    reshaping). None for attention scores and patterns, whose last axis is a
    key position."""
    row = hook_row(name)
    if row["width"] == "key_pos":
        return None
    inner = 1 if row["width"] == "1" else getattr(mcfg, row["width"])
    if row["heads"] is None:
        return (inner,)
    heads = getattr(mcfg, row["heads"]) or mcfg.n_heads  # n_key_value_heads None: as many as n_heads
    return heads * inner, inner


def splice_hooks(cfg) -> list[str]:
    """The hooks a splice runs at: [hook_name], or [hook_name, hook_name_out] for a transcoder."""
    if cfg.hook_name is None:
        raise HookError("the SAE's config names no hook point (hook_name)")
    if cfg.hook_head_index is not None:
        raise HookError("SAEs trained on a single head (hook_head_index) are not supported")
    return list(dict.fromkeys([cfg.hook_name, cfg.output_hook]))


def check_hooks(model, cfg) -> None:
    """HookError unless the model has the SAE's hooks at the SAE's widths."""
    resolve_names(model, splice_hooks(cfg))
    for name, width, what in ((cfg.hook_name, cfg.d_in, "d_in"), (cfg.output_hook, cfg.d_out, "d_out")):
        allowed = hook_widths(model.cfg, name)
        if allowed is None:
            raise HookError(f"{name} holds attention over key positions; an SAE cannot be spliced there")
        if width not in allowed:
            raise HookError(f"the SAE's {what} is {width} but {name} has width "
                            f"{' or '.join(str(w) for w in allowed)} in this model")


def _sae_list(saes) -> list:
    saes = list(saes) if isinstance(saes, (list, tuple)) else [saes]
    writers = {}
    for sae in saes:
        if not hasattr(sae, "as_hook"):
            raise HookError(f"saes must be tinymech SAE objects, got {type(sae).__name__}")
        hook = sae.cfg.output_hook
        if hook in writers:  # the second would reconstruct the first's reconstruction
            raise HookError(f"two SAEs write {hook}: splice one SAE per hook point")
        writers[hook] = sae
    return saes


def run_with_saes(model, input, saes, keep_error: bool = False, return_type: str = "logits",
                  prepend_bos: bool = True, loss_per_token: bool = False):
    """Run with the SAEs spliced in (each replaces its hook's activation by its
    reconstruction, or keeps the error term when keep_error)."""
    specs = []
    for sae in _sae_list(saes):
        check_hooks(model, sae.cfg)
        specs.append(sae.as_hook(keep_error=keep_error))
    return model.run_with_hooks(input, fwd_hooks=specs, return_type=return_type, prepend_bos=prepend_bos,
                                loss_per_token=loss_per_token)


def _wanted(names_filter, name: str) -> bool:
    if names_filter is None:
        return True
    if callable(names_filter):
        return bool(names_filter(name))
    return name in ([names_filter] if isinstance(names_filter, str) else list(names_filter))


def _model_filter(names_filter, sae_names: set):
    """names_filter without the SAE names, for the model's own run_with_cache."""
    if names_filter is None or callable(names_filter):
        return names_filter
    names = [names_filter] if isinstance(names_filter, str) else list(names_filter)
    return [n for n in names if n not in sae_names]


def recorded(sae, splice, keep_error: bool) -> dict[str, np.ndarray]:
    """What a recording splice saw on its last call, under SAELens's hook names."""
    cfg, last = sae.cfg, splice.last()
    shape = last["shape"]
    flattened = shape[-1] != cfg.d_out  # hook_z: [.., head, d_head] read as one vector
    lead = shape[:-2] if flattened else shape[:-1]
    offsets, indices, values = last["codes"]
    rows = len(offsets) - 1
    acts = np.zeros((rows, cfg.d_sae), np.float32)
    acts[np.repeat(np.arange(rows), np.diff(offsets)), indices] = values
    acts[np.isnan(acts).any(-1)] = np.nan  # a NaN input's codes are one NaN: every feature NaN, as encode gives
    out = {"hook_sae_input": last["input"].reshape(lead + (cfg.d_in,)),
           "hook_sae_acts_post": acts.reshape(lead + (cfg.d_sae,)),
           "hook_sae_recons": last["recons"].reshape(lead + (cfg.d_out,)),
           "hook_sae_output": last["output"].reshape(shape)}
    if last["acts_pre"] is not None:
        out["hook_sae_acts_pre"] = last["acts_pre"].reshape(lead + (cfg.d_sae,))
    if keep_error:
        out["hook_sae_error"] = last["error"].reshape(shape)
    return {f"{cfg.output_hook}.{k}": out[k] for k in SAE_HOOKS if k in out}


def run_with_cache_with_saes(model, input, saes, keep_error: bool = False, names_filter=None,
                             return_type: str = "logits", prepend_bos: bool = True):
    """run_with_cache with the SAEs spliced in: (logits, ActivationCache) whose
    cache also holds `<hook>.hook_sae_acts_post` and the other SAE hooks.

    names_filter (a name, list of names or predicate) may name SAE hooks as
    well as the model's; None caches everything."""
    saes = _sae_list(saes)
    specs, splices, sae_names = [], [], set()
    for sae in saes:
        check_hooks(model, sae.cfg)
        names = {f"{sae.cfg.output_hook}.{h}" for h in SAE_HOOKS}
        sae_names |= names
        wanted = [n for n in names if _wanted(names_filter, n)]
        name, splice = sae.as_hook(keep_error=keep_error)
        splice.set_recording(bool(wanted), any(n.endswith("hook_sae_acts_pre") for n in wanted))
        specs.append((name, splice))
        splices.append((sae, splice, bool(wanted)))
    logits, cache = model.run_with_cache(input, names_filter=_model_filter(names_filter, sae_names),
                                         return_type=return_type, prepend_bos=prepend_bos, hooks=specs)
    extra: dict[str, dict[str, np.ndarray]] = {}
    for sae, splice, wanted in splices:
        if wanted:
            got = {n: a for n, a in recorded(sae, splice, keep_error).items() if _wanted(names_filter, n)}
            extra.setdefault(sae.cfg.output_hook, {}).update(got)
    acts, ordered = dict(cache.items()), {}
    for n in model.hook_names():
        if n in acts:
            ordered[n] = acts[n]
        ordered.update(extra.get(n, {}))
    return logits, ActivationCache(ordered, model)
