"""The `tinymech` command: generate text, inspect a model, open the terminal UI."""
from __future__ import annotations

import argparse
import sys

from .errors import TinymechError


def _model_arg(p: argparse.ArgumentParser, dtype: bool = True):
    p.add_argument("--model", "-m", default=None,
                   help="model directory or Hugging Face hub id (default: the bundled demo model)")
    if dtype:
        p.add_argument("--dtype", choices=["float32", "bf16"], default="float32",
                       help="weight storage: bf16 halves memory traffic (faster decoding), arithmetic stays float32")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinymech", description="CPU-native mechanistic interpretability")
    parser.add_argument("--threads", type=int, default=0, help="threads to use (default: all cores)")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="continue a prompt, streaming tokens")
    _model_arg(gen)
    gen.add_argument("prompt")
    gen.add_argument("-n", "--max-new-tokens", type=int, default=20)
    gen.add_argument("-t", "--temperature", type=float, default=0.0, help="0 means greedy (default)")
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=None)

    info = sub.add_parser("info", help="describe a model: config and hook points")
    _model_arg(info)

    dyn = sub.add_parser("dynamics", help="plot a model's training dynamics (loss, induction heads forming)")
    _model_arg(dyn, dtype=False)

    tui = sub.add_parser("tui", help="open the terminal UI")
    _model_arg(tui)
    tui.add_argument("--sae", action="append", default=[], help="SAE directory (SAELens format); repeatable")
    tui.add_argument("prompt", nargs="?", default=None)
    return parser


class _Streamer:
    """Prints decoded text as tokens arrive; decodes the whole continuation each
    time so characters split across tokens come out whole."""

    def __init__(self, model, out):
        self.model, self.out, self.ids, self.shown = model, out, [], ""

    def __call__(self, new_ids):
        if self.model.tokenizer and int(new_ids[0]) == self.model.tokenizer.eos_token_id:
            return True  # the end of text is not part of it
        self.ids.append(int(new_ids[0]))
        if not self.model.to_string(self.ids).endswith("\ufffd"):  # wait for a character's other bytes
            self.flush()

    def flush(self):
        text = self.model.to_string(self.ids)
        self.out.write(text[len(self.shown):])
        self.out.flush()
        self.shown = text


def _generate(args) -> int:
    import tinymech as tm

    model = tm.load(args.model, dtype=args.dtype)
    sys.stdout.write(args.prompt)
    streamer = _Streamer(model, sys.stdout)
    model.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, seed=args.seed, on_token=streamer)
    streamer.flush()
    sys.stdout.write("\n")
    return 0


def _info(args) -> int:
    import tinymech as tm

    model = tm.load(args.model, dtype=args.dtype)
    print(model)
    print(f"path: {model.path}")
    for key, value in vars(model.cfg).items():
        print(f"  {key}: {value}")
    print(f"hook points: {len(model.hook_names())} (e.g. {model.hook_names()[2]})")
    print(f"kernels: {tm._core.kernels.variant()}, threads: {tm.get_num_threads()}")
    return 0


def _dynamics(args) -> int:
    import json

    import numpy as np

    from .errors import ModelNotFoundError
    from .loading import default_model_dir, resolve_model_dir
    from .plotting import heatmap, line_chart

    model_dir = default_model_dir() if args.model is None else resolve_model_dir(args.model)
    path = model_dir / "training_dynamics.json"
    if not path.is_file():
        raise ModelNotFoundError(f"no training_dynamics.json beside the model ({path})")
    records = json.loads(path.read_text())["records"]
    steps = [r["step"] for r in records]
    print(line_chart({"train loss": (steps, [r["train_loss"] for r in records]),
                      "validation loss": (steps, [r["val_loss"] for r in records])}, title="Loss"))
    print()
    print(line_chart({"first half": (steps, [r["rep_loss_first_half"] for r in records]),
                      "second half (copyable)": (steps, [r["rep_loss_second_half"] for r in records])},
                     title="Loss on repeated random tokens: the second half drops when induction heads form"))
    print()
    ind = np.array([r["induction_score"] for r in records])  # [record, layer, head]
    prev = np.array([r["prev_token_score"] for r in records])
    print(line_chart({"best induction score": (steps, ind.max(axis=(1, 2))),
                      "best previous-token score": (steps, prev.max(axis=(1, 2)))}, title="Head scores"))
    print()
    n_layers, n_heads = ind.shape[1:]
    print(heatmap(ind[-1], [f"L{l}" for l in range(n_layers)], [f"H{h}" for h in range(n_heads)],
                  title=f"Induction scores at step {steps[-1]}", vmin=0, vmax=1))
    return 0


def _tui(args) -> int:
    from .tui.app import run_tui

    return run_tui(model_path=args.model, sae_paths=tuple(args.sae), prompt=args.prompt, dtype=args.dtype) or 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        from . import set_num_threads

        set_num_threads(args.threads)
    try:
        return {"generate": _generate, "info": _info, "dynamics": _dynamics, "tui": _tui}[args.command](args)
    except TinymechError as e:
        print(f"tinymech: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
