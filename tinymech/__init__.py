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
except ImportError:  # a source tree without a core for this Python, e.g. Python started in the repository root
    from importlib.machinery import EXTENSION_SUFFIXES

    here = os.path.dirname(__file__)
    if any(os.path.exists(os.path.join(here, "_core" + suffix)) for suffix in EXTENSION_SUFFIXES):
        raise  # a core for this Python is there but failed to load: its own error says why
    raise ImportError(
        f"tinymech's compiled core (_core) for this Python is missing from {here}: this is the source "
        "tree (or a core built for another Python), which Python imports when started from the repository's "
        "root. Start Python from another folder to use the installed package (pip install .), or build the "
        "core beside the sources with tools/dev-build.") from None
from . import analysis, patching
from .arch.config import Config
from .cache import ActivationCache
from .corpus import batches, read_corpus, tokenize_and_concatenate
from .errors import (
    ContextLengthError,
    FeatureIndexError,
    HookError,
    InvalidIndexError,
    InvalidInputError,
    InvalidTokensError,
    ModelLoadError,
    ModelNotFoundError,
    NoTokenizerError,
    ReadOnlyError,
    SAEInputError,
    UnpicklableError,
    SAELoadError,
    SAENotFoundError,
    TinymechError,
    TrainingError,
    UnsupportedArchitectureError,
)
from .factored_matrix import FactoredMatrix
from .hooks import HookPoint, add, fill, get_act_name, mean_ablate, patch, scale, zero_ablate
from .io.tokenizer import Tokenizer
from .model import Model, from_pretrained, from_pretrained_no_processing, load
from .runtime import (
    get_num_threads,
    kernel_variant,
    kernel_variants,
    release_memory,
    set_kernel_variant,
    set_num_threads,
)
from . import utils  # transformer_lens.utils's helpers: test_prompt, get_act_name, to_numpy, ...
from .sae import (
    SAE,
    ActivationStore,
    FeatureDashboard,
    FeatureDashboards,
    SAEMetrics,
    collect_activations,
    export_neuronpedia,
    feature_dashboards,
    import_neuronpedia,
    sae_metrics,
    train_sae,
)

HookedTransformer = Model  # `from tinymech import HookedTransformer`: HookedTransformer.from_pretrained("gpt2")

__version__ = "0.1.0"

__all__ = [
    "ActivationCache",
    "ActivationStore",
    "Config",
    "FeatureDashboard",
    "FeatureDashboards",
    "ContextLengthError",
    "FactoredMatrix",
    "FeatureIndexError",
    "HookError",
    "HookedTransformer",
    "HookPoint",
    "InvalidIndexError",
    "InvalidInputError",
    "InvalidTokensError",
    "Model",
    "ModelLoadError",
    "ModelNotFoundError",
    "NoTokenizerError",
    "ReadOnlyError",
    "SAE",
    "SAEInputError",
    "SAELoadError",
    "SAEMetrics",
    "SAENotFoundError",
    "TinymechError",
    "Tokenizer",
    "TrainingError",
    "UnpicklableError",
    "UnsupportedArchitectureError",
    "add",
    "array_type",
    "batches",
    "collect_activations",
    "export_neuronpedia",
    "feature_dashboards",
    "fill",
    "from_pretrained",
    "from_pretrained_no_processing",
    "get_act_name",
    "get_array_type",
    "get_num_threads",
    "import_neuronpedia",
    "kernel_variant",
    "kernel_variants",
    "load",
    "mean_ablate",
    "patch",
    "read_corpus",
    "release_memory",
    "sae_metrics",
    "scale",
    "set_array_type",
    "set_kernel_variant",
    "set_num_threads",
    "tokenize_and_concatenate",
    "train_sae",
    "zero_ablate",
]

# torch tensors in and out, when asked (tm.set_array_type("torch")): wraps the public entry points,
# so it comes after everything they belong to
from .arrays import array_type, get_array_type, set_array_type, wrap_entry_points  # noqa: E402

wrap_entry_points()
