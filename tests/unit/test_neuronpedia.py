"""Feature dashboards as Neuronpedia's feature JSON and back: a lossless round trip, files
shaped as Neuronpedia's API and SAEDashboard write them, and hostile files refused precisely."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dashboard_factory import synthetic_folder
from tinymech.errors import InvalidInputError
from tinymech.sae.dashboards.labels import auto_labels
from tinymech.sae.dashboards.neuronpedia import MAX_FEATURES, export_neuronpedia, import_neuronpedia
from tinymech.sae.dashboards.render import dashboard_text
from tinymech.sae.dashboards.store import FeatureDashboards


@pytest.fixture
def dash(tmp_path):
    dash = FeatureDashboards.load(synthetic_folder(tmp_path / "dash", n_features=8, n_rows=10, context=12))
    dash.auto_labels = auto_labels(dash)
    dash.set_label(1, "cats", note="a note")
    dash.set_label(3, note="only a note")
    return dash


def same_contexts(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.tokens == y.tokens and x.peak == y.peak and (x.row, x.position) == (y.row, y.position)
        assert np.array_equal(x.activations, y.activations) and x.activations.dtype == y.activations.dtype
        assert np.array_equal(x.token_ids, y.token_ids)


def test_round_trip_keeps_everything(dash, tmp_path):
    back = import_neuronpedia(export_neuronpedia(dash, tmp_path / "all.json"))
    assert back.n_features == dash.n_features and back.n_tokens == dash.n_tokens
    assert np.array_equal(back.count, dash.count) and np.array_equal(back.density, dash.density)
    assert np.array_equal(back.max_activation, dash.max_activation)
    assert np.allclose(back.mean_activation, dash.mean_activation) and np.array_equal(back.specificity,
                                                                                       dash.specificity)
    assert back.labels == dash.labels and back.notes == dash.notes and back.auto_labels == dash.auto_labels
    for a, b in zip(dash, back):
        assert (a.count, a.max_activation, a.mean_activation) == (b.count, b.max_activation, b.mean_activation)
        assert (a.label, a.label_source, a.note) == (b.label, b.label_source, b.note)
        assert np.array_equal(a.hist_counts, b.hist_counts) and np.array_equal(a.hist_edges, b.hist_edges)
        assert a.promoted == b.promoted and a.suppressed == b.suppressed and a.cooccurring == b.cooccurring
        same_contexts(a.top_contexts, b.top_contexts)
        assert [(i.low, i.high, i.count) for i in a.intervals] == [(i.low, i.high, i.count) for i in b.intervals]
        for i, j in zip(a.intervals, b.intervals):
            same_contexts(i.contexts, j.contexts)
        assert dashboard_text(a) == dashboard_text(b)


def test_the_fields_are_neuronpedias(dash, tmp_path):
    one = json.loads(export_neuronpedia(dash, tmp_path / "one.json", features=1, model_id="gpt2-small",
                                        sae_id="0-tinymech").read_text())
    assert isinstance(one, dict)
    assert (one["modelId"], one["layer"], one["index"]) == ("gpt2-small", "0-tinymech", "1")
    d = dash[1]
    assert one["frac_nonzero"] == d.density and one["maxActApprox"] == d.max_activation
    assert one["pos_str"] == [t for t, _ in d.promoted] and one["neg_values"] == [v for _, v in d.suppressed]
    assert one["freq_hist_data_bar_heights"] == d.hist_counts.tolist()
    assert len(one["freq_hist_data_bar_values"]) == len(d.hist_counts)
    top = one["activations"][0]
    assert top["tokens"] == list(d.top_contexts[0].tokens) and top["maxValue"] == d.top_contexts[0].value
    assert top["values"][top["maxValueTokenIndex"]] == top["maxValue"] and top["binMin"] == -1
    assert {(e["description"], e["typeName"]) for e in one["explanations"]} == {
        (dash.auto_labels[1], "tinymech-auto"), ("cats", "tinymech-user")}
    some = json.loads(export_neuronpedia(dash, tmp_path / "some.json", features=[4, 0]).read_text())
    assert [f["index"] for f in some] == ["4", "0"]


API_FEATURE = {  # shaped as Neuronpedia's /api/feature answer (fields trimmed)
    "modelId": "gpt2-small", "layer": "6-res-jb", "index": "650", "hookName": "blocks.6.hook_resid_pre",
    "maxActApprox": 12.5, "frac_nonzero": 0.002, "pos_str": [" walked", " ran"], "pos_values": [0.91, 0.85],
    "neg_str": [" the"], "neg_values": [-0.7], "freq_hist_data_bar_heights": [10, 5, 1],
    "freq_hist_data_bar_values": [1.0, 3.0, 5.0], "logits_hist_data_bar_heights": [1, 2],
    "logits_hist_data_bar_values": [-0.5, 0.5], "correlated_features_indices": [1, 2],
    "activations": [
        {"tokens": [" he", " quickly", " walked", " home"], "values": [0, 1.5, 12.5, 0.25], "maxValue": 12.5,
         "maxValueTokenIndex": 2, "minValue": 0, "dataIndex": "1234", "binMin": None},
        {"tokens": ["She", " ran"], "values": [0, 6], "maxValue": 6, "maxValueTokenIndex": 1, "minValue": 0},
        {"tokens": [" a", " stroll"], "values": [2.5, 0], "maxValue": 2.5, "maxValueTokenIndex": 0,
         "binMin": 2, "binMax": 4, "binContains": 0.25},
    ],
    "explanations": [{"description": "walking and running", "typeName": "oai_token-act-pair",
                      "explanationModelName": "gpt-4o-mini"}],
}


def test_import_a_neuronpedia_feature(tmp_path):
    path = tmp_path / "650.json"
    path.write_text(json.dumps(API_FEATURE))
    dash = import_neuronpedia(path)
    assert dash.n_features == 651 and dash.meta["hook"] == "blocks.6.hook_resid_pre"
    d = dash[650]
    assert abs(d.density - 0.002) < 1e-9 and d.max_activation == 12.5
    assert d.label == "walking and running" and d.label_source == "auto"
    assert [c.token for c in d.top_contexts] == [" walked", " ran"] and d.top_contexts[0].row == 1234
    assert d.top_contexts[0].peak == 2 and d.top_contexts[0].value == 12.5
    (interval,) = d.intervals
    assert (interval.low, interval.high, interval.count) == (2, 4, round(0.25 * d.count))
    assert interval.contexts[0].tokens == (" a", " stroll")
    assert d.promoted == ((" walked", 0.91), (" ran", 0.85)) and d.suppressed == ((" the", -0.7),)
    assert d.hist_counts.tolist() == [10, 5, 1] and np.allclose(d.hist_edges, [0, 2, 4, 6])
    assert dash[3].count == 0 and dash.search("walked")[0] == 650 and dash.search("walking") == [650]
    assert "walking and running (auto)" in dashboard_text(d)


def test_import_saedashboards_batch_and_json_lines(tmp_path):
    feature = {"feature_index": 3, "frac_nonzero": 0.5, "pos_str": ["x"], "pos_values": [1.0],
               "activations": [{"tokens": ["a", "b"], "values": [0.0, 2.0], "bin_min": -1, "bin_max": 2,
                                "bin_contains": -1}]}
    (tmp_path / "batch.json").write_text(json.dumps({"model_id": "m", "layer": 0, "features": [feature]}))
    dash = import_neuronpedia(tmp_path / "batch.json")
    assert dash.n_features == 4 and dash[3].top_contexts[0].peak == 1 and dash[3].promoted == (("x", 1.0),)
    (tmp_path / "f.jsonl").write_text(json.dumps(API_FEATURE) + "\n\n" + json.dumps(dict(feature, feature_index=7)))
    assert np.flatnonzero(import_neuronpedia(tmp_path / "f.jsonl").count).tolist() == [7, 650]


def hostile(**changes):
    return dict(API_FEATURE, **changes)


def activation(**changes):
    return hostile(activations=[dict(API_FEATURE["activations"][0], **changes)])


@pytest.mark.parametrize("data, match", [
    ("a string", "does not hold dict or list"),
    ([], "no features"),
    ([5], "not an object"),
    ({"features": 5}, "must be a list"),
    (hostile(index="-3"), "index must be a whole number"),
    (hostile(index=str(MAX_FEATURES)), "index must be <="),
    (hostile(index=10**30), "index must be <="),
    (hostile(index=True), "index must be a whole number"),
    ([API_FEATURE, API_FEATURE], "twice"),
    (hostile(frac_nonzero="0.5"), "frac_nonzero must be a finite number"),
    (hostile(frac_nonzero=2.0), "not a fraction"),
    (hostile(maxActApprox="big"), "maxActApprox must be a finite number"),
    (hostile(pos_str=[" a", 3]), "pos_str must be a list of strings"),
    (hostile(pos_values=[1.0]), "pos_str and pos_values differ"),
    (hostile(freq_hist_data_bar_heights=[1, -2, 3]), "none negative"),
    (hostile(freq_hist_data_bar_heights=[1, 2]), "as many bar values"),
    (hostile(freq_hist_data_bar_values=[5.0, 3.0, 1.0]), "increasing order"),
    (hostile(activations={"tokens": []}), "activations must be a list"),
    (hostile(activations=["x"]), "must be an object"),
    (activation(values=[1.0]), "as many values as tokens"),
    (activation(tokens=[], values=[]), "as many values as tokens"),
    (activation(values=[0, 1, 1e39, 0]), "within float32's range"),
    (hostile(maxActApprox=1e300), "within float32's range"),  # overflowed the float32 array of maxima
    (hostile(freq_hist_data_bar_values=[-1e308, 1e308, 1.5e308]), "within float32's range"),  # edges overflowed
    (activation(values=[0, 1, None, 0]), "values must be a finite number"),
    (activation(maxValueTokenIndex=4), "peak token index must be <= 3"),
    (activation(tinymech={"token_ids": [1, 2]}), "token_ids must be a list as long"),
    (activation(tinymech={"token_ids": [1, 2, 3, 2**40]}), "token id must be <="),
    (activation(tinymech={"row": -5}), "row must be >= -1"),
    (hostile(tinymech={"count": 10**12, "n_tokens": 100}), "count must be <= 100"),
    (hostile(tinymech={"n_tokens": 0}), "n_tokens must be >= 1"),
    (hostile(tinymech={"hist_edges": [0, 1]}), "one longer"),
    (hostile(tinymech={"cooccurring": [[1]]}), "pairs"),
    # listed twice, the TUI's list of them crashed (its options' ids)
    (hostile(tinymech={"cooccurring": [[0, 3], [0, 2]]}), "lists a feature twice"),
    (hostile(tinymech={"intervals": [[0, 1]]}), "low, high, count"),
    (hostile(explanations=[{"description": 5}]), "string description"),
])
def test_hostile_files_raise_precise_errors(tmp_path, data, match):
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidInputError, match=match):
        import_neuronpedia(path)


@pytest.mark.parametrize("text, match", [
    ('{"index": "1", "frac_nonzero": NaN}', "not valid JSON"),
    ('{"index": "1", "maxActApprox": Infinity}', "not valid JSON"),
    ('{"index": 1' + "0" * 50 + "}", "not valid JSON"),
    ("[" * 100000, "not valid JSON"),
    ("", "not valid JSON"),
])
def test_malformed_json_is_refused(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match=match):
        import_neuronpedia(path)


def test_missing_and_special_files(tmp_path):
    with pytest.raises(InvalidInputError, match="cannot read"):
        import_neuronpedia(tmp_path / "absent.json")
    with pytest.raises(InvalidInputError, match="not a regular file"):
        import_neuronpedia(tmp_path)


def test_export_refuses_values_json_cannot_hold(dash, tmp_path):
    bad = dash[0]
    bad.top_contexts[0].activations[bad.top_contexts[0].peak] = np.nan  # a corrupt arrays file read as is
    dash._feature = lambda f: bad
    with pytest.raises(InvalidInputError, match="JSON cannot"):
        export_neuronpedia(dash, tmp_path / "x.json", features=0)
    assert not (tmp_path / "x.json").exists()


def test_names_from_the_file_reach_the_terminal_sanitized(tmp_path):
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(hostile(hookName="\x1b]0;pwned\x07", layer="\x1b[2J")))
    dash = import_neuronpedia(path)
    assert dash.meta["hook"] == "\x1b]0;pwned\x07"  # kept as data
    assert "\x1b" not in repr(dash) and "\x07" not in repr(dash)


def test_co_occurring_features_are_the_saes_too(tmp_path):
    # beyond the file's features (a partial export), picking one failed; beyond the SAE's width they are refused
    path = tmp_path / "one.json"
    path.write_text(json.dumps(hostile(index="3", tinymech={"cooccurring": [[999, 3]]})))
    dash = import_neuronpedia(path)
    assert dash.n_features == 1000 and dash[3].cooccurring == ((999, 3),) and dash[999].count == 0
    with pytest.raises(InvalidInputError, match="names feature 999, beyond the SAE's 500 features"):
        import_neuronpedia(path, n_features=500)
