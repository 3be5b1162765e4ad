"""Model families are listed once (tinymech/arch/families.py), each a module with one interface."""
from __future__ import annotations

import pkgutil
from pathlib import Path

import pytest

import tinymech.arch as arch
from tinymech.arch import families
from tinymech.arch.config import Config

INTERFACE = ("MODEL_TYPE", "NAME", "PROCESSING", "config", "weights")


def test_every_family_module_is_listed():
    modules = [__import__(f"tinymech.arch.{m.name}", fromlist=["x"]) for m in pkgutil.iter_modules(arch.__path__)]
    declaring = {m.MODEL_TYPE: m for m in modules if hasattr(m, "MODEL_TYPE")}
    assert declaring == families.FAMILIES


@pytest.mark.parametrize("model_type", sorted(families.FAMILIES))
def test_a_family_has_the_interface_and_names_itself(model_type):
    family = families.FAMILIES[model_type]
    assert all(hasattr(family, name) for name in INTERFACE)
    assert family.NAME in families.SUPPORTED_ARCHITECTURES


def test_an_unknown_model_type_names_the_supported_families():
    with pytest.raises(families.UnsupportedArchitectureError, match="gpt2 .*llama"):
        families.config_from_hf({"model_type": "mamba"})


def test_a_config_knows_its_family():
    gpt2 = families.config_from_hf({"model_type": "gpt2", "n_embd": 8, "n_head": 2, "n_layer": 1, "n_positions": 16,
                                    "vocab_size": 10})
    assert isinstance(gpt2, Config) and families.family_of(gpt2) is families.FAMILIES["gpt2"]
    llama = families.config_from_hf({"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2,
                                     "num_hidden_layers": 1, "max_position_embeddings": 16, "vocab_size": 10,
                                     "intermediate_size": 16})
    assert llama.is_llama and families.family_of(llama) is families.FAMILIES["llama"]


def test_activation_names_live_in_the_cores_table_only():
    # the names a config may give an activation were listed in four places (two in Python, two in C++)
    from tinymech.arch.config import ACTIVATIONS, activation

    assert activation("gelu_pytorch_tanh") == "gelu_new" and activation("swish") == "silu"
    assert set(ACTIVATIONS.values()) == {"gelu_new", "gelu", "relu", "silu"}
    with pytest.raises(families.UnsupportedArchitectureError, match="'tanh' is not supported; supported: gelu_new"):
        activation("tanh")
    root = Path(__file__).resolve().parents[2]  # the repository (the tests may run on an installed package)
    holders = [p.relative_to(root).as_posix() for folder in ("tinymech", "csrc")
               for p in (root / folder).rglob("*") if p.suffix in (".py", ".cpp", ".hpp")
               and "gelu_pytorch_tanh" in p.read_text(encoding="utf-8", errors="replace")]
    assert holders == ["csrc/core/config.cpp"]


def test_gguf_types_live_in_the_cores_table():
    # F32, F16 and BF16 were listed in Python twice beside the core's table of quantized types
    from tinymech import _core

    assert [_core.quant_block(t) for t in (0, 1, 30, 2, 14)] == [(1, 4), (1, 2), (1, 2), (32, 18), (256, 210)]
    root = Path(__file__).resolve().parents[2]
    for path in ("tinymech/io/gguf_format.py", "tinymech/arch/gguf.py"):
        text = (root / path).read_text()
        assert "30:" not in text and "== 30" not in text and "== 1:" not in text, path


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_each_family_gives_the_weights_the_cores_schema_names(family, tmp_path):
    # the core's read_weights is the one list of weights (_core.weight_schema reads it); a family's
    # weights() must give exactly those names, and the bf16 mode converts the ones it marks as matrices
    import tinymech as tm
    from llama_factory import LLAMA_SHAPES
    from model_factory import SHAPES
    from numpy_checkpoints import write_gpt2, write_llama
    from tinymech import _core
    from tinymech.arch.bf16 import matrix_keys

    if family == "gpt2":
        path = write_gpt2(tmp_path / family, **SHAPES["tiny"])
    else:
        path = write_llama(tmp_path / family, **LLAMA_SHAPES["gqa"])
    model = tm.load(path)
    schema = _core.weight_schema(model.cfg.core_dict())
    given = {k for k, v in model._weights.items() if k != "layers" and v is not None}
    named = {w["name"] for w in schema if w["layer"] < 0}
    required = {w["name"] for w in schema if w["layer"] < 0 and not w["optional"]}
    assert required <= given <= named
    layer = {k for k, v in model._weights["layers"][0].items() if v is not None}
    assert {w["name"] for w in schema if w["layer"] == 0 and not w["optional"]} <= layer
    assert layer <= {w["name"] for w in schema if w["layer"] == 0}
    top, per_layer = matrix_keys(model.cfg.core_dict())
    assert "wte" in top and "qkv_w" in per_layer and ("gate_w" in per_layer) == (family == "llama")
