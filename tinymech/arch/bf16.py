"""The bf16 weight mode: the core reads its weight matrices as bfloat16.

A bfloat16 is the upper half of a float32's bits (same exponent range, 8 bits
of mantissa), so it is stored as uint16 and widened by a shift as the kernels
read it. Only the matrices are converted (embeddings, attention and MLP
weights, the unembedding): they are almost all the bytes a decoded token
streams. Biases, norms and positional embeddings stay float32, and all sums
are float32. On a CPU with AVX512-BF16, a matmul of more than a few rows
(a prefill) also rounds its input activations to bfloat16 and multiplies in
bfloat16 pairs (twice the float32 rate); decoding a token reads the weights
the same way but keeps float32 activations. Elsewhere the only error is the
rounding of the weights themselves.
"""
from __future__ import annotations

import numpy as np

from .. import _core
from ..errors import InvalidInputError

DTYPES = {"float32": "float32", "fp32": "float32", "f32": "float32", "bf16": "bf16", "bfloat16": "bf16"}


def canonical_dtype(dtype) -> str:
    """"float32" or "bf16" from their spellings, torch's dtypes (torch.float32) included."""
    try:
        return DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise InvalidInputError(f"dtype must be 'float32' or 'bf16', not {dtype!r}") from None


def to_bf16(x: np.ndarray, transpose: bool = False) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounding to nearest, ties to even;
    NaN stays NaN. transpose: a 2-D x comes out [cols, rows]. Converted by the
    core over its threads (a model's matrices in one pass each)."""
    return _core.to_bf16(np.ascontiguousarray(x, dtype=np.float32), transpose)


def from_bf16(h: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32, exactly."""
    return (h.astype(np.uint32) << 16).view(np.float32)


def matrix_keys(core_config: dict) -> tuple[set, set]:
    """The names of the matrices outside the blocks and in each block, as the core's
    weight schema marks them (the core lists its weights; nothing here lists them again)."""
    schema = _core.weight_schema(core_config)
    return ({w["name"] for w in schema if w["matrix"] and w["layer"] < 0},
            {w["name"] for w in schema if w["matrix"] and w["layer"] == 0})


def bf16_core_weights(weights: dict, keys: tuple[set, set], transpose_layers: bool = False) -> dict:
    """A copy of the core's weight dict with its matrices (keys: matrix_keys) in bfloat16;
    a matrix shared by two entries (tied embeddings) is converted once. With
    transpose_layers, the layers' matrices are stored transposed ([in, out]
    becomes [out, in])."""
    top_keys, layer_keys = keys
    converted: dict[tuple[int, bool], np.ndarray] = {}

    def convert(a, transpose=False):
        if a is None:
            return None
        key = (id(a), transpose)  # one array may be wanted both ways
        if key not in converted:
            converted[key] = to_bf16(a, transpose)
        return converted[key]

    out = {k: (convert(v) if k in top_keys else v) for k, v in weights.items() if k != "layers"}
    out["layers"] = [
        {k: (convert(v, transpose_layers) if k in layer_keys else v) for k, v in layer.items()}
        for layer in weights["layers"]
    ]
    return out


def bf16_core(core_config: dict, weights: dict) -> tuple[dict, dict]:
    """The core's config and weights for the bf16 mode. Matrices are stored
    [out, in] whatever the checkpoint's layout: a decoded token then reads each
    output's weights as one contiguous row (one sequential stream per thread,
    a third faster than [in, out] rows for GPT-2 small here), and the
    conversion to bfloat16 copies them anyway."""
    config = dict(core_config, weight_layout="out_in")
    keys = matrix_keys(core_config)
    return config, bf16_core_weights(weights, keys, transpose_layers=core_config["weight_layout"] == "in_out")
