"""Imports run one way, down the stages: files -> io -> arch -> model -> sae -> analysis -> cli/tui
(docs/architecture.md). A module imports only modules of its own stage or of stages before it;
the exceptions are listed here, each with its reason."""
from __future__ import annotations

import ast
from pathlib import Path

import tinymech

PACKAGE = Path(tinymech.__file__).resolve().parent

# the stage of each top-level module or folder of the package, in the order data flows
STAGES = {
    "_core": 0, "errors": 0, "text": 0, "progress": 0,
    "factored_matrix": 0,  # plain numpy algebra; weight processing (arch) refactors through it
    "io": 1,
    "arch": 2,
    "ops": 3, "hooks": 3, "cache": 3, "kv_cache": 3, "model": 3, "corpus": 3, "runtime": 3,
    "model_tree": 3, "model_helpers": 3, "generation": 3, "padding": 3, "gradients": 3,
    "sae": 4,
    "analysis": 5, "patching": 5, "utils": 5,
    "cli": 6, "tui": 6, "__main__": 6, "arrays": 6,
}

# (importing module, imported module): why the import runs up a stage
EXCEPTIONS = {
    ("tinymech.model", "tinymech.sae.sae"):
        "Model.run_with_saes / run_with_cache_with_saes, as TransformerLens's HookedSAETransformer offers them "
        "(imported when called)",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """Absolute names of the tinymech modules (or names in them) a file imports, anywhere in it."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source == "tinymech" or source.startswith("tinymech."):
                for alias in node.names:  # `from . import x` may import a module
                    yield f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("tinymech"))


def _stage(name: str) -> int | None:
    parts = name.split(".")
    return STAGES.get(parts[1]) if len(parts) > 1 else None


def test_every_module_has_a_stage():
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    tops.add("_core")
    assert tops == set(STAGES), "give each new top-level module or folder a stage in STAGES"


def test_imports_run_down_the_stages():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        if module == "tinymech":  # the package root re-exports every stage
            continue
        own = _stage(module)
        for name in _imports(path):
            target = _stage(name)
            if target is None or target <= own:
                continue
            # a name imported from a module: its module is the key (e.g. tinymech.sae.sae.run_with_saes)
            key = next(((module, m) for m in (name, name.rpartition(".")[0]) if (module, m) in EXCEPTIONS), None)
            if key is None:
                upward.append(f"{module} imports {name}")
    assert not upward, "imports that run up a stage:\n" + "\n".join(upward)


def test_the_exceptions_are_still_needed():
    found = {(_module_name(p), name) for p in PACKAGE.rglob("*.py") for name in _imports(p)}
    found |= {(m, n.rpartition(".")[0]) for m, n in found}
    stale = [pair for pair in EXCEPTIONS if pair not in found]
    assert not stale, f"exceptions no import needs any more: {stale}"
