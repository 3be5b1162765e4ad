"""tinymech's own analyses read every position as a token: texts of different lengths are refused
there (regression: once to_tokens padded, they silently read the pads), while one length still runs."""
from pathlib import Path

import pytest

import tinymech as tm
from tinymech import analysis

SHORT, LONG = "Mr Darcy", "Mr Darcy walked in slowly"


@pytest.fixture(scope="module")
def demo():
    return tm.load()


@pytest.mark.parametrize("run", [
    lambda m, texts: analysis.logit_lens(m, texts),
    lambda m, texts: analysis.logit_attribution(m, texts, " in"),
    lambda m, texts: analysis.head_scores(m, texts),
    lambda m, texts: analysis.patch_resid_pre(m, texts, texts, metric=lambda logits: float(logits.sum())),
], ids=["logit_lens", "logit_attribution", "head_scores", "patch_resid_pre"])
def test_analyses_refuse_texts_of_different_lengths(demo, run):
    with pytest.raises(tm.InvalidTokensError, match="different token lengths"):
        run(demo, [SHORT, LONG])
    run(demo, [LONG, LONG])  # one length: as before


def test_sae_metrics_refuse_texts_of_different_lengths(demo):
    sae = tm.SAE.load(Path(__file__).parents[2] / "models/demo-gpt2/saes/blocks.2.hook_resid_pre")
    with pytest.raises(tm.InvalidTokensError, match="different token lengths"):
        tm.sae_metrics(demo, sae, [SHORT, LONG])


def test_model_runs_still_pad(demo):
    assert demo([SHORT, LONG]).shape[0] == 2
