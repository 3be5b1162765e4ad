"""Rebuild the bundled demo model and SAE from scratch: corpus, tokenizer, model, SAE, model card.

Needs apt-get (Debian) for the corpus, and the project's `[train]` extra
(torch, transformers, tokenizers, safetensors, rdata) for the model; the SAE and its
feature dashboards and labels are made by tinymech itself (train_sae.py).

Usage: python training/run_all.py [--minutes 70]
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str) -> None:
    cmd = [sys.executable, str(HERE / script), *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=70.0, help="wall-clock budget for model training")
    parser.add_argument("--steps", type=int, default=None, help="fixed number of model training steps instead")
    args = parser.parse_args()

    run("build_corpus.py")
    run("train_tokenizer.py")
    if args.steps:
        run("train_model.py", "--steps", str(args.steps))
    else:
        end = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=args.minutes)
        run("train_model.py", "--end-time", end.strftime("%H:%M"))
    run("train_sae.py", "--overwrite")  # the bundled SAE is made again, for the new model
    run("select_checkpoints.py")
    run("write_model_card.py")


if __name__ == "__main__":
    main()
