"""Train the demo model's byte-level BPE tokenizer (GPT-2 style) on the training split.

`<|endoftext|>` is token 0 and serves as BOS, EOS and padding. The byte-level
pre-tokenizer and decoder make encode/decode round trips exact for any text.
Writes tokenizer.json plus tokenizer_config.json / special_tokens_map.json so
that `transformers.AutoTokenizer.from_pretrained(dir)` loads it.

Usage: python training/train_tokenizer.py [--corpus training/.cache/corpus] [--out models/demo-gpt2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOT = "<|endoftext|>"
ROOT = Path(__file__).resolve().parent.parent


def build_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # GPT-2's regex split + byte-to-unicode mapping; no prefix space so decode(encode(x)) == x.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],  # first special token -> id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, so nothing is ever unknown
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def write_hf_configs(out: Path, vocab_size: int) -> None:
    """The small JSON files that transformers' PreTrainedTokenizerFast needs."""
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 256,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def check_round_trip(tok: Tokenizer, texts: list[str]) -> None:
    samples = [t[:2000] for t in texts[:50]] + ["  odd  spacing\t\n é ü 漢字 🙂 <|endoftext|>"]
    for text in samples:
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text, text[:80]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "training/.cache/corpus")
    parser.add_argument("--out", type=Path, default=ROOT / "models/demo-gpt2")
    parser.add_argument("--vocab-size", type=int, default=8192)
    args = parser.parse_args()

    texts = (args.corpus / "train.txt").read_text(encoding="utf-8").split(EOT)
    tok = build_tokenizer(texts, args.vocab_size)
    assert tok.token_to_id(EOT) == 0
    check_round_trip(tok, texts)

    args.out.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out / "tokenizer.json"))
    write_hf_configs(args.out, tok.get_vocab_size())
    n_tokens = sum(len(e.ids) for e in tok.encode_batch(texts))
    print(f"vocab {tok.get_vocab_size()}, train split = {n_tokens:,} tokens -> {args.out / 'tokenizer.json'}")


if __name__ == "__main__":
    main()
