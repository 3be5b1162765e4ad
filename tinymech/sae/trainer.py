"""Training one SAE or transcoder natively: `Trainer` holds the parameters, the Adam
moments and the dead-latent counters in the C++ core (csrc/sae/train.hpp), and `step`
runs SAELens 6.54's training step on a batch (forward, loss, backward,
clip_grad_norm_(1.0), torch.optim.Adam). Learning-rate and coefficient schedules,
normalization and saving belong to the caller (tinymech/sae/train.py).

Deviations from SAELens: dead latents are counted in tokens since they last fired
(`dead_tokens`, SAELens's dead_feature_window in steps times the batch size).
SAELens trains no transcoders; here they train as its SAEs do, with y as the target
of the MSE and of AuxK (k_aux = d_out // 2, as EleutherAI's sparsify) and no b_dec
subtracted from the input.
"""
from __future__ import annotations

import threading

import numpy as np

from .. import _core
from ..errors import InvalidInputError, SAEInputError, real_number, whole_number
from ..runtime import check_memory
from .architectures import training

# Options and their defaults (SAELens's names and values; dead_tokens: 1000 steps x 4096 tokens).
DEFAULTS = {
    "rescale_acts_by_decoder_norm": True,
    "apply_b_dec_to_input": None,  # True for SAEs, False for transcoders
    "aux_loss_coefficient": 1.0,
    "topk_threshold_lr": 0.01,
    "jumprelu_bandwidth": 0.05,
    "jumprelu_init_threshold": 0.01,
    "decoder_init_norm": 0.1,
    "dead_tokens": 1000 * 4096,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_eps": 1e-8,
    "max_grad_norm": 1.0,
}
MAX_COUNT = 2**62  # tokens and steps: far beyond any run, and no int64 overflow when one is added
_BOOL_OPTIONS = ("rescale_acts_by_decoder_norm", "apply_b_dec_to_input")
# What None means for the options that take it, as the core reads it (<= 0: off).
_NONE_MEANS = {"decoder_init_norm": -1.0,  # keep kaiming_uniform's row norms
               "max_grad_norm": 0.0}       # no gradient clipping
# The valid values of the real options (the core checks jumprelu_bandwidth and Adam's itself);
# out of range, a run trains on quietly to nonsense (a negative EMA rate saved a threshold of -9e7).
_RANGES = {
    "aux_loss_coefficient": (lambda v: v >= 0, ">= 0"),
    "topk_threshold_lr": (lambda v: 0 <= v <= 1, "in [0, 1] (the running threshold's moving-average rate)"),
    "jumprelu_init_threshold": (lambda v: v >= 0, ">= 0 (thresholds are kept >= 0)"),
    "decoder_init_norm": (lambda v: v > 0, "> 0, or None to keep kaiming_uniform's norms"),
    "max_grad_norm": (lambda v: v > 0, "> 0, or None for no clipping"),
}


class Trainer:
    """Trainer(architecture, d_in, d_sae, *, d_out=None, skip=False, k=None, seed=0, **options).

    d_out (or skip=True) makes a transcoder, trained from x to y; skip adds W_skip
    [d_out, d_in]. k: latents per row (topk), or their mean per row (batchtopk).
    options: see DEFAULTS; their valid values in _RANGES. max_grad_norm=None clips no
    gradient (0 is refused: torch's clip_grad_norm_(0) zeroes them all), and
    decoder_init_norm=None keeps kaiming_uniform's decoder norms."""

    def __init__(self, architecture, d_in, d_sae, *, d_out=None, skip=False, k=None, seed=0, **options):
        self._spec = spec = training(architecture)
        check_options(architecture, options)
        d_in = whole_number(d_in, "d_in", 1)
        d_sae = whole_number(d_sae, "d_sae", 1, maximum=2**31 - 1)
        self.transcoder = d_out is not None or bool(skip)
        d_out = d_in if d_out is None else whole_number(d_out, "d_out", 1)
        opts = {**DEFAULTS, **options}
        if opts["apply_b_dec_to_input"] is None:
            opts["apply_b_dec_to_input"] = not self.transcoder
        if opts["apply_b_dec_to_input"] and d_in != d_out:
            raise InvalidInputError("apply_b_dec_to_input needs d_in == d_out")
        self.architecture, self.d_in, self.d_sae, self.d_out, self.skip = architecture, d_in, d_sae, d_out, bool(skip)
        self.k = self._check_k(k)
        cfg = {"activation": spec.module.ACTIVATION, "batch_topk": spec.batch_topk, "d_in": d_in, "d_sae": d_sae,
               "d_out": d_out, "skip": self.skip, "k": float(self.k or 0)}
        cfg.update((name, _core_option(name, value)) for name, value in opts.items())
        self.options = opts
        check_memory(training_memory(architecture, d_in, d_sae, d_out=d_out, skip=skip, k=self.k),
                     f"a {architecture} trainer of {d_sae:,} latents", "choose a smaller d_sae")
        try:
            self._core = _core.Trainer(cfg, whole_number(seed, "seed", 0, maximum=2**64 - 1))
        except ValueError as e:
            raise InvalidInputError(str(e)) from None
        except MemoryError as e:  # what the estimate missed (other processes' memory)
            raise InvalidInputError(f"not enough memory for a {architecture} trainer of {d_sae:,} latents: "
                                    "choose a smaller d_sae") from e
        self._shapes = {name: self._core.get(name).shape for name in self._core.names()}
        self._lock = threading.Lock()  # one step, read or write at a time (steps run without the GIL)

    def _check_k(self, k):
        if self._spec.k is None:
            return None
        if k is None:
            raise InvalidInputError(f"a {self.architecture} trainer needs k")
        if self._spec.k == "whole":
            return whole_number(k, "k", 1, maximum=self.d_sae)
        k = real_number(k, "k")
        if not 0 < k <= self.d_sae:
            raise InvalidInputError(f"k must be in (0, d_sae={self.d_sae}], not {k}")
        return k

    # ---- parameters ----

    @property
    def params(self) -> dict:
        """The parameters, float32, in SAELens's names and layout (batchtopk: topk_threshold, float64)."""
        with self._lock:
            return self._params()

    def _params(self) -> dict:  # under the lock
        out = {name: self._core.get(name, "value") for name in self._core.names()}
        if self._spec.batch_topk:
            out["topk_threshold"] = np.array(self._core.topk_threshold, dtype=np.float64)
        return out

    def set_params(self, **arrays) -> None:
        """Replace parameters (e.g. b_dec from the geometric median); shapes checked."""
        names = self._core.names()
        for name, value in arrays.items():
            if name == "topk_threshold" and self._spec.batch_topk:
                threshold = real_number(value, name)
                if not np.isfinite(threshold):
                    raise InvalidInputError(f"topk_threshold must be finite, not {threshold}")
                with self._lock:
                    self._core.topk_threshold = threshold
                continue
            if name not in names:
                raise InvalidInputError(f"{self.architecture} has no parameter {name!r}; it has {', '.join(names)}")
            self._set(name, "value", value, name)

    def _set(self, name, what, value, label):
        value = self._float_array(value, label, InvalidInputError)
        if value.shape != self._shapes[name]:
            raise InvalidInputError(f"{label} must have shape {list(self._shapes[name])}, not {list(value.shape)}")
        if not np.isfinite(value).all():
            raise InvalidInputError(f"{label} holds NaN or infinity")
        if what == "v" and (value < 0).any():  # Adam's second moment: a negative one makes NaN weights
            raise InvalidInputError(f"{label} holds negative values")
        with self._lock:
            self._core.set(name, what, value)

    @property
    def tokens_since_fired(self) -> np.ndarray:
        return self._core.tokens_since_fired

    @tokens_since_fired.setter
    def tokens_since_fired(self, value) -> None:
        value = np.asarray(value)
        if (value.shape != (self.d_sae,) or not np.issubdtype(value.dtype, np.integer) or (value < 0).any()
                or (value > MAX_COUNT).any()):
            raise InvalidInputError(f"tokens_since_fired must be [d_sae={self.d_sae}] integers in [0, 2**62]")
        with self._lock:
            self._core.tokens_since_fired = value.astype(np.int64)

    @property
    def steps(self) -> int:
        return self._core.steps

    # ---- training ----

    def step(self, x, y=None, *, lr, coefficient=0.0) -> dict:
        """One Adam step on the batch x [n, d_in] (and y [n, d_out] for a transcoder).
        coefficient: this step's sparsity coefficient (standard: L1, jumprelu: L0).
        Returns loss, mse, aux_loss, sparsity_loss, l0, explained_variance, n_dead."""
        x = self._batch(x, "x", self.d_in)
        if self.transcoder:
            if y is None:
                raise SAEInputError("a transcoder's step needs y, the activations it reconstructs")
            y = self._batch(y, "y", self.d_out)
            if y.shape[0] != x.shape[0]:
                raise SAEInputError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        elif y is not None:
            raise SAEInputError("an SAE reconstructs x: pass y only to a transcoder (d_out or skip)")
        lr = real_number(lr, "lr")
        coefficient = real_number(coefficient, "coefficient")
        if not (np.isfinite(lr) and lr >= 0 and np.isfinite(coefficient) and coefficient >= 0):
            raise InvalidInputError(f"lr and coefficient must be finite and >= 0, not {lr} and {coefficient}")
        with self._lock:
            return self._core.step(x, y, lr, coefficient)

    def _batch(self, a, name, width):
        a = self._float_array(a, name, SAEInputError)
        if a.ndim != 2 or a.shape[1] != width or a.shape[0] == 0:
            raise SAEInputError(f"{name} must be [rows >= 1, {width}], not {list(a.shape)}")
        if a.shape[0] >= 2**30:  # the core's per-latent lists hold rows as int32, AuxK's after the main ones
            raise SAEInputError(f"{name} has {a.shape[0]} rows; a step takes fewer than 2**30")
        finite = np.isfinite(a).all(axis=1)
        if not finite.all():
            raise SAEInputError(f"{name} row {int(np.argmin(finite))} holds NaN or infinity")
        return a

    @staticmethod
    def _float_array(a, name, error):
        a = np.asarray(a)
        if a.dtype.kind not in "fiu":
            raise error(f"{name} must be a float array, not {a.dtype}")
        return np.ascontiguousarray(a, dtype=np.float32)

    # ---- checkpoints ----

    def state(self) -> dict:
        """Everything a step depends on, as numpy arrays: the parameters, Adam's moments
        (adam_m.NAME, adam_v.NAME), steps, tokens_since_fired (and topk_threshold)."""
        with self._lock:  # one lock for all of it: a step between two reads would tear the checkpoint
            out = self._params()
            for name in self._core.names():
                out[f"adam_m.{name}"] = self._core.get(name, "m")
                out[f"adam_v.{name}"] = self._core.get(name, "v")
            out["steps"] = np.array(self._core.steps, dtype=np.int64)
            out["tokens_since_fired"] = self._core.tokens_since_fired
        return out

    def load_state(self, state: dict) -> None:
        """Continue from state() (of a trainer built with the same arguments)."""
        expected = set(self.state())
        missing = sorted(expected - set(state))
        if missing:
            raise InvalidInputError(f"the training state lacks {', '.join(missing)}")
        self.set_params(**{name: state[name] for name in self.params})
        for name in self._core.names():
            for what in ("m", "v"):
                self._set(name, what, state[f"adam_{what}.{name}"], f"adam_{what}.{name}")
        steps = np.asarray(state["steps"])
        if steps.shape != () or steps.dtype.kind not in "iu":
            raise InvalidInputError(f"the training state's steps must be one integer, not {steps!r}")
        steps = whole_number(int(steps), "steps", 0, maximum=MAX_COUNT)
        with self._lock:
            self._core.steps = steps
        self.tokens_since_fired = state["tokens_since_fired"]

    @classmethod
    def from_state(cls, state: dict, architecture, d_in, d_sae, **kwargs) -> "Trainer":
        t = cls(architecture, d_in, d_sae, **kwargs)
        t.load_state(state)
        return t

    # ---- saving ----

    def sae_weights(self) -> dict:
        """The weights of sae_weights.safetensors, folded as SAELens folds them on saving:
        decoder norms (topk and batchtopk with rescale_acts_by_decoder_norm), batchtopk's
        running threshold as a JumpReLU threshold."""
        w = self.params
        if self._spec.k is not None and self.options["rescale_acts_by_decoder_norm"]:
            norms = np.maximum(np.linalg.norm(w["W_dec"], axis=1), np.float32(1e-8)).astype(np.float32)
            w["b_enc"] = w["b_enc"] * norms
            w["W_dec"] = w["W_dec"] / norms[:, None]
            w["W_enc"] = w["W_enc"] * norms[None, :]
        if self._spec.batch_topk:
            threshold = float(w.pop("topk_threshold"))
            w["threshold"] = np.full(self.d_sae, threshold, dtype=np.float32)
        return w

    def sae_config(self) -> dict:
        """The architecture-specific fields of the saved cfg.json."""
        cfg = {"architecture": self._spec.saved_name(self.transcoder, self.skip), "d_in": self.d_in,
               "d_sae": self.d_sae, "apply_b_dec_to_input": bool(self.options["apply_b_dec_to_input"])}
        if self.transcoder:
            cfg["d_out"] = self.d_out
        if self._spec.k == "whole":  # saved as TopK
            cfg["k"] = self.k
            cfg["rescale_acts_by_decoder_norm"] = bool(self.options["rescale_acts_by_decoder_norm"])
        return cfg


def check_options(architecture, options: dict) -> None:
    """InvalidInputError for an unknown option or a value out of its range (tm.train_sae checks
    them before it touches its folder)."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise InvalidInputError(f"unknown training option(s) {', '.join(unknown)} for {architecture}")
    for name, value in options.items():
        if not (name == "apply_b_dec_to_input" and value is None):  # None: the default, by the kind
            _core_option(name, value)


def _core_option(name, value):
    """An option as the core takes it; InvalidInputError, with the valid values, for one out of range."""
    if name in _BOOL_OPTIONS:
        if not isinstance(value, (bool, np.bool_)):
            raise InvalidInputError(f"{name} must be True or False, not {value!r}")
        return bool(value)
    if name == "dead_tokens":
        return whole_number(value, name, 0, maximum=MAX_COUNT)
    if value is None and name in _NONE_MEANS:
        return _NONE_MEANS[name]
    number = real_number(value, name)
    if not np.isfinite(number):
        raise InvalidInputError(f"{name} must be finite, not {value!r}")
    valid, what = _RANGES.get(name, (lambda v: True, ""))
    if not valid(number):
        raise InvalidInputError(f"{name} must be {what}, not {value!r}")
    return number


# ---- memory ----

def training_memory(architecture, d_in, d_sae, *, d_out=None, skip=False, k=None, batch_size=0) -> int:
    """The bytes a Trainer holds (csrc/sae/train.cpp), with what a step on batch_size rows adds.

    Per parameter: its value, gradient and Adam's two moments in the core, and the copy of
    value and moments that state() hands a checkpoint. Per latent: the dead-token counters and
    the step's per-latent lists. Per row: the pre-activations [d_sae] and the input, output and
    gradient rows; per active (row, latent) pair: its entries in the row- and latent-ordered
    lists. A dense step (ReLU and JumpReLU early on) adds activations, gradients and a
    transposed copy [n, d_sae]; BatchTopK ranks the whole batch's pre-activations once more."""
    spec = training(architecture)
    d_out = d_in if d_out is None else d_out
    params = d_in * d_sae + d_sae * d_out + 2 * d_sae + d_out  # a JumpReLU threshold counted for every kind
    params += d_out * d_in if skip else 0
    need = params * (16 + 12) + d_sae * 40
    if batch_size:
        n = batch_size
        per_row = d_sae + d_in + 4 * d_out + (2 * (d_in + d_out) if skip else 0)
        pairs = n * ((k or 0) + d_out // 2) if spec.k is not None else n * d_sae // 8
        need += 4 * n * per_row + 28 * pairs
        need += 12 * n * d_sae if spec.k is None else 4 * n * d_sae if spec.batch_topk else 0
    return int(need)
