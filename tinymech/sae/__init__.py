"""Sparse autoencoders and transcoders in SAELens's format: loading, the splice into a
forward pass, metrics, the activations to train them on, and training."""
from .activations import ActivationStore, collect_activations
from .dashboards import FeatureDashboard, FeatureDashboards
from .dashboards.build import feature_dashboards
from .dashboards.neuronpedia import export_neuronpedia, import_neuronpedia
from .metrics import SAEMetrics, sae_metrics
from .sae import SAE
from .train import train_sae
from .trainer import Trainer

__all__ = ["ActivationStore", "FeatureDashboard", "FeatureDashboards", "SAE", "SAEMetrics", "Trainer", "collect_activations", "export_neuronpedia", "feature_dashboards", "import_neuronpedia", "sae_metrics", "train_sae"]
