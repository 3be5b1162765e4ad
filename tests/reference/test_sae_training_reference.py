"""tinymech's Trainer against SAELens 6.54's training step: the same initial weights,
batches and dead latents in SAELens's TrainingSAE (training_forward_pass, backward,
clip_grad_norm_(1.0), torch.optim.Adam, as SAETrainer._train_step runs them) and in
Trainer; the loss parts and the parameters after each of 3 steps must agree.

SAELens has no training classes for transcoders: there, its SAE classes are given a
[d_sae, d_out] decoder, the MSE and AuxK targets y, and the W_skip term."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model_factory import rel_err
from tinymech.sae.trainer import Trainer

TOL = 1e-4
LR = 3e-3
COEFFICIENT = {"standard": ("l1", 0.3), "jumprelu": ("l0", 0.2)}


def lens_training_sae(arch, d_in, d_sae, k, **cfg):
    from sae_lens.saes import batchtopk_sae, jumprelu_sae, standard_sae, topk_sae

    classes = {
        "topk": (topk_sae.TopKTrainingSAE, topk_sae.TopKTrainingSAEConfig),
        "batchtopk": (batchtopk_sae.BatchTopKTrainingSAE, batchtopk_sae.BatchTopKTrainingSAEConfig),
        "jumprelu": (jumprelu_sae.JumpReLUTrainingSAE, jumprelu_sae.JumpReLUTrainingSAEConfig),
        "standard": (standard_sae.StandardTrainingSAE, standard_sae.StandardTrainingSAEConfig),
    }
    cls, cfg_cls = classes[arch]
    if k is not None:
        cfg["k"] = k
    return cls(cfg_cls(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu", **cfg))


class LensRun:
    """SAELens's model and SAETrainer's step, with its dead-latent counter (in steps)."""

    def __init__(self, arch, d_in, d_sae, d_out, k, skip, params, window, since, **cfg):
        transcoder = d_out is not None
        if transcoder:
            cfg["apply_b_dec_to_input"] = False
        self.sae = sae = lens_training_sae(arch, d_in, d_sae, k, **cfg)
        self.arch, self.window = arch, window
        self.since = torch.tensor(since, dtype=torch.float32)
        if transcoder:  # SAELens's decoder shapes for d_out, and y as the target
            sae.W_dec = torch.nn.Parameter(torch.zeros(d_sae, d_out))
            sae.b_dec = torch.nn.Parameter(torch.zeros(d_out))
            sae.process_sae_in = lambda x: x  # as SAELens's Transcoder: no b_dec on the input
            sae.mse_loss_fn = lambda preds, _target: F.mse_loss(preds, self.y, reduction="none")
            if arch in ("topk", "batchtopk"):
                aux = sae.calculate_topk_aux_loss
                sae.calculate_topk_aux_loss = lambda sae_in, **kw: aux(sae_in=self.y, **kw)
        self.W_skip = torch.nn.Parameter(torch.zeros(d_out, d_in)) if skip else None
        if skip:
            decode = sae.decode
            sae.decode = lambda acts: decode(acts) + self.x @ self.W_skip.T
        with torch.no_grad():
            for name, value in params.items():
                target = self.W_skip if name == "W_skip" else getattr(sae, name)
                target.copy_(torch.from_numpy(np.asarray(value)))
        self.params = list(sae.parameters()) + ([self.W_skip] if skip else [])
        self.opt = torch.optim.Adam(self.params, lr=LR, betas=(0.9, 0.999))

    def step(self, x, y, n_step):
        from sae_lens.saes.sae import TrainStepInput

        self.x = torch.from_numpy(x)
        self.y = torch.from_numpy(y if y is not None else x)
        coeffs = dict([COEFFICIENT[self.arch]]) if self.arch in COEFFICIENT else {}
        dead = self.since > self.window
        out = self.sae.training_forward_pass(TrainStepInput(
            sae_in=self.x, coefficients=coeffs, dead_neuron_mask=dead, n_training_steps=n_step, is_logging_step=False))
        with torch.no_grad():
            self.since += 1
            self.since[out.feature_acts.bool().sum(-2).bool()] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad()
        return {name: float(v) for name, v in out.losses.items()}, float(out.loss)

    def param(self, name):
        if name == "W_skip":
            return self.W_skip.detach().numpy()
        value = getattr(self.sae, name)
        return value.detach().numpy()


CASES = [
    ("topk", {"k": 5}),
    ("topk", {"k": 5, "rescale_acts_by_decoder_norm": False}),
    ("batchtopk", {"k": 4}),
    ("jumprelu", {}),
    ("standard", {}),
    ("standard", {"apply_b_dec_to_input": False}),
    ("topk", {"k": 6, "d_out": 29}),                # a transcoder
    ("standard", {"d_out": 29, "skip": True}),      # a skip transcoder
    ("jumprelu", {"d_out": 29, "skip": True}),
    ("batchtopk", {"k": 3, "d_out": 29, "skip": True}),
]


@pytest.mark.parametrize("arch,opts", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("n", [33, 1])  # 33: ReLU and JumpReLU past 1/8 active take the dense (GEMM) path
def test_three_steps_match_saelens(arch, opts, n):
    d_in, d_sae, window = 37, 130, 2
    opts = dict(opts)
    k, d_out, skip = opts.pop("k", None), opts.pop("d_out", None), opts.pop("skip", False)
    ours = Trainer(arch, d_in, d_sae, d_out=d_out, skip=skip, k=k, seed=3, dead_tokens=window * n, **opts)
    rng = np.random.default_rng(0)
    # biases and W_skip away from their zero init, so every term of the step matters
    params = {name: v for name, v in ours.params.items() if name != "topk_threshold"}
    for name in ("b_dec", "b_enc") + (("W_skip",) if skip else ()):
        params[name] = (rng.normal(size=params[name].shape) * 0.1).astype(np.float32)
    ours.set_params(**params)
    since = rng.integers(0, 5, size=d_sae)  # about half the latents dead
    ours.tokens_since_fired = since * n
    lens = LensRun(arch, d_in, d_sae, d_out, k, skip, params, window, since, **opts)
    coefficient = COEFFICIENT.get(arch, (None, 0.0))[1]
    for s in range(3):
        x = rng.normal(size=(n, d_in)).astype(np.float32)
        y = rng.normal(size=(n, d_out)).astype(np.float32) if d_out else None
        stats = ours.step(x, y, lr=LR, coefficient=coefficient)
        losses, loss = lens.step(x, y, s)
        assert stats["mse"] == pytest.approx(losses["mse_loss"], rel=1e-5)
        assert stats["loss"] == pytest.approx(loss, rel=1e-5)
        aux = losses.get("auxiliary_reconstruction_loss", 0.0)
        assert stats["aux_loss"] == pytest.approx(aux, rel=1e-5, abs=1e-6)
        sparsity = losses.get("l1_loss", losses.get("l0_loss", 0.0))
        assert stats["sparsity_loss"] == pytest.approx(sparsity, rel=1e-5, abs=1e-6)
        for name, value in ours.params.items():
            if name == "topk_threshold":
                assert float(value) == pytest.approx(float(lens.sae.topk_threshold), rel=1e-5, abs=1e-7)
            else:
                assert rel_err(value, lens.param(name)) <= TOL, (s, name)
        assert (ours.tokens_since_fired == lens.since.numpy().astype(np.int64) * n).all()


@pytest.mark.parametrize("arch,k", [("topk", 5), ("batchtopk", 4), ("jumprelu", None), ("standard", None)])
def test_saved_weights_match_saelens(arch, k):
    """sae_weights() folds what SAELens's save_inference_model folds."""
    ours = Trainer(arch, 37, 130, k=k, seed=5)
    rng = np.random.default_rng(1)
    for _ in range(2):
        ours.step(rng.normal(size=(17, 37)).astype(np.float32), lr=LR, coefficient=0.1)
    lens = lens_training_sae(arch, 37, 130, k)
    with torch.no_grad():
        for name, value in ours.params.items():
            if name == "topk_threshold":
                lens.topk_threshold = torch.tensor(float(value), dtype=torch.double)
            else:
                getattr(lens, name).copy_(torch.from_numpy(value))
    state = {name: t.clone() for name, t in lens.state_dict().items()}
    lens.process_state_dict_for_saving_inference(state)
    got = ours.sae_weights()
    assert set(got) == set(state)
    for name, value in state.items():
        assert rel_err(got[name], value.numpy()) <= 1e-6, name
    assert ours.sae_config()["architecture"] == lens.cfg.get_inference_sae_cfg_dict()["architecture"]
