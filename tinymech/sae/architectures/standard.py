"""ReLU SAEs and transcoders (SAELens's StandardSAE, Transcoder, SkipTranscoder)."""
from __future__ import annotations


ACTIVATION = "relu"
NAMES = {"standard": "sae", "transcoder": "transcoder", "skip_transcoder": "skip_transcoder"}
TRAINING = {"standard": (None, "standard")}  # (k, saved as): see topk.py


def config(flat: dict, d_sae: int) -> dict:
    return {}


def weights(file, read, d_sae: int) -> dict:
    return {}

# Training (next issue): the loss (MSE + L1 of the feature activations) goes here.
