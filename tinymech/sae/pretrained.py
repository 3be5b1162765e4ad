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

import datetime
import importlib.util
import math
import re
from pathlib import Path

from ..io.files import inside, read_text
from ..io.sources import cached_snapshots, hf_cache_dir
from ..errors import SAELoadError, SAENotFoundError
from ..text import printable
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
    """The registry's entry for a release, every field that is used checked (check_entry),
    or None when the release or registry is absent. A damaged registry is an SAELoadError
    naming it.

    Only the release's own block of the (large) YAML file is parsed."""
    path = path or registry_path()
    if path is None:
        return None
    text = read_text(path, "SAELens's release registry", SAELoadError, limit=REGISTRY_LIMIT)
    lines = text.splitlines(keepends=True)
    key = release + ":"
    start = next((i for i, line in enumerate(lines) if line.rstrip() == key or line.startswith(key + " ")), None)
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
    where = f"{path}: the entry for {printable(repr(release))}"
    try:
        block = yaml.safe_load("".join(lines[start:end]))
    except yaml.MarkedYAMLError as e:  # the problem and its line in the file (the message quotes the file)
        line = f" at line {start + e.problem_mark.line + 1}" if e.problem_mark else ""
        raise SAELoadError(f"{where} is not valid YAML: {printable(str(e.problem or e.context), keep='')}{line}") \
            from None
    except yaml.YAMLError as e:  # a character YAML refuses: its first line says which
        problem = str(e).split("\n")[0]
        raise SAELoadError(f"{where} is not valid YAML: {printable(problem, keep='')}") from None
    except RecursionError:  # PyYAML's parser recurses once per nested bracket
        raise SAELoadError(f"{where} is not valid YAML: it nests too deeply") from None
    except ValueError as e:  # PyYAML's constructors: an integer of over 4300 digits, a bad date
        raise SAELoadError(f"{where} holds a value YAML cannot read: {printable(str(e).split(chr(10))[0], keep='')[:200]}") \
            from None
    # the block is one key, the release (read by YAML as it will: "yes:" is a boolean key)
    entry = next(iter(block.values())) if isinstance(block, dict) and len(block) == 1 else None
    return check_entry(entry, where)


REGISTRY_LIMIT = 64 << 20  # bytes of pretrained_saes.yaml read (SAELens 6's is 1.5 MB)
# A Hugging Face repo id as the hub allows one ("owner/name"), in ASCII: it names a cache folder.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}", re.ASCII)


def check_entry(entry, where: str) -> dict:
    """A release's registry entry whose fields locate uses are of their types: repo_id a repo id,
    saes a list of mappings with distinct ids and folders that stay inside the repo, their
    neuronpedia ids printable strings and norm_scaling_factor positive numbers, conversion_func
    a string or null, config_overrides a mapping of JSON's values."""
    if not isinstance(entry, dict):
        raise SAELoadError(f"{where} is not a mapping of repo_id, saes, ... but {type(entry).__name__}")
    for field in ("repo_id", "saes"):
        if field not in entry:
            raise SAELoadError(f"{where} lacks {field}")
    repo_id = entry["repo_id"]
    if not (isinstance(repo_id, str) and _REPO_ID.fullmatch(repo_id)) or "--" in repo_id or ".." in repo_id:
        raise SAELoadError(f"{where}: repo_id must be a Hugging Face repo id (owner/name), not "
                           f"{printable(repr(repo_id))[:100]}")
    if not isinstance(entry["saes"], list):
        raise SAELoadError(f"{where}: saes must be a list, not {type(entry['saes']).__name__}")
    saes = {}
    for i, info in enumerate(entry["saes"]):
        what = f"{where}: SAE {i}"
        if not isinstance(info, dict) or "id" not in info:
            raise SAELoadError(f"{what} must be a mapping with an id (and a path)")
        sae_id = _name(info["id"], f"{what}'s id")
        if sae_id in saes:
            raise SAELoadError(f"{where} lists SAE {printable(repr(sae_id))} twice")
        what = f"{where}: SAE {printable(repr(sae_id))}"
        folder = _name(info.get("path", sae_id), f"{what}'s path", "a folder name")  # SAELens has integer ones
        inside(Path(repo_id), folder, f"{what}'s path", SAELoadError)
        neuronpedia = info.get("neuronpedia")
        if neuronpedia is not None and not isinstance(neuronpedia, str):
            raise SAELoadError(f"{what}: neuronpedia must be a string, not {type(neuronpedia).__name__}")
        if neuronpedia is not None and printable(neuronpedia, keep="") != neuronpedia:
            raise SAELoadError(f"{what}: neuronpedia {neuronpedia!r} holds control or bidirectional characters")
        factor = info.get("norm_scaling_factor")
        if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))
                                   or not 0 < factor < math.inf):
            raise SAELoadError(f"{what}: norm_scaling_factor must be a positive number, not "
                               f"{printable(repr(factor))[:40]}")
        saes[sae_id] = {"path": folder, "neuronpedia": neuronpedia, "norm_scaling_factor": factor}
    conversion = entry.get("conversion_func")
    if conversion is not None and not isinstance(conversion, str):
        raise SAELoadError(f"{where}: conversion_func must be a name or null, not {type(conversion).__name__}")
    overrides = entry.get("config_overrides") or {}
    if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
        raise SAELoadError(f"{where}: config_overrides must be a mapping of cfg.json's field names")
    _json_like(overrides, f"{where}: config_overrides", set())
    return {"repo_id": repo_id, "saes": saes, "conversion_func": conversion, "config_overrides": overrides}


def _name(value, what: str, kind: str = "a string") -> str:
    """A registry's id or path: a string, or an integer as YAML reads "path: 0"."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise SAELoadError(f"{what} must be {kind}, not {printable(repr(value))[:60]}")
    return str(value)


def _json_like(value, what: str, seen: set) -> None:
    """value holds only what cfg.json could (the overrides join its fields), each container once:
    YAML's aliases could repeat one exponentially often (or within itself)."""
    if isinstance(value, (dict, list)):
        if id(value) in seen:
            raise SAELoadError(f"{what} repeats a value by an alias (&name ... *name); write it out")
        seen.add(id(value))
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            if not isinstance(key, (str, int)):
                raise SAELoadError(f"{what} holds a key {printable(repr(key))[:40]}, not a name")
            _json_like(item, what, seen)
    elif not (value is None or isinstance(value, (bool, int, str))
              or isinstance(value, float) and math.isfinite(value)):
        kind = "a date" if isinstance(value, (datetime.date, datetime.datetime)) else type(value).__name__
        raise SAELoadError(f"{what} holds {kind} ({printable(repr(value))[:40]}), which cfg.json cannot")


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
    if entry["conversion_func"]:
        raise SAELoadError(
            f"release {release!r} is stored in the {entry['conversion_func']!r} format; tinymech reads only "
            "SAELens's own format (cfg.json + sae_weights.safetensors)"
        )
    saes = entry["saes"]
    if sae_id not in saes:
        ids = [printable(i, keep="") for i in saes]  # names from the file, shown in a terminal
        shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
        raise SAENotFoundError(f"release {release!r} has no SAE {sae_id!r}; its ids are: {shown}")
    info = saes[sae_id]
    overrides = dict(entry["config_overrides"])
    if info["neuronpedia"]:
        overrides["neuronpedia_id"] = info["neuronpedia"]
    return entry["repo_id"], info["path"], overrides, info["norm_scaling_factor"]


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
