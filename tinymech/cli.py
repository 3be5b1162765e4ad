"""The `tinymech` command: generate text, inspect a model, open the terminal UI."""
from __future__ import annotations

import argparse
import sys

from .errors import TinymechError


def _model_arg(p: argparse.ArgumentParser):
    p.add_argument("--model", "-m", default=None,
                   help="model directory or Hugging Face hub id (default: the bundled demo model)")


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

    model = tm.load(args.model)
    sys.stdout.write(args.prompt)
    streamer = _Streamer(model, sys.stdout)
    model.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, seed=args.seed, on_token=streamer)
    streamer.flush()
    sys.stdout.write("\n")
    return 0


def _info(args) -> int:
    import tinymech as tm

    model = tm.load(args.model)
    print(model)
    print(f"path: {model.path}")
    for key, value in vars(model.cfg).items():
        print(f"  {key}: {value}")
    print(f"hook points: {len(model.hook_names())} (e.g. {model.hook_names()[2]})")
    print(f"kernels: {tm._core.kernels.variant()}, threads: {tm.get_num_threads()}")
    return 0


def _tui(args) -> int:
    from .tui.app import run_tui

    return run_tui(model_path=args.model, sae_paths=tuple(args.sae), prompt=args.prompt) or 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        from . import set_num_threads

        set_num_threads(args.threads)
    try:
        return {"generate": _generate, "info": _info, "tui": _tui}[args.command](args)
    except TinymechError as e:
        print(f"tinymech: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
