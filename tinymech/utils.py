"""transformer_lens.utils's helpers that notebooks call, over numpy:
test_prompt, get_act_name, to_numpy, get_corner, composition_scores,
lm_cross_entropy_loss, get_attention_mask, remove_batch_dim, tokenize_and_concatenate.

    from tinymech import utils
    utils.test_prompt("Mr Darcy walked in. Mr", "Darcy", model)
"""
from __future__ import annotations

import numpy as np

from .errors import InvalidInputError, NoTokenizerError, array_of, check_model, whole_number
from .factored_matrix import composition_scores, get_corner
from .hooks import get_act_name
from .model_helpers import lm_cross_entropy_loss
from .ops import log_sum_exp, top_k
from .padding import mask_of_tokens

__all__ = ["composition_scores", "get_act_name", "get_attention_mask", "get_corner", "get_device", "lm_cross_entropy_loss",
           "remove_batch_dim", "test_prompt", "to_numpy", "tokenize_and_concatenate"]


def get_attention_mask(tokenizer, tokens, prepend_bos: bool, padding_side: str | None = None) -> np.ndarray:
    """transformer_lens.utils.get_attention_mask: [batch, pos] int64, 0 at the pad tokens that
    pad each row on padding_side (None: the tokenizer's), 1 elsewhere (see tinymech.padding)."""
    if not all(hasattr(tokenizer, name) for name in ("padding_side", "pad_token_id", "bos_token_id")):
        raise NoTokenizerError(f"get_attention_mask needs a tokenizer (its pad and BOS tokens), not "
                               f"{type(tokenizer).__name__}")
    try:
        tokens = np.asarray(tokens)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"tokens are [batch, pos] or [pos] token ids: {e}") from None
    side = tokenizer.padding_side if padding_side is None else padding_side
    if side not in ("left", "right"):
        raise InvalidInputError(f"padding_side must be 'left' or 'right', not {side!r}")
    if tokens.ndim not in (1, 2):
        raise InvalidInputError(f"tokens are [batch, pos] or [pos], not shape {list(tokens.shape)}")
    if not (np.issubdtype(tokens.dtype, np.integer) or tokens.size == 0):
        raise InvalidInputError(f"tokens must be integers (token ids), not dtype {tokens.dtype}")
    mask = mask_of_tokens(np.atleast_2d(tokens), tokenizer.pad_token_id, tokenizer.bos_token_id, prepend_bos, side)
    return mask.reshape(tokens.shape)


def tokenize_and_concatenate(dataset, tokenizer, streaming: bool = False, max_length: int = 1024,
                             column_name: str = "text", add_bos_token: bool = True, num_proc: int = 10,
                             set_format: bool = True) -> dict:
    """transformer_lens.utils.tokenize_and_concatenate(dataset, model.tokenizer, ...): {"tokens": rows
    [n, max_length]} (int64) of the texts, EOS between them, BOS first in each row when add_bos_token
    (tm.tokenize_and_concatenate's rows). dataset: strings, rows (dicts, a Hugging Face dataset)
    holding column_name, or a dict of columns (a dataset's ds[:n]). streaming, num_proc and
    set_format are TransformerLens's, for its calls: the rows are numpy's here."""
    from .corpus import _rows, texts_of

    if not all(hasattr(tokenizer, name) for name in ("encode", "bos_token_id", "eos_token_id")):
        raise NoTokenizerError(f"tokenize_and_concatenate needs a tokenizer (model.tokenizer), not "
                               f"{type(tokenizer).__name__}; tm.tokenize_and_concatenate(model, texts) takes the model")
    dataset = texts_of(dataset, column_name, "dataset", "strings, rows holding a text column or a dict of columns")
    texts = (row if isinstance(row, str) else _column(row, column_name) for row in dataset)
    max_length = whole_number(max_length, "max_length", 1 + bool(add_bos_token))
    if add_bos_token and tokenizer.bos_token_id is None:
        raise InvalidInputError("this tokenizer has no BOS token: pass add_bos_token=False")
    blocks = list(_rows(tokenizer, texts, max_length, add_bos_token))
    return {"tokens": np.concatenate(blocks) if blocks else np.zeros((0, max_length), np.int64)}


def _column(row, column_name: str) -> str:
    try:
        return row[column_name]
    except (KeyError, TypeError, IndexError):
        raise InvalidInputError(f"a dataset row has no {column_name!r} column (column_name names another)") from None


def get_device() -> str:
    """transformer_lens.utils.get_device: tinymech runs on the CPU."""
    return "cpu"


def to_numpy(x) -> np.ndarray:
    """A numpy array of an array, a list or tuple, a number or string, or a torch tensor
    (detached and copied to the CPU; bfloat16 becomes float32), as TransformerLens's."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (list, tuple, int, float, bool, str)):
        return array_of(x, "to_numpy's argument")  # a ragged list: tinymech's error, not numpy's
    if type(x).__module__.split(".")[0] == "torch":  # without importing torch
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    raise InvalidInputError(f"to_numpy takes an array, a list, a number or a torch tensor, not {type(x).__name__}")


def remove_batch_dim(x: np.ndarray) -> np.ndarray:
    """x without its first axis when that axis has length 1, else x."""
    x = np.asarray(x)
    return x[0] if x.ndim and x.shape[0] == 1 else x


def test_prompt(prompt: str, answer: str | list[str], model, prepend_space_to_answer: bool = True,
                print_details: bool = True, prepend_bos: bool | None = None, top_k: int = 10) -> None:
    """Prints how the model ranks the answer's tokens after the prompt, and its top_k
    predictions there, as transformer_lens.utils.test_prompt (plain text, no rich
    markup). Several answers: each one's first token, as alternatives."""
    check_model(model, hint=" (utils.test_prompt(prompt, answer, model))")
    answers = [answer] if isinstance(answer, str) else list(answer) if isinstance(answer, (list, tuple)) else []
    if not answers or not all(isinstance(a, str) for a in answers):
        raise InvalidInputError(f"answer must be a string or a non-empty list of strings, not {answer!r}")
    if not isinstance(prompt, str):
        raise InvalidInputError(f"prompt must be a string, not {type(prompt).__name__}")
    top_k = whole_number(top_k, "top_k", 0)
    several = len(answers) > 1
    if prepend_space_to_answer:
        answers = [a if a.startswith(" ") else " " + a for a in answers]
    bos = model._bos(prepend_bos)
    prompt_tokens = model.to_tokens(prompt, prepend_bos=bos)[0]
    answer_rows = [model.to_tokens(a, prepend_bos=False)[0] for a in answers]
    if any(len(row) == 0 for row in answer_rows):
        raise InvalidInputError("an answer must be at least one token")
    n_answer = 1 if several else len(answer_rows[0])
    tokens = np.stack([np.concatenate([prompt_tokens, row[:n_answer]]) for row in answer_rows])
    answer_strs = [model.to_str_tokens(row) for row in answer_rows]
    if print_details:
        print("Tokenized prompt:", model.to_str_tokens(prompt_tokens))
        print("Tokenized answers:" if several else "Tokenized answer:", answer_strs if several else answer_strs[0])
    logits = model(tokens)
    ranks = []
    for index in range(len(prompt_tokens), len(prompt_tokens) + n_answer):
        ranks.append(_answer_ranks(model, logits[:, index - 1], tokens[:, index],
                                   [s[index - len(prompt_tokens)] for s in answer_strs], print_details, top_k))
    print("Ranks of the answer tokens:", ranks if several else [r[0] for r in ranks])


test_prompt.__test__ = False  # not a test, whatever its name says


def _answer_ranks(model, logits: np.ndarray, answer_ids: np.ndarray, answer_strs: list[str],
                  print_details: bool, k: int) -> list[tuple[str, int]]:
    """(token, rank) of each answer's token at one position, printing the details."""
    probs = np.exp(logits - log_sum_exp(logits)[:, None])
    order, _ = top_k(probs, probs.shape[-1])  # descending, ties in index order as torch's stable sort
    ranks = [int(np.flatnonzero(order[i] == answer_ids[i])[0]) for i in range(len(answer_ids))]
    if print_details:
        print(f"Performance on answer token{'s' if len(answer_ids) > 1 else ''}:")
        for i, (token, rank) in enumerate(zip(answer_strs, ranks)):
            print(f"Rank: {rank: <8} Logit: {logits[i, answer_ids[i]]:5.2f} Prob: {probs[i, answer_ids[i]]:6.2%} "
                  f"Token: |{token}|")
        for i in range(min(k, probs.shape[-1])):
            top = order[0, i]
            print(f"Top {i}th token. Logit: {logits[0, top]:5.2f} Prob: {probs[0, top]:6.2%} "
                  f"Token: |{model.to_string(top)}|")
    return list(zip(answer_strs, ranks))
