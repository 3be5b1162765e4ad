"""SAE.from_pretrained(release, sae_id): from a SAELens release name to a
local directory in SAELens's format.

Resolution:
1. The release registry is SAELens's pretrained_saes.yaml, read from the
   installed sae_lens package's folder without importing it (and parsed with
   PyYAML, which huggingface_hub depends on). It maps a release to a Hugging
   Face repo (`repo_id`) and each sae_id to a folder in it (`path`), and gives
   config overrides, Neuronpedia ids and norm_scaling_factor.
2. A release that is not in the registry but looks like a repo id
   ("owner/name") is used as the repo, with sae_id as the folder.
3. The folder is looked up in the local Hugging Face cache
   (<cache>/models--owner--name/snapshots/<revision>/<folder>/cfg.json,
   refs/main first), then downloaded with huggingface_hub when installed.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ..io.files import inside
from ..io.sources import cached_snapshots, hf_cache_dir
from ..errors import SAELoadError, SAENotFoundError
from .loading import CFG_FILE, LABELS_FILE, SPARSITY_FILE, WEIGHTS_FILE

REGISTRY_FILE = "pretrained_saes.yaml"


def registry_path() -> Path | None:
    """SAELens's pretrained_saes.yaml, if sae_lens is installed (it is not imported)."""
    try:
        spec = importlib.util.find_spec("sae_lens")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / REGISTRY_FILE
        if path.is_file():
            return path
    return None


def registry_entry(release: str, path: Path | None = None) -> dict | None:
    """The registry's entry for a release, or None when the release or registry is absent.

    Only the release's own block of the (large) YAML file is parsed."""
    path = path or registry_path()
    if path is None:
        return None
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    key = release + ":"
    start = next((i for i, line in enumerate(lines) if line.rstrip() == key), None)
    if start is None:
        return None
    end = next((j for j in range(start + 1, len(lines)) if lines[j][:1] not in (" ", "\t", "\n", "\r", "#", "")),
               len(lines))
    try:
        import yaml
    except ImportError:
        raise SAENotFoundError(
            "reading SAELens's release registry needs PyYAML (pip install pyyaml); or pass the Hugging Face "
            "repo id as the release and the SAE's folder as sae_id"
        ) from None
    entry = yaml.safe_load("".join(lines[start:end]))[release]
    if not isinstance(entry, dict) or "repo_id" not in entry or not isinstance(entry.get("saes"), list):
        raise SAELoadError(f"{path}: the entry for {release!r} lacks repo_id or saes")
    return entry


def locate(release: str, sae_id: str) -> tuple[str, str, dict, float | None]:
    """(repo_id, folder, config overrides, norm_scaling_factor) for a release and SAE id."""
    for what, name in (("release", release), ("sae_id", sae_id)):
        if not isinstance(name, str):
            raise SAENotFoundError(f"an SAE's {what} is a string, not {name!r}")
    entry = registry_entry(release)
    if entry is None:
        if "/" not in release:
            where = registry_path()
            why = f"not in {where}" if where else "SAELens's release registry was not found: sae_lens is not installed"
            raise SAENotFoundError(
                f"unknown SAE release {release!r} ({why}); pass a Hugging Face repo id as the release and the "
                "SAE's folder in it as sae_id, or load a local directory with SAE.load(path)"
            )
        return release, sae_id, {}, None
    if entry.get("conversion_func"):
        raise SAELoadError(
            f"release {release!r} is stored in the {entry['conversion_func']!r} format; tinymech reads only "
            "SAELens's own format (cfg.json + sae_weights.safetensors)"
        )
    saes = {str(s.get("id")): s for s in entry["saes"] if isinstance(s, dict)}
    if sae_id not in saes:
        ids = list(saes)
        shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
        raise SAENotFoundError(f"release {release!r} has no SAE {sae_id!r}; its ids are: {shown}")
    info = saes[sae_id]
    overrides = dict(entry.get("config_overrides") or {})
    if info.get("neuronpedia"):
        overrides["neuronpedia_id"] = info["neuronpedia"]
    factor = info.get("norm_scaling_factor")
    return entry["repo_id"], str(info.get("path", sae_id)), overrides, factor


def find_cached(repo_id: str, folder: str) -> Path | None:
    """The folder inside the cached snapshot of repo_id holding cfg.json, refs/main first."""
    for snap in cached_snapshots(repo_id):
        if (snap / folder / CFG_FILE).is_file() and (snap / folder / WEIGHTS_FILE).is_file():
            return snap / folder
    return None


def download(repo_id: str, folder: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise SAENotFoundError(
            f"{repo_id}/{folder} is not in the Hugging Face cache ({hf_cache_dir()}); install huggingface_hub "
            "(pip install huggingface_hub) to download it, or download the folder yourself and use SAE.load(path)"
        ) from None
    prefix = "" if folder in ("", ".") else folder.rstrip("/") + "/"
    patterns = [prefix + f for f in (CFG_FILE, WEIGHTS_FILE, SPARSITY_FILE, LABELS_FILE)]
    try:
        root = Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # offline, unknown repo, auth: all mean "not available"
        raise SAENotFoundError(
            f"could not download {repo_id}/{folder} from the Hugging Face hub ({type(e).__name__}: {e}); "
            "check the names and your connection, or use SAE.load(path) on a local copy"
        ) from e
    path = root / folder
    if not (path / CFG_FILE).is_file():
        raise SAENotFoundError(f"{repo_id} has no {prefix}{CFG_FILE}")
    return path


def resolve(release: str, sae_id: str) -> tuple[Path, dict, float | None]:
    """(local directory, config overrides, norm_scaling_factor) for a release and SAE id."""
    repo_id, folder, overrides, factor = locate(release, sae_id)
    inside(Path(repo_id), folder, "the SAE folder", SAENotFoundError)  # checked before any lookup
    return find_cached(repo_id, folder) or download(repo_id, folder), overrides, factor
