"""GGUF files (llama.cpp, ollama) as Hugging Face Llama checkpoints.

A GGUF file holds metadata (architecture sizes, the tokenizer's vocabulary
and merges, a chat template) and tensors, often quantized. read_gguf turns
one into what a Hugging Face directory would hold: a config.json dict,
float32 tensors under HF names (dequantized, with llama.cpp's rotary row
permutation of q and k undone) and a `tokenizers` tokenizer. The container
is parsed by gguf_format; the `gguf` package (pip install gguf) dequantizes
block-quantized tensors, imported only when a file holds some.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .. import _core
from ..errors import ModelLoadError, TinymechError, UnsupportedArchitectureError
from ..io.gguf_format import GgufArray, GgufFile, GgufTensor, import_gguf, read_gguf_file
from ..io.tokenizer import call_tokenizers
from ..text import printable
from .families import config_from_hf

SUPPORTED_GGUF_ARCHITECTURES = ("llama",)

# GGUF tensor name (per block after "blk.N.") -> HF LlamaForCausalLM name
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# tokenizer.ggml.pre -> the pre-tokenizer of the original tokenizer.json
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SUPPORTED_PRE_TOKENIZERS = ("default", "gpt2", "smollm", "llama-bpe")


@dataclasses.dataclass
class GgufCheckpoint:
    hf_config: dict  # as a config.json would hold it
    tensors: dict  # HF name -> float32 array
    tokenizer: object  # tokenizers.Tokenizer
    bos_token_id: int | None
    eos_token_id: int | None


class _Metadata:
    def __init__(self, metadata: dict, path: Path):
        self._values = metadata
        self._path = path

    def get(self, key, default=None):
        return self._values.get(key, default)

    def need(self, key):
        value = self.get(key)
        if value is None:
            raise ModelLoadError(f"{self._path} lacks the GGUF metadata entry {key!r}")
        return value

    def strings(self, key, required: bool = True) -> list[str]:
        """An array of strings (the vocabulary, the merges): a list of str, as the reader makes one."""
        value = self.need(key) if required else self.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            kind = repr(value) if isinstance(value, GgufArray) else type(value).__name__
            raise ModelLoadError(f"{self._path}: the GGUF metadata entry {key!r} must be an array of strings, "
                                 f"not {printable(kind, keep='')[:80]}")
        return value


def read_gguf(path: str | Path) -> GgufCheckpoint:
    path = Path(path)
    file = read_gguf_file(path)
    try:
        return _checkpoint(file, path)
    except TinymechError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, OverflowError) as e:
        # metadata of the wrong type, or sizes that disagree with the tensors
        raise ModelLoadError(f"{path} has malformed or inconsistent metadata: {e}") from e


def _checkpoint(file: GgufFile, path: Path) -> GgufCheckpoint:
    meta = _Metadata(file.metadata, path)
    arch = meta.need("general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"GGUF architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)}"
        )
    tokenizer, bos, eos, n_tokens = _tokenizer(meta, path)
    hf_config = _hf_config(meta, arch, n_tokens, bos, eos)
    cfg = config_from_hf(hf_config, source=f"{path}'s metadata")  # every size checked before use
    rotated = meta.get(f"{arch}.rope.dimension_count")
    if rotated is not None and rotated != cfg.d_head:  # llama.cpp refuses these too ("invalid n_rot")
        raise UnsupportedArchitectureError(
            f"{path} rotates {printable(repr(rotated))} dimensions of each {cfg.d_head}-wide head "
            "(rope.dimension_count); a partly rotated head is not supported"
        )
    n_heads, n_kv = cfg.n_heads, cfg.n_key_value_heads
    tensors = {}
    for t in file.tensors:
        name = _hf_name(t.name, path)
        if name is None:
            continue
        w = _dequantize(t, path)
        # llama.cpp interleaves each head's two rotary halves; HF keeps them apart
        # (llama.cpp's converter permutes a bias's rows as well as the weight's)
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            w = _unpermute(w, n_heads)
        elif name.endswith(("k_proj.weight", "k_proj.bias")):
            w = _unpermute(w, n_kv)
        tensors[name] = w
    hf_config["tie_word_embeddings"] = "lm_head.weight" not in tensors
    return GgufCheckpoint(hf_config, tensors, tokenizer, cfg.bos_token_id, cfg.eos_token_id)


def _hf_name(gguf_name: str, path: Path) -> str | None:
    base, _, kind = gguf_name.rpartition(".")
    if base == "rope_freqs":
        raise UnsupportedArchitectureError(
            f"{path} stores per-frequency RoPE factors (rope_freqs), which tinymech does not read yet"
        )
    if base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{kind}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{kind}"
    raise ModelLoadError(f"{path} holds a tensor {gguf_name!r} that a llama model does not have")


def _dequantize(tensor: GgufTensor, path: Path) -> np.ndarray:
    """float32 [shape] of a tensor's bytes: the types of the core's table (F32, F16, BF16,
    Q4_0, ...: _core.quant_block) in the core, other block-quantized types by the gguf package."""
    if tensor.data.size == 0:
        w = np.zeros(tensor.shape, np.float32)
    elif tensor.type == 0:  # F32 needs no conversion: a view of the bytes, no copy
        w = tensor.data.view("<f4")
    elif _core.quant_block(tensor.type)[0]:
        w = _core.dequantize(tensor.data, tensor.type)
    else:
        gguf = import_gguf()
        qtype = gguf.GGMLQuantizationType(tensor.type)
        try:
            w = gguf.quants.dequantize(tensor.data.reshape(_rows(tensor), -1), qtype)
        except (NotImplementedError, KeyError, ValueError) as e:
            raise ModelLoadError(
                f"tensor {tensor.name!r} in {path} has type {qtype.name}, which the installed gguf package "
                f"cannot dequantize ({e})"
            ) from e
    return np.ascontiguousarray(w, dtype=np.float32).reshape(tensor.shape)


def _rows(tensor: GgufTensor) -> int:
    return int(np.prod(tensor.shape[:-1], dtype=np.int64)) if len(tensor.shape) > 1 else 1


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_config(meta: _Metadata, arch: str, n_tokens: int, bos, eos) -> dict:
    """The config.json of the metadata, its values as the file holds them (config_from_hf checks them)."""
    def key(name):
        return f"{arch}.{name}"

    n_heads = meta.need(key("attention.head_count"))
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": meta.need(key("embedding_length")),
        "intermediate_size": meta.need(key("feed_forward_length")),
        "num_hidden_layers": meta.need(key("block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": meta.get(key("attention.head_count_kv"), n_heads),
        "head_dim": meta.get(key("attention.key_length")),  # None: hidden_size / heads
        "max_position_embeddings": meta.need(key("context_length")),
        "rms_norm_eps": meta.get(key("attention.layer_norm_rms_epsilon"), 1e-5),
        "vocab_size": meta.get(key("vocab_size"), n_tokens),
        "hidden_act": "silu",
        "rope_theta": meta.get(key("rope.freq_base"), 10000.0),
        "bos_token_id": bos,
        "eos_token_id": eos,
    }
    # as llama.cpp reads them: no type is linear, the factor may sit under the older key, and 0 is none
    scaling = meta.get(key("rope.scaling.type"), "linear")
    factor = meta.get(key("rope.scaling.factor"), meta.get(key("rope.scale_linear")))
    if scaling not in ("linear", "none"):
        raise UnsupportedArchitectureError(f"GGUF RoPE scaling {printable(repr(scaling))} is not supported")
    if factor not in (None, 0, 1):
        if scaling == "none":
            raise ModelLoadError(f"GGUF RoPE scaling 'none' with a factor of {printable(repr(factor))} contradicts itself")
        config["rope_scaling"] = {"rope_type": "linear", "factor": factor}
    template = meta.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    return config


def _tokenizer(meta: _Metadata, path: Path):
    """A byte-level BPE tokenizer from the GGUF's vocabulary and merges."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedArchitectureError(
            f"{path} has a {kind!r} tokenizer; tinymech builds only byte-level BPE ('gpt2') tokenizers from GGUF"
        )
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in SUPPORTED_PRE_TOKENIZERS:
        raise UnsupportedArchitectureError(
            f"{path} uses the pre-tokenizer {pre!r}; supported: {', '.join(SUPPORTED_PRE_TOKENIZERS)}"
        )
    tokens = meta.strings("tokenizer.ggml.tokens")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges = _merges(meta.strings("tokenizer.ggml.merges", required=False), vocab, path)
    bpe = call_tokenizers(f"{path} holds a vocabulary and merges that make no tokenizer",
                          lambda: models.BPE(vocab, merges, fuse_unk=False))
    tok = tokenizers.Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre != "llama-bpe")
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre == "llama-bpe":
        split = pre_tokenizers.Split(tokenizers.Regex(_LLAMA3_SPLIT), behavior="isolated")
        tok.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    # control tokens (type 3) are matched whole in text, as special tokens; the types are
    # numbers (a GgufArray: Python numbers one at a time), one per token
    types = meta.get("tokenizer.ggml.token_type") or []
    if len(types) not in (0, len(tokens)):
        raise ModelLoadError(f"{path} has {len(types)} token types (tokenizer.ggml.token_type) for {len(tokens)} "
                             "tokens")
    special = [tokens[i] for i, t in enumerate(types) if t == 3]
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in special])
    return tok, meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id"), len(tokens)


def _merges(merges: list, vocab: dict, path: Path) -> list[tuple[str, str]]:
    """"a b" merges as pairs, each of two tokens merging into a third: the
    tokenizers library panics on a merge whose result is not a token."""
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    for pair in pairs:
        if len(pair) != 2 or not all(t in vocab for t in (*pair, "".join(pair))):
            raise ModelLoadError(f"{path} holds merges that make no tokenizer: {' '.join(pair)!r} is not "
                                 "a merge of two tokens of its vocabulary into a third")
    return pairs


def convert_gguf(path: str | Path, out_dir: str | Path) -> Path:
    """Write a GGUF as a Hugging Face directory (config.json, float32
    model.safetensors, tokenizer.json), which then loads memory-mapped.
    Written beside out_dir and renamed into place, so a crash leaves no
    half-written model."""
    import json
    import os
    import shutil
    import tempfile

    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    ck = read_gguf(path)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(ck.hf_config, indent=2), encoding="utf-8")
        save_file(ck.tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "source": Path(path).name})
        ck.tokenizer.save(str(tmp / "tokenizer.json"))
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if (out_dir / "model.safetensors").is_file():  # another process converted it meanwhile
            return out_dir
        raise
    return out_dir


def converted(path: Path, cache: Path) -> Path:
    """A GGUF converted once into a folder under cache (named by the file and its size), which
    later loads memory-map instead of dequantizing again."""
    target = cache / f"{path.stem}-{path.stat().st_size}"
    if not (target / "model.safetensors").is_file():
        convert_gguf(path, target)
    return target
