"""Running a model with SAEs spliced in, as SAELens's HookedSAETransformer does.

Each SAE becomes a native hook action (_core.SaeSplice) that replaces the
activation at its hook by the reconstruction, or keeps the error term so the
model's outputs are unchanged (keep_error=True). A transcoder reads its
input hook and writes its output hook. run_with_cache_with_saes also caches
what each SAE saw, under SAELens's names:
`<hook>.hook_sae_input`, `.hook_sae_acts_pre`, `.hook_sae_acts_post`,
`.hook_sae_recons`, `.hook_sae_error` (with keep_error) and `.hook_sae_output`,
where <hook> is the hook the SAE writes (a transcoder's output hook).

SAEs attached with model.add_sae(sae) (or for a block, `with model.saes([...])`)
stay spliced into every run, run_with_cache and generate until model.reset_saes();
run_with_cache then also caches their hook_sae_* points. Python hook functions on
an attached SAE's points (`<hook>.hook_sae_acts_post`, ...) run inside a Python
splice that calls the SAE's encode and decode, as SAELens's HookedSAETransformer
calls them.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterable

import numpy as np

from ..errors import HookError
from ..hooks import _wrap_function, hook_row, matches, resolve_names
from .architectures import ARCHITECTURES

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
    """The hooks a splice runs at: [hook_name], or [hook_name, hook_name_out] for a transcoder.
    An SAE of one head (hook_head_index) runs at every head of its hook, as SAELens's
    HookedSAETransformer runs it (which does not read hook_head_index)."""
    if cfg.hook_name is None:
        raise HookError("the SAE's config names no hook point (hook_name)")
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
        if ARCHITECTURES[cfg.architecture].sequential and width != allowed[0]:
            raise HookError(f"a temporal SAE reads whole positions, [batch, pos, {allowed[0]}] at {name}; its {what} "
                            f"is {width}")


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


def _names(names_filter) -> list:
    """A names filter that is a name or names, as a list; HookError for what is neither (or a predicate)."""
    if isinstance(names_filter, str):
        return [names_filter]
    if isinstance(names_filter, Iterable) and not isinstance(names_filter, (bytes, bytearray)):
        return list(names_filter)
    raise HookError(f"a hook point is a name, a list of names or a predicate on names, got {names_filter!r}")


def _wanted(names_filter, name: str) -> bool:
    if names_filter is None:
        return True
    if callable(names_filter):
        return matches(names_filter, name)
    return name in _names(names_filter)


def sae_point_names(sae) -> list[str]:
    """The SAE's points (a matching-pursuit SAE has no pre-activations: no hook_sae_acts_pre)."""
    pre = ARCHITECTURES[sae.cfg.architecture].pre_activations
    return [f"{sae.cfg.output_hook}.{h}" for h in SAE_HOOKS if pre or h != "hook_sae_acts_pre"]


def model_names_filter(model, names_filter):
    """names_filter without the attached SAEs' points, for the model's own hook points."""
    if names_filter is None or callable(names_filter):
        return names_filter
    names = _names(names_filter)
    sae_names = {n for sae, _ in model._saes.values() for n in sae_point_names(sae)}
    return [n for n in names if n not in sae_names]


# ---- attaching SAEs to a model (HookedSAETransformer's stateful API) ----------------------

def _error_term(use_error_term, keep_error=None):
    for flag in (use_error_term, keep_error):
        if flag is not None and not isinstance(flag, (bool, np.bool_)):
            raise HookError(f"use_error_term must be True, False or None, got {flag!r}")
    return use_error_term if use_error_term is not None else keep_error


def add_sae(model, sae, use_error_term: bool | None = None) -> None:
    """Attach the SAE at its hook (replacing one attached there) until reset_saes.
    use_error_term None: the SAE's own sae.use_error_term."""
    _sae_list([sae])
    check_hooks(model, sae.cfg)
    use_error_term = _error_term(use_error_term)
    keep = bool(sae.use_error_term if use_error_term is None else use_error_term)
    for name, (other, _) in model._saes.items():
        if name != sae.cfg.hook_name and other.cfg.output_hook == sae.cfg.output_hook:
            raise HookError(f"two SAEs write {sae.cfg.output_hook}: splice one SAE per hook point "
                            f"(reset_saes({name!r}) first)")
    model._saes[sae.cfg.hook_name] = (sae, keep)


def reset_saes(model, act_names=None) -> None:
    """Detach the SAEs at these input hooks (a name or a list), or all."""
    if act_names is None:
        names = list(model._saes)
    else:
        one = isinstance(act_names, (str, bytes)) or not isinstance(act_names, Iterable)
        names = [act_names] if one else list(act_names)  # a non-name is refused below
    for name in names:
        if not isinstance(name, str):
            raise HookError(f"reset_saes takes hook names, got {name!r}")
        if model._saes.pop(name, None) is None:
            warnings.warn(f"no SAE is attached to {name}; there is nothing to reset", stacklevel=3)


@contextlib.contextmanager
def attached(model, saes=(), reset_saes_end: bool = True, use_error_term: bool | None = None):
    """Within the block the SAEs are attached; on leaving, those attached before come back."""
    saes = _sae_list(saes)
    before = dict(model._saes)
    try:
        for sae in saes:
            add_sae(model, sae, use_error_term)
        yield model
    finally:
        if reset_saes_end:
            model._saes = before


# ---- the splices of the attached SAEs in one run -----------------------------------------------

def _sae_point(spec) -> tuple[str, str] | None:
    """(output hook, SAE point) of a hook spec on an SAE point such as
    blocks.1.hook_resid_pre.hook_sae_acts_post; None for other specs."""
    name = spec[0] if isinstance(spec, tuple) and len(spec) == 2 else None
    if not isinstance(name, str):
        return None
    hook, _, point = name.rpartition(".")
    return (hook, point) if point in SAE_HOOKS else None


class PythonSplice:
    """An attached SAE spliced in by Python, so that hook functions can edit what it
    computes: encode, the hooks on hook_sae_acts_post, decode, the error term of the
    unedited reconstruction (use_error_term), as SAELens's splice runs them."""

    def __init__(self, sae, keep_error: bool, edits: dict[str, list], contexts: dict | None = None):
        """contexts: the model's hook contexts (name -> HookPoint.ctx), kept across runs."""
        cfg = sae.cfg
        if "hook_sae_acts_pre" in edits:
            raise HookError(f"{cfg.output_hook}.hook_sae_acts_pre cannot take a hook function here; "
                            "hook hook_sae_acts_post (the latents) instead")
        if "hook_sae_recons" in edits and cfg.run_norm != "none":
            raise HookError(f"{cfg.output_hook}.hook_sae_recons cannot take a hook function on an SAE that "
                            "normalizes its input; hook hook_sae_acts_post or hook_sae_output instead")
        if "hook_sae_error" in edits and not keep_error:
            raise HookError(f"{cfg.output_hook}.hook_sae_error exists only with use_error_term=True")
        self.sae, self.keep_error, self.recording = sae, keep_error, {}
        self.edits = {point: [_wrap_function(fn, f"{cfg.output_hook}.{point}", contexts) for fn in fns]
                      for point, fns in edits.items()}
        self._input = None

    def _hooked(self, point: str, x: np.ndarray) -> np.ndarray:
        for call in self.edits.get(point, ()):
            x = call(np.ascontiguousarray(x, dtype=np.float32))
        self.recording[point] = x
        return x

    def specs(self) -> list:
        cfg = self.sae.cfg
        if cfg.hook_name == cfg.output_hook:
            return [(cfg.output_hook, self._splice)]
        return [(cfg.hook_name, self._capture), (cfg.output_hook, self._splice)]

    def _capture(self, act, hook):
        self._input = act.copy()

    def _splice(self, act, hook):
        sae, x = self.sae, (act if self._input is None else self._input)
        self._input = None
        flat = sae._rows(x, sae.d_in, "activations")[1]  # lead shape: hook_z's [.., head, d_head] read as one
        raw = np.ascontiguousarray(x, dtype=np.float32).reshape(flat + (sae.d_in,))
        x_in = self._hooked("hook_sae_input", raw)
        feats = self._hooked("hook_sae_acts_post", sae.encode(x_in))
        recons = self._hooked("hook_sae_recons", sae._decode_rows(feats, x_in))
        out = recons.reshape(act.shape)
        if self.keep_error:  # the error of the unedited SAE on the unedited input (decode(encode(x)), as SAELens)
            clean = sae._decode_rows(sae.encode(raw), raw)
            out = out + self._hooked("hook_sae_error", act - clean.reshape(act.shape))
        return self._hooked("hook_sae_output", out)

    _splice.names_its_errors = True  # _wrap_function passes on its hooks' HookErrors as they are

    def recorded(self) -> dict[str, np.ndarray]:
        name = self.sae.cfg.output_hook
        return {f"{name}.{k}": self.recording[k] for k in SAE_HOOKS if k in self.recording}


def _check_action(spec, point: str) -> None:
    if not callable(spec[1]) or hasattr(spec[1], "op"):
        raise HookError(f"a hook on {point}{_matched_by(spec[0])} must be a Python function fn(activation, hook)")


def _matched_by(name_or_filter) -> str:
    if isinstance(name_or_filter, str):
        return ""
    return f" (matched by the names predicate {getattr(name_or_filter, '__name__', name_or_filter)!r})"


def _predicate_points(model, spec) -> list[tuple[str, str]]:
    """(output hook, SAE point) of the attached SAEs' points a predicate spec matches; an SAE's
    hook_sae_error only with its error term (SAELens calls it only then)."""
    predicate = spec[0] if isinstance(spec, tuple) and len(spec) == 2 else None
    if not callable(predicate) or isinstance(predicate, str):
        return []
    out = []
    for sae, keep_error in model._saes.values():
        for name in sae_point_names(sae):
            hook, _, point = name.rpartition(".")
            if (keep_error or point != "hook_sae_error") and matches(predicate, name):
                out.append((hook, point))
    return out


def _sparing(spec, replaced: dict):
    """A predicate spec that leaves out the points attached SAEs replace: while an SAE is attached,
    SAELens's hook_dict has its points instead (a hook there as well would edit twice)."""
    predicate = spec[0]

    @functools.wraps(predicate)
    def sparing(name):
        return name not in replaced and predicate(name)

    return (sparing, *spec[1:])


def attached_specs(model, specs: list, record=False, recorders: list | None = None) -> list:
    """specs less those on SAE points, then the attached SAEs' splices (so hooks on
    an SAE's own hook point edit what it reads); the hooks on SAE points run
    inside their SAE's (Python) splice. record: a names filter of the SAE points
    to record (None: all; False: none); each recording splice is appended to
    recorders as (sae, splice, keep_error, wanted names)."""
    writers = {sae.cfg.output_hook: sae for sae, _ in model._saes.values()}
    edits: dict[str, dict[str, list]] = {}
    rest, unhooked = [], []
    for spec in specs:
        point = _sae_point(spec)
        if point is None:
            matched = _predicate_points(model, spec)  # a predicate's (SAELens's hook_dict has them)
            rest.append(_sparing(spec, writers) if matched else spec)
            for hook, name in matched:
                if name == "hook_sae_acts_pre" or not callable(spec[1]) or hasattr(spec[1], "op"):
                    unhooked.append(f"{hook}.{name}")  # refused by name (PythonSplice): said below, not silent
                    continue
                edits.setdefault(hook, {}).setdefault(name, []).append(spec[1])
            continue
        hook, name = point
        if hook not in writers:
            raise HookError(f"no SAE writing {hook} is attached; attach one with model.add_sae(sae) "
                            "or run_with_hooks_with_saes(saes=[...])")
        _check_action(spec, spec[0])
        edits.setdefault(hook, {}).setdefault(name, []).append(spec[1])
    if unhooked:
        warnings.warn(f"a names predicate matched {', '.join(unhooked)}, left unhooked: the SAE's Python splice "
                      "does not compute hook_sae_acts_pre, and tinymech's interventions do not run on SAE points "
                      "(hook hook_sae_acts_post with a function instead)", stacklevel=4)
    out = []
    for sae, keep_error in model._saes.values():
        wanted = [] if record is False else [n for n in sae_point_names(sae) if _wanted(record, n)]
        if sae.cfg.output_hook in edits:
            splice = PythonSplice(sae, keep_error, edits[sae.cfg.output_hook], model._hook_contexts)
            out += splice.specs()
        else:
            name, splice = sae.as_hook(keep_error=keep_error)
            splice.set_recording(bool(wanted), any(n.endswith(".hook_sae_acts_pre") for n in wanted))
            out.append((name, splice))
        if wanted and recorders is not None:
            recorders.append((sae, splice, keep_error, wanted))
    return rest + out


def with_sae_entries(model, acts: dict, recorders: list) -> dict:
    """The cache's entries in forward order, each SAE's points after the hook it writes."""
    extra: dict[str, dict[str, np.ndarray]] = {}
    for sae, splice, keep_error, wanted in recorders:
        got = splice.recorded() if isinstance(splice, PythonSplice) else recorded(sae, splice, keep_error)
        extra.setdefault(sae.cfg.output_hook, {}).update({n: a for n, a in got.items() if n in wanted})
    ordered = {}
    for n in model.hook_names():
        if n in acts:
            ordered[n] = acts[n]
        ordered.update(extra.get(n, {}))
    return ordered


# ---- HookedSAETransformer's one-run calls -------------------------------------------------

def run_with_saes(model, input, saes=(), keep_error: bool | None = None, *, use_error_term: bool | None = None,
                  reset_saes_end: bool = True, **kwargs):
    """Run (as model(...)) with the SAEs attached for this run, as well as those attached
    already; each replaces its hook's activation by its reconstruction, or keeps the
    error term with use_error_term (keep_error: the same flag). None: each SAE's own."""
    with attached(model, saes, reset_saes_end, _error_term(use_error_term, keep_error)):
        return model(input, **kwargs)


def run_with_cache_with_saes(model, input, saes=(), keep_error: bool | None = None, *,
                             use_error_term: bool | None = None, reset_saes_end: bool = True, **kwargs):
    """run_with_cache with the SAEs attached for this run: (logits, ActivationCache) whose
    cache also holds `<hook>.hook_sae_acts_post` and the other SAE points.
    names_filter (a name, list of names or predicate) may name SAE points as
    well as the model's; None caches everything."""
    with attached(model, saes, reset_saes_end, _error_term(use_error_term, keep_error)):
        return model.run_with_cache(input, **kwargs)


def run_with_hooks_with_saes(model, input, saes=(), reset_saes_end: bool = True, fwd_hooks=(), **kwargs):
    """run_with_hooks with the SAEs attached for this run; fwd_hooks may name the
    SAEs' points, e.g. (hook + ".hook_sae_acts_post", fn) to edit the latents."""
    with attached(model, saes, reset_saes_end):
        return model.run_with_hooks(input, fwd_hooks=fwd_hooks, **kwargs)
