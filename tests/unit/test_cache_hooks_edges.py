"""Edges of the cache, hooks, SAE splice, FactoredMatrix and gradients: callers' values numpy cannot
read, names predicates that fail or reach attached SAEs' points, the cache's TransformerLens
methods (to, apply_slice_to_batch_dim, toggle_autodiff), and FactoredMatrix's decompositions of
float16 or non-finite factors. Without torch: NotAnArray stands in for a tensor numpy cannot read."""
import sys
import types
import warnings

import numpy as np
import pytest

import tinymech as tm
from numpy_checkpoints import write_sae
from tinymech.factored_matrix import FactoredMatrix
from tinymech.sae.sae import SAE

HOOK = "blocks.1.hook_resid_pre"
LATENTS = HOOK + ".hook_sae_acts_post"
RAGGED = [[1.0], [1.0, 2.0]]


class NotAnArray:
    """What np.asarray cannot read, as a tensor requiring grad (RuntimeError) or in bfloat16 (TypeError)."""

    def __init__(self, error=RuntimeError):
        self.error = error

    def __array__(self, *args, **kwargs):
        raise self.error("Can't call numpy() on Tensor that requires grad")


@pytest.fixture(scope="module")
def model(saved_gpt2):
    return tm.load(saved_gpt2("tiny")[1])  # its own: these tests attach SAEs


@pytest.fixture(scope="module")
def sae(tmp_path_factory):
    return SAE.load(write_sae(tmp_path_factory.mktemp("sae"), "standard", 64, 96, hook=HOOK, std=0.15))


@pytest.fixture(scope="module")
def tokens(model):
    return np.random.default_rng(0).integers(1, model.cfg.d_vocab, (2, 7))


@pytest.fixture(scope="module")
def cache(model, tokens):
    return model.run_with_cache(tokens)[1]


def zero(acts, hook):
    return acts * 0


# ---- 6: a names predicate reaches attached SAEs' points --------------------------------------------

def test_a_predicate_hook_reaches_an_attached_saes_points(model, sae, tokens):
    # regression: a predicate was matched against the model's own points only, so the hook was dropped
    plain = model.run_with_saes(tokens, saes=[sae])
    by_name = model.run_with_hooks_with_saes(tokens, saes=[sae], fwd_hooks=[(LATENTS, zero)])
    called = []

    def spy(acts, hook):
        called.append(hook.name)
        return acts * 0

    by_pred = model.run_with_hooks_with_saes(tokens, saes=[sae], fwd_hooks=[(lambda n: n == LATENTS, spy)])
    assert called == [LATENTS] and np.allclose(by_pred, by_name) and not np.allclose(by_pred, plain)
    # one predicate on a model point and an SAE point: as the two names
    both = ["blocks.0.hook_resid_post", LATENTS]
    named = model.run_with_hooks_with_saes(tokens, saes=[sae], fwd_hooks=[(n, zero) for n in both])
    assert np.allclose(model.run_with_hooks_with_saes(tokens, saes=[sae], fwd_hooks=[(lambda n: n in both, zero)]),
                       named)
    with model.saes(saes=[sae]):  # attached, and a hook kept on
        model.add_hook(lambda n: n.endswith("hook_sae_acts_post"), zero)
        try:
            assert np.allclose(model(tokens), by_name)
        finally:
            model.reset_hooks()
    assert model.acts_to_saes == {}


def test_a_predicate_on_sae_points_a_function_cannot_edit(model, sae, tokens):
    # hook_sae_error runs only with the error term (SAELens never calls it otherwise): skipped
    plain = model.run_with_saes(tokens, saes=[sae])
    quiet = model.run_with_hooks_with_saes(tokens, saes=[sae], fwd_hooks=[(lambda n: n.endswith("_error"), zero)])
    assert np.allclose(quiet, plain)
    # regression (review): hook_sae_acts_pre, and an intervention on SAE points, refused a whole predicate run (all
    # names, lambda n: True, ran before); now those SAE points are left unhooked, and a warning names them
    def spy(acts, hook):
        seen.append(hook.name)
        return acts

    seen = []
    with pytest.warns(UserWarning, match="matched .*hook_sae_acts_pre, left unhooked"):
        model.run_with_hooks_with_saes(tokens, saes=[sae], fwd_hooks=[(lambda n: True, spy)])
    assert f"{HOOK}.hook_sae_acts_post" in seen and f"{HOOK}.hook_sae_acts_pre" not in seen
    filled = model.run_with_hooks_with_saes(tokens, saes=[sae], fwd_hooks=[("blocks.0.hook_resid_pre", tm.hooks.fill(0.0))])
    with pytest.warns(UserWarning, match="hook_sae_input.* left unhooked"):
        by_pred = model.run_with_hooks_with_saes(tokens, saes=[sae],
                                                 fwd_hooks=[(lambda n: n == "blocks.0.hook_resid_pre" or
                                                             n == f"{HOOK}.hook_sae_input", tm.hooks.fill(0.0))])
    assert np.allclose(by_pred, filled)  # the intervention runs at the model's points
    assert model.acts_to_saes == {}


def test_a_predicate_spares_the_point_an_attached_sae_replaces(model, sae, tokens):
    # regression (review): a predicate fired at the SAE's own point and at its hook_sae_input, editing twice;
    # SAELens's hook_dict has no such point while the SAE is attached
    def scale(acts, hook):
        seen.append(hook.name)
        return acts * 1.5

    seen = []
    by_pred = model.run_with_hooks_with_saes(tokens, saes=[sae], fwd_hooks=[(lambda n: n == HOOK or
                                                                             n == f"{HOOK}.hook_sae_input", scale)])
    assert seen == [f"{HOOK}.hook_sae_input"]
    by_name = model.run_with_hooks_with_saes(tokens, saes=[sae], fwd_hooks=[(f"{HOOK}.hook_sae_input", scale)])
    assert np.allclose(by_pred, by_name)
    assert model.acts_to_saes == {}


def test_a_failing_hook_on_an_sae_point_is_named_once(model, sae, tokens):
    # regression: the SAE's Python splice wrapped its hook's HookError again, as "hook function '_splice' ... raised"
    def boom(acts, hook):
        raise RuntimeError("no")

    for fn, match in ((boom, "hook function 'boom' at '.*hook_sae_acts_post' raised RuntimeError: no"),
                      (lambda a, hook: NotAnArray(), "the value hook function '<lambda>' at '.*hook_sae_acts_post'")):
        with pytest.raises(tm.HookError, match=f"^{match}"):
            model.run_with_hooks_with_saes(tokens, saes=[sae], fwd_hooks=[(lambda n: n == LATENTS, fn)])
    assert model.acts_to_saes == {}


@pytest.mark.parametrize("names_filter", [5, 2.5, b"hook_embed"])
def test_a_names_filter_that_is_not_one_with_saes(model, sae, tokens, names_filter):
    # regression: names_filter=5 with an SAE attached escaped as a TypeError from model_names_filter
    with pytest.raises(tm.HookError, match="a name, a list of names or a predicate"):
        model.run_with_cache_with_saes(tokens, saes=[sae], names_filter=names_filter)
    assert model.acts_to_saes == {}


def test_a_generator_names_filter_with_saes_caches_as_its_list(model, sae, tokens):
    # regression: run_with_cache spent a generator on the model's points, then recorded the SAE's from it, empty
    names = ["blocks.0.hook_resid_post", LATENTS]
    _, listed = model.run_with_cache_with_saes(tokens, saes=[sae], names_filter=names)
    _, generated = model.run_with_cache_with_saes(tokens, saes=[sae], names_filter=(n for n in names))
    assert sorted(generated.keys()) == sorted(listed.keys()) == sorted(names)
    assert model.acts_to_saes == {}


# ---- 14: a names predicate's own error ---------------------------------------------------------------

def _raising(name):
    return 1 / 0


PREDICATES = [(_raising, "ZeroDivisionError"), (lambda n: np.array([1, 0]), "ambiguous"),
              (lambda n: n.layer, "AttributeError")]


@pytest.mark.parametrize("predicate,match", PREDICATES)
def test_a_failing_names_predicate_is_a_hook_error(model, sae, tokens, predicate, match):
    # regression: the predicate's exception (or numpy's ambiguous truth ValueError) escaped bare
    with pytest.raises(tm.HookError, match=f"names predicate .*{match}"):
        model.run_with_hooks(tokens, fwd_hooks=[(predicate, zero)])
    with pytest.raises(tm.HookError, match=f"names predicate .*{match}"):
        model.run_with_cache(tokens, names_filter=predicate)
    with pytest.raises(tm.HookError, match=f"names predicate .*{match}"):  # on the SAE's points (splice._wanted)
        model.run_with_cache_with_saes(tokens, saes=[sae], names_filter=predicate)
    with pytest.raises(tm.HookError, match=f"names predicate .*{match}"):
        model.run_with_hooks_with_saes(tokens, saes=[sae], fwd_hooks=[(predicate, zero)])
    assert model.acts_to_saes == {}
    with pytest.raises(tm.HookError, match="_raising"):  # named
        model.run_with_hooks(tokens, fwd_hooks=[(_raising, zero)])


# ---- 12: callers' values numpy cannot read -------------------------------------------------------------

@pytest.mark.parametrize("bad", [NotAnArray(), NotAnArray(TypeError), RAGGED], ids=["grad", "bf16", "ragged"])
def test_unreadable_arrays_are_tinymech_errors(model, tokens, bad):
    # regression: np.asarray's (or torch's) own RuntimeError, TypeError or ValueError escaped
    for make in (tm.add, tm.patch, tm.fill, tm.mean_ablate):
        with pytest.raises(tm.HookError, match="cannot be read as an array"):
            make(bad)
    with pytest.raises(tm.HookError, match="cannot be read as an array"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pre", lambda a, hook: bad)])
    with pytest.raises(tm.InvalidInputError, match="grad_logits cannot be read as an array"):
        model.run_with_cache(tokens, incl_bwd=True, grad_logits=bad)
    with pytest.raises(tm.InvalidInputError, match="gradient cannot be read as an array"):
        model.run_with_cache(tokens, incl_bwd=True, metric=lambda logits: (0.0, bad))
    with pytest.raises(tm.InvalidInputError, match="cannot be read as an array"):
        model.run_with_cache(tokens, incl_bwd=True, metric=("logit_diff", bad, 3))
    with pytest.raises(tm.InvalidInputError, match="A cannot be read as an array"):
        FactoredMatrix(bad, np.ones((3, 4)))
    with pytest.raises(tm.InvalidInputError, match="cannot be read as an array"):
        FactoredMatrix(np.ones((4, 3)), np.ones((3, 4))) * bad


# ---- 13: the cache's to, apply_slice_to_batch_dim and toggle_autodiff --------------------------------------

def test_cache_to_a_device(cache):
    # regression: AttributeError; TransformerLens's cache.to(device) returns the cache
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.to("cpu") is cache and cache.to("cpu:0") is cache
    with pytest.warns(UserWarning, match="CPU"):
        assert cache.to("cuda") is cache
    with pytest.raises(tm.InvalidInputError, match="device"):
        cache.to(5)


@pytest.mark.parametrize("batch_slice,rows,kept", [(1, [1], False), ((0, 1), [0], True), ([1, 0], [1, 0], True),
                                                   (slice(None, None, -1), [1, 0], True), (None, [0, 1], True),
                                                   (np.array(1), [1], False)])
def test_cache_apply_slice_to_batch_dim(model, cache, batch_slice, rows, kept):
    # regression: AttributeError; TransformerLens's Slice on the batch axis, in a new cache
    sliced = cache.apply_slice_to_batch_dim(batch_slice)
    assert isinstance(sliced, tm.ActivationCache) and sliced is not cache and sliced.has_batch_dim == kept
    assert list(sliced.keys()) == list(cache.keys()) and cache.has_batch_dim
    for name in ("blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post"):
        want = cache[name][rows] if kept else cache[name][rows[0]]
        assert np.array_equal(sliced[name], want)
    if not kept:
        assert sliced.accumulated_resid().shape == (3, 7, 64)
        with pytest.raises(tm.InvalidInputError, match="batch"):
            sliced.apply_slice_to_batch_dim(0)


@pytest.mark.parametrize("bad", [5, "a", 1.5, [0, 9]])
def test_cache_apply_slice_to_batch_dim_out_of_range(cache, bad):
    with pytest.raises(tm.InvalidIndexError, match="batch_slice"):
        cache.apply_slice_to_batch_dim(bad)


def test_cache_toggle_autodiff(cache, monkeypatch):
    # regression: AttributeError; TransformerLens's toggle_autodiff sets torch's global autodiff
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # not loaded: a numpy cache has no autodiff
    with pytest.warns(UserWarning, match="without autodiff"):
        assert cache.toggle_autodiff(False) is None
    modes = []
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(set_grad_enabled=modes.append))
    with pytest.warns(UserWarning, match="torch's autodiff is now off"):
        cache.toggle_autodiff()
    with pytest.warns(UserWarning, match="torch's autodiff is now on"):
        cache.toggle_autodiff(np.True_)
    assert modes == [False, True]
    with pytest.raises(tm.InvalidInputError, match="True or False"):
        cache.toggle_autodiff("no")


# ---- 17: a 0-d integer neuron_slice ----------------------------------------------------------------------

@pytest.mark.parametrize("neuron", [np.array(5), np.int64(5), np.array(5, dtype=np.uint8)])
def test_stack_neuron_results_takes_a_0d_integer(cache, neuron):
    # regression: a 0-d integer array was not an int there: 'numpy.int64' object is not iterable
    got, labels = cache.stack_neuron_results(1, neuron_slice=neuron, return_labels=True)
    want, want_labels = cache.stack_neuron_results(1, neuron_slice=5, return_labels=True)
    assert labels == want_labels == ["L0N5"] and np.array_equal(got, want)
    with pytest.raises(tm.InvalidIndexError, match="neuron_slice"):
        cache.stack_neuron_results(1, neuron_slice=np.array(5.0))


# ---- 18: FactoredMatrix's decompositions ----------------------------------------------------------------

RNG = np.random.default_rng(0)
A, B = RNG.normal(size=(4, 3)), RNG.normal(size=(3, 4))


def test_factored_matrix_of_float16_factors():
    # regression: numpy's linalg has no float16: TypeError from .S, .norm(), .eigenvalues
    half, full = FactoredMatrix(A.astype(np.float16), B.astype(np.float16)), FactoredMatrix(A, B)
    assert np.allclose(half.S, full.S, rtol=1e-2) and np.allclose(half.norm(), full.norm(), rtol=1e-2)
    assert np.allclose(np.sort_complex(half.eigenvalues), np.sort_complex(full.eigenvalues), rtol=1e-2, atol=1e-2)
    U, S, V = half.svd()
    assert np.allclose(U @ np.diag(S) @ V.T, full.AB, atol=2e-2)
    assert half.A.dtype == np.float16  # the factors as given


@pytest.mark.parametrize("fm", [FactoredMatrix(np.full((4, 3), np.nan), B), FactoredMatrix(A, B) * float("nan"),
                                FactoredMatrix(A, np.full((3, 4), np.inf))], ids=["nan", "times nan", "inf"])
def test_factored_matrix_of_non_finite_factors(fm):
    # regression: numpy.linalg.LinAlgError
    for read in (lambda: fm.S, fm.svd, fm.norm, lambda: fm.eigenvalues, fm.make_even, fm.collapse_l):
        with pytest.raises(tm.InvalidInputError, match="NaN or infinity"):
            read()


def test_factored_matrix_axes_and_corners():
    fm = FactoredMatrix(A, B)
    # regression: numpy's AxisError and get_corner(1.5)'s TypeError
    with pytest.raises(tm.InvalidIndexError, match="99"):
        fm.unsqueeze(99)
    for bad in (1.5, "2", True):
        with pytest.raises(tm.InvalidInputError, match="whole number"):
            fm.unsqueeze(bad)
        with pytest.raises(tm.InvalidInputError, match="whole number"):
            fm.get_corner(bad)
    assert fm.unsqueeze(np.array(0)).shape == (1, 4, 4) and fm.unsqueeze(-3).shape == (1, 4, 4)
    assert np.allclose(fm.get_corner(np.array(2)), fm.AB[:2, :2])
    assert np.allclose(tm.utils.get_corner(fm.AB, np.int64(2)), fm.AB[:2, :2])


# ---- 19: a cache built from the caller's values ------------------------------------------------------------

def test_a_cache_of_other_arrays_holds_numpy_arrays(model, cache):
    # regression: values were kept as given (tensors, lists): methods failed inside or returned them
    built = tm.ActivationCache({name: a.tolist() for name, a in cache.items()}, model)
    assert all(type(a) is np.ndarray for a in built.values())
    assert np.allclose(built.stack_neuron_results(1), cache.stack_neuron_results(1), atol=1e-5)
    assert np.allclose(built.get_full_resid_decomposition(), cache.get_full_resid_decomposition(), atol=1e-5)
    same = tm.ActivationCache(dict(cache.items()), model)
    assert all(same[n] is cache[n] for n in cache.keys())  # numpy arrays: not copied
    no_batch = tm.ActivationCache({n: a[0] for n, a in cache.items()}, model, has_batch_dim=False)
    assert not no_batch.has_batch_dim
    with pytest.raises(tm.InvalidInputError, match="'hook_embed' cannot be read as an array"):
        tm.ActivationCache({"hook_embed": NotAnArray()}, model)
    for bad in ({"hook_embed": "text"}, {"hook_embed": None}):
        with pytest.raises(tm.InvalidInputError, match="numbers"):
            tm.ActivationCache(bad, model)
    with pytest.raises(tm.InvalidInputError, match="dict"):
        tm.ActivationCache([("hook_embed", np.ones(3))], model)
    with pytest.raises(tm.InvalidInputError, match="True or False"):
        tm.ActivationCache({}, model, has_batch_dim="yes")
