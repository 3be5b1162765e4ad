"""Running some of the blocks: stop_at_layer / start_at_layer against
TransformerLens on the same weights. (Split runs, early stops and bad
arguments: tests/unit/test_block_span.py.)"""
import numpy as np
import pytest
import torch

from model_factory import rel_err
from tl_reference import act_err
from numpy_models import random_tokens

TOL = 1e-4


@pytest.mark.parametrize("stop", [0, 1, -1, "n_layers"])
def test_stop_at_layer_matches_transformer_lens(pair, stop):
    model, tl = pair
    stop = model.cfg.n_layers if stop == "n_layers" else stop
    tokens = random_tokens(model, 2, 9)
    with torch.no_grad():
        ref = tl(torch.as_tensor(tokens), stop_at_layer=stop).numpy()
    resid = model(tokens, stop_at_layer=stop)
    assert resid.shape == (2, 9, model.cfg.d_model) and resid.dtype == np.float32
    assert act_err(resid, ref) <= TOL


@pytest.mark.parametrize("start", [0, 1, -1, "n_layers"])
def test_start_at_layer_matches_transformer_lens(pair, start):
    model, tl = pair
    start = model.cfg.n_layers if start == "n_layers" else start
    resid = np.random.default_rng(3).standard_normal((2, 7, model.cfg.d_model)).astype(np.float32)
    with torch.no_grad():
        ref = tl(torch.as_tensor(resid), start_at_layer=start).numpy()
    assert rel_err(model(resid, start_at_layer=start), ref) <= TOL
