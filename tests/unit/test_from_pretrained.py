"""tm.from_pretrained / HookedTransformer.from_pretrained: TransformerLens's entry point, its
weight processing on by default (tm.load leaves it off), the CPU only."""
from __future__ import annotations

import copy
import dataclasses
import pickle
import warnings

import numpy as np
import pytest

import tinymech as tm

PROCESSING = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)


def test_from_pretrained_processes_as_transformerlens_by_default():
    tokens = np.arange(1, 9)[None]
    processed = tm.load(None, **PROCESSING)
    for model in (tm.from_pretrained(), tm.HookedTransformer.from_pretrained(None)):
        assert model.cfg.normalization_type == "LNPre"
        _, a = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_mid")
        _, b = processed.run_with_cache(tokens, names_filter="blocks.1.hook_resid_mid")
        np.testing.assert_array_equal(a["blocks.1.hook_resid_mid"], b["blocks.1.hook_resid_mid"])
    raw = tm.HookedTransformer.from_pretrained_no_processing(None)
    assert raw.cfg.normalization_type == "LN"
    np.testing.assert_array_equal(raw(tokens), tm.load()(tokens))


def test_from_pretrained_takes_transformerlens_keywords_and_runs_on_the_cpu():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tm.from_pretrained(None, device="cpu", move_to_device=True, default_prepend_bos=True, dtype="float32")
    with pytest.warns(UserWarning, match="CPU"):
        tm.from_pretrained(None, device="cuda")
    assert tm.from_pretrained(None, dtype="bfloat16").dtype == "bf16"
    assert tm.from_pretrained(None, dtype="torch.float32").dtype == "float32"  # str(torch.float32)
    for load in (tm.from_pretrained, tm.HookedTransformer.from_pretrained_no_processing, tm.load):
        with pytest.raises(tm.InvalidInputError, match="dtype must be 'float32' or 'bf16'"):
            load(None, dtype="float16")  # was a plain ValueError
    refactored = tm.from_pretrained(None, refactor_factored_attn_matrices=True)  # was refused
    tokens = refactored.to_tokens("Mr Darcy walked in")
    assert np.allclose(refactored(tokens), tm.from_pretrained(None)(tokens), atol=1e-4)
    W_O = refactored.W_O[0]
    assert np.allclose(W_O @ W_O.transpose(0, 2, 1), np.eye(refactored.cfg.d_head), atol=1e-4)
    with pytest.raises(tm.InvalidInputError, match="n_devices"):
        tm.from_pretrained(None, n_devices=2)
    with pytest.raises(tm.InvalidInputError, match="unexpected keyword 'fold_lnn'"):
        tm.from_pretrained(None, fold_lnn=True)
    with pytest.raises(tm.InvalidInputError, match="padding_side"):
        tm.from_pretrained(None, default_padding_side="middle")


def test_model_cfg_switches_and_default_prepend_bos_are_set_as_in_transformerlens(tmp_path):
    # regression: model.cfg.use_attn_result = True (a TransformerLens habit) raised dataclasses'
    # FrozenInstanceError, and model.cfg.use_attn_result did not exist to read
    model = tm.load()
    assert model.cfg.use_attn_result is False and model.cfg.use_split_qkv_input is False
    model.cfg.use_attn_result = True
    assert model.cfg.use_attn_result is True
    _, cache = model.run_with_cache("Mr Darcy")
    assert "blocks.0.attn.hook_result" in cache
    model.cfg.use_split_qkv_input = True
    assert "blocks.0.hook_q_input" in model.hook_dict
    with pytest.raises(tm.HookError, match="exclusive"):
        model.cfg.use_attn_in = True  # the set_use_attn_in checks
    with pytest.raises(tm.InvalidInputError, match="True or False"):
        model.cfg.use_hook_mlp_in = "yes"
    for change, message in ((lambda: setattr(model.cfg, "n_layers", 1), "n_layers cannot be changed.*load the model"),
                            (lambda: setattr(model.cfg, "d_headd", 1), "'d_headd' is not one of its fields"),
                            (lambda: setattr(model.cfg, "default_padding_side", "left"), "tokenizer.padding_side"),
                            (lambda: setattr(model.cfg, "device", "cuda"), "device is read-only"),
                            (lambda: delattr(model.cfg, "use_attn_result"), "cannot be deleted")):
        with pytest.raises(tm.ReadOnlyError, match=message):
            change()
    assert model.cfg.n_layers == tm.load().cfg.n_layers
    copied = dataclasses.replace(model.cfg)  # a config of no model
    assert copied == model.cfg and copied.use_attn_result is False
    with pytest.raises(tm.ReadOnlyError, match="belongs to no model.*model.cfg"):
        copied.use_attn_result = True
    # regression (review): a copy read its switches as False, and a config's hash changed with default_prepend_bos
    assert copy.copy(model.cfg).use_attn_result is copy.deepcopy(model.cfg).use_split_qkv_input is True
    with pytest.raises(TypeError, match="unhashable"):
        hash(model.cfg)
    assert pickle.loads(pickle.dumps(model)).cfg.use_attn_result is True

    # cfg.default_prepend_bos is TransformerLens's default for every prepend_bos left out
    bos = model.tokenizer.bos_token_id
    with_bos = model.to_tokens("Mr Darcy")
    model.cfg.default_prepend_bos = False
    assert model.to_tokens("Mr Darcy")[0, 0] != bos and model.to_tokens("Mr Darcy").shape[1] == with_bos.shape[1] - 1
    np.testing.assert_array_equal(model("Mr Darcy"), model(with_bos[:, 1:]))
    assert model.to_str_tokens("Mr Darcy")[0] == "Mr"
    assert model.to_tokens("Mr Darcy", prepend_bos=True)[0, 0] == bos
    assert pickle.loads(pickle.dumps(model)).cfg.default_prepend_bos is False
    with pytest.raises(tm.InvalidInputError, match="True or False"):
        model.cfg.default_prepend_bos = 0
    assert tm.from_pretrained(None, default_prepend_bos=False).to_tokens("Mr")[0, 0] != bos
    with pytest.raises(tm.InvalidInputError, match="prepend_bos must be True or False"):
        model.to_tokens("Mr", prepend_bos="no")  # a string would have read as True


def test_the_analyses_follow_the_models_default_prepend_bos():
    # regression (review): they defaulted to prepend_bos=True, so after model.cfg.default_prepend_bos = False
    # their tokens disagreed with the model's, and a cache from run_with_cache was refused
    model, text = tm.load(), "the cat sat on the mat"
    model.cfg.default_prepend_bos = False
    n = model.to_tokens(text).shape[1]
    _, cache = model.run_with_cache(text)
    assert tm.analysis.logit_lens(model, text, cache=cache).top_ids.shape[1] == n
    assert tm.analysis.head_scores(model, text, cache=cache)["induction"].shape[0] == model.cfg.n_layers
    assert tm.analysis.saliency(model, text).scores.shape[-1] == n
    attribution = tm.analysis.logit_attribution(model, text, " the")
    assert np.isclose(attribution.logit, model(text)[0, -1, model.to_single_token(" the")], atol=1e-4)


def test_a_call_reads_the_default_prepend_bos_once(monkeypatch):
    # regression (review): a run read cfg.default_prepend_bos for its tokens and again for its padding mask, so
    # another thread changing it meanwhile gave tokens without BOS and a mask made as if they had one
    model, reads = tm.load(), []
    resolve = tm.Model._bos
    monkeypatch.setattr(tm.Model, "_bos", lambda self, prepend_bos: (reads.append(prepend_bos is None),
                                                                     resolve(self, prepend_bos))[1])
    texts = ["the cat sat on the mat", "a"]
    for run in (lambda: model(texts, padding_side="left"), lambda: model.run_with_cache(texts, padding_side="left"),
                lambda: model.run_with_cache(texts, padding_side="left", incl_bwd=True, return_type="loss"),
                lambda: model.generate(texts, max_new_tokens=1, verbose=False),
                lambda: model.to_str_tokens(texts)):
        reads.clear()
        run()
        assert sum(reads) == 1, (run.__code__.co_firstlineno, reads)
