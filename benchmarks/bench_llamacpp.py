"""tinymech vs llama.cpp (llama-bench) on the same random GPT-2-small-shaped
weights, written as an fp32 GGUF laid out as llama.cpp's convert_hf_to_gguf
writes GPT-2. Optional: needs `llama-bench` on PATH and the gguf package.

    python benchmarks/bench_llamacpp.py [--threads N] [--layers 12] [--repeats 3]

llamacpp_rows(hf, model, threads, ...) returns the measurements as report
rows; it raises report.Skipped("not installed") without llama-bench.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from report import Skipped, find, row
from timing import bench_parser, best_measured, random_tokens, tinymech_decode_seconds


def _byte_tokens() -> list:
    """GPT-2's byte-level alphabet: the printable character standing for each byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_gpt2_gguf(path, hf) -> Path:
    """An fp32 GGUF (architecture "gpt2") of a transformers GPT2LMHeadModel,
    with a stand-in byte-level vocabulary (the weights are random anyway):
    the 256 byte tokens, one merge, fillers, and <|endoftext|> last."""
    try:
        import gguf
    except ImportError:
        raise Skipped("the gguf package is needed to write the model as GGUF (pip install gguf)") from None

    cfg = hf.config
    vocab = cfg.vocab_size
    if vocab < 258:
        raise ValueError("the stand-in vocabulary needs at least 258 tokens")
    sd = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_name("tinymech benchmark gpt2")
    w.add_context_length(cfg.n_positions)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(cfg.n_inner or 4 * cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens = _byte_tokens() + ["Ġt"]
    tokens += [f"<|unused{i}|>" for i in range(vocab - 1 - len(tokens))] + ["<|endoftext|>"]
    types = [gguf.TokenType.NORMAL] * (vocab - 1) + [gguf.TokenType.CONTROL]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(vocab - 1)
    w.add_eos_token_id(vocab - 1)

    def put(name, array, transpose=False):  # HF's Conv1D stores [in, out]; GGUF wants [out, in]
        w.add_tensor(name, np.ascontiguousarray(array.T if transpose else array, dtype=np.float32))

    put("token_embd.weight", sd["transformer.wte.weight"])
    put("position_embd.weight", sd["transformer.wpe.weight"])
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}."
        for hf_name, name, transpose in (("ln_1", "attn_norm", False), ("attn.c_attn", "attn_qkv", True),
                                         ("attn.c_proj", "attn_output", True), ("ln_2", "ffn_norm", False),
                                         ("mlp.c_fc", "ffn_up", True), ("mlp.c_proj", "ffn_down", True)):
            put(f"blk.{i}.{name}.weight", sd[h + hf_name + ".weight"], transpose)
            put(f"blk.{i}.{name}.bias", sd[h + hf_name + ".bias"])
    put("output_norm.weight", sd["transformer.ln_f.weight"])
    put("output_norm.bias", sd["transformer.ln_f.bias"])
    if not cfg.tie_word_embeddings:  # tied (GPT-2's own): llama.cpp reuses token_embd, as convert_hf_to_gguf leaves it
        put("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def llama_bench(gguf_path, threads: int, repeats: int = 3, prompt: int = 512, gen: int = 32,
                depth: int = 128) -> dict:
    """llama-bench's best tok/s of `repeats` runs (after its warm-up), as
    timing.py takes tinymech's: {"prefill": pp<prompt> from an empty context,
    "decode": tg<gen> after `depth` tokens in the KV cache}."""
    exe = shutil.which("llama-bench")
    if exe is None:
        raise Skipped("not installed")

    def best(p, n, d):  # one test: llama-bench skips the pp (tg) test when -p (-n) is 0
        out = subprocess.run([exe, "-m", str(gguf_path), "-p", str(p), "-n", str(n), "-d", str(d),
                              "-t", str(threads), "-r", str(max(1, repeats)), "-o", "json"],
                             capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"llama-bench failed ({out.returncode}):\n{out.stderr[-2000:]}")
        (test,) = json.loads(out.stdout)
        return max(float(ts) for ts in test["samples_ts"])

    return {"prefill": best(prompt, 0, 0), "decode": best(0, gen, depth)}


def tinymech_prefill_last_seconds(model, n: int, repeats: int = 3) -> float:
    """Best seconds of a tinymech forward of n random tokens into an empty KV
    cache, logits of the last position only: what llama-bench's pp times."""
    tokens = random_tokens(model.cfg.d_vocab, n, seed=n)

    def measure():
        cache = model.new_cache()
        t0 = time.perf_counter()
        model.forward(tokens, cache=cache, logits="last")
        return time.perf_counter() - t0

    return best_measured(measure, repeats)


def llamacpp_rows(hf, model, threads: int, *, repeats: int = 3, prompt: int = 512, gen: int = 32,
                  forward_rows=None) -> list:
    """Prefill `prompt` tokens and decode `gen` tokens, tinymech vs llama-bench
    on hf's weights as an fp32 GGUF; ratio tinymech / llama.cpp. tinymech's
    decode comes from bench_forward's rows when given (same run); its prefill
    is timed here, as llama-bench's is, with the last position's logits only."""
    if shutil.which("llama-bench") is None:
        raise Skipped("not installed")
    decode = find(forward_rows, "decode")
    depth = decode["prompt"] if decode else 128
    with tempfile.TemporaryDirectory() as tmp:
        ref = llama_bench(write_gpt2_gguf(Path(tmp) / "model.gguf", hf), threads, repeats, prompt, gen, depth)
    ours_prefill = prompt / tinymech_prefill_last_seconds(model, prompt, repeats)
    if decode:
        ours_decode = decode["tinymech"]
    else:
        ctx = random_tokens(model.cfg.d_vocab, depth, seed=1)
        ours_decode = gen / best_measured(lambda: tinymech_decode_seconds(model, ctx, gen), repeats)
    return [row("llamacpp-prefill", f"prefill {prompt} tokens vs llama.cpp", ours_prefill, ref["prefill"], "tok/s",
                ours_prefill / ref["prefill"], ref_name="llama.cpp", note="last position's logits, as llama-bench pp"),
            row("llamacpp-decode", f"decode after {depth} tokens vs llama.cpp", ours_decode, ref["decode"],
                "tok/s", ours_decode / ref["decode"], ref_name="llama.cpp", note=f"llama-bench tg{gen} -d {depth}")]


def main():
    parser = bench_parser(__doc__.splitlines()[0])
    args = parser.parse_args()

    import tinymech as tm
    from gpt2_small import gpt2_small
    from report import format_table

    if shutil.which("llama-bench") is None:
        print("llama.cpp: not installed")
        return
    tm.set_num_threads(args.threads)
    with gpt2_small(args.layers) as (_, hf, model):
        rows = llamacpp_rows(hf, model, args.threads, repeats=args.repeats)
    print(f"gpt2-small shape ({args.layers} layers), {args.threads} threads, kernels {tm._core.kernels.variant()}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
