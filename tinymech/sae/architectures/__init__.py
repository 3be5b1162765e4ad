"""The SAE architectures tinymech reads, listed once: each is a module of this folder for
one activation, with ACTIVATION (the core's name: csrc/sae/sae.cpp's kSaeActivations),
NAMES (each cfg.json "architecture" SAELens writes for it -> its kind: "sae",
"transcoder" or "skip_transcoder"), config(flat, d_sae) -> the extra config fields it
needs (k, or its own options, which cfg.json keeps at the top level), and
weights(file, read, cfg) -> the extra tensors it reads. Adding an architecture is a
module and a line in MODULES (docs/contributing.md).

Optional, where an architecture differs from the plain SAE (defaults in brackets):
ENCODER_BIAS, the name b_enc is saved under ["b_enc"]; tied(options), whether W_enc is
W_dec's transpose with no b_enc stored [False]; decode_bias(cfg), whether decoding adds
b_dec [True]; core_config(cfg), its fields of the core's config; NORMALIZATIONS, the
normalize_activations it takes [loading.NORMALIZATIONS]; SEQUENTIAL, whether it encodes
whole sequences [batch, pos, d_in] [False]; PRE_ACTIVATIONS, whether it has
hook_sae_acts_pre [True]; fold_scale(weights, options, factor), folding a dataset-wide
input scale [W_enc * s, W_dec / s, b_dec / s]; FOLDS_WHITENING [True] and
shift_encoder_biases(weights, shift) [b_enc - shift], for folding a covariance whitening.

Transcoders are a kind, not modules of their own: what makes one (d_out, hook_name_out,
W_skip) is the same for every activation, so tinymech/sae/loading.py handles it once.
"""
from __future__ import annotations

import dataclasses
from types import ModuleType

from ...errors import InvalidInputError

from . import abstopk, gated, jumprelu, matching_pursuit, standard, temporal, topk

MODULES = (standard, jumprelu, topk, gated, abstopk, matching_pursuit, temporal)
KINDS = {"sae": (False, False), "transcoder": (True, False), "skip_transcoder": (True, True)}  # (transcoder, skip)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One cfg.json "architecture": its module (activation, extra config and tensors) and kind."""

    name: str
    module: ModuleType
    kind: str

    @property
    def activation(self) -> str:
        return self.module.ACTIVATION

    @property
    def is_transcoder(self) -> bool:
        return KINDS[self.kind][0]

    @property
    def has_skip(self) -> bool:
        """A skip transcoder: W_skip [d_out, d_in] adds a linear path from input to output."""
        return KINDS[self.kind][1]

    @property
    def sequential(self) -> bool:
        """Whether it encodes whole sequences [batch, pos, d_in] (a temporal SAE)."""
        return getattr(self.module, "SEQUENTIAL", False)

    @property
    def pre_activations(self) -> bool:
        """Whether it has pre-activations (SAELens's hook_sae_acts_pre)."""
        return getattr(self.module, "PRE_ACTIVATIONS", True)

    def tied(self, options: dict) -> bool:
        """Whether W_enc is W_dec's transpose, with no b_enc stored."""
        return self.module.tied(options) if hasattr(self.module, "tied") else False


ARCHITECTURES = {name: Architecture(name, m, kind) for m in MODULES for name, kind in m.NAMES.items()}


@dataclasses.dataclass(frozen=True)
class Training:
    """A training architecture (tinymech.sae.Trainer's): the module whose activation it
    trains, its k ("whole" per row, "mean" per row over the batch, or None), the module
    it is saved as, and its sparsity coefficient's default and warm-up."""

    name: str
    module: ModuleType
    k: str | None
    saved_as: ModuleType
    coefficient: float  # the sparsity coefficient's default (L1, L0), on inputs scaled to E||x|| = sqrt(d_in)
    warm_up: float      # the share of the steps over which it warms up

    @property
    def batch_topk(self) -> bool:
        return self.k == "mean"

    def saved_name(self, transcoder: bool, skip: bool) -> str:
        """The saved cfg.json's "architecture" for this kind."""
        kind = "skip_transcoder" if skip else "transcoder" if transcoder else "sae"
        names = [name for name, k in self.saved_as.NAMES.items() if k == kind]
        if not names:
            raise InvalidInputError(f"a {self.name} {kind.replace('_', ' ')} has no saved format (no architecture "
                                    f"of kind {kind!r} in {self.saved_as.__name__})")
        return names[0]


_BY_NAME = {m.__name__.rsplit(".", 1)[-1]: m for m in MODULES}
TRAINING = {name: Training(name, m, spec["k"], _BY_NAME[spec["saved_as"]], spec["coefficient"], spec["warm_up"])
            for m in MODULES for name, spec in getattr(m, "TRAINING", {}).items()}


def training(name) -> Training:
    """The training architecture called name; InvalidInputError naming those there are."""
    if isinstance(name, str) and name in TRAINING:
        return TRAINING[name]
    if isinstance(name, str) and name in ARCHITECTURES and not hasattr(ARCHITECTURES[name].module, "TRAINING"):
        raise InvalidInputError(f"tinymech reads {name!r} SAEs but does not train them; it trains {', '.join(TRAINING)}")
    raise InvalidInputError(f"unknown architecture {name!r}; tinymech trains {', '.join(TRAINING)}")


DEFAULT = "standard"  # what a config without an "architecture" means
DEFAULT_TRAINING = "topk"  # what tm.train_sae and `tinymech train-sae` train unless told
# Pre-6 configs said architecture "standard" and named any other activation in activation_fn.
OLD_ACTIVATION_FNS = {m.OLD_ACTIVATION_FN: name for m in MODULES for name, kind in m.NAMES.items()
                      if hasattr(m, "OLD_ACTIVATION_FN") and kind == "sae"}
