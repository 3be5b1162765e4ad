"""Random-weight checkpoints written with numpy alone (no torch), for the unit
tier: GPT-2 and Llama folders (config.json, model.safetensors) in the layout
transformers' save_pretrained writes, SAEs in SAELens's format, and a Hugging
Face cache holding a copy of either.
Weights are drawn as model_factory, llama_factory and sae_factory draw theirs
(wider than the usual init, so mistakes show), but from numpy's generator:
the values differ from theirs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

GPT2_DEFAULTS = dict(n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5, scale_attn_weights=True,
                     scale_attn_by_inverse_layer_idx=False, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
LLAMA_DEFAULTS = dict(hidden_act="silu", rms_norm_eps=1e-6, attention_bias=False, mlp_bias=False,
                      rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, tie_word_embeddings=False,
                      bos_token_id=0, eos_token_id=1)


def write_gpt2(path: Path, seed: int = 0, std: float = 0.1, **config) -> Path:
    """A GPT2LMHeadModel checkpoint of model_factory.SHAPES's fields (n_layer, n_embd, ...)."""
    cfg = dict(GPT2_DEFAULTS, model_type="gpt2", architectures=["GPT2LMHeadModel"], **config)
    D, V = cfg["n_embd"], cfg["vocab_size"]
    F = cfg["n_inner"] or 4 * D
    shapes = {"transformer.wte.weight": (V, D), "transformer.wpe.weight": (cfg["n_positions"], D),
              "transformer.ln_f.weight": (D,), "transformer.ln_f.bias": (D,)}
    for i in range(cfg["n_layer"]):
        h = f"transformer.h.{i}."
        shapes.update({h + "ln_1.weight": (D,), h + "ln_1.bias": (D,), h + "ln_2.weight": (D,), h + "ln_2.bias": (D,),
                       h + "attn.c_attn.weight": (D, 3 * D), h + "attn.c_attn.bias": (3 * D,),
                       h + "attn.c_proj.weight": (D, D), h + "attn.c_proj.bias": (D,),
                       h + "mlp.c_fc.weight": (D, F), h + "mlp.c_fc.bias": (F,),
                       h + "mlp.c_proj.weight": (F, D), h + "mlp.c_proj.bias": (D,)})
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (V, D)
    rng = np.random.default_rng(seed)
    tensors = {name: _norm(rng, shape) if ".ln_" in name and name.endswith(".weight") else _normal(rng, shape, std)
               for name, shape in shapes.items()}
    return _save(Path(path), cfg, tensors)


def write_llama(path: Path, seed: int = 0, std: float = 0.08, max_shard_bytes: int | None = None, **config) -> Path:
    """A LlamaForCausalLM checkpoint of llama_factory.LLAMA_SHAPES's fields; max_shard_bytes:
    split the weights into shards of about that size, with a model.safetensors.index.json."""
    cfg = dict(LLAMA_DEFAULTS, model_type="llama", architectures=["LlamaForCausalLM"], **config)
    D, V, F = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    d_head = cfg.setdefault("head_dim", D // cfg["num_attention_heads"])
    Da, Dkv = cfg["num_attention_heads"] * d_head, cfg["num_key_value_heads"] * d_head
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,)})
        for name, (rows, cols) in {"self_attn.q_proj": (Da, D), "self_attn.k_proj": (Dkv, D),
                                   "self_attn.v_proj": (Dkv, D), "self_attn.o_proj": (D, Da),
                                   "mlp.gate_proj": (F, D), "mlp.up_proj": (F, D), "mlp.down_proj": (D, F)}.items():
            shapes[p + name + ".weight"] = (rows, cols)
            if cfg["attention_bias" if name.startswith("self_attn") else "mlp_bias"]:
                shapes[p + name + ".bias"] = (rows,)
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (V, D)
    rng = np.random.default_rng(seed)
    tensors = {name: _norm(rng, shape) if name.endswith("norm.weight")
               else _normal(rng, shape, std if len(shape) > 1 else 0.3) for name, shape in shapes.items()}
    return _save(Path(path), cfg, tensors, max_shard_bytes)


def write_sae(path: Path, arch: str, d_in: int, d_sae: int, hook: str | None = None, hook_out: str | None = None,
              d_out: int | None = None, seed: int = 0, std: float = 0.3, **cfg) -> Path:
    """An SAE of sae_factory.ARCHS's architecture as SAELens 6's save_model writes it,
    with random weights (and positive thresholds); cfg: more of its config (k=, normalize_activations=)."""
    transcoder = "transcoder" in arch
    d_out = (d_out or d_in) if transcoder else d_in
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
    if "jumprelu" in arch:
        shapes["threshold"] = (d_sae,)
    if arch == "skip_transcoder":
        shapes["W_skip"] = (d_out, d_in)
    if arch == "gated":  # its b_enc is b_gate
        del shapes["b_enc"]
        shapes.update(b_gate=(d_sae,), r_mag=(d_sae,), b_mag=(d_sae,))
    if arch in ("matching_pursuit", "temporal"):  # tied: W_dec only, no encoder bias
        del shapes["b_enc"]
        if arch == "matching_pursuit" or cfg.get("tied_weights", True):
            del shapes["W_enc"]
    if arch == "temporal":  # its attention layers, as torch Linear modules
        width = d_sae // cfg.get("bottleneck_factor", 64)
        for i in range(cfg.get("n_attn_layers", 1)):
            for name, rows in (("k_ctx", width), ("q_target", width), ("v_ctx", d_sae), ("c_proj", d_sae)):
                shapes.update({f"attn_layers.{i}.{name}.weight": (rows, d_sae), f"attn_layers.{i}.{name}.bias": (rows,)})
    rng = np.random.default_rng(seed)
    weights = {name: _normal(rng, shape, std) for name, shape in shapes.items()}
    if "threshold" in weights:
        weights["threshold"] = np.abs(weights["threshold"])
    config = dict(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu", apply_b_dec_to_input=not transcoder,
                  normalize_activations="none", reshape_activations="none",
                  metadata=dict(hook_name=hook, hook_name_out=hook_out, model_name="test"), architecture=arch)
    if transcoder:
        config["d_out"] = d_out
    config.update(cfg)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps(config))
    return path


def fake_hub_cache(root: Path, repo_id: str, folder: str, src: Path) -> None:
    """A copy of src as `folder` of repo_id's snapshot in a Hugging Face cache at root (refs/main names it)."""
    repo = Path(root) / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(src, repo / "snapshots" / "abc123" / folder)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")


def _normal(rng, shape, std):
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _norm(rng, shape):
    """Norm scales away from 1, so a mistake in applying them shows."""
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)


def _save(path: Path, config: dict, tensors: dict, max_shard_bytes: int | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    shards = [{}]
    for name in sorted(tensors):
        if max_shard_bytes and shards[-1] and sum(t.nbytes for t in shards[-1].values()) + tensors[name].nbytes > max_shard_bytes:
            shards.append({})
        shards[-1][name] = tensors[name]
    if len(shards) == 1:
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        return path
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return path
