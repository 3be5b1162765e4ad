"""What a model takes at its edges: texts as to_tokens takes them (any ordered iterable
of strings) in every run and in generate, model.blocks indexed as a list with tinymech's
error out of range, and hook contexts carried by pickle and deepcopy."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import tinymech as tm

TEXTS = ["Mr Darcy walked in.", "Hello"]


@pytest.fixture(scope="module")
def demo():
    return tm.load()


# ---- texts: one decision for to_tokens and the runs ----

ITERABLES = [
    lambda: iter(TEXTS),
    lambda: (t for t in TEXTS),
    lambda: dict.fromkeys(TEXTS).keys(),
    lambda: np.array(TEXTS),
    lambda: tuple(TEXTS),
]


@pytest.mark.parametrize("make", ITERABLES, ids=["iterator", "generator", "dict_keys", "numpy", "tuple"])
def test_any_ordered_iterable_of_texts_runs_as_its_list(demo, make):
    # to_tokens took these, while model(...) read them as token ids (dtype object)
    tokens = demo.to_tokens(TEXTS)
    np.testing.assert_array_equal(demo.to_tokens(make()), tokens)
    np.testing.assert_array_equal(demo.tokens_of(make()), tokens)
    logits = demo(TEXTS)
    np.testing.assert_array_equal(demo(make()), logits)
    np.testing.assert_array_equal(demo.forward(make()), logits)
    assert demo(make(), return_type="loss") == demo(TEXTS, return_type="loss")
    out, cache = demo.run_with_cache(make(), names_filter="blocks.0.hook_resid_pre")
    np.testing.assert_array_equal(out, logits)
    np.testing.assert_array_equal(demo.run_with_hooks(make()), logits)
    assert demo.generate(make(), max_new_tokens=3) == demo.generate(TEXTS, max_new_tokens=3)
    assert demo.to_str_tokens(make()) == demo.to_str_tokens(TEXTS)
    cached = demo.new_cache(2)
    demo.tokenizer.padding_side = "left"  # a cache takes left padding only
    try:
        np.testing.assert_array_equal(
            demo.forward(make(), cache=cached, logits="last"), demo.forward(TEXTS, logits="last", padding_side="left")
        )
    finally:
        demo.tokenizer.padding_side = "right"


@pytest.mark.parametrize("bad", [{"Mr Darcy"}, frozenset(["Mr Darcy"]), b"Mr Darcy", bytearray(b"Mr Darcy"),
                                 memoryview(b"Mr Darcy")])  # (review: a memoryview ran as uint8 ids)
def test_sets_and_bytes_are_refused_everywhere(demo, bad):
    with pytest.raises(tm.InvalidTokensError):
        demo.to_tokens(bad)
    for call in (demo, demo.forward, demo.run_with_cache, demo.generate):
        with pytest.raises(tm.InvalidTokensError):
            call(bad)


def test_a_0d_string_array_is_one_text_everywhere(demo):
    # regression (review): to_str_tokens read it as a list of one text, generate as the text
    text = np.array("Mr Darcy")
    assert demo.to_str_tokens(text) == demo.to_str_tokens("Mr Darcy")
    np.testing.assert_array_equal(demo(text), demo("Mr Darcy"))


def test_token_ids_stay_token_ids(demo):
    ids = demo.to_tokens("Mr Darcy")
    for same in (ids.tolist(), ids[0].tolist(), tuple(ids[0].tolist())):
        np.testing.assert_array_equal(demo(same), demo(ids))
    assert demo.to_str_tokens(ids[0].tolist()) == demo.to_str_tokens("Mr Darcy")
    with pytest.raises(tm.InvalidTokensError, match="empty"):
        demo([])


# ---- model.blocks ----


def test_blocks_index_as_a_list_with_a_precise_error(saved_gpt2):
    model, _ = saved_gpt2("odd")
    n = model.cfg.n_layers
    assert len(model.blocks) == n and [b.layer for b in model.blocks] == list(range(n))
    assert model.blocks[-1].layer == n - 1 and model.blocks[-n].layer == 0
    assert model.blocks[np.int64(1)].layer == 1
    assert [b.layer for b in model.blocks[1:]] == list(range(1, n))
    assert [b.layer for b in model.blocks[::-1]] == list(range(n))[::-1]
    for index in (n, -n - 1, 100):
        with pytest.raises(tm.InvalidIndexError, match=rf"layer {index} is out of range.*{n} layers.*0 to {n - 1}"):
            model.blocks[index]
    with pytest.raises(IndexError):  # what TransformerLens's ModuleList raises, caught as before
        model.blocks[n]
    for index in ("0", 1.0, None, True):
        with pytest.raises(tm.InvalidIndexError, match="a layer is a whole number"):
            model.blocks[index]


# ---- hook contexts in copies ----


def _counter(act, hook):
    hook.ctx["calls"] = hook.ctx.get("calls", 0) + 1


NAME = "blocks.0.hook_resid_pre"


def test_copies_carry_the_hook_contexts(saved_gpt2):
    # a pickled or deep-copied model started with empty ctx dicts (TransformerLens's deepcopy copies them)
    _, path = saved_gpt2("odd")
    model = tm.load(path)
    tokens = np.arange(1, 6)[None]
    model.run_with_hooks(tokens, fwd_hooks=[(NAME, _counter)])
    model.hook_dict["blocks.1.hook_resid_pre"].ctx["seen"] = np.arange(3)
    for again in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert again.hook_dict[NAME].ctx == {"calls": 1}
        np.testing.assert_array_equal(again.hook_dict["blocks.1.hook_resid_pre"].ctx["seen"], np.arange(3))
        again.run_with_hooks(tokens, fwd_hooks=[(NAME, _counter)])  # a hook in the copy reads the copied ctx
        assert again.hook_dict[NAME].ctx == {"calls": 2}
        assert model.hook_dict[NAME].ctx == {"calls": 1}  # the copy's own, not the original's
        again.reset_hooks()
        assert again.hook_dict[NAME].ctx == {} and model.hook_dict[NAME].ctx == {"calls": 1}


def test_a_ctx_pickle_cannot_carry_is_refused_by_name(saved_gpt2):
    _, path = saved_gpt2("odd")
    model = tm.load(path)
    model.hook_dict[NAME].ctx["f"] = lambda: 1
    with pytest.raises(tm.UnpicklableError, match=f"ctx of the hook point {NAME}.*reset_hooks"):
        pickle.dumps(model)
    again = copy.deepcopy(model)  # deepcopy takes a lambda (shared), as TransformerLens's
    assert again.hook_dict[NAME].ctx["f"]() == 1
    model.reset_hooks()
    assert pickle.loads(pickle.dumps(model)).hook_dict[NAME].ctx == {}


def test_blocks_join_as_the_tuple_they_were(demo):
    # regression (review): model.blocks became a lazy Sequence, and blocks + (...) raised TypeError
    joined = demo.blocks + (demo.blocks[0],)
    assert len(joined) == demo.cfg.n_layers + 1 and joined[-1].layer == 0


def test_hook_points_are_attributes_of_their_modules(demo):
    # TransformerLens's habit (model.blocks[1].attn.hook_z.add_hook(fn), model.hook_embed): AttributeError before
    x = demo.to_tokens("Mr Darcy")
    base = demo(x)
    points = {demo.hook_embed: "hook_embed", demo.blocks[0].hook_resid_pre: "blocks.0.hook_resid_pre",
              demo.blocks[1].attn.hook_z: "blocks.1.attn.hook_z", demo.blocks[0].ln1.hook_scale: "blocks.0.ln1.hook_scale",
              demo.blocks[0].mlp.hook_post: "blocks.0.mlp.hook_post", demo.ln_final.hook_normalized: "ln_final.hook_normalized"}
    assert [p.name for p in points] == list(points.values())
    demo.blocks[1].attn.hook_z.add_hook(lambda z, hook: z * 0)
    try:
        zeroed = demo(x)
        assert not np.allclose(zeroed, base)
    finally:
        demo.reset_hooks()
    np.testing.assert_array_equal(demo(x), base)
    with_hook = demo.run_with_hooks(x, fwd_hooks=[("blocks.1.attn.hook_z", lambda z, hook: z * 0)])
    np.testing.assert_allclose(zeroed, with_hook)
    for missing in (lambda: demo.hook_nothing, lambda: demo.blocks[0].attn.hook_nothing, lambda: demo.blocks[0].W_x):
        with pytest.raises(AttributeError):
            missing()
    assert hasattr(demo, "hook_embed") and not hasattr(demo, "hook_nothing")


def test_a_hook_functions_hook_point_says_where_hooks_are_added(demo):
    def adds(acts, hook):
        hook.add_hook(lambda a, hook: a)

    with pytest.raises(tm.HookError, match="through the model: model.add_hook"):
        demo.run_with_hooks("Mr Darcy", fwd_hooks=[("hook_embed", adds)])


def test_to_str_tokens_of_a_ragged_list_is_a_tinymech_error(demo):
    # regression (review): numpy's ValueError escaped
    with pytest.raises(tm.InvalidTokensError, match="to_str_tokens' token ids cannot be read as an array"):
        demo.to_str_tokens([[1, 2], [3]])
