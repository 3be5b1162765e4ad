"""ReLU SAEs and transcoders (SAELens's StandardSAE, Transcoder, SkipTranscoder)."""
from __future__ import annotations


ACTIVATION = "relu"
NAMES = {"standard": "sae", "transcoder": "transcoder", "skip_transcoder": "skip_transcoder"}
TRAINING = {"standard": dict(k=None, saved_as="standard", coefficient=5.0, warm_up=0.05)}  # see topk.py; L1


def config(flat: dict, d_sae: int) -> dict:
    return {}


def weights(file, read, cfg) -> dict:
    return {}

# Training: csrc/sae/train.cpp (MSE + L1 weighted by decoder norms).
