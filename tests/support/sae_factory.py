"""SAEs made with SAELens's own classes (random weights, saved with its own
save_model) and a TransformerLens HookedSAETransformer on an HF model's
weights, for the SAE tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

ARCHS = ("standard", "jumprelu", "topk", "transcoder", "skip_transcoder", "jumprelu_transcoder", "gated",
         "abstopk", "matching_pursuit", "temporal")


def lens_sae(arch: str, d_in: int, d_sae: int, hook: str | None = None, hook_out: str | None = None,
             d_out: int | None = None, seed: int = 0, std: float = 0.3, **cfg):
    """A SAELens SAE of the architecture with random weights (and positive thresholds)."""
    import sae_lens
    import torch
    from sae_lens.saes.matching_pursuit_sae import MatchingPursuitSAE, MatchingPursuitSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.temporal_sae import TemporalSAE, TemporalSAEConfig

    classes = {
        "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
        "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig),
        "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
        "transcoder": (sae_lens.Transcoder, sae_lens.TranscoderConfig),
        "skip_transcoder": (sae_lens.SkipTranscoder, sae_lens.SkipTranscoderConfig),
        "jumprelu_transcoder": (sae_lens.JumpReLUTranscoder, sae_lens.JumpReLUTranscoderConfig),
        "gated": (sae_lens.GatedSAE, sae_lens.GatedSAEConfig),
        "abstopk": (sae_lens.AbsTopKSAE, sae_lens.AbsTopKSAEConfig),
        "matching_pursuit": (MatchingPursuitSAE, MatchingPursuitSAEConfig),
        "temporal": (TemporalSAE, TemporalSAEConfig),
    }
    cls, cfg_cls = classes[arch]
    meta = SAEMetadata(hook_name=hook, hook_name_out=hook_out, model_name="test", **cfg.pop("metadata", {}))
    if "transcoder" in arch:
        cfg.update(d_out=d_out or d_in, apply_b_dec_to_input=False)
    torch.manual_seed(seed)
    sae = cls(cfg_cls(d_in=d_in, d_sae=d_sae, metadata=meta, **cfg))
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.normal_(0.0, std)
            if name == "threshold":
                p.abs_()
    return sae.eval()


def save_lens(sae, path: Path) -> Path:
    sae.save_model(path)
    return path


def tl_model(hf):
    """A HookedSAETransformer holding the HF GPT-2 model's weights, unprocessed."""
    import torch
    from sae_lens import HookedSAETransformer
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    from tl_reference import NO_PROCESSING, tl_config

    cfg = tl_config(hf.config)
    model = HookedSAETransformer(cfg)
    with torch.no_grad():
        state = {k: v.detach().clone() for k, v in convert_gpt2_weights(hf, cfg).items()}
    model.load_and_process_state_dict(state, **NO_PROCESSING)
    return model.eval()


def lens_run(sae, x: np.ndarray):
    """SAELens's encode and forward of numpy activations."""
    import torch

    with torch.no_grad():
        t = torch.as_tensor(x)
        return sae.encode(t).numpy(), sae.forward(t).numpy()
