"""Sparse autoencoders and transcoders in SAELens's format: loading, the splice into a
forward pass, metrics."""
from .metrics import SAEMetrics, sae_metrics
from .sae import SAE
from .trainer import Trainer

__all__ = ["SAE", "SAEMetrics", "Trainer", "sae_metrics"]
