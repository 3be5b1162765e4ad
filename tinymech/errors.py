"""Exceptions raised by tinymech. All derive from TinymechError, and each also
derives from the built-in type a caller would naturally catch (ValueError,
FileNotFoundError, ...), so existing handlers keep working."""


class TinymechError(Exception):
    """Base class of every error tinymech raises on purpose."""


class ModelNotFoundError(TinymechError, FileNotFoundError):
    """No model at the given path, in the local Hugging Face cache, or online."""


class ModelLoadError(TinymechError, ValueError):
    """A model's files exist but are missing pieces, corrupt, or inconsistent."""


class UnsupportedArchitectureError(TinymechError, ValueError):
    """The checkpoint is an architecture tinymech cannot run yet."""


class NoTokenizerError(TinymechError, ValueError):
    """Text was given to a model loaded without a tokenizer."""


class InvalidTokensError(TinymechError, ValueError):
    """Token ids that are out of range, of the wrong dtype or shape, or empty."""


class ContextLengthError(TinymechError, ValueError):
    """A sequence longer than the model's context window."""


class InvalidInputError(TinymechError, ValueError):
    """A run's argument that does not fit the model: a residual stream of the
    wrong shape, a layer outside it, a loss asked for without tokens."""


class HookError(TinymechError, ValueError):
    """An unknown hook name, a bad intervention, or a hook function that failed."""
