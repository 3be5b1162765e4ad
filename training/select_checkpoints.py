"""Copy intermediate checkpoints from before / around the induction-head transition into the bundle.

train_model.py saves fp16 checkpoints into the git-ignored cache at every probe
step; this picks the ones worth shipping from training_dynamics.json and copies
them to models/demo-gpt2/checkpoints/step_N/ as long as models/ stays under
the size budget (the final model, tokenizer and SAE take priority).

Usage: python training/select_checkpoints.py [--budget-mb 40]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def best_induction(record: dict) -> float:
    return max(max(row) for row in record["induction_score"])


def pick_steps(records: list[dict], available: set[int]) -> list[int]:
    """Steps just before the induction score rises and where it is halfway up, in order of preference."""
    records = [r for r in records if r["step"] in available and r["step"] > 0]
    final = max(best_induction(r) for r in records)
    start = min(best_induction(r) for r in records)
    if final - start < 0.05:
        # No induction transition happened: ship one mid-training checkpoint for dynamics demos.
        mid = records[-1]["step"] / 2
        return [min((r["step"] for r in records), key=lambda s: abs(s - mid))]
    before = [r["step"] for r in records if best_induction(r) < start + 0.1 * (final - start)]
    halfway = [r["step"] for r in records if best_induction(r) >= start + 0.5 * (final - start)]
    picks = []
    if before:
        picks.append(before[-1] if before[-1] < (halfway or [10**9])[0] else before[0])
    if halfway:
        picks.append(halfway[0])
    return list(dict.fromkeys(picks))


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/demo-gpt2")
    parser.add_argument("--cache", type=Path, default=ROOT / "training/.cache/run/checkpoints")
    parser.add_argument("--budget-mb", type=float, default=40.0)
    args = parser.parse_args()

    dynamics = json.loads((args.model / "training_dynamics.json").read_text())
    available = {int(p.name.split("_")[1]) for p in args.cache.glob("step_*")}
    target = args.model / "checkpoints"
    shutil.rmtree(target, ignore_errors=True)
    chosen = []
    for step in pick_steps(dynamics["records"], available):
        src = args.cache / f"step_{step}"
        if dir_size(args.model.parent) + dir_size(src) > args.budget_mb * 1e6:
            print(f"step {step}: skipped, would exceed {args.budget_mb} MB")
            continue
        shutil.copytree(src, target / f"step_{step}")
        chosen.append(step)
        print(f"step {step}: copied ({dir_size(src) / 1e6:.1f} MB)")
    dynamics["bundled_checkpoints"] = chosen
    (args.model / "training_dynamics.json").write_text(json.dumps(dynamics, separators=(",", ":")))
    print(f"models/ is now {dir_size(args.model.parent) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
