"""Small TransformerLens/SAELens habits the notebook probes (tools/notebook_probes) found missing:
each was a failing probe before (loss.item(), utils.get_device, model.to/eval/cuda, SAE.eval/to,
"gpt2-small")."""
import warnings
from pathlib import Path

import numpy as np
import pytest

import tinymech as tm
import tinymech.model as model_module
from tinymech import utils

DEMO_SAE = Path(__file__).parents[2] / "models/demo-gpt2/saes/blocks.2.hook_resid_pre"


@pytest.fixture(scope="module")
def demo():
    return tm.load()


def test_a_loss_answers_item_and_stays_a_float(demo):
    loss = demo("Mr Darcy walked in", return_type="loss")
    assert isinstance(loss, float) and loss.item() == float(loss)
    _, both = demo("Mr Darcy walked in", return_type="both")
    assert both.item() == pytest.approx(loss.item())
    assert demo("Mr Darcy walked in", return_type="loss", loss_per_token=True).shape == (1, 4)


def test_module_housekeeping_returns_the_model(demo):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert demo.to("cpu") is demo and demo.cpu() is demo and demo.eval() is demo and demo.train(False) is demo
        assert demo.to("torch.float32") is demo
    with pytest.warns(UserWarning, match="CPU"):
        assert demo.cuda() is demo
    assert utils.get_device() == "cpu"


def test_sae_housekeeping_returns_the_sae():
    sae = tm.SAE.load(DEMO_SAE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sae.eval() is sae and sae.to("cpu") is sae and sae.cpu() is sae
    with pytest.warns(UserWarning, match="CPU"):
        assert sae.to("cuda:0") is sae


def test_transformerlens_aliases_resolve_in_from_pretrained(monkeypatch):
    seen = []
    monkeypatch.setattr(model_module, "load", lambda name, **kw: seen.append(name))
    tm.from_pretrained("gpt2-small")
    tm.from_pretrained("distil-gpt2")
    assert seen == ["gpt2", "distilgpt2"]
    assert np.float64(1.0).item() == 1.0
