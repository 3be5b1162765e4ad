"""TransformerLens's transformer_lens.patching under its names (see
tinymech/analysis/tl_patching.py): `from tinymech import patching`."""
from .analysis.tl_patching import *  # noqa: F401,F403
from .analysis.tl_patching import __all__  # noqa: F401
