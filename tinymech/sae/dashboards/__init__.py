"""Feature dashboards: one pass over a corpus gives every feature of an SAE,
transcoder or MLP layer its top contexts, samples by activation, histogram,
density, logit effects and co-occurring features (build.py); stored beside the
SAE (store.py), labelled without a language model (labels.py), shown as text
(render.py) and exchanged with Neuronpedia (neuronpedia.py)."""
from .store import Context, FeatureDashboard, FeatureDashboards, Interval

__all__ = ["Context", "FeatureDashboard", "FeatureDashboards", "Interval"]
