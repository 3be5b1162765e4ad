"""The bundled demo model and SAE (models/demo-gpt2): the real files that
`tm.load()` and `tinymech tui` open with no arguments. (Its logits against
transformers': tests/reference/test_forward_hf.py.)"""
import json

import numpy as np
import pytest

import tinymech as tm
from tinymech import analysis
from tinymech.io.sources import default_model_dir

DEMO = default_model_dir()
SAE_DIR = DEMO / "saes" / "blocks.2.hook_resid_pre"
TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. However little known the feelings or views of such a man may be "
        "on his first entering a neighbourhood, this truth is so well fixed in the minds of the "
        "surrounding families, that he is considered the rightful property of some one or other of "
        "their daughters. And God said, Let there be light: and there was light.")


@pytest.fixture(scope="module")
def model():
    return tm.load()


def test_default_load_is_the_demo_model(model):
    assert model.path == str(DEMO) and model.tokenizer is not None
    assert model.cfg.n_layers >= 2 and model.cfg.n_heads > 1


def test_continuations_are_words(model):
    text = model.generate("Mr Darcy", max_new_tokens=20)
    assert text.startswith("Mr Darcy") and len(text.split()) >= 5
    assert model(TEXT, return_type="loss") < 6.0  # far below uniform (ln 8192 = 9.0)


def head_of(scores: np.ndarray) -> list[int]:
    return [int(i) for i in np.unravel_index(int(scores.argmax()), scores.shape)]


def test_induction_head_is_where_the_card_says(model):
    """[BOS] + 50 random tokens, twice: the induction pattern exists only in the
    second copy, so the raw score tops out near 0.5; leaving out attention to
    BOS (the first copy's sink), a clear induction head scores above 0.5."""
    card = json.loads((DEMO / "heads.json").read_text())
    raw = analysis.induction_scores(model, seq_len=50, batch=8)
    no_bos = analysis.induction_scores(model, seq_len=50, batch=8, exclude_bos=True)
    assert head_of(no_bos) == card["induction_head_exclude_bos"]
    assert no_bos.max() >= 0.5 and no_bos.max() == pytest.approx(card["induction_score_exclude_bos"], abs=0.01)
    assert head_of(raw) == card["induction_head"]
    assert raw.max() >= 0.35 and raw.max() == pytest.approx(card["induction_score"], abs=0.01)


def test_previous_token_head_is_where_the_card_says(model):
    card = json.loads((DEMO / "heads.json").read_text())
    prev = analysis.head_scores(model, analysis.repeated_tokens(model, 50, 8))["previous_token"]
    assert head_of(prev) == card["previous_token_head"]
    assert prev.max() == pytest.approx(card["previous_token_score"], abs=0.01)
    # the previous-token head sits below the induction head, as the circuit needs
    assert card["previous_token_head"][0] < card["induction_head"][0]


def test_repeated_sequence_loss_drops(model):
    loss = analysis.repeated_sequence_loss(model, seq_len=50, batch=8)
    assert loss.first_half > 8.0  # random tokens: close to ln 8192 = 9.0
    assert loss.second_half < 0.2 * loss.first_half


def test_training_dynamics_show_the_induction_head_forming():
    dyn = json.loads((DEMO / "training_dynamics.json").read_text())
    best = [max(max(row) for row in r["induction_score"]) for r in dyn["records"]]
    assert best[0] < 0.05 and max(best[-3:]) > 0.3
    second = [r["rep_loss_second_half"] for r in dyn["records"]]
    assert second[0] > 8.0 and second[-1] < 2.0


def test_sae_reconstructs_as_its_card_says(model):
    """metrics.json is tm.train_sae's, on held-out text; a short text of the same books comes close."""
    sae = tm.SAE.load(SAE_DIR)
    card = json.loads((SAE_DIR / "metrics.json").read_text())
    metrics = tm.sae_metrics(model, sae, model.to_tokens(TEXT))
    assert sae.cfg.architecture == card["architecture"] == "topk" and sae.d_sae == card["d_sae"]
    assert metrics.l0 == pytest.approx(card["l0"], abs=0.5) and card["l0"] <= card["k"]
    assert abs(metrics.explained_variance - card["explained_variance"]) < 0.15
    assert abs(metrics.ce_loss_recovered - card["ce_loss_score"]) < 0.15
    assert card["ce_loss_score"] > 0.9 and card["dead_features"] < sae.d_sae // 4


def test_sae_feature_labels_describe_live_features():
    sae = tm.SAE.load(SAE_DIR)
    assert len(sae.labels) >= 500
    dash = tm.FeatureDashboards.load(SAE_DIR / "dashboards", sae=sae)  # the labels come from the dashboards
    for feature, details in sae.label_details.items():
        assert details["label_source"] == "auto" and details["label"] == dash.auto_labels[feature]
        assert dash.count[feature] > 0
        assert all("«" in c["text"] and "»" in c["text"] for c in details["top_contexts"])


def test_tui_heads_grid_on_the_example_prompt_shows_the_induction_head(model):
    """Story 1: `tinymech tui` opens on a repeated sentence, and the heads grid
    (scores of attention off BOS) has one bright induction cell, the card's head."""
    from tinymech.tui.app import DEFAULT_PROMPT
    from tinymech.tui.backend import Backend

    card = json.loads((DEMO / "heads.json").read_text())
    scores = Backend(model, []).analyze(DEFAULT_PROMPT).head_scores["induction"]
    np.testing.assert_allclose(scores, analysis.head_scores(model, DEFAULT_PROMPT, exclude_bos=True)["induction"],
                               rtol=1e-6)
    assert head_of(scores) == card["induction_head_exclude_bos"]
    runner_up = np.sort(scores, axis=None)[-2]
    assert scores.max() >= 0.5 and scores.max() >= 3 * runner_up


def test_tui_follows_the_models_default_prepend_bos():
    # regression (review): the TUI prepended BOS to a model whose cfg.default_prepend_bos was set False
    from tinymech.tui.backend import Backend

    model = tm.load()
    model.cfg.default_prepend_bos = False
    shown = Backend(model, []).analyze("Mr Darcy")
    assert not shown.bos and list(shown.token_ids) == list(model.to_tokens("Mr Darcy")[0])
