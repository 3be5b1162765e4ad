"""Automatic feature labels (no language model), the user's labels and notes beside the SAE
(their files read hostile-proof), and searching features by id, label or token."""
from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

import tinymech as tm
from dashboard_factory import synthetic_dashboards, synthetic_folder
from numpy_checkpoints import write_sae
from tinymech.errors import InvalidInputError
from tinymech.sae.dashboards.labels import (MAX_LABEL, NOTES_FILE, auto_label, auto_labels, feature_labels_json,
                                            read_auto_labels, read_notes, search, token_class, write_notes)
from tinymech.sae.dashboards.store import AUTO_LABELS, Context, FeatureDashboard, FeatureDashboards, Interval


def context(tokens, peak: int) -> Context:
    acts = np.zeros(len(tokens), np.float32)
    acts[peak] = 1.0
    return Context(np.arange(len(tokens)), tuple(tokens), acts, peak, 0, peak)


def dashboard(windows, promoted=(), count: int = 10) -> FeatureDashboard:
    """A feature whose top contexts are `windows`: (tokens, peak index) pairs."""
    return FeatureDashboard(
        index=0, count=count, n_tokens=100, max_activation=1.0, mean_activation=0.5,
        top_contexts=tuple(context(t, p) for t, p in windows), intervals=(), hist_edges=np.linspace(0, 1, 3),
        hist_counts=np.array([count, 0]), promoted=tuple(promoted), suppressed=(), cooccurring=())


def peaks(*tokens, before=None):
    """Windows whose peak (last) token is each of tokens, each after `before` (or a varying token)."""
    return [((before if before is not None else f" w{i}", t), 1) for i, t in enumerate(tokens)]


# --- automatic labels ----------------------------------------------------------------------------------------------

def test_one_dominant_token_names_the_feature():
    assert auto_label(dashboard(peaks(" the", " the", " the", " the", " a"))) == "' the'"
    assert auto_label(dashboard(peaks("of", " of", " of", " about", " of"))) == "' of'"  # with or without its space


def test_a_small_set_of_tokens_is_listed():
    assert auto_label(dashboard(peaks(" the", " a", " an", " the", " a", " an"))) == "' the' / ' a' / ' an'"


@pytest.mark.parametrize("tokens, kind", [
    ([" 1", " 22", " 3", "4", " 5", " 1,000"], "numbers"),
    ([".", ",", ";", "!", "?", ":"], "punctuation"),
    ([" Paris", " London", " Emma", " Darcy", " Bath", " Rome"], "capitalised words"),
    (["\n", "\n\n", " \n", "\n", "\r\n", "\n\n\n"], "newlines"),
    (["{", "};", " =", "_x", " ==", "->"], "code / symbols"),
])
def test_a_class_of_tokens_is_named(tokens, kind):
    assert auto_label(dashboard(peaks(*tokens))) == kind


def test_a_consistent_preceding_token_is_named():
    label = auto_label(dashboard(peaks(" Darcy", " Knightley", " Elton", " Weston", " Woodhouse", before=" Mr")))
    assert label == "capitalised words after ' Mr'"


def test_a_consistent_following_token_is_named():
    windows = [((f" w{i}", t, " of"), 1) for i, t in enumerate((" most", " part", " rest", " end", " top"))]
    assert auto_label(dashboard(windows)) == "before ' of'"


def test_otherwise_the_promoted_tokens():
    windows = peaks(" cat", " sat", " on", " mat", " ran", " dog", " in")
    assert auto_label(dashboard(windows, promoted=[(" walked", 2.0), (" ran", 1.0)])) == "→ ' walked' / ' ran'"


def test_labels_are_short_and_keep_tokens_raw():
    long = " " + "x" * 100
    assert len(auto_label(dashboard(peaks(long, long, long)))) <= MAX_LABEL
    assert auto_label(dashboard(peaks("\x1b[2J", "\x1b[2J"))) == "'\x1b[2J'"  # raw in the data: shown through printable


def test_dead_features_get_no_label():
    assert auto_label(dashboard([], count=0)) == ""
    dash = synthetic_dashboards(dead=(2,))
    labels = auto_labels(dash)
    assert 2 not in labels and set(labels) == {f for f in range(dash.n_features) if dash.count[f]}
    assert labels[0] == "' the'" and labels[5] == "' Darcy'"  # feature f fires on word f


def test_token_classes():
    assert token_class(" the") is None and token_class("Ġ7") == "numbers"
    assert token_class("▁Paris") == "capitalised words" and token_class(" ") == "spaces"


# --- the user's labels and notes -------------------------------------------------------------------------------------

def test_notes_round_trip_and_are_preferred_over_automatic_labels(tmp_path):
    folder = synthetic_folder(tmp_path / "dash")
    (folder / AUTO_LABELS).write_text(json.dumps({"0": "' the'", "1": "' cat'"}))
    dash = FeatureDashboards.load(folder)
    dash.set_label(1, "cats", note="only in row 3")
    again = FeatureDashboards.load(folder)
    assert again.label(0) == ("' the'", "auto") and again.label(1) == ("cats", "user")
    assert again[1].note == "only in row 3" and again.labels == {0: "' the'", 1: "cats"}
    again.set_label(1, "")  # removes the label, keeps the note
    assert FeatureDashboards.load(folder).label(1) == ("' cat'", "auto")
    assert read_notes(folder / NOTES_FILE) == {1: {"note": "only in row 3"}}


def test_notes_keep_the_users_other_keys(tmp_path):
    write_notes(tmp_path / NOTES_FILE, {3: {"label": "x", "tags": ["a"]}})
    assert read_notes(tmp_path / NOTES_FILE, 10) == {3: {"label": "x", "tags": ["a"]}}


@pytest.mark.parametrize("content, match", [
    ('["not", "an", "object"]', "object"),
    ('{"7": "a bare string"}', "must map to an object"),
    ('{"7": {"label": 3}}', "label of feature 7 must be a string"),
    ('{"7": {"note": ["x"]}}', "note of feature 7"),
    ('{"-1": {"label": "x"}}', "not a feature id"),
    ('{"x7": {"label": "x"}}', "not a feature id"),
    ('{"٣": {"label": "x"}}', "not a feature id"),  # a digit, but not ASCII
    ('{"' + "9" * 5000 + '": {"label": "x"}}', "not a feature id"),
    ('{"10": {"label": "x"}}', "out of range"),
    ('{"1": {"label": NaN}}', "not valid JSON"),
    ("{" * 100000, "not valid JSON"),
])
def test_hostile_notes_files_raise_precise_errors(tmp_path, content, match):
    path = tmp_path / NOTES_FILE
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=match):
        read_notes(path, 10)


@pytest.mark.parametrize("content, match", [
    ('{"0": 5}', "must be a string"), ('{"100": "x"}', "out of range"), ("[1]", "object"),
])
def test_hostile_automatic_labels_raise_precise_errors(tmp_path, content, match):
    (tmp_path / AUTO_LABELS).write_text(content)
    with pytest.raises(InvalidInputError, match=match):
        read_auto_labels(tmp_path / AUTO_LABELS, 6)


def test_a_folder_with_broken_notes_says_so_and_keeps_them(tmp_path):
    folder = synthetic_folder(tmp_path / "dash")
    (folder / NOTES_FILE).write_text('{"999": {"label": "x"}}')
    with pytest.raises(InvalidInputError, match="out of range"):
        FeatureDashboards.load(folder)
    assert (folder / NOTES_FILE).read_text() == '{"999": {"label": "x"}}'


def test_sae_labels_prefer_the_users_notes(tmp_path):
    path = write_sae(tmp_path / "sae", "standard", 8, 16, hook="blocks.0.hook_resid_pre")
    (path / "feature_labels.json").write_text(json.dumps({"1": "old one", "2": {"label": "old two"}}))
    write_notes(path / NOTES_FILE, {2: {"label": "mine"}, 3: {"note": "a note, no label"}})
    assert tm.SAE.load(path).labels == {1: "old one", 2: "mine"}


def test_sae_loads_despite_broken_notes(tmp_path):
    path = write_sae(tmp_path / "sae", "standard", 8, 16, hook="blocks.0.hook_resid_pre")
    (path / "feature_labels.json").write_text(json.dumps({"1": "old one"}))
    (path / NOTES_FILE).write_text('{"99": {"label": "out of range"}}')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sae = tm.SAE.load(path)
    assert sae.labels == {1: "old one"}
    assert any(NOTES_FILE in str(w.message) for w in caught)


# --- search ---------------------------------------------------------------------------------------------------------

def test_search_by_id():
    dash = synthetic_dashboards()
    assert search(dash, "#3") == [3] and search(dash, " 4 ") == [4] and search(dash, "#999") == []
    assert search(dash, "2") == [2]  # a dead feature can still be opened


def test_search_by_token_puts_exact_matches_first():
    dash = synthetic_dashboards()
    found = search(dash, "CAT")  # feature 1 fires on ' cat'; feature 0 promotes it (the factory's promoted tokens)
    assert found[0] == 1 and 0 in found
    assert search(dash, " Darcy")[0] == 5


def test_search_by_label(tmp_path):
    folder = synthetic_folder(tmp_path / "dash")
    dash = FeatureDashboards.load(folder)
    dash.set_label(2, "Lovely dead feature")
    assert search(dash, "lovely") == [2]
    assert dash.search("nothing like this") == [] and dash.search("   ") == []


def test_low_activation_samples_do_not_blur_the_label():
    d = dashboard(peaks(" the", " the", " the"))
    low = Interval(0.0, 0.25, 50, tuple(context((" x", t), 1) for t in (" cat", " sat", " on", " mat", " ran")))
    high = Interval(0.5, 1.0, 9, (context((" x", " the"), 1),))
    assert auto_label(dataclasses.replace(d, intervals=(low, high))) == "' the'"


def test_feature_labels_json_is_what_sae_labels_read(tmp_path):
    data = feature_labels_json(synthetic_dashboards(dead=(2,)))
    assert set(data) == {"0", "1", "3", "4", "5"} and data["0"]["label"] == "' the'"
    assert data["0"]["label_source"] == "auto" and data["0"]["top_contexts"][0]["text"].count("«") == 1
    path = write_sae(tmp_path / "sae", "standard", 8, 16, hook="blocks.0.hook_resid_pre")
    (path / "feature_labels.json").write_text(json.dumps(data))
    assert tm.SAE.load(path).labels[5] == "' Darcy'"
