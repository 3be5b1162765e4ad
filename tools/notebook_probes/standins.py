"""Local stand-ins for the models and SAEs the seven notebooks load from the hub.

The notebooks call HookedTransformer.from_pretrained("gpt2-small") and
SAE.from_pretrained(release, sae_id). Nothing reaches the hub here, so build() writes
an offline Hugging Face cache in which those names hold the bundled demo model
(models/demo-gpt2: 4 layers, 8 heads, d_model 256, vocabulary 8192) and SAEs for it.
Both libraries then read the same files through their ordinary loading code, and the
probes' loading calls run as written.

    hub = standins.build(root)     # before huggingface_hub is imported
    os.environ.update(standins.offline_env(hub))
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO = REPO_ROOT / "models" / "demo-gpt2"
DEMO_SAE = DEMO / "saes" / "blocks.2.hook_resid_pre"
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # any 40-hex id: the snapshots' folder name

# hub model ids (TransformerLens's official names and tinymech's aliases) -> the demo model
MODEL_IDS = ("gpt2", "openai-community/gpt2", "distilgpt2", "distilbert/distilgpt2")
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json")

# SAELens releases the notebooks load: (repo id, folder of the notebook's sae_id, the hook the stand-in reads)
SAE_RELEASES = {
    # basic_loading_and_analysing: gpt2-small-res-jb, blocks.8.hook_resid_pre -> the demo SAE (layer 2)
    ("gpt2-small-res-jb", "blocks.8.hook_resid_pre"): (
        "jbloom/GPT2-Small-SAEs-Reformatted", "blocks.8.hook_resid_pre", "blocks.2.hook_resid_pre"),
    # using_an_sae_as_a_steering_vector: gemma-2b-res-jb, blocks.6.hook_resid_post -> the demo SAE read at
    # blocks.1.hook_resid_post (the same activation as blocks.2.hook_resid_pre)
    ("gemma-2b-res-jb", "blocks.6.hook_resid_post"): (
        "jbloom/Gemma-2b-Residual-Stream-SAEs", "gemma_2b_blocks.6.hook_resid_post_16384_anthropic_fast_lr",
        "blocks.1.hook_resid_post"),
}

N_LAYERS, N_HEADS, D_HEAD = 4, 8, 32  # the demo model's shape


def _snapshot(hub: Path, repo_id: str) -> Path:
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def _sae_copy(dest: Path, hook_name: str) -> None:
    """The demo SAE in the flat cfg.json of the hub's older releases (metadata at the top level, as
    jbloom's SAEs have it), which is where SAELens applies a release's neuronpedia id."""
    dest.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((DEMO_SAE / "cfg.json").read_text())
    metadata = cfg.pop("metadata")
    metadata.pop("tinymech_training", None)
    metadata.pop("sae_lens_version", None)
    cfg.update(metadata, hook_name=hook_name)
    (dest / "cfg.json").write_text(json.dumps(cfg, indent=2))
    for name in ("sae_weights.safetensors", "sparsity.safetensors"):
        shutil.copyfile(DEMO_SAE / name, dest / name)


def hook_z_saes(root: Path) -> dict[int, Path]:
    """Hooked_SAE_Transformer_Demo's attention-output SAEs (gpt2-small-hook-z-kk, a .pt format the
    stand-in cannot mimic): random standard SAEs on each layer's hook_z, saved by SAELens; the
    probes' setup loads them with SAE.load_from_disk."""
    import sys

    sys.path.insert(0, str(REPO_ROOT / "tests" / "support"))
    from sae_factory import lens_sae

    paths = {}
    for layer in range(N_LAYERS):
        path = root / "hook_z_saes" / f"blocks.{layer}.attn.hook_z"
        if not (path / "cfg.json").is_file():
            sae = lens_sae("standard", N_HEADS * D_HEAD, 512, hook=f"blocks.{layer}.attn.hook_z", seed=layer,
                           std=0.05, reshape_activations="hook_z")
            sae.save_model(path)
        paths[layer] = path
    return paths


def build(root: Path) -> Path:
    """Write the offline cache under root (idempotent); returns the hub folder (HF_HUB_CACHE)."""
    hub = Path(root) / "hub"
    for repo_id in MODEL_IDS:
        snap = _snapshot(hub, repo_id)
        for name in MODEL_FILES:
            if not (snap / name).exists():
                shutil.copyfile(DEMO / name, snap / name)
        # the hub's gpt2 config.json also gives n_ctx, which TransformerLens reads
        config = json.loads((DEMO / "config.json").read_text())
        config.setdefault("n_ctx", config["n_positions"])
        (snap / "config.json").write_text(json.dumps(config, indent=2))
    for (_, _), (repo_id, folder, hook) in SAE_RELEASES.items():
        _sae_copy(_snapshot(hub, repo_id) / folder, hook)
    hook_z_saes(Path(root))
    return hub


def offline_env(hub: Path) -> dict[str, str]:
    return {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "BROWSER": "true"}
