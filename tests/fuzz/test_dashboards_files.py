"""Hostile or broken dashboards folders: each gets a precise InvalidInputError
when loaded, never a foreign exception, a crash or an out-of-range read."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import tinymech as tm
from dashboard_factory import synthetic_folder
from tinymech.sae.dashboards.store import ARRAYS, INDEX, VOCAB


@pytest.fixture
def folder(tmp_path):
    return synthetic_folder(tmp_path / "d")


def edit_index(folder, **changes):
    meta = json.loads((folder / INDEX).read_text())
    meta.update(changes)
    (folder / INDEX).write_text(json.dumps(meta))


def edit_array(folder, name, value):
    arrays = load_file(str(folder / ARRAYS))
    arrays[name] = value(arrays[name]) if callable(value) else value
    save_file(arrays, str(folder / ARRAYS))


def every_feature(folder):
    dash = tm.FeatureDashboards.load(folder)
    for d in dash:
        str(d)
    return dash


def test_the_intact_folder_loads(folder):
    assert every_feature(folder).n_features == 6


@pytest.mark.parametrize("changes, match", [
    ({"format": "something else"}, "not a"),
    ({"version": 99}, "version"),
    ({"n_features": -1}, "n_features"),
    ({"n_features": 2**50}, "n_features"),
    ({"top_k": "3"}, "top_k"),
    ({"context": 0}, "context"),
    ({"n_features": 7}, "shape"),
    ({"top_k": 4}, "shape"),
    ({"context": 9}, "shape"),
    ({"complete": False}, "unfinished"),
    ({"n_rows": 1}, "outside the corpus"),
    ({"before": 2**40}, "before must be <="),  # np.arange over every window column: 8 TiB
    ({"after": 10**9}, "after must be <="),
])
def test_a_lying_index_is_refused(folder, changes, match):
    edit_index(folder, **changes)
    with pytest.raises(tm.InvalidInputError, match=match):
        every_feature(folder)


@pytest.mark.parametrize("name, value, match", [
    ("window_start", lambda a: a + 1, "window_start"),
    ("window_start", lambda a: a[::-1].copy(), "window_start"),
    ("window_offset", lambda a: a + 1000, "window_offset"),
    ("top_token", lambda a: a + 10**6, "top_token"),
    ("sample_token", lambda a: np.where(a >= 0, -5, a), "sample_token"),
    ("rows", lambda a: a[:-1].copy(), "rows"),
    ("rows", lambda a: a[::-1].copy(), "rows"),
    ("cooc_ids", lambda a: a + 100, "cooc_ids"),
    ("count", lambda a: a.astype(np.float32), "count"),
    ("range", lambda a: np.full_like(a, np.inf), "range"),
    ("range", lambda a: np.full_like(a, np.nan), "range"),
    ("range", lambda a: -a, "range"),
    ("promoted_ids", lambda a: a.astype(np.float64), "promoted_ids"),
    # a feature listed twice as co-occurring crashed the TUI (its options' ids); an infinite value
    # made the TUI's shading NaN, which crashed it too
    ("cooc_ids", lambda a: np.full_like(a, 1), "lists a feature twice"),
    ("top_value", lambda a: np.full_like(a, np.inf), "top_value holds a non-finite value"),
    ("window_value", lambda a: np.full_like(a, np.nan), "window_value holds a non-finite value"),
    ("sum", lambda a: np.full_like(a, np.inf), "sum holds a non-finite value"),
])
def test_arrays_pointing_outside_are_refused(folder, name, value, match):
    edit_array(folder, name, value)
    with pytest.raises(tm.InvalidInputError, match=match):
        every_feature(folder)


@pytest.mark.parametrize("damage", [
    lambda f: (f / ARRAYS).write_bytes(b"\x00" * 7),
    lambda f: (f / ARRAYS).unlink(),
    lambda f: (f / INDEX).write_text("{"),
    lambda f: (f / INDEX).write_text("[]"),
    lambda f: (f / VOCAB).write_text('{"x": 3}'),
    lambda f: (f / VOCAB).write_text('{"1": 3}'),
    lambda f: (f / VOCAB).write_text("[1, 2]"),
    lambda f: (f / VOCAB).write_text('{"\u00b2": "x"}'),  # a digit to str.isdigit, not to int()
    lambda f: (f / VOCAB).write_text('{"' + "9" * 5000 + '": "x"}'),
])
def test_damaged_files_are_refused(folder, damage):
    damage(folder)
    with pytest.raises(tm.InvalidInputError):
        every_feature(folder)


def test_no_folder(tmp_path):
    with pytest.raises(tm.InvalidInputError, match="no feature dashboards"):
        tm.FeatureDashboards.load(tmp_path)


def test_rows_whose_differences_overflow_are_not_taken_as_sorted(folder):
    """2**62 then -2**63 + 1: their difference wraps around to a positive number."""
    arrays = load_file(str(folder / ARRAYS))
    arrays["rows"] = np.concatenate([[2**62, -2**63 + 1], arrays["rows"]]).astype(np.int64)
    arrays["tokens"] = np.concatenate([np.zeros((2, arrays["tokens"].shape[1]), arrays["tokens"].dtype),
                                       arrays["tokens"]])
    save_file(arrays, str(folder / ARRAYS))
    with pytest.raises(tm.InvalidInputError, match="rows"):
        every_feature(folder)


def test_a_huge_token_id_in_the_vocabulary_allocates_nothing_for_it(folder):
    """The strings are looked up for the ids shown, not laid out up to the largest id in the file."""
    vocab = json.loads((folder / VOCAB).read_text())
    (folder / VOCAB).write_text(json.dumps(vocab | {str(2**62): "far"}))
    dash = every_feature(folder)
    assert dash[0].top_contexts[0].tokens == tuple(vocab[str(int(t))] for t in dash[0].top_contexts[0].token_ids)


def test_windows_past_the_memory_are_refused_before_a_feature_is_read(folder, monkeypatch):
    # top_k, before and after were capped one by one, never their product: a 1.3 MB folder asked
    # dash[f] for 64 GiB
    from tinymech import runtime

    monkeypatch.setattr(runtime, "physical_memory", lambda: 2**20)
    edit_index(folder, before=2**16, after=2**16)
    with pytest.raises(tm.InvalidInputError, match="would need .* GiB, more than this machine's"):
        tm.FeatureDashboards.load(folder)


def test_a_note_holding_a_lone_surrogate_survives_a_new_label(folder):
    # valid JSON ("\\ud800") that set_label could not write back: UnicodeEncodeError
    (folder / "feature_notes.json").write_text('{"1": {"note": "\\ud800 lone"}}')
    dash = tm.FeatureDashboards.load(folder)
    dash.set_label(0, label="mine")
    again = tm.FeatureDashboards.load(folder)
    assert again.notes[1]["note"] == "\ud800 lone" and again.notes[0]["label"] == "mine"
