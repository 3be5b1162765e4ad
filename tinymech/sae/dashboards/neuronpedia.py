"""Feature dashboards as Neuronpedia's feature JSON, and back.

A feature is written with the fields of Neuronpedia's features (its API's /api/feature
answer and its database's Neuron, Activation and Explanation rows): "modelId", "layer" (the
SAE's id), "index", "hookName", "maxActApprox", "frac_nonzero", "pos_str"/"pos_values",
"neg_str"/"neg_values", "freq_hist_data_bar_heights"/"freq_hist_data_bar_values", and
"activations" (each with "tokens", "values", "maxValue", "maxValueTokenIndex", "minValue",
"binMin"/"binMax"/"binContains": -1 for a top context, else its activation interval and the
share of active tokens in it) and "explanations" ("description", "typeName":
"tinymech-auto" or "tinymech-user"). What Neuronpedia has no field for (exact counts,
token ids, co-occurring features) goes under "tinymech", so that a round trip loses nothing.

Reading takes one feature, a list of them, SAEDashboard's batch ({"features": [...]}) or
JSON Lines; every size and type is checked (the file may come from anywhere)."""
from __future__ import annotations

import collections
import json
import re
import warnings
from pathlib import Path

import numpy as np

from ...errors import InvalidInputError, whole_number
from ...io.files import parse_json, read_text
from ...text import printable
from .store import Context, FeatureDashboard, FeatureDashboards, Interval, same_hook, sae_sha256

EXTRA = "tinymech"
AUTO, USER = "tinymech-auto", "tinymech-user"
MAX_FEATURES = 2**24  # the largest index read: the arrays over all features are allocated up to it
FLOAT32_MAX = float(np.finfo(np.float32).max)
NOMINAL_TOKENS = 10**9  # corpus size assumed when a file gives only densities

__all__ = ["export_neuronpedia", "import_neuronpedia"]


# --- writing -----------------------------------------------------------------------------------------------------

def export_neuronpedia(dash: FeatureDashboards, path, features=None, model_id: str | None = None,
                       sae_id: str | None = None) -> Path:
    """Write features as Neuronpedia's feature JSON: one feature (an int) as an object, a list of
    features or all of them (None) as a list. model_id and sae_id fill "modelId" and "layer"
    (Neuronpedia's ids, e.g. "gpt2-small" and "6-res-jb"); by default the dashboards' model and hook."""
    model_id = model_id or str(dash.meta.get("model") or "")
    sae_id = sae_id or str(dash.meta.get("hook") or "")
    if features is None:
        data = [feature_json(dash, f, model_id, sae_id) for f in range(dash.n_features)]
    elif isinstance(features, (list, tuple, range, np.ndarray)):
        data = [feature_json(dash, f, model_id, sae_id) for f in features]
    else:
        data = feature_json(dash, features, model_id, sae_id)
    try:
        text = json.dumps(data, allow_nan=False)
    except ValueError as e:  # a NaN or infinity in the arrays
        raise InvalidInputError(f"these dashboards hold a value JSON cannot: {e}") from None
    from ..saving import write_atomically

    path = Path(path)
    write_atomically(path, lambda p: Path(p).write_text(text + "\n", encoding="utf-8"))
    return path


def feature_json(dash: FeatureDashboards, feature, model_id: str, sae_id: str) -> dict:
    """One feature as Neuronpedia's feature object."""
    d = dash[feature]
    f = d.index
    activations = [_activation_json(c, -1.0, d.max_activation, -1.0) for c in d.top_contexts]
    for i in d.intervals:
        share = i.count / d.count if d.count else 0.0
        activations += [_activation_json(c, i.low, i.high, share) for c in i.contexts]
    edges = np.asarray(d.hist_edges, float)
    return {
        "modelId": model_id, "layer": sae_id, "index": str(f), "hookName": dash.meta.get("hook"),
        "maxActApprox": d.max_activation, "frac_nonzero": d.density,
        "pos_str": [t for t, _ in d.promoted], "pos_values": [v for _, v in d.promoted],
        "neg_str": [t for t, _ in d.suppressed], "neg_values": [v for _, v in d.suppressed],
        "freq_hist_data_bar_heights": [int(n) for n in d.hist_counts],
        "freq_hist_data_bar_values": ((edges[:-1] + edges[1:]) / 2).tolist(),
        "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
        "activations": activations, "explanations": _explanations_json(dash, f),
        EXTRA: {"count": d.count, "n_tokens": d.n_tokens, "mean_activation": d.mean_activation,
                "sae_sha256": dash.meta.get("sae_sha256"),  # the SAE's weights, as the folder records them
                "hist_edges": edges.tolist(), "intervals": [[i.low, i.high, i.count] for i in d.intervals],
                "cooccurring": [list(pair) for pair in d.cooccurring]},
    }


def _activation_json(c: Context, low: float, high: float, share: float) -> dict:
    values = c.activations.astype(float).tolist()
    return {"tokens": list(c.tokens), "values": values, "maxValue": max(values),
            "maxValueTokenIndex": int(np.argmax(c.activations)), "minValue": min(values), "binMin": low,
            "binMax": high, "binContains": share, "qualifyingTokenIndex": c.peak, "dataIndex": str(c.row),
            EXTRA: {"token_ids": [int(t) for t in c.token_ids], "row": c.row, "position": c.position}}


def _explanations_json(dash: FeatureDashboards, f: int) -> list[dict]:
    out = []
    if dash.auto_labels.get(f):
        out.append({"description": dash.auto_labels[f], "typeName": AUTO, "explanationModelName": "tinymech"})
    user = dash.notes.get(f, {})
    if user.get("label") or user.get("note"):
        entry = {"description": user.get("label", ""), "typeName": USER}
        if user.get("note"):
            entry["notes"] = user["note"]
        out.append(entry)
    return out


# --- reading -----------------------------------------------------------------------------------------------------

def import_neuronpedia(path, n_features: int | None = None, sae=None,
                       trust_unverified: bool = False) -> FeatureDashboards:
    """Neuronpedia's feature JSON (as export_neuronpedia writes it, or as Neuronpedia's API and
    SAEDashboard give it) as FeatureDashboards in memory, for the explorer. Features the file
    lacks read as never active; labels come from "explanations" (a "tinymech-user" one as the
    user's label and note, any other as the automatic label). n_features: the SAE's width (the
    dashboards then cover all its features; a feature beyond it is refused), else the largest
    index in the file (of a feature or one it co-occurs with) + 1.

    sae: the SAE the features are shown for (n_features defaults to its width). A file that
    names another SAE is refused: its Neuronpedia id ("modelId"/"layer") against the SAE's
    neuronpedia_id, its hook ("hookName", or a "layer" that is a hook name, as export_neuronpedia
    writes it) against the SAE's hook_name, the layer its Neuronpedia SAE id starts with
    ("6-res-jb") against the block of that hook. Unless the Neuronpedia ids agree, nothing shows
    the features are this SAE's and not another's at the same place: a warning says so (the
    dashboards' `unverified` too), unless trust_unverified=True."""
    path = Path(path)
    if sae is not None and n_features is None:
        n_features = sae.d_sae
    objects = _feature_objects(path)
    features: dict[int, FeatureDashboard] = {}
    auto, notes = {}, {}
    n_tokens = _n_tokens(objects, path)
    for i, obj in enumerate(objects):
        where = f"{path}: feature {i}"
        if not isinstance(obj, dict):
            raise InvalidInputError(f"{where} is {type(obj).__name__}, not an object")
        f = _index(_field(obj, "index", "feature_index"), where)
        if f in features:
            raise InvalidInputError(f"{path} holds feature {f} twice")
        where = f"{path}: feature {f}"
        features[f] = _feature(obj, f, n_tokens, where)
        _labels(obj, f, where, auto, notes)
    if not features:
        raise InvalidInputError(f"{path} holds no features")
    # a feature a listed one co-occurs with is one of the SAE's too (a partial export names them)
    n = max(features.keys() | {g for d in features.values() for g, _ in d.cooccurring}) + 1
    if n_features is not None:
        if whole_number(n_features, "n_features", 1) < n:
            raise InvalidInputError(f"{path} names feature {n - 1}, beyond the SAE's {n_features} features")
        n = n_features
    dash = _dashboards(features, n, n_tokens, auto, notes, path, _names(objects, path))
    if sae is not None:
        dash.unverified = _match_sae(dash.meta, sae, path)
        if dash.unverified and not trust_unverified:
            warnings.warn(f"{path}: {dash.unverified}; pass trust_unverified=True if you know they are",
                          stacklevel=2)
    return dash


def _names(objects: list, path: Path) -> dict[str, str | None]:
    """The SAE the features name ("modelId", "layer": Neuronpedia's SAE id, "hookName"; tinymech's
    export: the hash of its weights): one per file."""
    names = {}
    for key in ("modelId", "layer", "hookName", "sae_sha256"):
        values = {got for obj in objects if isinstance(obj, dict)
                  for got in [(obj.get(EXTRA) if key == "sae_sha256" and isinstance(obj.get(EXTRA), dict)
                               else obj).get(key)] if isinstance(got, str)}
        if len(values) > 1:
            shown = " and ".join(printable(repr(v), keep="")[:60] for v in sorted(values)[:2])
            raise InvalidInputError(f"{path} holds features of more than one SAE (its {key} is {shown})")
        names[key] = values.pop() if values else None
    return names


def _match_sae(meta: dict, sae, path: Path) -> str | None:
    """Refuse features that name another SAE than sae (InvalidInputError); None when their
    Neuronpedia id is the SAE's, else a sentence saying what matched and that nothing more does
    (without the path: the TUI shows it on every dashboard). The names come from the file: shown
    printable."""
    model, layer, hook = meta["model"], meta["sae_id"], meta["hook_name"]
    sae_hook, sae_id = sae.cfg.hook_name, getattr(sae.cfg, "neuronpedia_id", None)
    if meta.get("sae_sha256"):  # tinymech's export of dashboards that recorded their SAE
        if meta["sae_sha256"] != sae_sha256(sae):
            raise InvalidInputError(f"{path} holds features of another SAE (its weights differ): export them again "
                                    "from this SAE's dashboards")
        return None

    def show(text) -> str:
        return printable(str(text), keep="")[:120]

    as_hook = bool(layer) and layer.startswith("blocks.")  # export_neuronpedia's default layer: a hook, no id
    if model and layer and not as_hook and isinstance(sae_id, str):  # Neuronpedia's own name for an SAE
        if f"{model}/{layer}" != sae_id:
            raise InvalidInputError(f"{path} holds features of Neuronpedia's {show(model)}/{show(layer)}, the SAE is "
                                    f"{show(sae_id)}: they belong to another SAE")
        return None
    matched = []
    hook = hook or (layer if as_hook else None)
    if hook is not None and isinstance(sae_hook, str):
        if not same_hook(hook, sae_hook):
            raise InvalidInputError(f"{path} holds features of {show(hook)}, the SAE reads {show(sae_hook)}: they "
                                    "belong to another SAE")
        matched.append("hook")
    np_layer = re.match(r"(\d+)-", layer or "")  # Neuronpedia's SAE ids start with the layer: "6-res-jb"
    block = re.match(r"blocks\.(\d+)\.(hook_resid_post)?", sae_hook or "")
    if np_layer and block and not matched:
        # (Neuronpedia numbers blocks.L.hook_resid_post L + 1, as SAELens's registry maps gpt2-small's 12-res-jb)
        if int(np_layer[1]) not in (int(block[1]), int(block[1]) + 1 if block[2] else int(block[1])):
            raise InvalidInputError(f"{path} holds features of layer {int(np_layer[1])} (Neuronpedia's "
                                    f"{show(layer)}), the SAE reads layer {int(block[1])} ({show(sae_hook)}): they "
                                    "belong to another SAE")
        matched.append("layer")
    if not matched:
        return (f"the file names no Neuronpedia id, hook or layer to check against the SAE ({show(sae_hook)}): "
                "nothing shows its features are this SAE's")
    return (f"the file matches the SAE's {matched[0]} ({show(sae_hook)}), but nothing shows its features are this "
            "SAE's and not another's there (it names no Neuronpedia id the SAE has)")


def _feature_objects(path: Path) -> list:
    text = read_text(path, "Neuronpedia features", InvalidInputError)
    if path.suffix == ".jsonl":
        return [parse_json(line, f"{path} line {n + 1}", InvalidInputError, top=None)
                for n, line in enumerate(text.splitlines()) if line.strip()]
    data = parse_json(text, f"Neuronpedia features {path}", InvalidInputError, top=(dict, list))
    if isinstance(data, dict) and "features" in data:  # SAEDashboard's batch
        data = data["features"]
        if not isinstance(data, list):
            raise InvalidInputError(f"{path}'s \"features\" must be a list")
    return data if isinstance(data, list) else [data]


def _field(obj: dict, *keys, default=None):
    """The first of keys that obj has (Neuronpedia writes camelCase, SAEDashboard snake_case)."""
    return next((obj[k] for k in keys if k in obj), default)


def _index(value, where: str) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    return whole_number(value, f"{where}'s index", 0, maximum=MAX_FEATURES - 1, error=InvalidInputError)


def _number(value, what: str) -> float:
    """A number from the file, within float32's range: what dashboards hold, and sums and differences of such
    numbers (the histogram's edges, the mean) stay finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) <= FLOAT32_MAX:
        raise InvalidInputError(f"{what} must be a finite number within float32's range, not {str(value)[:40]!r}")
    return float(value)


def _numbers(obj: dict, key: str, where: str) -> np.ndarray:
    values = _list(obj, key, where)
    return np.array([_number(v, f"{where}'s {key}") for v in values], dtype=np.float64)


def _strings(obj: dict, key: str, where: str) -> list[str]:
    values = obj.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidInputError(f"{where}'s {key} must be a list of strings")
    return values


def _n_tokens(objects: list, path: Path) -> int:
    """The corpus size the densities refer to: tinymech's exact count, SAEDashboard's prompts times
    their length, else NOMINAL_TOKENS (densities are kept, counts are then nominal)."""
    sizes = set()
    for obj in objects:
        if isinstance(obj, dict):
            extra = obj.get(EXTRA) if isinstance(obj.get(EXTRA), dict) else {}
            if "n_tokens" in extra:
                sizes.add(whole_number(extra["n_tokens"], f"{path}'s n_tokens", 1, maximum=2**53,
                                       error=InvalidInputError))
            elif "n_prompts_total" in obj and "n_tokens_in_prompt" in obj:
                prompts = whole_number(obj["n_prompts_total"], f"{path}'s n_prompts_total", 1, maximum=2**40,
                                       error=InvalidInputError)
                length = whole_number(obj["n_tokens_in_prompt"], f"{path}'s n_tokens_in_prompt", 1,
                                      maximum=2**20, error=InvalidInputError)
                sizes.add(prompts * length)
    if len(sizes) > 1:
        raise InvalidInputError(f"{path}'s features were counted over corpora of different sizes: {sorted(sizes)}")
    return sizes.pop() if sizes else NOMINAL_TOKENS


def _feature(obj: dict, f: int, n_tokens: int, where: str) -> FeatureDashboard:
    extra = obj.get(EXTRA, {})
    if not isinstance(extra, dict):
        raise InvalidInputError(f"{where}'s {EXTRA} must be an object")
    density = _number(obj.get("frac_nonzero", 0), f"{where}'s frac_nonzero")
    if not 0 <= density <= 1:
        raise InvalidInputError(f"{where}'s frac_nonzero is {density}, not a fraction")
    count = whole_number(extra["count"], f"{where}'s count", 0, maximum=n_tokens, error=InvalidInputError) \
        if "count" in extra else round(density * n_tokens)
    edges, heights = _histogram(obj, extra, where)
    contexts = [_context(a, f"{where}'s activation {j}") for j, a in enumerate(_list(obj, "activations", where))]
    tops = tuple(c for c, low, _, _ in contexts if low is None or low == -1)
    maximum = obj.get("maxActApprox")
    maximum = _number(maximum, f"{where}'s maxActApprox") if maximum is not None else \
        max((float(c.activations.max()) for c, *_ in contexts), default=0.0)
    mean = _number(extra["mean_activation"], f"{where}'s mean_activation") if "mean_activation" in extra else \
        float((heights * (edges[:-1] + edges[1:]) / 2).sum() / heights.sum()) if heights.sum() else 0.0
    return FeatureDashboard(
        index=f, count=count, n_tokens=n_tokens, max_activation=maximum, mean_activation=mean, top_contexts=tops,
        intervals=_intervals(contexts, extra, count, where), hist_edges=edges, hist_counts=heights,
        promoted=_logits(obj, "pos", where), suppressed=_logits(obj, "neg", where),
        cooccurring=_cooccurring(extra, where))


def _list(obj: dict, key: str, where: str) -> list:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise InvalidInputError(f"{where}'s {key} must be a list")
    return value


def _histogram(obj: dict, extra: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    heights = _numbers(obj, "freq_hist_data_bar_heights", where)
    centres = _numbers(obj, "freq_hist_data_bar_values", where)
    if len(heights) != len(centres) or np.any(heights < 0) or np.any(heights > 2**53):
        raise InvalidInputError(f"{where}'s frequency histogram needs as many bar values as counts, none negative")
    if "hist_edges" in extra:
        edges = _numbers(extra, "hist_edges", where)
        if len(edges) != len(heights) + 1:
            raise InvalidInputError(f"{where}'s hist_edges must be one longer than its histogram")
    elif len(centres) >= 2:
        half = (centres[1] - centres[0]) / 2
        edges = np.concatenate([centres - half, centres[-1:] + half])
    else:
        edges = np.concatenate([[0.0], 2 * centres])
    if np.any(np.diff(edges) < 0):
        raise InvalidInputError(f"{where}'s histogram bins are not in increasing order")
    return edges, np.rint(heights).astype(np.int64)


def _context(a, where: str) -> tuple[Context, float | None, float | None, float | None]:
    """A Neuronpedia activation as (Context, binMin, binMax, binContains)."""
    if not isinstance(a, dict):
        raise InvalidInputError(f"{where} must be an object")
    tokens = _strings(a, "tokens", where)
    values = _numbers(a, "values", where)
    if not tokens or len(tokens) != len(values):
        raise InvalidInputError(f"{where} needs as many values as tokens (at least one), not {len(values)} for "
                                f"{len(tokens)}")
    acts = values.astype(np.float32)
    peak = _field(a, "qualifyingTokenIndex", "maxValueTokenIndex")
    peak = int(np.argmax(acts)) if peak is None else \
        whole_number(peak, f"{where}'s peak token index", 0, maximum=len(tokens) - 1, error=InvalidInputError)
    extra = a.get(EXTRA, {})
    if not isinstance(extra, dict):
        raise InvalidInputError(f"{where}'s {EXTRA} must be an object")
    ids = extra.get("token_ids", [-1] * len(tokens))
    if not isinstance(ids, list) or len(ids) != len(tokens):
        raise InvalidInputError(f"{where}'s token_ids must be a list as long as its tokens")
    ids = np.array([whole_number(t, f"{where}'s token id", -1, maximum=2**31 - 1, error=InvalidInputError)
                    for t in ids], dtype=np.int64)
    data_index = a.get("dataIndex")
    row = int(data_index) if isinstance(data_index, str) and data_index.isascii() and data_index.isdigit() \
        and len(data_index) <= 18 else -1
    row = whole_number(extra.get("row", row), f"{where}'s row", -1, maximum=2**62, error=InvalidInputError)
    position = whole_number(extra.get("position", peak), f"{where}'s position", -1, maximum=2**62,
                            error=InvalidInputError)
    bins = [_field(a, "binMin", "bin_min"), _field(a, "binMax", "bin_max"), _field(a, "binContains", "bin_contains")]
    bins = [None if b is None else _number(b, f"{where}'s bin") for b in bins]
    return (Context(ids, tuple(tokens), acts, peak, row, position), *bins)


def _intervals(contexts: list, extra: dict, count: int, where: str) -> tuple[Interval, ...]:
    """The activation intervals, lowest first: from tinymech's list when present (it keeps intervals
    without samples), else from the activations' bins."""
    sampled = collections.defaultdict(list)
    shares = {}
    for c, low, high, share in contexts:
        if low is not None and low != -1:
            sampled[(low, high)].append(c)
            shares[(low, high)] = share
    if "intervals" in extra:
        bounds = []
        for item in _list(extra, "intervals", where):
            if not isinstance(item, list) or len(item) != 3:
                raise InvalidInputError(f"{where}'s intervals must be [low, high, count] lists")
            bounds.append((_number(item[0], f"{where}'s interval"), _number(item[1], f"{where}'s interval"),
                           whole_number(item[2], f"{where}'s interval count", 0, error=InvalidInputError)))
    else:
        bounds = [(low, high, round(min(max(shares[low, high] or 0.0, 0.0), 1.0) * count)) for low, high in sampled]
    return tuple(Interval(low, high, n, tuple(sampled.get((low, high), ()))) for low, high, n in sorted(bounds))


def _logits(obj: dict, side: str, where: str) -> tuple[tuple[str, float], ...]:
    tokens, values = _strings(obj, side + "_str", where), _numbers(obj, side + "_values", where)
    if len(tokens) != len(values):
        raise InvalidInputError(f"{where}'s {side}_str and {side}_values differ in length")
    return tuple(zip(tokens, values.tolist()))


def _cooccurring(extra: dict, where: str) -> tuple[tuple[int, int], ...]:
    pairs = _list(extra, "cooccurring", where)
    if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise InvalidInputError(f"{where}'s cooccurring must be [feature, count] pairs")
    out = tuple((whole_number(g, f"{where}'s co-occurring feature", 0, maximum=MAX_FEATURES - 1,
                              error=InvalidInputError),
                 whole_number(n, f"{where}'s co-occurrence count", 0, error=InvalidInputError)) for g, n in pairs)
    if len({g for g, _ in out}) < len(out):  # a feature listed twice (the TUI lists them by feature)
        raise InvalidInputError(f"{where}'s cooccurring lists a feature twice")
    return out


def _labels(obj: dict, f: int, where: str, auto: dict, notes: dict) -> None:
    """The feature's explanations: a tinymech-user one is the user's label and note, the first other the label."""
    for e in _list(obj, "explanations", where):
        if not isinstance(e, dict) or not isinstance(e.get("description", ""), str) \
                or not isinstance(e.get("notes") or "", str):
            raise InvalidInputError(f"{where}'s explanations must be objects with a string description")
        text = e.get("description", "")
        if e.get("typeName") == USER:
            entry = {k: v for k, v in (("label", text), ("note", e.get("notes"))) if v}
            if entry:
                notes[f] = entry
        elif text and f not in auto:
            auto[f] = text


def _dashboards(features: dict, n: int, n_tokens: int, auto: dict, notes: dict, path: Path,
                names: dict) -> FeatureDashboards:
    count = np.zeros(n, np.int64)
    maximum, mean, specificity = np.zeros(n, np.float32), np.zeros(n), np.zeros(n)
    for f, d in features.items():
        count[f], maximum[f], mean[f] = d.count, d.max_activation, d.mean_activation
        peaks = collections.Counter(c.token for c in d.top_contexts)
        specificity[f] = max(peaks.values()) / len(d.top_contexts) if peaks else 0.0
    # names for the explorer's title, when the file gives them
    meta = {"format": "neuronpedia", "kind": "neuronpedia", "source_file": str(path), "n_features": n,
            "n_tokens": n_tokens, "model": names["modelId"], "sae_id": names["layer"], "hook_name": names["hookName"],
            "hook": names["hookName"] or names["layer"], "sae_sha256": names["sae_sha256"]}

    def feature(f: int) -> FeatureDashboard:
        return features.get(f) or FeatureDashboard(
            index=f, count=0, n_tokens=n_tokens, max_activation=0.0, mean_activation=0.0, top_contexts=(),
            intervals=(), hist_edges=np.zeros(1), hist_counts=np.zeros(0, np.int64), promoted=(), suppressed=(),
            cooccurring=())

    summary = {"count": count, "max_activation": maximum, "mean_activation": mean, "specificity": specificity}
    dash = FeatureDashboards(meta, summary, feature, auto)
    dash.notes = notes
    return dash
