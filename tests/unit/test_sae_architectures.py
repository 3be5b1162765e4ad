"""SAE architectures are listed once (tinymech/sae/architectures/), each a module with one interface."""
from __future__ import annotations

import pkgutil
from pathlib import Path

import pytest

import tinymech.sae.architectures as architectures
from tinymech.errors import SAELoadError
from tinymech.sae.loading import parse_config

INTERFACE = ("ACTIVATION", "NAMES", "config", "weights")


def test_every_architecture_module_is_registered():
    modules = [__import__(f"{architectures.__name__}.{m.name}", fromlist=["x"])
               for m in pkgutil.iter_modules(architectures.__path__)]
    assert set(modules) == set(architectures.MODULES)
    assert {a.module for a in architectures.ARCHITECTURES.values()} == set(modules)


@pytest.mark.parametrize("module", architectures.MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_an_architecture_module_has_the_interface(module):
    assert all(hasattr(module, name) for name in INTERFACE)
    assert set(module.NAMES.values()) <= set(architectures.KINDS)


def test_every_activation_is_in_the_cores_table_only():
    from tinymech import _core

    assert {m.ACTIVATION for m in architectures.MODULES} == set(_core.sae_activation_names())
    root = Path(__file__).resolve().parents[2]
    holders = [p.relative_to(root).as_posix() for p in (root / "csrc").rglob("*") if p.suffix in (".cpp", ".hpp")
               and '"jumprelu"' in p.read_text(encoding="utf-8", errors="replace")]
    assert holders == ["csrc/sae/sae.cpp"]


def test_the_registry_holds_what_each_architecture_was():
    # the table loading.py held before the registry: architecture -> (activation, transcoder, skip)
    assert {n: (a.activation, a.is_transcoder, a.has_skip) for n, a in architectures.ARCHITECTURES.items()} == {
        "standard": ("relu", False, False), "jumprelu": ("jumprelu", False, False), "topk": ("topk", False, False),
        "transcoder": ("relu", True, False), "skip_transcoder": ("relu", True, True),
        "jumprelu_transcoder": ("jumprelu", True, False), "jumprelu_skip_transcoder": ("jumprelu", True, True),
        "topk_transcoder": ("topk", True, False), "topk_skip_transcoder": ("topk", True, True),  # tinymech's own
        "gated": ("gated", False, False), "abstopk": ("abstopk", False, False),
        "matching_pursuit": ("matching_pursuit", False, False), "temporal": ("temporal", False, False),
    }
    assert architectures.OLD_ACTIVATION_FNS == {"topk": "topk"}


def test_an_unknown_architecture_or_old_activation_names_the_supported_ones():
    with pytest.raises(SAELoadError, match="'matryoshka' is not supported; supported: standard, "):
        parse_config({"architecture": "matryoshka", "d_in": 4, "d_sae": 8})
    with pytest.raises(SAELoadError, match=r"'tanh' is not supported \(supported: relu, topk\)"):
        parse_config({"activation_fn": "tanh", "d_in": 4, "d_sae": 8})
    with pytest.raises(SAELoadError, match="not supported"):  # unhashable, from a hostile file
        parse_config({"activation_fn": ["topk"], "d_in": 4, "d_sae": 8})
    old = parse_config({"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3}, "d_in": 4, "d_sae": 8})
    assert (old.architecture, old.k) == ("topk", 3)


def test_architecture_names_live_in_the_registry_only():
    # loading.py listed them in a table and branched on them in parse_config and read_weights
    root = Path(__file__).resolve().parents[2]  # the repository (the tests may run on an installed package)
    folder = root / "tinymech" / "sae" / "architectures"
    names = [n for n in architectures.ARCHITECTURES if n != "standard"]  # also a positional embedding's name
    holders = [p.relative_to(root).as_posix() for p in (root / "tinymech").rglob("*.py")
               if folder not in p.parents and any(f'"{name}"' in p.read_text(encoding="utf-8")
                                                   for name in names)]
    assert holders == []
