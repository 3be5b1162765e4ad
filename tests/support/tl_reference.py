"""TransformerLens references for tests and benchmarks: a HookedTransformer on
the same weights as a Hugging Face GPT2LMHeadModel (or LlamaForCausalLM), built
offline (config by hand, TransformerLens's own weight conversion), with or
without TransformerLens's weight processing."""
from __future__ import annotations

import numpy as np

# TransformerLens's from_pretrained defaults, also tm.load's keyword names
TL_PROCESSING = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)
NO_PROCESSING = {k: False for k in TL_PROCESSING}


def tl_config(hf_config):
    """The HookedTransformerConfig TransformerLens derives from a GPT-2 config."""
    from transformer_lens import HookedTransformerConfig

    d_model, n_heads = hf_config.n_embd, hf_config.n_head
    return HookedTransformerConfig(
        d_model=d_model,
        d_head=d_model // n_heads,
        n_heads=n_heads,
        d_mlp=hf_config.n_inner or 4 * d_model,
        n_layers=hf_config.n_layer,
        n_ctx=hf_config.n_positions,
        eps=hf_config.layer_norm_epsilon,
        d_vocab=hf_config.vocab_size,
        act_fn=hf_config.activation_function,
        use_attn_scale=getattr(hf_config, "scale_attn_weights", True),
        scale_attn_by_inverse_layer_idx=hf_config.scale_attn_by_inverse_layer_idx,
        normalization_type="LN",
        original_architecture="GPT2LMHeadModel",
        init_weights=False,  # every weight is loaded below
        device="cpu",
    )


def hooked_transformer(hf_model, use_attn_result: bool = True, **processing):
    """A HookedTransformer holding hf_model's weights, processed as the flags
    (TL_PROCESSING's keys) say: none by default, so activations equal Hugging
    Face's; hooked_transformer(hf, **TL_PROCESSING) is from_pretrained's default.
    use_attn_result exposes attn.hook_result."""
    import torch
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    cfg = tl_config(hf_model.config)
    cfg.use_attn_result = use_attn_result
    model = HookedTransformer(cfg)
    with torch.no_grad():
        state = {k: v.detach().clone() for k, v in convert_gpt2_weights(hf_model, cfg).items()}
    model.load_and_process_state_dict(state, **dict(NO_PROCESSING, **processing))
    return model.eval()


def demo_pair():
    """(tinymech Model, HookedTransformer): the bundled demo model in both libraries, each with its tokenizer."""
    import transformers

    import tinymech as tm
    from tinymech.io.sources import default_model_dir

    hf = transformers.GPT2LMHeadModel.from_pretrained(default_model_dir(), attn_implementation="eager").eval()
    reference = hooked_transformer(hf)
    reference.set_tokenizer(transformers.AutoTokenizer.from_pretrained(default_model_dir()))
    return tm.load(), reference


def tl_llama(hf_model, **processing):
    """A HookedTransformer holding a Hugging Face LlamaForCausalLM's weights (TransformerLens's
    own Llama conversion), processed as the flags (TL_PROCESSING's keys) say: none by default;
    attn.hook_result enabled."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    h = hf_model.config
    cfg = HookedTransformerConfig(
        d_model=h.hidden_size, d_head=h.head_dim, n_heads=h.num_attention_heads, d_mlp=h.intermediate_size,
        n_layers=h.num_hidden_layers, n_ctx=h.max_position_embeddings, eps=h.rms_norm_eps,
        d_vocab=h.vocab_size, act_fn="silu", n_key_value_heads=h.num_key_value_heads,
        normalization_type="RMS", positional_embedding_type="rotary", rotary_adjacent_pairs=False,
        rotary_dim=h.head_dim, rotary_base=h.rope_parameters["rope_theta"], final_rms=True, gated_mlp=True,
        original_architecture="LlamaForCausalLM", use_attn_result=True, init_weights=False, device="cpu",
    )
    model = HookedTransformer(cfg)
    with torch.no_grad():
        state = {k: v.detach().clone() for k, v in convert_llama_weights(hf_model, cfg).items()}
    model.load_and_process_state_dict(state, **dict(NO_PROCESSING, **processing))
    return model.eval()


def tl_run_with_cache(tl_model, tokens: np.ndarray, **kwargs):
    """TransformerLens's run_with_cache as numpy: (logits, {name: array})."""
    import torch

    with torch.no_grad():
        logits, cache = tl_model.run_with_cache(torch.as_tensor(np.asarray(tokens, dtype=np.int64)), **kwargs)
    return logits.numpy(), {k: v.numpy() for k, v in cache.items()}


def tl_run_with_hooks(tl_model, tokens: np.ndarray, fwd_hooks) -> np.ndarray:
    """TransformerLens's run_with_hooks logits as numpy."""
    import torch

    with torch.no_grad():
        return tl_model.run_with_hooks(
            torch.as_tensor(np.asarray(tokens, dtype=np.int64)), fwd_hooks=fwd_hooks
        ).numpy()


def act_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """Max difference relative to the reference's scale, over finite entries;
    infinite where shapes differ or infinities (masked scores) sit elsewhere."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    if ours.shape != ref.shape or not np.array_equal(np.isinf(ours), np.isinf(ref)):
        return float("inf")
    finite = np.isfinite(ref)
    if not np.array_equal(ours[~finite], ref[~finite]):
        return float("inf")
    scale = max(float(np.abs(ref[finite]).max(initial=0.0)), 1e-12)
    return float(np.abs(ours[finite] - ref[finite]).max(initial=0.0) / scale)


def as_tl_hook(fn):
    """A numpy hook function fn(activation, hook) -> array | None run as a
    TransformerLens hook, so both libraries run the very same edit."""
    import torch

    def tl_fn(activation, hook):
        arr = activation.detach().numpy().copy()
        out = fn(arr, hook=hook)
        return torch.from_numpy(np.ascontiguousarray(arr if out is None else out, dtype=np.float32))

    return tl_fn


def tl_greedy_cached(tl_model, prompt: np.ndarray, n_new: int, fwd_hooks=()) -> np.ndarray:
    """Greedy decoding with TransformerLens's KV cache and hooks: the prompt in
    one forward, then one token per forward. (HookedTransformer.generate in
    transformer-lens 3.9 gives later tokens wrong position embeddings when it
    has no tokenizer, so the loop is written out.)"""
    import torch
    from transformer_lens import TransformerLensKeyValueCache

    tokens = torch.as_tensor(np.asarray(prompt, dtype=np.int64))
    cache = TransformerLensKeyValueCache.init_cache(tl_model.cfg, tl_model.cfg.device, tokens.shape[0])
    new = tokens
    with torch.no_grad(), tl_model.hooks(fwd_hooks=list(fwd_hooks)):
        for _ in range(n_new):
            # no padding; TL needs the mask spelled out when it has no tokenizer
            logits = tl_model(new, past_kv_cache=cache, attention_mask=torch.ones_like(new))
            new = logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, new], dim=1)
    return tokens.numpy()
