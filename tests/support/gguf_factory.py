"""Tiny GGUF files written from random-weight HF Llama models, laid out as
llama.cpp's converter writes them (q/k rows permuted for its rotary
kernels, tensors quantized), so GGUF loading can be checked against
transformers reading the same file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# HF suffix -> (GGUF name, quantization) for each block's tensors
BLOCK_TENSORS = {
    "input_layernorm.weight": ("attn_norm.weight", "F32"),
    "self_attn.q_proj.weight": ("attn_q.weight", "Q4_1"),
    "self_attn.k_proj.weight": ("attn_k.weight", "F16"),
    "self_attn.v_proj.weight": ("attn_v.weight", "Q4_0"),
    "self_attn.o_proj.weight": ("attn_output.weight", "BF16"),
    "post_attention_layernorm.weight": ("ffn_norm.weight", "F32"),
    "mlp.gate_proj.weight": ("ffn_gate.weight", "Q8_0"),
    "mlp.up_proj.weight": ("ffn_up.weight", "Q4_1"),
    "mlp.down_proj.weight": ("ffn_down.weight", "MXFP4"),  # dequantized by the gguf package, not the core
}


def _permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer_parts(tokenizer_json: Path, vocab_size: int):
    model = json.loads(Path(tokenizer_json).read_text())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    tokens += [f"<unused{i}>" for i in range(vocab_size - len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t.startswith("<") and t.endswith(">") else 1 for t in tokens]
    return tokens, merges, types


def write_gguf(path: Path, hf_model, tokenizer_json: Path, arch: str = "llama", tokenizer_model: str = "gpt2",
               quants: dict | None = None, metadata: dict | None = None, rope_dims: int | None = None):
    """quants: GGUF tensor name (a block's without "blk.N.") -> quantization, overriding
    BLOCK_TENSORS's and the embedding's and unembedding's; metadata: more entries
    (name -> a float, int or str); rope_dims: rope.dimension_count (default the head size).
    Attention biases, where the model has them, are written as float32."""
    import gguf

    cfg = hf_model.config
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in hf_model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.head_dim if rope_dims is None else rope_dims)
    for key, value in (metadata or {}).items():
        {float: w.add_float32, int: w.add_uint32, str: w.add_string}[type(value)](key, value)
    w.add_vocab_size(cfg.vocab_size)
    tokens, merges, types = _tokenizer_parts(tokenizer_json, cfg.vocab_size)
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")

    def put(name, arr, qtype):
        q = gguf.GGMLQuantizationType[qtype]
        if qtype == "F32":
            w.add_tensor(name, arr)
        elif qtype == "F16":
            w.add_tensor(name, arr.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, q), raw_dtype=q)

    quants = quants or {}
    put("token_embd.weight", sd["model.embed_tokens.weight"], quants.get("token_embd.weight", "Q8_0"))
    put("output_norm.weight", sd["model.norm.weight"], "F32")
    if not cfg.tie_word_embeddings:
        put("output.weight", sd["lm_head.weight"], quants.get("output.weight", "F16"))
    for i in range(cfg.num_hidden_layers):
        for hf_name, (gguf_name, qtype) in BLOCK_TENSORS.items():
            arr = sd[f"model.layers.{i}.{hf_name}"]
            if hf_name.startswith("self_attn.q_proj"):
                arr = _permute(arr, cfg.num_attention_heads)
            elif hf_name.startswith("self_attn.k_proj"):
                arr = _permute(arr, cfg.num_key_value_heads)
            put(f"blk.{i}.{gguf_name}", arr, quants.get(gguf_name, qtype))
        for proj, heads in (("q", cfg.num_attention_heads), ("k", cfg.num_key_value_heads), ("v", 0), ("o", 0)):
            bias = sd.get(f"model.layers.{i}.self_attn.{proj}_proj.bias")
            if bias is not None:  # permuted as the weight's rows are, as llama.cpp's converter does
                gguf_name = BLOCK_TENSORS[f"self_attn.{proj}_proj.weight"][0].replace(".weight", ".bias")
                put(f"blk.{i}.{gguf_name}", _permute(bias, heads) if heads else bias, "F32")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# row lengths (d_model, d_mlp) are multiples of 32, the quantization block
TINY_SHAPE = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                  num_hidden_layers=1, vocab_size=300, max_position_embeddings=32)


def make_tiny_gguf(directory: Path, **llama_shape) -> Path:
    """A random HF Llama of TINY_SHAPE (updated by llama_shape) in
    directory/hf, its byte-level BPE tokenizer, and the same written as
    directory/tiny.gguf (returned)."""
    from llama_factory import make_hf_llama
    from model_factory import save_tokenizer

    llama_shape = {**TINY_SHAPE, **llama_shape}
    hf = make_hf_llama(directory / "hf", **llama_shape)
    save_tokenizer(directory, llama_shape["vocab_size"])
    write_gguf(directory / "tiny.gguf", hf, directory / "tokenizer.json")
    return directory / "tiny.gguf"
