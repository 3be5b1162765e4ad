"""The unit tier: tinymech's own behaviour, with only the package, numpy and
pytest (no torch, transformers, TransformerLens or SAELens); it runs in under
a minute."""
from __future__ import annotations

import pytest

from torch_free import imported_references


@pytest.fixture(autouse=True)
def _imports_no_reference_library():
    """Fails a unit test that imports a reference library as it runs (seen where
    none was loaded before it: `pytest tests/unit`; test_torch_free.py checks the imports)."""
    before = imported_references()
    yield
    late = sorted(set(imported_references()) - set(before))
    assert not late, f"a unit test must run without the reference libraries, but this one imported {late}"
