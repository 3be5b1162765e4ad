"""Exceptions raised by tinymech, and the argument checks shared by the Python layer.

Every exception derives from TinymechError, and each also derives from the built-in type a
caller would naturally catch (ValueError, FileNotFoundError, ...), so existing handlers keep
working."""
from __future__ import annotations

import numbers
import operator

import numpy as np


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


class UnpicklableError(TinymechError, TypeError):
    """pickle or copy.deepcopy of an object that cannot be rebuilt: a model not
    loaded from a path (a pickled model is loaded again from its path)."""


class InvalidInputError(TinymechError, ValueError):
    """A run's argument that does not fit the model: a residual stream of the
    wrong shape, a layer outside it, a loss asked for without tokens."""


class InvalidIndexError(InvalidInputError, IndexError):
    """An index that does not fit what it indexes (a layer, head, position or neuron out of
    range, or not an index at all); handlers of IndexError, numpy's and torch's, still catch it."""


class ReadOnlyError(TinymechError, AttributeError):
    """Assigning what a model's C++ core was built from: a weight (model.W_Q = ...,
    model.blocks[0].attn.W_Q = ...) or its config (model.cfg = ...), or what a model
    reads from its state (model.acts_to_saes, model.blocks); a field of an SAE's
    frozen config (sae.cfg.k = ...: assign sae.cfg a new config instead)."""


def read_only_weight(name: str) -> ReadOnlyError:
    return ReadOnlyError(
        f"{name} cannot be assigned or deleted: a model's weights are for reading, and the C++ core computes with the "
        "loaded ones (an assigned array would read back but never run); change what a run computes with hooks "
        "(e.g. tm.zero_ablate, tm.scale on a hook point)")


def read_only_attribute(obj, name: str, label: str, hint: str | None = None) -> ReadOnlyError | None:
    """The error for `label.name = ...` (or del) where obj's class reads `name` through a property
    without a setter (Python's own error says only "has no setter"): a weight's, unless
    `hint` says what to do instead; None for any other name."""
    attr = getattr(type(obj), name, None)
    if not isinstance(attr, property) or attr.fset is not None:
        return None
    return read_only_weight(f"{label}.{name}") if hint is None else ReadOnlyError(
        f"{label}.{name} cannot be assigned or deleted: {hint}")


class HookError(TinymechError, ValueError):
    """An unknown hook name, a bad intervention, or a hook function that failed."""


# ---- SAEs ----

class SAENotFoundError(TinymechError, FileNotFoundError):
    """No SAE at the given directory, in the local Hugging Face cache, or online."""


class SAELoadError(TinymechError, ValueError):
    """An SAE's files exist but are corrupt, inconsistent, or in a format tinymech cannot run."""


class SAEInputError(TinymechError, ValueError):
    """Activations or features that do not fit the SAE (wrong shape or dtype, a missing input)."""


class FeatureIndexError(TinymechError, IndexError):
    """A feature index outside [0, d_sae)."""


# ---- the analysis toolkit ----

class TrainingError(TinymechError, RuntimeError):
    """A training run could not go on: a checkpoint that could not be written (a full
    disk), a checkpoint that does not belong to this run. What was saved before is kept."""


class AnalysisError(TinymechError, ValueError):
    """An analysis asked for something its inputs cannot give: an unknown
    detection pattern, clean and corrupted runs of different shapes, a
    vocabulary without the single-token names an IOI prompt needs, ..."""


# ---- argument checks: a whole number is a whole number (not a bool, not 2.5 quietly made 2),
# a number is one a float holds ----

# The largest integer the core's int64 arguments take.
CORE_INT_MAX = 2**63 - 1


def whole_number(value, what: str, minimum: int | None = None, error=InvalidInputError,
                 maximum: int | None = None) -> int:
    """value as an int; `error` naming `what` unless it is an integer (numpy's, and a 0-d integer
    array or tensor, included, as TransformerLens takes them; bools not) of at least `minimum` and
    at most `maximum`."""
    if isinstance(value, (bool, np.bool_)):
        raise error(f"{what} must be a whole number, not {value!r}")
    if not isinstance(value, numbers.Integral):  # (the common case skips this: token ids come one by one)
        if "bool" in str(getattr(value, "dtype", "")):
            raise error(f"{what} must be a whole number, not {value!r}")
        try:  # a 0-d integer array or tensor; a float one refuses __index__
            if getattr(value, "ndim", None) != 0:
                raise TypeError
            value = operator.index(value)
        except (TypeError, ValueError, RuntimeError):
            raise error(f"{what} must be a whole number, not {value!r}") from None
    if minimum is not None and value < minimum:
        raise error(f"{what} must be >= {minimum}, not {value}")
    if maximum is not None and value > maximum:
        raise error(f"{what} must be <= {maximum}, not {value}")
    return int(value)


def array_of(value, what: str, error=InvalidInputError) -> np.ndarray:
    """value as a numpy array; `error` naming `what` where numpy cannot read it (a ragged list,
    a bfloat16 tensor, one that requires grad) rather than numpy's or torch's own error."""
    try:
        return np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as e:  # RuntimeError: torch's, for a tensor requiring grad
        raise error(f"{what} cannot be read as an array ({type(e).__name__}: {e}); a torch tensor: pass "
                    "t.detach().float(), or turn on tm.set_array_type('torch')") from None


def check_model(value, what: str = "model", hint: str = "") -> None:
    """InvalidInputError naming `what` unless value is a model (tm.load's), rather than an
    AttributeError from deep inside whatever reads it first."""
    if not (hasattr(value, "cfg") and hasattr(value, "run_with_cache") and hasattr(value, "to_tokens")):
        raise InvalidInputError(f"{what} must be a tinymech model (tm.load(...)), not {type(value).__name__}{hint}")


def true_or_false(value, what: str, error=InvalidInputError) -> bool:
    """value as a bool; `error` naming `what` unless it is True or False (numpy's
    included): a string such as "no" would read as True."""
    if not isinstance(value, (bool, np.bool_)):
        raise error(f"{what} must be True or False, not {value!r}")
    return bool(value)


def real_number(value, what: str, error=InvalidInputError) -> float:
    """value as a float; `error` naming `what` unless it is a number a float
    can hold (numpy's and 0-d arrays included; bools and strings not)."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise error(f"{what} must be a number, not {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise error(f"{what} must be a number that a float can hold, not {value!r}") from None
