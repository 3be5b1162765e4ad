"""The array-type switch without torch: its bad values, torch missing, the scoped form, numpy
unchanged while it is off, and the table of entry points it wraps (tinymech/arrays.py).
With torch: tests/reference/test_torch_arrays.py."""
import inspect
import sys

import numpy as np
import pytest

import tinymech as tm
from tinymech import analysis, arrays, patching, utils


@pytest.mark.parametrize("kind", ["jax", "Torch", "", None, 1, ["torch"]])
def test_a_bad_array_type_is_refused(kind):
    with pytest.raises(tm.InvalidInputError, match="'numpy' or 'torch'"):
        tm.set_array_type(kind)
    with pytest.raises(ValueError):  # checked when called, not on entering the block
        tm.array_type(kind)
    assert tm.get_array_type() == "numpy"


def test_torch_missing_is_a_precise_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    monkeypatch.setattr(arrays, "_torch", None)
    for switch in (tm.set_array_type, tm.array_type):
        with pytest.raises(tm.InvalidInputError, match="pip install torch"):
            switch("torch")
    assert tm.get_array_type() == "numpy"


def test_the_scoped_switch_restores_what_was_there():
    assert tm.get_array_type() == "numpy"
    with tm.array_type("numpy") as kind:
        assert kind == "numpy" and tm.get_array_type() == "numpy"
    tm.set_array_type("numpy")
    assert tm.get_array_type() == "numpy"


def test_numpy_stays_numpy_while_the_switch_is_off(saved_gpt2):
    model, _ = saved_gpt2("tiny")
    seen = []

    def hook(act, hook):
        seen.append(type(act))

    logits, cache = model.run_with_cache(np.array([[1, 2, 3]]), names_filter=lambda name: "resid" in name)
    model.run_with_hooks(np.array([[1, 2, 3]]), fwd_hooks=[("blocks.0.hook_resid_pre", hook)])
    model.add_hook("blocks.0.hook_resid_pre", hook)
    try:
        assert model._added_hooks[-1][0][1] is hook  # the user's function, as it was given
    finally:
        model.reset_hooks()
    assert type(logits) is np.ndarray and type(cache["blocks.0.hook_resid_pre"]) is np.ndarray
    assert seen == [np.ndarray]
    assert isinstance(model.W_U, np.ndarray) and isinstance(model.OV.A, np.ndarray)
    assert isinstance(model.loss_fn(logits, np.array([[1, 2, 3]])), float)


def _public_members(cls):
    for name, member in vars(cls).items():
        if name.startswith("_") and name not in arrays.DUNDERS:
            continue
        if isinstance(member, property):
            yield name, member.fget
        elif isinstance(member, (classmethod, staticmethod)):
            yield name, member.__func__
        elif inspect.isfunction(member):
            yield name, member


@pytest.mark.parametrize("cls", [tm.Model, tm.ActivationCache, tm.SAE, tm.FactoredMatrix, tm.Tokenizer,
                                 tm.ActivationStore, analysis.PatchingResult])
def test_every_public_method_and_property_of_the_tables_classes_converts(cls):
    members = dict(_public_members(cls))
    assert members
    unwrapped = [name for name, fn in members.items() if not getattr(fn, arrays._MARK, False)]
    assert not unwrapped, f"{cls.__name__}: {unwrapped} are not entry points"


@pytest.mark.parametrize("namespace", [tm, analysis, patching, utils], ids=lambda m: m.__name__)
def test_every_public_function_converts(namespace):
    functions = {name: getattr(namespace, name) for name in namespace.__all__}
    own = {"array_type", "get_array_type", "set_array_type"}
    plain = [name for name, fn in functions.items() if inspect.isfunction(fn) and name not in own
             and not getattr(fn, arrays._MARK, False)]
    assert not plain


def test_wrapping_keeps_names_docs_signatures_and_identities():
    assert tm.Model.run_with_cache.__name__ == "run_with_cache"
    assert "names_filter" in inspect.signature(tm.Model.run_with_cache).parameters
    assert tm.Model.W_U.__doc__ == tm.Model.W_U.fget.__wrapped__.__doc__
    assert tm.get_act_name is utils.get_act_name  # one function in two namespaces: one wrapper
    assert not hasattr(tm.set_array_type, arrays._MARK)
    arrays.wrap_entry_points()  # again: nothing is wrapped twice
    assert not hasattr(tm.Model.forward.__wrapped__, arrays._MARK)
