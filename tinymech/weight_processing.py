"""TransformerLens-style weight processing (fold_ln, center_writing_weights,
center_unembed, fold_value_biases). Being written; see issue 3."""
from __future__ import annotations


def process_weights(weights: dict, cfg, *, fold_ln=False, center_writing_weights=False,
                    center_unembed=False, fold_value_biases=False):
    if fold_ln or center_writing_weights or center_unembed or fold_value_biases:
        raise NotImplementedError("weight processing is not implemented yet")
    return weights, cfg
