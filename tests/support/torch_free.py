"""The unit tier's rule: it runs without the reference libraries, so neither
its test modules nor its tests import them."""
from __future__ import annotations

import sys

REFERENCE_LIBRARIES = ("torch", "transformers", "transformer_lens", "sae_lens")


def imported_references() -> list:
    """The reference libraries this process has imported."""
    return [name for name in REFERENCE_LIBRARIES if name in sys.modules]
