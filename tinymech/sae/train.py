"""Training an SAE or transcoder on stored activations, in the C++ core (Trainer),
and saving it in SAELens's format.

train_sae decides the schedule and what is kept; every number is crunched in the
core: each step is one Trainer.step on a shuffled batch. Around it:

- inputs (and a transcoder's outputs) are scaled so that E‖x‖ = √d, as SAELens's
  normalize_activations="expected_average_only_in"; the scale is folded into the
  saved weights (W_enc·s_in, W_dec/s_out, b_dec/s_out), which then read raw activations;
- b_dec starts at the geometric median of a sample (an SAE) or the mean output (a
  transcoder), as Gao et al. 2024 do;
- the learning rate warms up linearly and decays linearly at the end, the sparsity
  coefficient warms up linearly (SAELens's CoefficientScheduler);
- a checkpoint (the trainer's state and the position in the data) is written every
  checkpoint_every tokens and on Ctrl-C; resume=True continues from it with the same
  batches as an uninterrupted run; what out already holds is kept unless the caller says
  otherwise (a checkpoint: resume=True continues it; an SAE: overwrite=True replaces it);
- at the end the SAE is evaluated on held-out activations (and, given the model, on
  held-out text with the SAE spliced in) and metrics.json written beside it.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from ..errors import (InvalidInputError, SAEInputError, TrainingError, check_model, real_number, true_or_false,
                      whole_number)
from ..io.files import check_regular, folder_to_write, read_json
from .activations import check_hook_order, model_identity, tokenizer_sha256
from .architectures import DEFAULT_TRAINING, TRAINING, training
from .loading import CFG_FILE, WEIGHTS_FILE, parse_config
from .metrics import reconstruction_metrics_over, sae_metrics
from .sae import SAE, fold_norm_scaling
from .saving import write_atomically, write_sae_folder
from .train_data import PlannedActivations, as_activations, holdout_split, nonfinite_error
from .train_display import TrainingDisplay
from ..runtime import check_memory
from .trainer import Trainer, check_options, training_memory

CHECKPOINT = "checkpoint"
SCALE_SAMPLE = 65536  # tokens for the norm scale and the geometric median
DEAD_TOKENS = 1000 * 4096  # SAELens's dead_feature_window (1000 steps) at its batch size


@dataclasses.dataclass
class TrainConfig:
    """Everything that decides a run: a resumed run must be given the same."""

    architecture: str
    d_sae: int
    k: int | None
    n_tokens: int
    lr: float
    batch_size: int
    coefficient: float
    coefficient_warm_up_steps: int
    lr_warm_up_steps: int
    lr_decay_steps: int
    lr_end: float
    skip: bool
    b_dec_init: str
    seed: int
    options: dict
    holdout: int  # held-out tokens
    data: str     # what the activations are (data_identity): a run resumes only on the same

    @property
    def steps(self) -> int:
        return math.ceil(self.n_tokens / self.batch_size)

    def lr_at(self, step: int) -> float:
        """Linear warm-up to lr, constant, then linear decay to lr_end over the last steps."""
        if step < self.lr_warm_up_steps:
            return self.lr * (step + 1) / self.lr_warm_up_steps
        into_decay = step - (self.steps - self.lr_decay_steps)
        if self.lr_decay_steps and into_decay >= 0:
            return self.lr + (self.lr_end - self.lr) * into_decay / self.lr_decay_steps
        return self.lr

    def coefficient_at(self, step: int) -> float:
        warm = self.coefficient_warm_up_steps
        return self.coefficient * min(step, warm) / warm if warm else self.coefficient


def train_sae(acts, architecture: str = DEFAULT_TRAINING, d_sae: int | None = None, k: int | None = None,
              n_tokens: int | None = None, lr: float | None = None, batch_size: int = 4096, out=None, *,
              coefficient: float | None = None, coefficient_warm_up_steps: int | None = None,
              lr_warm_up_steps: int | None = None, lr_decay_steps: int | None = None, lr_end: float = 0.0,
              skip: bool = False, b_dec_init: str | None = None, seed: int = 0,
              checkpoint_every: int | None = None, resume: bool = False, overwrite: bool = False, model=None,
              holdout: int | None = None, progress=True, **options) -> SAE:
    """Train an SAE (or a transcoder, when the activations hold outputs) and return it.

    acts: an ActivationStore (tm.collect_activations), its folder, or an array
    [n, d_in] (a pair (x, y) for a transcoder). architecture: a training method of the
    registry (tinymech.sae.architectures.TRAINING): topk, batchtopk, jumprelu or standard
    (ReLU + L1). d_sae: the number of latents (default
    8 × d_in); k: active latents per token (topk, batchtopk). n_tokens: training
    tokens (default: one pass over the activations; more passes reshuffle). lr:
    Adam's learning rate (default 4e-4 / √(d_sae / 16384): twice Gao et al.'s
    scaling, which was set for runs of billions of tokens).
    out: the folder to write (SAELens's format, metrics.json, checkpoints; created if
    missing); required for checkpoints and resume. What out already holds is kept unless
    told: a checkpoint of an interrupted run is continued with resume=True (refused
    otherwise, unless overwrite=True starts over); an SAE (cfg.json or
    sae_weights.safetensors) is replaced only with overwrite=True, and resume=True with
    no checkpoint beside it is refused (a finished run: nothing to resume). resume=True
    with no checkpoint and no SAE starts a new run. model: the Model the activations came
    from, for the CE-loss metrics on held-out text. options: passed to the Trainer (e.g.
    aux_loss_coefficient, dead_tokens, jumprelu_bandwidth, max_grad_norm: see Trainer).
    Refused before anything is trained: a run that would need more memory than the
    machine has, and an out that cannot be a folder.
    """
    if isinstance(acts, PlannedActivations):
        raise InvalidInputError("PlannedActivations are for check_training: train on the collected activations")
    out, data, cfg, every, n_train, held = _plan(
        acts, architecture, d_sae, k, n_tokens, lr, batch_size, out, coefficient, coefficient_warm_up_steps,
        lr_warm_up_steps, lr_decay_steps, lr_end, skip, b_dec_init, seed, checkpoint_every, resume, overwrite, model,
        holdout, options)
    if out is not None:
        _make_folder(out)
    run = _resume(out, cfg, data) if resume else None
    if run is None:
        run = _start(cfg, data, n_train)
    _parse(_sae_config(run.trainer, cfg, data))  # what the run will save must load: refused now, not once trained
    display = TrainingDisplay(cfg.n_tokens, progress)
    try:
        _loop(run, cfg, data, n_train, out, every, display)
    except KeyboardInterrupt:
        if out is not None:
            _save_checkpoint(out, run, cfg)
            display.message(f"interrupted: checkpoint saved at {run.tokens_done:,} tokens in {out / CHECKPOINT}; "
                            "train again with resume=True (--resume) to continue")
        raise
    finally:
        display.close()
    if out is not None:  # evaluating takes a while: an interruption there keeps the trained weights
        _save_checkpoint(out, run, cfg)
    sae = _finish(run, cfg, data, n_train, held, out, model, display)
    if out is not None:  # the run is over: what it saved to go on is of no more use
        shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    return sae


def check_training(acts, **kwargs) -> None:
    """What train_sae(acts, **kwargs) refuses before it trains, refused now and with nothing written:
    the arguments, the hooks, the memory the run needs, what out holds. acts may also be a
    tinymech.sae.train_data.PlannedActivations, the activations a collection is to give: the train-sae
    command checks its run before collecting, which takes long."""
    bound = inspect.signature(train_sae).bind(acts, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    del arguments["progress"]  # the display is made when training starts
    _plan(**arguments)


def _plan(acts, architecture, d_sae, k, n_tokens, lr, batch_size, out, coefficient, coefficient_warm_up_steps,
          lr_warm_up_steps, lr_decay_steps, lr_end, skip, b_dec_init, seed, checkpoint_every, resume, overwrite, model,
          holdout, options):
    """(out as a Path or None, the activations, the run's TrainConfig, checkpoint_every, training tokens,
    held-out tokens): train_sae's arguments checked, and what out holds, before anything is written."""
    out = folder_to_write(out)
    data = as_activations(acts)
    _check_model(data, model)
    cfg = _config(data, architecture, d_sae, k, n_tokens, lr, batch_size, coefficient, coefficient_warm_up_steps,
                  lr_warm_up_steps, lr_decay_steps, lr_end, skip, b_dec_init, seed, holdout, options)
    every = None if checkpoint_every is None else whole_number(checkpoint_every, "checkpoint_every", 1)
    resume, overwrite = true_or_false(resume, "resume"), true_or_false(overwrite, "overwrite")
    if (every or resume) and out is None:
        raise InvalidInputError("checkpoints and resume need out= (the folder they are kept in)")
    n_train, held = holdout_split(data, holdout)
    _check_memory(cfg, data, n_train)
    if out is not None:
        _check_contents(out, resume, overwrite)
    return out, data, cfg, every, n_train, held


# ---- configuration ----------------------------------------------------------------------

def _config(data, architecture, d_sae, k, n_tokens, lr, batch_size, coefficient, coefficient_warm_up_steps,
            lr_warm_up_steps, lr_decay_steps, lr_end, skip, b_dec_init, seed, holdout, options) -> TrainConfig:
    method = training(architecture)
    d_sae = whole_number(8 * data.d_in if d_sae is None else d_sae, "d_sae", 1)
    if method.k is not None:
        if k is None:
            raise InvalidInputError(f"a {architecture} SAE needs k (the active latents per token)")
        k = whole_number(k, "k", 1)
        if k > d_sae:
            raise InvalidInputError(f"k={k} exceeds d_sae={d_sae}")
    elif k is not None:
        raise InvalidInputError(f"k is for {', '.join(n for n, t in TRAINING.items() if t.k)} SAEs, not {architecture}")
    n_train, held = holdout_split(data, holdout)
    batch_size = whole_number(batch_size, "batch_size", 1)
    if batch_size > n_train:
        raise InvalidInputError(f"batch_size {batch_size} exceeds the {n_train} training tokens: collect more "
                                "activations or use a smaller batch_size")
    n_tokens = whole_number(n_train if n_tokens is None else n_tokens, "n_tokens", 1)
    lr = real_number(4e-4 / math.sqrt(d_sae / 16384) if lr is None else lr, "lr")
    if not 0 < lr < 1:
        raise InvalidInputError(f"lr must be in (0, 1), got {lr}")
    steps = math.ceil(n_tokens / batch_size)
    for name, value in (("coefficient", coefficient), ("coefficient_warm_up_steps", coefficient_warm_up_steps)):
        if method.k is not None and value is not None:  # it would train the same weights whatever its value
            raise InvalidInputError(f"{name} is for the SAEs with a sparsity penalty, not {architecture}: its "
                                    "sparsity is k")
    coefficient = real_number(method.coefficient if coefficient is None else coefficient, "coefficient")
    if not 0 <= coefficient < math.inf:
        raise InvalidInputError(f"coefficient must be a finite number >= 0, got {coefficient}")
    lr_end = real_number(lr_end, "lr_end")
    if not 0 <= lr_end <= lr:
        raise InvalidInputError(f"lr_end must be in [0, lr={lr}], got {lr_end}")
    warm = (round(method.warm_up * steps) if coefficient_warm_up_steps is None
            else whole_number(coefficient_warm_up_steps, "coefficient_warm_up_steps", 0))
    lr_warm = steps // 20 if lr_warm_up_steps is None else whole_number(lr_warm_up_steps, "lr_warm_up_steps", 0)
    lr_decay = steps // 5 if lr_decay_steps is None else whole_number(lr_decay_steps, "lr_decay_steps", 0)
    if lr_warm + lr_decay > steps:
        raise InvalidInputError(f"lr_warm_up_steps + lr_decay_steps = {lr_warm + lr_decay} exceed the {steps} steps")
    transcoder = data.d_out is not None
    b_dec_init = b_dec_init or ("mean" if transcoder else "geometric_median")
    if b_dec_init not in ("geometric_median", "mean", "zeros"):
        raise InvalidInputError(f"b_dec_init must be 'geometric_median', 'mean' or 'zeros', not {b_dec_init!r}")
    if true_or_false(skip, "skip") and not transcoder:
        raise InvalidInputError("skip=True makes a skip transcoder: the activations need outputs (hook_out)")
    # a transcoder writing a hook before the one it reads: refused here, not when its trained config is read
    check_hook_order(data.meta.get("hook"), data.meta.get("hook_out"), data.d_in, data.d_out)
    options = {name: _plain(value, name) for name, value in options.items()}
    check_options(architecture, options)  # now: a bad one would otherwise fail after out was claimed
    # A latent is dead (and AuxK revives it) after DEAD_TOKENS without firing, or a tenth of a shorter run.
    options.setdefault("dead_tokens", min(DEAD_TOKENS, max(batch_size, n_tokens // 10)))
    return TrainConfig(architecture, d_sae, k, n_tokens, lr, batch_size, coefficient, warm, lr_warm, lr_decay,
                       lr_end, bool(skip), b_dec_init, whole_number(seed, "seed", 0), options, held,
                       data.identity())


def _plain(value, name: str):
    """A Trainer option as a plain Python value (numpy scalars would not go into train.json)."""
    if value is None:  # e.g. max_grad_norm=None: no clipping (the Trainer says which take None)
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    raise InvalidInputError(f"the training option {name} must be a number or a bool, not {value!r}")


def _check_model(data, model) -> None:
    """The model for the CE metrics must be the one the activations came from."""
    if model is None:
        return
    check_model(model, hint=" (train_sae's model= is the one the activations came from, for the CE metrics)")
    if not data.meta.get("model"):  # arrays, or activations yet to be collected: nothing to compare
        return
    name = model_identity(model)
    if data.meta.get("model") != name or data.meta.get("tokenizer_sha256") != tokenizer_sha256(model):
        raise InvalidInputError(f"the activations were collected from {data.meta.get('model')!r}, not from "
                                f"{name!r}: pass the model they came from (or none)")


# ---- the folder -------------------------------------------------------------------------

def check_out(out, resume: bool = False, overwrite: bool = False) -> Path | None:
    """What train_sae(out=out, resume=..., overwrite=...) would refuse about its folder, refused now
    (InvalidInputError) and without writing anything: for callers with work to do first (the
    train-sae command collects activations)."""
    folder = folder_to_write(out)
    if folder is not None:
        _check_contents(folder, true_or_false(resume, "resume"), true_or_false(overwrite, "overwrite"))
    return folder


def _check_contents(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to throw away what out holds unless told: a checkpoint (resume=True continues it,
    overwrite=True starts over) or an SAE (overwrite=True replaces it)."""
    checkpoint = _checkpoint_description(out)
    sae_files = [name for name in (CFG_FILE, WEIGHTS_FILE) if (out / name).exists()]
    if checkpoint and not resume and not overwrite:
        raise InvalidInputError(f"{out} holds the checkpoint of an interrupted run ({checkpoint}): pass "
                                "resume=True (--resume) to continue it, overwrite=True (--overwrite) to start over, "
                                "or choose another out (or delete the folder)")
    if sae_files and not checkpoint and not overwrite:
        what = (f"holds a finished SAE ({', '.join(sae_files)}) and no checkpoint: nothing to resume; load it with "
                "tm.SAE.load," if resume else f"already holds an SAE ({', '.join(sae_files)}):")
        raise InvalidInputError(f"{out} {what} pass overwrite=True (--overwrite) to train a new one in its place, "
                                "or choose another out")


def _make_folder(out: Path) -> None:
    """Create out before training: a folder that cannot be made, or written in, fails now, not after the run."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise InvalidInputError(f"cannot write in the folder out={str(out)!r} ({e.strerror or e}): choose "
                                "another out") from e


def _checkpoint_description(out: Path) -> str | None:
    """The step and tokens of the checkpoint in out, None where there is none."""
    info = out / CHECKPOINT / "train.json"
    if not info.is_file():
        return None
    try:  # read within read_json's limits: a damaged file must not stop the refusal it words
        saved = read_json(info, "training checkpoint", TrainingError)
        return f"step {int(saved['step']):,}, {int(saved['tokens_done']):,} tokens"
    except (TrainingError, ValueError, KeyError, TypeError, OverflowError):
        return f"{info}, which cannot be read"


# ---- memory -----------------------------------------------------------------------------

def _check_memory(cfg: TrainConfig, data, n_train: int) -> None:
    """Refuse a run the machine cannot hold before the core zero-fills it (the OOM killer, or a
    bare bad_alloc, otherwise): the trainer, its steps' buffers, and the sample for the scales
    and b_dec (float32 rows, float64 copies in the geometric median)."""
    need = training_memory(cfg.architecture, data.d_in, cfg.d_sae, d_out=data.d_out, skip=cfg.skip, k=cfg.k,
                           batch_size=cfg.batch_size)
    width = data.d_in + (data.d_out or 0)
    need += min(n_train, SCALE_SAMPLE) * width * 32 + cfg.batch_size * width * 8
    check_memory(need, f"training {cfg.d_sae:,} latents on batches of {cfg.batch_size:,}",
                 "choose a smaller d_sae or batch_size")


# ---- the run ---------------------------------------------------------------------------

@dataclasses.dataclass
class _Run:
    trainer: Trainer
    scale_in: float
    scale_out: float
    tokens_done: int = 0
    step: int = 0
    seconds: float = 0.0
    last: dict = dataclasses.field(default_factory=dict)
    batch_end: int = 0  # tokens_done once the step in flight is counted (_catch_up)


def _start(cfg: TrainConfig, data, n_train: int) -> _Run:
    x, y = _sample(data, n_train, cfg.seed)
    if not (np.isfinite(x).all() and (y is None or np.isfinite(y).all())):
        raise nonfinite_error(data)
    scale_in = _norm_scale(x)
    scale_out = scale_in if y is None else _norm_scale(y)
    trainer = Trainer(cfg.architecture, data.d_in, cfg.d_sae, d_out=data.d_out, skip=cfg.skip, k=cfg.k,
                      seed=cfg.seed, **cfg.options)
    target = (x if y is None else y) * scale_out
    if cfg.b_dec_init == "geometric_median":
        trainer.set_params(b_dec=geometric_median(target))
    elif cfg.b_dec_init == "mean":
        trainer.set_params(b_dec=target.mean(0, dtype=np.float64).astype(np.float32))
    return _Run(trainer, scale_in, scale_out)


def _sample(data, n_train: int, seed: int):
    """Up to SCALE_SAMPLE random training rows (x, y or None)."""
    n = min(n_train, SCALE_SAMPLE)
    return next(iter(data.batches(n, seed=seed + 7919, holdout=data.n_tokens - n_train)))


def _norm_scale(x: np.ndarray) -> float:
    """√d / mean ‖x‖: scaled rows have an average norm of √d (SAELens's estimate_scaling_factor)."""
    mean_norm = float(np.linalg.norm(x.astype(np.float64), axis=1).mean())
    if not math.isfinite(mean_norm) or mean_norm == 0:
        raise SAEInputError(f"the activations' mean norm is {mean_norm}: nothing to train on")
    return math.sqrt(x.shape[1]) / mean_norm


def geometric_median(x: np.ndarray, iterations: int = 100, tol: float = 1e-6) -> np.ndarray:
    """The point minimizing the summed distances to the rows of x (Weiszfeld's iteration), float32."""
    x = x.astype(np.float64)
    m = x.mean(0)
    for _ in range(iterations):
        w = 1.0 / np.maximum(np.linalg.norm(x - m, axis=1), 1e-12)
        new = (w[:, None] * x).sum(0) / w.sum()
        done = np.linalg.norm(new - m) <= tol * max(np.linalg.norm(m), 1e-12)
        m = new
        if done:
            break
    return m.astype(np.float32)


def _batches(data, cfg: TrainConfig, n_train: int, tokens_done: int):
    """Shuffled training batches from token tokens_done of the stream on (passes follow one another)."""
    return data.batches(cfg.batch_size, seed=cfg.seed, start_token=tokens_done, holdout=data.n_tokens - n_train)


def _loop(run: _Run, cfg: TrainConfig, data, n_train: int, out, every, display) -> None:
    next_checkpoint = None if every is None else (run.tokens_done // every + 1) * every
    started = time.monotonic() - run.seconds
    for x, y in _batches(data, cfg, n_train, run.tokens_done):
        if run.tokens_done >= cfg.n_tokens:
            break
        take = cfg.n_tokens - run.tokens_done
        if len(x) > take:  # the budget ends inside this batch
            x, y = x[:take], None if y is None else y[:take]
        if not (np.isfinite(x).all() and (y is None or np.isfinite(y).all())):
            raise nonfinite_error(data)
        run.batch_end = run.tokens_done + len(x)
        stats = run.trainer.step(x * run.scale_in, None if y is None else y * run.scale_out,
                                 lr=cfg.lr_at(run.step), coefficient=cfg.coefficient_at(run.step))
        if not math.isfinite(stats["loss"]):
            raise TrainingError(f"the loss became {stats['loss']} at step {run.step} ({run.tokens_done:,} tokens): "
                                "the run diverged; try a smaller lr")
        run.tokens_done = run.batch_end  # before the step: a Ctrl-C between the two is caught up the same
        run.step += 1
        run.seconds = time.monotonic() - started
        run.last = dict(stats, lr=cfg.lr_at(run.step - 1))
        display.update(run.tokens_done, run.seconds, run.last, run.trainer.d_sae)
        if next_checkpoint is not None and run.tokens_done >= next_checkpoint and run.tokens_done < cfg.n_tokens:
            _save_checkpoint(out, run, cfg)
            next_checkpoint = (run.tokens_done // every + 1) * every


# ---- checkpoints ------------------------------------------------------------------------

def _save_checkpoint(out: Path, run: _Run, cfg: TrainConfig) -> None:
    """The trainer's state in state-<step>.safetensors, then train.json naming it; older states
    are removed only once train.json is written, so a failed write leaves the last checkpoint whole."""
    _catch_up(run)
    folder = out / CHECKPOINT
    name = f"state-{run.step}.safetensors"
    info = dict(state=name, tokens_done=run.tokens_done, step=run.step, seconds=run.seconds,
                scale_in=run.scale_in, scale_out=run.scale_out, config=dataclasses.asdict(cfg))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / name, lambda p: save_file(_state_arrays(run.trainer.state()), str(p)))
        write_atomically(folder / "train.json", lambda p: p.write_text(json.dumps(info, indent=2)))
    except OSError as e:
        raise TrainingError(f"could not write a checkpoint in {folder} ({e.strerror or e}); the previous "
                            "checkpoint there is intact") from e
    for old in folder.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _catch_up(run: _Run) -> None:
    """Count the step in flight when the core took it but the loop had not counted it yet (a Ctrl-C
    landing between the two): the core's own count decides, and resume checks the two agree."""
    if run.trainer.steps != run.step:
        run.step, run.tokens_done = run.trainer.steps, run.batch_end


def _state_arrays(state: dict) -> dict:
    # C order without a copy (the state is the largest thing held); ascontiguousarray would make scalars 1-d
    return {k: np.asarray(v, order="C") for k, v in state.items()}


def _resume(out: Path, cfg: TrainConfig, data) -> _Run | None:
    """The run saved in out/checkpoint, if any; a checkpoint of another run, or a damaged one, is refused."""
    folder = out / CHECKPOINT
    if not (folder / "train.json").is_file():
        return None
    info = read_json(folder / "train.json", "training checkpoint", TrainingError)
    if not isinstance(info.get("config"), dict):
        raise TrainingError(f"{folder / 'train.json'} is not a checkpoint tinymech wrote")
    saved, now = _as_spelled_now(info["config"], cfg), dataclasses.asdict(cfg)
    differ = [key for key in now if key != "n_tokens" and saved.get(key) != now[key]]
    if differ:
        raise InvalidInputError(f"the checkpoint in {folder} is of a run with other settings "
                                f"({', '.join(f'{key}: {saved.get(key)!r} there, {now[key]!r} now' for key in differ)})")
    name = info.get("state")
    if not (isinstance(name, str) and re.fullmatch(r"state-\d+\.safetensors", name)):
        raise TrainingError(f"{folder / 'train.json'} names no state file of its own: {name!r}")
    try:
        numbers = {key: whole_number(info.get(key), key, 0, error=TrainingError) for key in ("tokens_done", "step")}
        scales = {key: real_number(info.get(key), key, error=TrainingError) for key in ("scale_in", "scale_out",
                                                                                       "seconds")}
        check_regular(folder / name, TrainingError)  # a FIFO would block load_file, the GIL held
        state = load_file(str(folder / name))
        trainer = Trainer.from_state(state, cfg.architecture, data.d_in, cfg.d_sae, d_out=data.d_out,
                                     skip=cfg.skip, k=cfg.k, seed=cfg.seed, **cfg.options)
    except (OSError, ValueError, TypeError, SafetensorError, InvalidInputError) as e:
        raise TrainingError(f"the checkpoint in {folder} cannot be read ({e}); remove it to start over") from e
    if not all(0 < scales[key] < math.inf for key in ("scale_in", "scale_out")) or trainer.steps != numbers["step"]:
        raise TrainingError(f"the checkpoint in {folder} does not hold together (scales, or steps "
                            f"{trainer.steps} in its state but {numbers['step']} in train.json)")
    return _Run(trainer, scales["scale_in"], scales["scale_out"], numbers["tokens_done"], numbers["step"],
                scales["seconds"])


def _as_spelled_now(saved: dict, cfg: TrainConfig) -> dict:
    """A checkpoint's settings as this version spells them: before, 0 or less turned gradient
    clipping and the decoder's initial norm off (None does now, and 0 is refused), and topk and
    batchtopk took a coefficient they never used (refused now)."""
    saved = dict(saved)
    if isinstance(saved.get("options"), dict):
        off = ("max_grad_norm", "decoder_init_norm")
        saved["options"] = {k: None if k in off and type(v) in (int, float) and v <= 0 else v
                            for k, v in saved["options"].items()}
    if saved.get("architecture") == cfg.architecture and training(cfg.architecture).k is not None:
        saved.update(coefficient=cfg.coefficient, coefficient_warm_up_steps=cfg.coefficient_warm_up_steps)
    return saved


# ---- the result -------------------------------------------------------------------------

def _finish(run: _Run, cfg: TrainConfig, data, n_train: int, held: int, out, model, display) -> SAE:
    weights = fold_norm_scaling(run.trainer.sae_weights(), run.scale_in, run.scale_out, skip=True)
    config = _sae_config(run.trainer, cfg, data)
    sae = SAE(_parse(config), weights)
    metrics = _evaluate(sae, data, n_train, held, model, run, cfg)
    sae.log_sparsity = np.log10(np.maximum(metrics.pop("_density"), 1e-10)).astype(np.float32)
    display.summary(metrics)
    if out is not None:
        write_sae_folder(out, config, weights, sae.log_sparsity,
                         {"metrics.json": json.dumps(_json_safe(metrics), indent=2) + "\n"})
        return SAE.load(out)  # its metrics read back from metrics.json
    sae.metrics = metrics
    return sae


def _json_safe(value):
    """NaN and infinities (a CE score when zero ablation costs nothing) as null: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _sae_config(trainer: Trainer, cfg: TrainConfig, data) -> dict:
    meta = data.meta
    config = dict(trainer.sae_config(), d_in=data.d_in, d_sae=cfg.d_sae, dtype="float32", device="cpu",
                  normalize_activations="none", reshape_activations="none")
    config.setdefault("apply_b_dec_to_input", data.d_out is None)
    if data.d_out is not None:
        config["d_out"] = data.d_out
    config["metadata"] = dict(
        model_name=meta.get("model"), hook_name=meta.get("hook"), hook_name_out=meta.get("hook_out"),
        hook_head_index=None, context_size=meta.get("context"), prepend_bos=meta.get("prepend_bos", True),
        exclude_special_tokens=meta.get("excluded_token_ids", []), dataset_path=meta.get("corpus"),
        model_from_pretrained_kwargs={}, sae_lens_training_version=None,
        tinymech_training={k: v for k, v in dataclasses.asdict(cfg).items()},
    )
    return config


def _parse(config: dict):
    return parse_config(config, {})  # the same reading as a saved folder gets


def _evaluate(sae: SAE, data, n_train: int, held: int, model, run: _Run, cfg: TrainConfig) -> dict:
    first, last = (n_train, data.n_tokens) if held else (0, min(data.n_tokens, SCALE_SAMPLE))
    rec = reconstruction_metrics_over(sae, lambda a, b: data.rows(first + a, first + b), last - first, chunk=65536)
    metrics = dict(evaluated_on="held-out activations" if held else "training activations (no holdout)",
                   **rec.as_dict())
    tokens = data.holdout_tokens(n_train) if held and model is not None else None
    if tokens is not None and len(tokens):
        ce = sae_metrics(model, sae, tokens)
        metrics.update(ce_clean=ce.ce_clean, ce_sae=ce.ce_sae, ce_zero_ablation=ce.ce_zero_ablation,
                       ce_loss_score=ce.ce_loss_recovered, delta_lm_loss=ce.delta_lm_loss,
                       ce_tokens=ce.n_tokens)
    density = rec.feature_density
    edges = [10.0**e for e in range(-6, 1)]
    live = density[density > 0]
    counts = np.histogram(live, bins=[0.0] + edges)[0]  # [a, b), the last bin closed
    metrics["density_histogram"] = {"dead": rec.dead_features, **{
        f"[{lo:g}, {hi:g}{']' if hi == 1 else ')'}": int(c) for lo, hi, c in zip([0.0] + edges, edges, counts)}}
    metrics.update(architecture=cfg.architecture, d_sae=cfg.d_sae, k=cfg.k, train_tokens=run.tokens_done,
                   steps=run.step, seconds=round(run.seconds, 2),
                   tokens_per_second=round(run.tokens_done / max(run.seconds, 1e-9), 1),
                   final_training_step=run.last)
    metrics["_density"] = density
    return metrics
