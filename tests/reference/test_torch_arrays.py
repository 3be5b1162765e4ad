"""tm.set_array_type("torch"): a TransformerLens / SAELens notebook's torch code runs on what
tinymech returns and gives TransformerLens's and SAELens's numbers; tensors share the arrays'
memory; hooks get tensors and their edits reach the core; switched off, numpy again; and
tinymech's own calls inside a call see numpy."""
import pickle

import numpy as np
import pytest
import torch
import transformer_lens.patching as tl_patching

import tinymech as tm
import tinymech.cache
import tinymech.model
from sae_factory import lens_sae, save_lens
from tinymech import analysis, patching, utils
from tl_reference import act_err

TOL = 1e-4
D_VOCAB = 301  # model_factory's "odd" shape: d_model 60, 3 heads of 20, 3 layers, 24 positions


@pytest.fixture
def torch_on():
    tm.set_array_type("torch")
    try:
        yield
    finally:
        tm.set_array_type("numpy")


@pytest.fixture(scope="module")
def models(gpt2, tl_gpt2):
    hf, model, path = gpt2("odd")
    return model, tl_gpt2(hf), path


def _tokens(batch: int, pos: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, D_VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


def _err(ours, ref) -> float:
    assert isinstance(ours, torch.Tensor), type(ours)
    return act_err(ours.detach().cpu().numpy(), ref.detach().numpy())


@pytest.mark.parametrize("batch,pos", [(1, 1), (2, 7)])
def test_a_transformer_lens_cell_runs_on_tinymechs_tensors(models, torch_on, batch, pos):
    model, tl, _ = models
    tokens = _tokens(batch, pos)
    logits, cache = model.run_with_cache(tokens)
    with torch.no_grad():
        ref_logits, ref_cache = tl.run_with_cache(tokens)
    assert _err(logits.softmax(-1), ref_logits.softmax(-1)) < TOL
    assert _err(logits.detach().cpu(), ref_logits) < TOL
    taken = logits.log_softmax(-1).gather(-1, tokens[..., None])
    assert _err(taken, ref_logits.log_softmax(-1).gather(-1, tokens[..., None])) < TOL
    name = "blocks.0.attn.hook_pattern"
    assert _err(cache[name].diagonal(dim1=-2, dim2=-1), ref_cache[name].diagonal(dim1=-2, dim2=-1)) < TOL
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(3)]
    assert _err(torch.stack([cache[n] for n in names]), torch.stack([ref_cache[n] for n in names])) < TOL
    assert _err(cache.stack_activation("resid_post"), ref_cache.stack_activation("resid_post")) < TOL
    assert _err(cache.accumulated_resid(apply_ln=True), ref_cache.accumulated_resid(apply_ln=True)) < TOL
    for key, value in cache.items():
        assert isinstance(value, torch.Tensor), key
    if pos > 1:  # a loss needs a next token
        loss = model(tokens, return_type="loss")
        with torch.no_grad():
            ref_loss = tl(tokens, return_type="loss")
        assert isinstance(loss, torch.Tensor) and loss.ndim == 0
        assert abs(loss.item() - ref_loss.item()) < TOL * abs(ref_loss.item())
        assert abs(model.loss_fn(logits, tokens).item() - ref_loss.item()) < TOL * abs(ref_loss.item())


def _zero_first_dim(act, hook):
    act[:, :, 0] = 0  # in place, on the tensor tinymech gives (hook_z: [batch, pos, head, d_head])


def _halved(act, hook):
    return act * 0.5  # a new tensor


def test_hooks_get_tensors_and_their_edits_reach_the_core(models, torch_on):
    model, tl, _ = models
    tokens = _tokens(2, 5, seed=1)
    hooks = [("blocks.0.attn.hook_z", _zero_first_dim), ("blocks.1.hook_mlp_out", _halved)]
    ours = model.run_with_hooks(tokens, fwd_hooks=hooks)
    with torch.no_grad():
        ref = tl.run_with_hooks(tokens, fwd_hooks=hooks)
        plain = tl(tokens)
    assert _err(ours, ref) < TOL
    assert act_err(ref.numpy(), plain.numpy()) > 1e-3  # the edits change the logits
    with model.hooks(fwd_hooks=hooks):
        assert _err(model(tokens), ref) < TOL


def test_a_hook_gets_a_tensor_over_the_activation_and_its_own_calls_convert(models, torch_on):
    model, _, _ = models
    seen = []

    def hook(act, hook):
        seen.append((type(act), type(model.W_U)))  # the user's code: tinymech's calls give tensors there too
        act.mul_(0)

    def numpy_hook(act, hook):
        act *= 0

    name = "ln_final.hook_normalized"
    ours = model.run_with_hooks(_tokens(1, 3), fwd_hooks=[(name, hook)])
    assert seen == [(torch.Tensor, torch.Tensor)]
    with tm.array_type("numpy"):
        expected = model.run_with_hooks(_tokens(1, 3).numpy(), fwd_hooks=[(name, numpy_hook)])
        assert not np.array_equal(expected, model(_tokens(1, 3).numpy()))
    assert np.array_equal(ours.numpy(), expected)


def test_tensors_share_the_arrays_memory(models, torch_on):
    model, _, _ = models
    tokens = _tokens(2, 4)
    _, cache = model.run_with_cache(tokens)
    name = "blocks.1.hook_resid_mid"
    with tm.array_type("numpy"):
        array = cache[name]
    assert isinstance(array, np.ndarray)
    assert cache[name].data_ptr() == array.ctypes.data  # no copy out
    for t in (cache[name], cache[name].transpose(0, 1), cache[name][:, 1:]):
        assert utils.to_numpy(t).ctypes.data == t.data_ptr()  # nor in, strided views included


def test_odd_tensors_come_in(models, torch_on, tmp_path):
    model, _, _ = models
    lens = lens_sae("standard", 60, 150, hook="blocks.1.hook_resid_pre", std=0.2)
    sae = tm.SAE.load(save_lens(lens, tmp_path))
    _, cache = model.run_with_cache(_tokens(2, 6))
    acts = cache["blocks.1.hook_resid_pre"]
    with torch.no_grad():
        for given in (acts, acts.transpose(0, 1), acts.bfloat16(), acts.clone().requires_grad_(True)):
            assert _err(sae.encode(given), lens.encode(given.detach().float())) < TOL
        assert _err(sae.decode(sae.encode(acts)), lens.decode(lens.encode(acts))) < TOL
        assert _err(sae.W_dec[5], lens.W_dec[5]) < TOL
        assert _err(sae(acts), lens(acts)) < TOL
    assert torch.equal(cache["resid_pre", torch.tensor(1)], acts)  # a 0-d tensor comes in as a number
    with pytest.raises(tm.InvalidInputError, match="torch tensor"):
        sae.encode(acts.to("meta"))


def test_an_sae_takes_assigned_tensors_and_parameters(models, torch_on, tmp_path):
    model, _, _ = models
    lens = lens_sae("topk", 60, 150, hook="blocks.1.hook_resid_pre", std=0.2, k=8)
    sae = tm.SAE.load(save_lens(lens, tmp_path))
    acts = model.run_with_cache(_tokens(2, 6))[1]["blocks.1.hook_resid_pre"]
    with torch.no_grad():
        lens.W_enc.mul_(torch.linspace(0.5, 2, 150))
        lens.b_dec.add_(0.1)
    sae.W_enc = lens.W_enc  # a Parameter that requires grad: its values
    sae.b_dec = sae.b_dec + 0.1  # a tensor, as SAELens code computes one
    with torch.no_grad():
        assert _err(sae.encode(acts), lens.encode(acts)) < TOL
        assert _err(sae(acts), lens(acts)) < TOL
    assert isinstance(sae.W_enc, torch.Tensor) and not sae.W_enc.requires_grad
    sae.W_dec = lens.W_dec.bfloat16()  # widened to float32
    assert sae.W_dec.dtype == torch.float32
    for odd in (torch.zeros(150, 60, device="meta"), torch.zeros(150, 60).to_sparse(), torch.zeros(150, 60) * 1j):
        with pytest.raises(tm.SAEInputError):
            sae.W_dec = odd


def test_an_intervention_takes_a_tensor(models, torch_on):
    model, _, _ = models
    tokens, vector = _tokens(1, 3), torch.linspace(-1, 1, 60)
    name = "blocks.1.hook_resid_pre"
    steered = model.run_with_hooks(tokens, fwd_hooks=[(name, tm.add(vector, coeff=2.0))])
    with tm.array_type("numpy"):
        expected = model.run_with_hooks(tokens.numpy(), fwd_hooks=[(name, tm.add(vector.numpy(), coeff=2.0))])
    assert np.array_equal(steered.numpy(), expected)


def test_weights_factored_matrices_and_parameters(models, torch_on):
    model, tl, path = models
    fresh = tm.load(path)  # memory-mapped weights: read-only, so they come as copies
    W_E = fresh.W_E
    W_E[0] = 1.0  # no crash, and the model's weights stay as they were
    with tm.array_type("numpy"):
        assert not fresh.W_E.flags.writeable
        assert not np.array_equal(fresh.W_E[0], np.ones_like(fresh.W_E[0]))
    with torch.no_grad():
        assert _err(model.W_U, tl.W_U) < TOL
        assert _err(model.W_Q[1, 2], tl.W_Q[1, 2]) < TOL
        assert _err(model.blocks[2].attn.W_O, tl.blocks[2].attn.W_O) < TOL
        assert _err(model.OV[1, 2].AB, tl.OV[1, 2].AB) < TOL
        assert _err(model.QK[0, 1].S, tl.QK[0, 1].S) < 1e-3
        assert _err(model.OV[1, 2].A, tl.OV[1, 2].A) < TOL
        state, ref_state = model.state_dict(), tl.state_dict()
        assert _err(state["blocks.0.attn.W_K"], ref_state["blocks.0.attn.W_K"]) < TOL
    assert all(isinstance(p, torch.Tensor) for _, p in model.named_parameters())


def test_layer_stacks_in_torch_code(models, torch_on):
    """A notebook's torch code on the stacked per-layer weights (model.W_Q, ...): torch functions,
    @ and tensor methods see the stack as its stacked tensor, as TransformerLens's parameter."""
    model, tl, _ = models
    x = torch.randn(4, 60, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert _err(torch.einsum("pd,lhdk->lhpk", x, model.W_Q), torch.einsum("pd,lhdk->lhpk", x, tl.W_Q)) < TOL
        assert _err(x @ model.W_V, x @ tl.W_V) < TOL
        assert _err(model.W_O @ torch.ones(60), tl.W_O @ torch.ones(60)) < TOL
        assert _err(model.W_in.norm(dim=-2), tl.W_in.norm(dim=-2)) < TOL
        assert _err(torch.stack([model.b_Q, model.b_K]), torch.stack([tl.b_Q, tl.b_K])) < TOL
        assert _err(model.W_K.transpose(-1, -2)[1], tl.W_K.transpose(-1, -2)[1]) < TOL
    stacked = torch.einsum("lhdk->l", model.W_Q)
    stacked += 1.0  # a copy: the model's weights stay
    with tm.array_type("numpy"):
        assert not hasattr(model.W_Q, "norm")  # numpy code sees the layer stack as before


def test_patching_with_a_torch_metric(models, torch_on):
    model, tl, _ = models
    clean, corrupted = _tokens(1, 5, seed=2), _tokens(1, 5, seed=3)

    def metric(logits):
        return (logits[:, -1, 3] - logits[:, -1, 5]).mean()

    _, clean_cache = model.run_with_cache(clean)
    ours = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    with torch.no_grad():
        _, ref_cache = tl.run_with_cache(clean)
        ref = tl_patching.get_act_patch_resid_pre(tl, corrupted, ref_cache, metric)
    assert _err(ours, ref) < 1e-3


def test_generate_takes_and_gives_tensors(models, torch_on):
    model, _, _ = models
    prompt = _tokens(2, 3)
    out = model.generate(prompt, max_new_tokens=4)
    with tm.array_type("numpy"):
        expected = model.generate(prompt.numpy(), max_new_tokens=4)
    assert isinstance(out, torch.Tensor) and np.array_equal(out.numpy(), expected)


def test_switched_off_it_is_numpy_again(models):
    model, _, _ = models
    seen = []
    with tm.array_type("torch"):
        assert tm.get_array_type() == "torch"
        assert isinstance(model(_tokens(1, 2)), torch.Tensor)
    assert tm.get_array_type() == "numpy"
    tm.set_array_type("torch")
    tm.set_array_type("numpy")
    hooks = [("blocks.0.hook_resid_pre", lambda act, hook: seen.append(type(act)))]
    out = model.run_with_hooks(_tokens(1, 2), fwd_hooks=hooks)
    assert isinstance(out, np.ndarray) and seen == [np.ndarray]
    assert isinstance(model.W_U, np.ndarray)


def test_tinymechs_own_calls_inside_see_numpy(models, torch_on, monkeypatch):
    """Analysis code calls the public entry points: inside a call they give numpy, not tensors."""
    model, _, _ = models
    seen = []

    def spying(fn):
        def spy(*args, **kwargs):
            seen.extend(type(a) for a in args if isinstance(a, (np.ndarray, torch.Tensor)))
            return fn(*args, **kwargs)
        return spy

    monkeypatch.setattr(tinymech.model, "token_losses", spying(tinymech.model.token_losses))
    monkeypatch.setattr(tinymech.cache, "final_norm", spying(tinymech.cache.final_norm))
    monkeypatch.setattr(tm.Model, "_core_forward", spying(tm.Model._core_forward))
    tokens = _tokens(2, 6, seed=4)
    model(tokens, return_type="loss")
    _, cache = model.run_with_cache(tokens)
    cache.accumulated_resid(apply_ln=True)
    analysis.logit_attribution(model, tokens, 5)
    patching.get_act_patch_attn_out(model, tokens, cache, lambda logits: logits[:, -1, 2].mean())
    assert seen and set(seen) == {np.ndarray}


def _scale_mlp_out(act, hook):
    return act * 2


def test_a_model_with_a_hook_added_under_torch_pickles(models, torch_on):
    _, _, path = models
    model = tm.load(path)
    model.add_hook("blocks.0.hook_mlp_out", _scale_mlp_out)
    tokens = _tokens(1, 4)
    again = pickle.loads(pickle.dumps(model))
    assert _err(again(tokens), model(tokens).detach()) == 0
    model.reset_hooks()
    assert _err(again(tokens), model(tokens)) > 1e-4


def test_an_sae_refuses_what_numpy_cannot_read_by_name():
    # a bfloat16 tensor, one requiring grad (with the array switch off) or a ragged list raised
    # torch's or numpy's own errors
    import torch

    model = tm.load()
    sae = tm.SAE.load(f"{model.path}/saes/blocks.2.hook_resid_pre")
    d = sae.cfg.d_in
    for bad in (torch.zeros(2, d, dtype=torch.bfloat16), torch.zeros(2, d, requires_grad=True),
                [[0.0] * d, [0.0] * (d - 1)]):
        for call in (sae.encode, sae.forward):
            with pytest.raises(tm.SAEInputError, match="cannot be read as an array"):
                call(bad)


@pytest.mark.parametrize("value,want", [(torch.tensor(3), 3), (torch.tensor(-2, dtype=torch.int8), -2)])
def test_whole_numbers_include_0d_integer_tensors(value, want):
    # regression: TransformerLens takes get_act_name("pattern", torch.tensor(1)); a 0-d tensor was refused
    from tinymech.errors import whole_number

    assert whole_number(value, "x") == want
    assert tm.utils.get_act_name("pattern", torch.tensor(1)) == "blocks.1.attn.hook_pattern"


@pytest.mark.parametrize("value", [torch.tensor(True), torch.tensor(1.5), torch.ones(2, requires_grad=True)])
def test_tensors_that_are_not_whole_numbers_or_arrays_are_refused_by_name(value):
    from tinymech.errors import InvalidInputError, SAEInputError, array_of, whole_number

    with pytest.raises(InvalidInputError, match="x must be a whole number"):
        whole_number(value, "x")
    if value.requires_grad:
        with pytest.raises(SAEInputError, match="acts cannot be read as an array"):
            array_of(value, "acts", SAEInputError)
