"""What a fresh machine needs: the tests' imports declared, and a clear word when
Python imports the source tree instead of the installed package."""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import tinymech

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"


def _declared() -> set:
    """Distributions pyproject.toml names directly: the dependencies and the [test] extra."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11: read the two lists by hand
        text = (ROOT / "pyproject.toml").read_text()
        names = re.findall(r'^\s*"([A-Za-z0-9_.-]+)', text, flags=re.M)
    else:
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        names = project["dependencies"] + project["optional-dependencies"]["test"]
    return {re.split(r"[\s<>=!~;\[(]", n.strip(), maxsplit=1)[0].lower().replace("_", "-") for n in names}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module.split(".")[0]


def test_every_third_party_import_of_the_tests_is_declared():
    # a module that is merely installed here (pexpect was) fails collection on a fresh machine
    declared = _declared()
    local = {p.stem for p in TESTS.rglob("*.py")} | {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    local |= {"tinymech", "conftest"}
    owners = metadata.packages_distributions()
    missing = {}
    for path in TESTS.rglob("*.py"):
        for top in _imports(path):
            if top in sys.stdlib_module_names or top in local:
                continue
            dists = {d.lower().replace("_", "-") for d in owners.get(top, [top])}
            if not dists & declared:
                missing.setdefault(top, path.relative_to(ROOT).as_posix())
    assert not missing, f"tests import modules pyproject.toml's [test] extra does not declare: {missing}"


def test_source_tree_without_its_core_says_what_happened(tmp_path):
    # Python started in the repository's root imports the sources, which have no compiled core
    shutil.copytree(Path(tinymech.__file__).parent, tmp_path / "tinymech",
                    ignore=shutil.ignore_patterns("_core*", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", "import tinymech"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "compiled core" in last and "source tree" in last and "tools/dev-build" in last, last
    assert "circular import" not in done.stderr


def test_a_core_built_for_another_python_says_what_happened(tmp_path):
    shutil.copytree(Path(tinymech.__file__).parent, tmp_path / "tinymech",
                    ignore=shutil.ignore_patterns("_core*", "__pycache__"))
    (tmp_path / "tinymech" / "_core.cpython-30-x86_64-linux-gnu.so").write_bytes(b"")  # another interpreter's
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", "import tinymech"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert "compiled core" in done.stderr and "circular import" not in done.stderr, done.stderr

