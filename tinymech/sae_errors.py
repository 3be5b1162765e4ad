"""Exceptions of the SAE modules (tinymech.sae*). Like those in tinymech.errors,
each derives from TinymechError and from the built-in type a caller would catch."""
from .errors import TinymechError


class SAENotFoundError(TinymechError, FileNotFoundError):
    """No SAE at the given directory, in the local Hugging Face cache, or online."""


class SAELoadError(TinymechError, ValueError):
    """An SAE's files exist but are corrupt, inconsistent, or in a format tinymech cannot run."""


class SAEInputError(TinymechError, ValueError):
    """Activations or features that do not fit the SAE (wrong shape or dtype, a missing input)."""


class FeatureIndexError(TinymechError, IndexError):
    """A feature index outside [0, d_sae)."""
