"""Sparse autoencoders and transcoders in SAELens's format: loading, the splice into a
forward pass, metrics, and the activations to train them on."""
from .activations import ActivationStore, collect_activations
from .metrics import SAEMetrics, sae_metrics
from .sae import SAE
from .trainer import Trainer

__all__ = ["ActivationStore", "SAE", "SAEMetrics", "Trainer", "collect_activations", "sae_metrics"]
