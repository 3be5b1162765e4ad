"""The unit tier runs without torch, transformers, TransformerLens and SAELens:
importing its conftests and test modules (and so the helpers they use) imports
none of them. (Each unit test is checked as it runs by unit/conftest.py.)"""
from pathlib import Path

from fresh_process import run_python

TESTS = Path(__file__).resolve().parents[1]


def test_the_unit_tiers_modules_import_no_reference_library():
    modules = [TESTS / "conftest.py", TESTS / "unit" / "conftest.py", *sorted((TESTS / "unit").glob("test_*.py"))]
    code = f"""
import importlib.util
from torch_free import imported_references
for i, path in enumerate({[str(m) for m in modules]!r}):
    spec = importlib.util.spec_from_file_location(f"unit_module_{{i}}", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(imported_references())
"""
    done = run_python(code, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", f"the unit tier's modules import {done.stdout.strip()}"
