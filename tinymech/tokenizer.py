"""Text <-> token ids through the `tokenizers` library, TransformerLens-style."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InvalidTokensError, ModelLoadError


class Tokenizer:
    def __init__(self, backend, bos_token_id: int | None, eos_token_id: int | None):
        self.backend = backend
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id

    @classmethod
    def from_dir(cls, model_dir: Path, bos_token_id, eos_token_id) -> Tokenizer | None:
        """tokenizer.json, else vocab.json + merges.txt (byte-level BPE), else None."""
        import tokenizers

        try:
            if (model_dir / "tokenizer.json").is_file():
                backend = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            elif (model_dir / "vocab.json").is_file() and (model_dir / "merges.txt").is_file():
                backend = tokenizers.ByteLevelBPETokenizer(
                    str(model_dir / "vocab.json"), str(model_dir / "merges.txt")
                )
            else:
                return None
        except Exception as e:  # the library raises plain Exception on bad files
            raise ModelLoadError(f"cannot read the tokenizer in {model_dir}: {e}") from e
        if bos_token_id is None:
            bos_token_id = backend.token_to_id("<|endoftext|>")
        if eos_token_id is None:
            eos_token_id = bos_token_id
        return cls(backend, bos_token_id, eos_token_id)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"expected a string, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def decode_each(self, ids) -> list[str]:
        """One string per token (partial UTF-8 bytes show as U+FFFD, as in TransformerLens)."""
        return self.backend.decode_batch([[int(i)] for i in ids], skip_special_tokens=False)

    def to_tokens(self, text: str | list[str], prepend_bos: bool = True) -> np.ndarray:
        texts = [text] if isinstance(text, str) else list(text)
        rows = [self.encode(t) for t in texts]
        if prepend_bos:
            if self.bos_token_id is None:
                raise InvalidTokensError("this tokenizer has no BOS token; use prepend_bos=False")
            rows = [[self.bos_token_id] + r for r in rows]
        lengths = {len(r) for r in rows}
        if len(lengths) > 1:
            raise InvalidTokensError(
                f"the texts tokenize to different lengths {sorted(lengths)}; tinymech runs batches "
                "of equal length, so pass them one at a time"
            )
        return np.array(rows, dtype=np.int64).reshape(len(rows), -1)
