"""The model families tinymech runs, listed once: each is a module of arch/ with MODEL_TYPE
(config.json's model_type), NAME, PROCESSING (whether TransformerLens's weight processing is
implemented for it), config(hf, model_name, source) -> Config and weights(store, cfg) -> the
core's weight dict. Adding a family is a module and a line here (docs/contributing.md)."""
from __future__ import annotations

from pathlib import Path

from ..errors import ModelNotFoundError, UnsupportedArchitectureError
from ..io.files import read_json
from ..io.sources import model_name_of
from . import gpt2, llama
from .config import Config, architectures

FAMILIES = {family.MODEL_TYPE: family for family in (gpt2, llama)}
SUPPORTED_ARCHITECTURES = tuple(family.NAME for family in FAMILIES.values())


def config_from_hf(hf: dict, model_name: str = "", source: str = "config.json") -> Config:
    """A Hugging Face config.json dict as a Config, by its family; every field is checked
    before anything is computed from it, and errors name `source`."""
    archs = architectures(hf, source)
    model_type = hf.get("model_type")
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        what = model_type or (archs[0] if archs else "unknown")
        raise UnsupportedArchitectureError(
            f"architecture {what!r} is not supported yet; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return family.config(hf, model_name, source)


def read_config(model_dir: Path) -> Config:
    path = model_dir / "config.json"
    if not path.exists():
        raise ModelNotFoundError(f"{model_dir} has no config.json")
    return config_from_hf(read_json(path, "the model config"), model_name=model_name_of(model_dir))


def family_of(cfg: Config):
    return FAMILIES[cfg.family]
